"""Safe file writing: outputs appear complete or not at all."""
import contextlib
import os
import signal
import tempfile
import threading


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block is over, then deliver the first one received to the
    handler that was in place (Python's ``KeyboardInterrupt``, ``engine.errors.run``'s, or the default
    termination). Used around file writes so that an interrupt never lands inside a library's writer
    (``torch.save`` turns it into a second, unrelated error) and a set of files is complete or absent.
    Outside the main thread (where handlers cannot be set) the block runs unprotected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    handlers = {}

    def hold(signum, frame):
        received.append(signum)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, hold)
    except (ValueError, OSError):        # an embedding that forbids handlers: nothing to defer
        pass
    try:
        yield
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        if received:
            signal.raise_signal(received[0])


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a temporary file next to ``path``; on success fsync and rename it over ``path``.

    If the body raises (or the process dies) the target is untouched and the temporary file removed
    (a killed process may leave a ``.<name>.*.tmp`` file behind, never a truncated target). An interrupt
    (Ctrl-C, SIGTERM) arriving meanwhile is delivered once the file is complete (``interrupts_deferred``).
    """
    with interrupts_deferred():
        with _atomic_write(path, mode) as f:
            yield f


@contextlib.contextmanager
def _atomic_write(path, mode):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600 files; give the target normal permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
