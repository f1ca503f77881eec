"""Strip a training checkpoint down to what inference needs: the model spec and weights.

    python -m scripts.export_model save/_train_x/epoch-last.pth save/pretrained_models/x.pth

The result keeps the self-describing format ``{'model': {'name', 'args', 'sd'}, 'epoch', 'trained_with'}``
(``trained_with`` holds the training config and best validation PSNR, for provenance) and is written
atomically. Optimizer, scheduler and RNG states are dropped (about two thirds of the file).

A ``.safetensors`` destination writes safetensors instead (``models/weights.py``): the spec, epoch and
provenance go into the file's metadata, so it stays self-describing, and loading it never unpickles::

    python -m scripts.export_model save/pretrained_models/x.pth save/pretrained_models/x.safetensors

Re-exporting an already exported file keeps its ``trained_with``.
"""
import os
import sys

if not __package__:   # run as a file: the project's packages are importable only from the repository root
    sys.exit('export_model.py: error: run it from the repository root as a module: python -m scripts.export_model ...')

try:
    from models.checkpoint import CheckpointError, check_finite, load_checkpoint, save_checkpoint  # noqa: E402
    from utils.validate import InputError, output_file  # noqa: E402
except ImportError as _e:      # e.g. a Python without torch: one line, not a traceback
    sys.exit(f'export_model.py: error: {_e} (install the requirements: pip install -r requirements.txt)')

TRAINING_STATE = ('optimizer', 'scheduler', 'scaler', 'rng')


def check_destination(src, dst):
    """Refuse a destination that is the source, or an existing training checkpoint (the export drops the
    optimizer state, so the run could no longer resume), or an existing file that is not a checkpoint."""
    output_file(dst, 'destination', inputs=(src,))
    if os.path.exists(dst):
        try:
            old = load_checkpoint(dst)
        except CheckpointError:
            raise InputError(f'destination {dst} exists and is not a checkpoint; refusing to overwrite it') from None
        kept = [k for k in TRAINING_STATE if old.get(k) is not None]
        if kept:
            raise InputError(f'destination {dst} is a training checkpoint (it holds {", ".join(kept)} state); '
                             f'exporting over it would lose that state and the run could not resume; give another '
                             f'destination')


def build_parser():
    import argparse
    p = argparse.ArgumentParser(prog='export_model.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', help='the checkpoint to export (.pth or .safetensors)')
    p.add_argument('dst', help='the file to write (.safetensors: safetensors, else a .pth checkpoint)')
    return p


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [os.fspath(a) for a in argv])
    src, dst = args.src, args.dst
    try:
        check_destination(src, dst)
        ckpt = load_checkpoint(src)
        check_finite(ckpt['model']['sd'], src)       # a diverged run is not exported
        save_checkpoint(dst, {'model': ckpt['model'], 'epoch': ckpt.get('epoch'),
                              'trained_with': ckpt.get('trained_with') or
                              {'config': ckpt.get('config'), 'best_val_psnr': ckpt.get('best_val')}})
    except (CheckpointError, InputError, OSError) as e:
        print(f'export_model.py: error: {e}', file=sys.stderr)
        return 1
    dropped = [k for k in TRAINING_STATE if ckpt.get(k) is not None]
    print(f'{src} (epoch {ckpt.get("epoch")}) -> {dst}'
          + (f' (not copied: {", ".join(dropped)} state; {src} keeps it for resuming)' if dropped else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
