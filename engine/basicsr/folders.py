"""Where BasicSR runs write, and their log.

Training (``experiments/<name>/``, or ``path.experiments_root/<name>/``)::

    <name>.yml                    the option file, headed by the time and the command (BasicSR's copy)
    train_<name>_<time>.log       the log
    models/net_g_<iter>.pth       {'params': sd[, 'params_ema': sd]}; net_g_latest.pth at the end
    training_states/<iter>.state  {'epoch', 'iter', 'optimizers', 'schedulers', ...}: resume from it
    visualization/<img>/<img>_<iter>.png   validation images when val.save_img
    run.lock                      held while the run is alive (``engine.run_folder.RunLock``)

TensorBoard events go to ``tb_logger/<name>/`` beside ``experiments/``. Testing (``results/<name>/``):
``test_<name>_<time>.log`` and ``visualization/<dataset>/<img>_<suffix or name>.png``.

As BasicSR, a new run moves an existing folder of the same name aside to ``<folder>_archived_<time>``
(a folder locked by a live run is refused instead); a resumed run continues in its folder. Folders are made
only after every option, dataset and weight has been checked (``prepare``).
"""
import os
import shutil
import sys
import time

from ..run_folder import LOCK_NAME, RunFolderError, RunLock, clean_stale_temporaries, pid_alive


def time_str():
    return time.strftime('%Y%m%d_%H%M%S', time.localtime())


def _check_unlocked(folder):
    lock = os.path.join(folder, LOCK_NAME)
    try:
        with open(lock) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if pid != os.getpid() and pid_alive(pid):
        raise RunFolderError(f'{folder} is in use by a running process (pid {pid}); wait for it or change name')


def archive(folder, log):
    """Move an existing ``folder`` aside to ``<folder>_archived_<time>`` (BasicSR's mkdir_and_rename)."""
    if os.path.exists(folder):
        _check_unlocked(folder)
        new = f'{folder}_archived_{time_str()}'
        log(f'Path already exists. Rename it to {new}')
        os.rename(folder, new)


class Log:
    """BasicSR-style log lines ``<time> INFO: <message>`` on stdout and in a file (main process only).

    Lines logged before ``attach(path)`` are kept and written to the file when it is attached."""

    def __init__(self, main=True):
        self.main, self.path, self.pending = main, None, []

    def __call__(self, msg, level='INFO', echo=True):
        if not self.main:
            return
        stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())
        line = f'{stamp} {level}: {msg}'
        if echo:
            print(line, flush=True)
        if self.path is None:
            self.pending.append(line)
        else:
            with open(self.path, 'a') as f:
                f.write(line + '\n')

    def attach(self, path):
        self.path = path
        with open(path, 'a') as f:
            f.writelines(line + '\n' for line in self.pending)
        self.pending = []


def copy_option_file(src, folder):
    """BasicSR's copy of the option file into the run folder, headed by the time and the command."""
    target = os.path.join(folder, os.path.basename(src))
    with open(src) as f:
        text = f.read()
    with open(target, 'w') as f:
        f.write(f'# GENERATE TIME: {time.asctime()}\n# CMD:\n# {" ".join(sys.argv)}\n\n{text}')


def prepare(opts, log, resume):
    """Main process: make (or, resuming, reuse) the run folder, lock it (training), attach the log, copy the
    option file (training). Returns the ``RunLock`` or None. A failure removes a folder made here."""
    folder = opts.folder
    if not resume:
        archive(folder, log)
        if opts.tb_folder:
            archive(opts.tb_folder, log)
    created = not os.path.exists(folder)
    subfolders = ('models', 'training_states', 'visualization') if opts.phase == 'train' else ('visualization',)
    try:
        for sub in subfolders:
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
    except OSError as e:
        raise RunFolderError(f'cannot create {folder}: {e.strerror or e}') from None
    lock = None
    try:
        if opts.phase == 'train':
            lock = RunLock(folder).acquire()
            for name in clean_stale_temporaries(os.path.join(folder, 'models')) + \
                    clean_stale_temporaries(os.path.join(folder, 'training_states')):
                log(f'removed {name}, left by an interrupted save')
            copy_option_file(opts.file, folder)
        log.attach(os.path.join(folder, f'{opts.phase}_{opts.name}_{time_str()}.log'))
    except BaseException:
        if lock is not None:
            lock.release()
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return lock
