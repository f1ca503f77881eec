"""Processes and devices of a BasicSR command: ``--launcher none`` (one process) or ``--launcher pytorch``
(one process per device under ``python -m torch.distributed.launch`` or ``torchrun``, which set RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous; ``--local-rank`` from the older launcher is honoured too).

The device: the CPU when ``num_gpu`` is 0 or CUDA is absent (then the process group uses gloo), else
``cuda:LOCAL_RANK`` (nccl). ``num_gpu`` > 1 in a single process trains on one device with
``batch_size_per_gpu`` (BasicSR would use DataParallel, which crashes with the multi-scale sampler).
"""
import os

from ..distributed import setup_distributed
from .options import OptionError


def setup(opts, args, log):
    """Check the launcher against the environment, choose the device and start the process group;
    returns ``engine.distributed.Dist``."""
    import torch
    if args.launcher == 'slurm':
        raise OptionError('--launcher slurm is not supported; start one process per device with '
                          'torch.distributed.launch or torchrun and --launcher pytorch')
    world = int(os.environ.get('WORLD_SIZE', 1))
    if args.launcher == 'pytorch' and 'RANK' not in os.environ:
        raise OptionError('--launcher pytorch: start the command with python -m torch.distributed.launch '
                          '--nproc_per_node=N or torchrun (RANK / WORLD_SIZE are not set)')
    if args.launcher == 'none' and world > 1:
        raise OptionError(f'started as {world} processes but with --launcher none: add --launcher pytorch')
    if args.local_rank is not None and 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    num_gpu = torch.cuda.device_count() if opts.num_gpu == 'auto' else opts.num_gpu
    cuda = num_gpu != 0 and torch.cuda.is_available()
    if num_gpu and not cuda:
        log(f'num_gpu {opts.num_gpu}: CUDA is not available; running on the CPU', level='WARNING')
    elif cuda and num_gpu > 1 and world == 1:
        log(f'num_gpu {num_gpu} in one process: running on one GPU with batch_size_per_gpu (for {num_gpu} GPUs: '
            f'python -m torch.distributed.launch --nproc_per_node={num_gpu} ... --launcher pytorch)', level='WARNING')
    return setup_distributed('cuda' if cuda else 'cpu')
