"""Safe file writing: outputs appear complete or not at all."""
import contextlib
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a temporary file next to ``path``; on success fsync and rename it over ``path``.

    If the body raises (or the process dies) the target is untouched and the temporary file removed
    (a killed process may leave a ``.<name>.*.tmp`` file behind, never a truncated target).
    """
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
