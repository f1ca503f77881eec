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


def run(main, argv=None, script=None):
    """Call ``main(argv)``; report expected errors as ``<script>: error: ...`` and return 1 (130 when
    interrupted). Out-of-memory errors name the options that reduce memory."""
    script = script or script_name()
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print(f'{script}: interrupted', file=sys.stderr)
        return 130
    except ImportError as e:       # e.g. a Python without torch (checked before expected_errors imports it)
        return missing_requirements(e, script)
    except out_of_memory_errors() as e:
        from utils.validate import one_line
        print(f'{script}: error: out of memory ({one_line(e, 200) or "MemoryError"}); use --tile, a smaller '
              f'--bsize or a smaller input/--size; nothing written', file=sys.stderr)
        return 1
    except expected_errors() as e:
        from utils.validate import message     # one line, also for errors re-raised from DataLoader workers
        print(f'{script}: error: {message(e)}', file=sys.stderr)
        return 1
