"""The error policy of every entry point, in one place.

Errors that are the user's to fix (a wrong value, a missing or corrupt file, a model that cannot do what is
asked, a diverged training run) are reported as one line ``<script>: error: <message>`` on stderr with exit
status 1, never a traceback; informational lines read ``<script>: note: <message>``.

This module imports nothing of the project at import time (scripts report a missing torch through it).
"""
import os
import sys


class CLIError(ValueError):
    """A command-line value is wrong or flags contradict each other."""


class UpscaleError(ValueError):
    """The one exception type of the Python API (``api.upscale``, ``api.load``, the ``hubconf`` entries): the
    message is one line naming the problem (a bad argument, a missing or corrupt file, a request that cannot
    fit in memory, an image that failed in a folder run)."""


class TrainingDiverged(RuntimeError):
    """The loss, a validation prediction or metric, or the weights became NaN or infinite."""


def script_name():
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'script'


def note(message, script=None):
    """One informational line on stderr, prefixed like errors (``test.py: note: ...``)."""
    print(f'{script or script_name()}: note: {message}', file=sys.stderr, flush=True)


def expected_errors():
    """Exception types that are the user's to fix: reported in one line, exit status 1 (a run folder in use, a
    failed peer process of a torchrun group: the failing process reports its own error)."""
    from models import CheckpointError

    from .distributed import PeerFailed
    from .run_folder import RunFolderError
    return ValueError, CheckpointError, OSError, TrainingDiverged, RunFolderError, PeerFailed


def out_of_memory_errors():
    """Exception types of an allocation that failed (host memory, or an accelerator's)."""
    try:
        import torch
    except ImportError:
        return (MemoryError,)
    return MemoryError, torch.OutOfMemoryError


def missing_requirements(error, script):
    """Report an ImportError (e.g. a Python without torch) as one line ``<script>: error: <error> (install the
    requirements: ...)`` on stderr; returns the exit status, 1. Scripts call it around their heavy imports."""
    print(f'{script}: error: {error} (install the requirements: pip install -r requirements.txt)', file=sys.stderr)
    return 1


class _Main:
    """``main(argv)`` with SIGTERM (``kill``, or torchrun stopping the other processes of a group after one
    failed) turned into ``KeyboardInterrupt`` while it runs, so that it cleans up as after Ctrl-C (a training
    run folder without a checkpoint removed, temporaries deleted). Once ``main`` has returned or raised, a
    SIGTERM is ignored: the process is already on its way out with its own one-line message."""

    def __init__(self, main):
        self.main, self.running, self.previous = main, False, None

    def _on_term(self, signum, frame):
        if self.running:
            self.running = False          # one interrupt only
            torchrun = os.environ.get('WORLD_SIZE', '1') not in ('', '0', '1')
            raise KeyboardInterrupt('stopped by SIGTERM' + (' (torchrun stops every process of the group when '
                                                             'one fails)' if torchrun else ''))

    def __call__(self, argv):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._on_term)
        self.running = True
        try:
            return self.main(argv) or 0
        finally:
            self.running = False

    def restore(self):
        if self.previous is not None:
            import signal
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


def out_of_memory(error):
    """Whether an exception is a failed allocation (``MemoryError``, ``torch.OutOfMemoryError``, or the
    CPU allocator's RuntimeError, which torch does not type)."""
    return isinstance(error, out_of_memory_errors()) or "DefaultCPUAllocator: can't allocate memory" in str(error)


def _runtime_error(error, script):
    """A RuntimeError that is not the user's to fix re-raised (a bug: its traceback is wanted), except a
    torchrun peer dying mid-collective (DDP, gather): one line, not the backend's."""
    from .distributed import peer_left
    if not peer_left(error):
        raise error
    print(f'{script}: error: {peer_left(error)}', file=sys.stderr)
    return 1


def run(main, argv=None, script=None):
    """Call ``main(argv)``; report expected errors as ``<script>: error: ...`` and return 1 (130 when
    interrupted by Ctrl-C or SIGTERM; an interrupt's message may say what was kept). Out-of-memory errors name
    the options that reduce memory. Under torchrun every process prints at most one line: the one that failed
    its own error, the others that a peer failed; then ``engine.distributed.finish`` closes the group and
    ends the process (with the exit status this returns otherwise)."""
    code = None
    try:
        code = _report(main, argv, script or script_name())
        return code
    finally:
        if 'torch.distributed' in sys.modules:
            from . import distributed
            if code is None:        # a bug's traceback on its way: no barrier, no early exit
                distributed.close_group()
            else:
                distributed.finish(code)


def _report(main, argv, script):
    """``run`` without the torchrun teardown: the exit status, with expected errors reported in one line."""
    call = _Main(main)
    try:
        return call(argv)
    except KeyboardInterrupt as e:      # Ctrl-C: one line (training says what it kept), exit status 130
        detail = str(e) if isinstance(e.args[0] if e.args else None, str) else ''
        print(f'{script}: {detail or "interrupted"}', file=sys.stderr)
        return 130
    except ImportError as e:       # e.g. a Python without torch (checked before expected_errors imports it)
        return missing_requirements(e, script)
    except expected_errors() as e:
        from utils.validate import message     # one line, also for errors re-raised from DataLoader workers
        print(f'{script}: error: {message(e)}', file=sys.stderr)
        return 1
    except out_of_memory_errors() + (RuntimeError,) as e:
        if not out_of_memory(e):
            return _runtime_error(e, script)
        from utils.validate import one_line
        print(f'{script}: error: out of memory ({one_line(e, 200) or "MemoryError"}); use --tile, a smaller '
              f'--bsize or a smaller input/--size; nothing written', file=sys.stderr)
        return 1
    finally:
        call.restore()
