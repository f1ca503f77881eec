"""Strip a training checkpoint down to what inference needs: the model spec and weights.

    python scripts/export_model.py save/_train_x/epoch-last.pth save/pretrained_models/x.pth

The result keeps the self-describing format ``{'model': {'name', 'args', 'sd'}, 'epoch', 'trained_with'}``
(``trained_with`` holds the training config and best validation PSNR, for provenance) and is written
atomically. Optimizer, scheduler and RNG states are dropped (about two thirds of the file).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0 if argv and argv[0] in ('-h', '--help') else 2
    src, dst = argv
    try:
        ckpt = load_checkpoint(src)
        save_checkpoint(dst, {'model': ckpt['model'], 'epoch': ckpt.get('epoch'),
                              'trained_with': {'config': ckpt.get('config'), 'best_val_psnr': ckpt.get('best_val')}})
    except (CheckpointError, OSError) as e:
        print(f'export_model.py: error: {e}', file=sys.stderr)
        return 1
    print(f'{src} (epoch {ckpt.get("epoch")}) -> {dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
