"""Train a super-resolution model from a YAML config.

    python train.py --config configs/train-lmf/train_edsr-baseline-lmliif.yaml
    torchrun --nproc_per_node 4 train.py --config ...        # several GPUs (or CPU processes, gloo)
    python train.py --config configs/train-lmf/train_edsr-baseline-lmliif.yaml --gpu 0 --name edsr-b_lm-liif

The published flags --gpu N (--gpu 0,1 names the equivalent torchrun command), --name and --tag work.

Runs go to save/<name>/ (default name: _<config file stem>[_<tag>]): the resolved config.yaml, log.txt,
TensorBoard events in tensorboard/, and checkpoints epoch-last.pth, epoch-best.pth, epoch-<N>.pth.
Running the same command again resumes from epoch-last.pth and continues bit-exactly.
"""
import argparse
import os
import sys


def parse_args(argv=None):
    from engine import cli
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='YAML training config (see configs/train-*)')
    p.add_argument('--name', help='run name: checkpoints go to <save-root>/<name> (default _<config stem>)')
    p.add_argument('--tag', help='appended to the run name as _<tag>')
    p.add_argument('--save-root', default='save', help='folder holding runs (default: save)')
    p.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE',
                   help='override config entries, e.g. --opt epoch_max=10 train_dataset.batch_size=8')
    cli.add_device_args(p, multi=True)
    p.add_argument('--workers', type=int, default=None,
                   help='data-loading processes per training process (default: min(8, cores - 1))')
    p.add_argument('--seed', type=int, default=None, help='random seed (default: config "seed", else 0)')
    p.add_argument('--amp', choices=['bf16', 'fp16'], help='mixed precision')
    p.add_argument('--grad-clip', type=float, default=None, help='clip the gradient norm to this value')
    p.add_argument('--no-resume', action='store_true',
                   help='start from scratch even if the run folder holds epoch-last.pth (it will be overwritten)')
    stop_env = os.environ.get(cli.STOP_AFTER_ENV)
    p.add_argument('--stop-after', type=int, default=int(stop_env) if stop_env else None, metavar='N',
                   help='stop after N epochs of this invocation (resume later with the same command); default: '
                        f'the environment variable {cli.STOP_AFTER_ENV} if set')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def training_device(args, argv):
    """The device of this process (``engine.cli.choose_device``); ``--gpu 0,1`` outside torchrun names the
    equivalent torchrun command (one process per GPU, DistributedDataParallel, same global batch)."""
    import torch

    from engine import cli
    from engine.distributed import distributed_env
    if args.gpu is not None and len(cli.parse_gpus(args.gpu)) > 1 and distributed_env()[1] == 1 \
            and torch.cuda.is_available():
        argv = sys.argv[1:] if argv is None else argv
        command = cli.torchrun_command(len(cli.parse_gpus(args.gpu)), argv)
        raise cli.CLIError(f'--gpu {args.gpu}: several GPUs train with one process each; run '
                           f'CUDA_VISIBLE_DEVICES={args.gpu} {command}')
    return cli.choose_device(args.device, args.gpu, 'train.py')


def _main(argv=None):
    args = parse_args(argv)
    from datasets.check import check_loader_spec
    from engine.distributed import setup_distributed
    from engine.training import fit
    from models.registry import MODELS
    from utils import validate
    from utils.config import ConfigError, apply_overrides, load_config, require
    validate.cli_numbers(args, 'train.py')
    from engine import cli
    cli.apply_threads(args)
    from engine.inference import resolve_path
    args.config = resolve_path(args.config, 'config')        # bundled configs from any working directory
    device = training_device(args, argv)
    cfg = apply_overrides(load_config(args.config), args.opt)
    validate.spec_types(require(cfg, 'model', where=args.config), MODELS, 'model')   # before anything is built
    for part in ('train_dataset', 'val_dataset'):
        if cfg.get(part) is not None:
            if not isinstance(cfg[part], dict):
                raise ConfigError(f'{args.config}: {part} must be a mapping, got {type(cfg[part]).__name__}')
            if 'batch_size' in cfg[part]:
                validate.integer(cfg[part]['batch_size'], f'{part}.batch_size', minimum=1)
            check_loader_spec(cfg[part], part)      # folders listed, args checked; nothing decoded
    for key in ('epoch_max', 'epoch_val', 'epoch_save'):
        if cfg.get(key) is not None:
            validate.integer(cfg[key], key, minimum=1)
    if cfg.get('seed') is not None:
        validate.integer(cfg['seed'], 'seed', minimum=0)
    name = args.name or '_' + os.path.splitext(os.path.basename(args.config))[0]
    if args.tag:
        name += '_' + args.tag
    save_dir = os.path.join(args.save_root, name)
    validate.output_folder(save_dir, '--save-root/--name', inputs=(args.config,))
    workers = args.workers if args.workers is not None else min(8, max((os.cpu_count() or 1) - 1, 0))
    seed = args.seed if args.seed is not None else int(cfg.get('seed', 0))
    dd = setup_distributed(device)
    fit(cfg, save_dir, dd, workers=workers, seed=seed, amp=args.amp, grad_clip=args.grad_clip,
        resume=not args.no_resume, stop_after=args.stop_after, progress=not args.no_progress)
    return 0


def main(argv=None):
    from engine.basicsr.cli import is_option_command, main as option_main
    if is_option_command(sys.argv[1:] if argv is None else argv):      # BasicSR: train.py -opt X.yml
        return option_main(argv, 'train', 'train.py')
    from engine.errors import run
    return run(_main, argv, 'train.py')


if __name__ == '__main__':
    sys.exit(main())
