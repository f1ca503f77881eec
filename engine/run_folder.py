"""The run folder of ``train.py``: one writer at a time, no debris from killed processes.

* ``RunLock``: ``<run>/run.lock`` holds ``<pid> <hostname>`` of the training process that owns the
  folder, created with ``O_CREAT | O_EXCL`` (atomic). A second process is refused with a one-line
  error; a lock whose process no longer exists on this host is stale and taken over.
* ``clean_stale_temporaries``: ``utils.io.atomic_write`` writes ``.<name>.<random>.tmp`` files next to
  their target; a process killed mid-write leaves one behind. With the lock held, nothing else writes
  there, so every such file in the run folder is debris and is removed at start.
* The divergence marker ``<run>/DIVERGED`` records why a run stopped on a non-finite loss, metric or
  weights; resuming with the same learning rate is refused until it is changed (or ``--no-resume``).
"""
import contextlib
import errno
import glob
import os
import socket

LOCK_NAME = 'run.lock'
DIVERGED_NAME = 'DIVERGED'


class RunFolderError(RuntimeError):
    """The run folder is in use by another process, or cannot be used."""


def pid_alive(pid):
    """Whether a process with this id exists (on this host)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive ownership of a run folder by this process (see the module docstring)."""

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False
        self.took_over = None      # description of a stale lock that was replaced

    def _read(self):
        try:
            with open(self.path) as f:
                parts = f.read().split()
            return int(parts[0]), (parts[1] if len(parts) > 1 else '')
        except (OSError, ValueError, IndexError):
            return None, ''

    def acquire(self):
        host = socket.gethostname()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, owner_host = self._read()
                if pid is not None and owner_host not in ('', host):
                    raise RunFolderError(f'{os.path.dirname(self.path)} is locked by process {pid} on host '
                                         f'{owner_host} ({self.path}); if that run is over, delete the lock file')
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    raise RunFolderError(f'{os.path.dirname(self.path)} is in use by another training process '
                                         f'(pid {pid}); wait for it to finish or use another --name/--tag')
                # stale (dead owner or unreadable): replace it
                self.took_over = f'pid {pid}' if pid is not None else 'unreadable lock file'
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            except OSError as e:
                raise RunFolderError(f'cannot create {self.path}: {e.strerror or e}') from None
            with os.fdopen(fd, 'w') as f:
                f.write(f'{os.getpid()} {host}\n')
            self.held = True
            return self
        raise RunFolderError(f'could not take {self.path} (another process keeps replacing it)')

    def release(self):
        if not self.held:
            return
        pid, _ = self._read()
        if pid == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def clean_stale_temporaries(folder):
    """Remove ``.<name>.*.tmp`` files left by killed atomic writes; returns the names removed."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), '.*.tmp'))):
        try:
            os.unlink(path)
            removed.append(os.path.basename(path))
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    return removed


def diverged_path(folder):
    return os.path.join(folder, DIVERGED_NAME)


def read_divergence(folder):
    """The marker's text (``lr=<value>`` on the first line, then the reason), or None."""
    try:
        with open(diverged_path(folder)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def marker_lr(text):
    first = (text or '').splitlines()[0] if text else ''
    if first.startswith('lr='):
        try:
            return float(first[3:])
        except ValueError:
            return None
    return None


def write_divergence(folder, lr, reason):
    from utils.io import atomic_write
    with atomic_write(diverged_path(folder), 'w') as f:
        f.write(f'lr={lr!r}\n{reason}\n')


def clear_divergence(folder):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(diverged_path(folder))
