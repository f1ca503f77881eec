"""Train a super-resolution model from a YAML config.

    python train.py --config configs/train-lmf/train_edsr-baseline-lmliif.yaml
    torchrun --nproc_per_node 4 train.py --config ...        # several GPUs (or CPU processes, gloo)

Runs go to save/<name>/ (default name: _<config file stem>[_<tag>]): the resolved config.yaml, log.txt,
TensorBoard events in tensorboard/, and checkpoints epoch-last.pth, epoch-best.pth, epoch-<N>.pth.
Running the same command again resumes from epoch-last.pth and continues bit-exactly.
"""
import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='YAML training config (see configs/train-*)')
    p.add_argument('--name', help='run name: checkpoints go to <save-root>/<name> (default _<config stem>)')
    p.add_argument('--tag', help='appended to the run name as _<tag>')
    p.add_argument('--save-root', default='save', help='folder holding runs (default: save)')
    p.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE',
                   help='override config entries, e.g. --opt epoch_max=10 train_dataset.batch_size=8')
    p.add_argument('--device', choices=['cpu', 'cuda', 'mps'], help='default: cuda if available, else cpu')
    p.add_argument('--workers', type=int, default=None,
                   help='data-loading processes per training process (default: min(8, cores - 1))')
    p.add_argument('--seed', type=int, default=None, help='random seed (default: config "seed", else 0)')
    p.add_argument('--amp', choices=['bf16', 'fp16'], help='mixed precision')
    p.add_argument('--grad-clip', type=float, default=None, help='clip the gradient norm to this value')
    p.add_argument('--no-resume', action='store_true',
                   help='start from scratch even if the run folder holds epoch-last.pth (it will be overwritten)')
    p.add_argument('--stop-after', type=int, default=None, metavar='N',
                   help='stop after N epochs of this invocation (resume later with the same command)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from engine.training import TrainingDiverged, setup_distributed, train
    from models import CheckpointError, ModelSpecError
    from utils.config import ConfigError, apply_overrides, load_config
    try:
        cfg = apply_overrides(load_config(args.config), args.opt)
        name = args.name or '_' + os.path.splitext(os.path.basename(args.config))[0]
        if args.tag:
            name += '_' + args.tag
        save_dir = os.path.join(args.save_root, name)
        workers = args.workers if args.workers is not None else min(8, max((os.cpu_count() or 1) - 1, 0))
        seed = args.seed if args.seed is not None else int(cfg.get('seed', 0))
        dd = setup_distributed(args.device)
        train(cfg, save_dir, dd, workers=workers, seed=seed, amp=args.amp, grad_clip=args.grad_clip,
              resume=not args.no_resume, stop_after=args.stop_after, progress=not args.no_progress)
    except (ConfigError, ModelSpecError, CheckpointError, TrainingDiverged, FileNotFoundError, ValueError) as e:
        print(f'train.py: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
