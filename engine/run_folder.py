"""The run folder of ``train.py``: one writer at a time, no debris from killed processes.

* ``RunLock``: ``<run>/run.lock`` holds ``<pid> <hostname>`` of the training process that owns the
  folder and is ``flock``-ed by it (released by the kernel when the process dies). A second process is
  refused with a one-line error; a lock file left by a dead process is free and taken over.
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

try:
    import fcntl
except ImportError:      # Windows: exclusive creation + stale-pid check instead
    fcntl = None

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
    """Exclusive ownership of a run folder by this process (see the module docstring).

    Where ``fcntl`` exists (Linux, macOS) the lock is an ``flock`` held on ``run.lock`` for the life of the
    process: the kernel releases it when the owner dies, so a lock left by a dead process is simply free
    again, and two processes can never both hold it (no stale-lock takeover race). After locking, the
    holder checks that the path still names the file it locked (a releasing owner unlinks it), and
    retries otherwise. A lock file naming a live process on this host (or any process on another host) that
    does not hold the flock (a run of older code, a shared network folder) is still honoured. Elsewhere, the file is created with ``O_CREAT | O_EXCL`` and a lock whose process no
    longer exists on this host is replaced."""

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False
        self.took_over = None      # description of a stale lock that was replaced
        self._fd = None

    def _read(self):
        try:
            with open(self.path) as f:
                parts = f.read().split()
            return int(parts[0]), (parts[1] if len(parts) > 1 else '')
        except (OSError, ValueError, IndexError):
            return None, ''

    def _busy(self, pid, owner_host):
        folder = os.path.dirname(self.path)
        if owner_host and owner_host != socket.gethostname():
            return RunFolderError(f'{folder} is locked by process {pid} on host {owner_host} ({self.path}); if that '
                                  f'run is over, delete the lock file')
        return RunFolderError(f'{folder} is in use by another training process'
                              + (f' (pid {pid})' if pid is not None else '')
                              + '; wait for it to finish or use another --name/--tag')

    def acquire(self):
        if fcntl is None:
            return self._acquire_exclusive_create()
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunFolderError(f'cannot create {self.path}: {e.strerror or e}') from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy(*self._read()) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:                 # the previous owner unlinked it between our open and our lock
                os.close(fd)
                continue
            pid, owner_host = self._read()
            if pid is not None and pid != os.getpid() and (owner_host not in ('', socket.gethostname())
                                                           or pid_alive(pid)):
                os.close(fd)             # written by a process that does not flock (another host, older code)
                raise self._busy(pid, owner_host if owner_host != socket.gethostname() else '')
            if pid is not None and pid != os.getpid():
                self.took_over = f'pid {pid}'
            os.ftruncate(fd, 0)
            os.write(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode())
            self._fd, self.held = fd, True
            return self
        raise RunFolderError(f'could not take {self.path} (another process keeps replacing it)')

    def _acquire_exclusive_create(self):
        host = socket.gethostname()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, owner_host = self._read()
                if pid is not None and owner_host not in ('', host):
                    raise self._busy(pid, owner_host) from None
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    raise self._busy(pid, '') from None
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
        if pid == os.getpid():           # (still) ours: unlink it while holding the flock, then let go
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
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
