"""The entry point of ``igconv/train.py``, ``igconv/test.py`` and ``train.py -opt`` / ``test.py -opt``.

Errors the user can fix (a missing file, a bad or unsupported option, weights that do not fit, a busy run
folder, a diverged run) are one line ``<script>: error: <message>`` on stderr with exit status 1
(``engine.errors.run``); a failure before training or testing starts leaves no folder behind.
"""


class CommandError(ValueError):
    """A run folder is in use, another process failed, or the run cannot go on."""


def is_option_command(argv):
    """Whether a command line is BasicSR's (``-opt FILE``), not this code base's ``--config`` one."""
    return any(a == '-opt' or a.startswith('-opt=') for a in argv)


def main(argv=None, phase='train', prog=None):
    """Run ``phase`` ('train' or 'test') for ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    import os
    import sys

    from engine.errors import run
    argv = sys.argv[1:] if argv is None else list(argv)
    return run(lambda a: _main(a, phase, prog), argv, os.path.basename(prog) if prog else None)


def _main(argv, phase, prog):
    from ..distributed import PeerFailed
    from ..run_folder import RunFolderError
    from .options import parse_args, read_options
    args = parse_args(argv, phase, prog)
    opts = read_options(args.opt, phase, args.force_yml, args.debug)
    try:
        if phase == 'train':
            from .training import train
            train(opts, args)
        else:
            from .testing import test
            test(opts, args)
    except (RunFolderError, PeerFailed) as e:
        raise CommandError(str(e)) from None
    return 0
