"""Training speed: train.py's step (and the published LMF loop) in iterations/s and samples/s, split into data
loading, forward, backward and optimizer, with peak memory.

    python -m scripts.train_benchmark                                    # the three published EDSR-baseline configs
    python -m scripts.train_benchmark --config configs/train-lmf/train_edsr-baseline-lmliif.yaml --iters 20
    python -m scripts.train_benchmark --published ../LMF --threads 1     # + the published loop, interleaved, ratio
    python -m scripts.train_benchmark --device cuda --workers 4

Both loops run in their own processes, alternately in blocks of --block iterations, with the same thread count,
batch, crops, queries and images (engine/train_benchmark.py says exactly what is timed and how the published
loop is driven). Data: the config's training folders, else load/train_standin (the stand-in photos), else
synthetic images; the report names which.
"""
import argparse
import os
import sys

if not __package__:   # run as a file: the project's packages are importable only from the repository root
    sys.exit('train_benchmark.py: error: run it from the repository root as a module: '
             'python -m scripts.train_benchmark ...')

SCRIPT = 'train_benchmark.py'


def parse_args(argv=None):
    from engine.train_benchmark import DEFAULT_CONFIGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', nargs='+', default=list(DEFAULT_CONFIGS), help='training config(s) (default: the '
                   'published EDSR-baseline LM-LIIF, LM-LTE and LIIF configs)')
    p.add_argument('--iters', type=int, default=10, help='timed iterations per loop and config (default 10)')
    p.add_argument('--warmup', type=int, default=2, help='untimed iterations first (default 2)')
    p.add_argument('--block', type=int, default=2, help='iterations per turn when loops alternate (default 2)')
    p.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')
    p.add_argument('--threads', type=int, default=None, help='torch threads of each loop (default: torch\'s)')
    p.add_argument('--workers', type=int, default=0,
                   help='DataLoader worker processes of each loop (default 0: loading is timed in the step)')
    p.add_argument('--images', type=int, default=32, help='training images decoded into memory (default 32)')
    p.add_argument('--amp', choices=['bf16', 'fp16'], help='our loop with train.py --amp (mixed precision)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--published', metavar='PATH', help='a checkout of the published LMF repository: time its '
                   'training loop too, interleaved with ours, and print the ratio')
    p.add_argument('--out', metavar='FILE.md', help='also write the table to this file')
    return p.parse_args(argv)


def _main(argv=None):
    args = parse_args(argv)
    from engine.errors import CLIError
    for name in ('iters', 'block', 'images'):
        if getattr(args, name) < 1:
            raise CLIError(f'--{name} must be >= 1, got {getattr(args, name)}')
    for name in ('warmup', 'workers'):
        if getattr(args, name) < 0:
            raise CLIError(f'--{name} must be >= 0, got {getattr(args, name)}')
    if args.threads is not None and args.threads < 1:
        raise CLIError(f'--threads must be >= 1, got {args.threads}')
    import torch
    if args.device not in ('cpu', 'cuda'):
        raise CLIError(f'--device must be cpu or cuda, got {args.device!r}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise CLIError('--device cuda: CUDA is not available on this machine')
    for c in args.config:
        if not os.path.isfile(c):
            raise CLIError(f'--config {c}: no such file')
    if args.published is not None and not os.path.isdir(args.published):
        raise CLIError(f'--published {args.published}: no such folder')
    if args.out:        # checked now, not after minutes of timing (its folder is created when written)
        from utils.validate import output_file
        output_file(args.out, '--out', inputs=args.config, create_parent=True)
    from engine.profiling import reference_rates
    from engine.train_benchmark import format_table, run_benchmark
    threads = args.threads or torch.get_num_threads()
    results, data_what = run_benchmark(args.config, iters=args.iters, warmup=args.warmup, device=args.device,
                                       threads=threads, workers=args.workers, published=args.published,
                                       block=args.block, amp=args.amp, seed=args.seed, images=args.images,
                                       report=lambda m: print(m, file=sys.stderr, flush=True))
    table = format_table(results, args.device, threads, args.workers, data_what, args.iters, args.warmup)
    torch.set_num_threads(threads)
    refs = reference_rates(args.device, bf16=False)
    table += (f"\n\nThe machine's best float32 rate, measured right after the loops with the same thread count: "
              f"{refs.best[1]:.1f} GMAC/s ({refs.best[0]}: {refs.describe(refs.best[0])}).\n\n"
              + '\n'.join(refs.lines()))
    print(table)
    if args.out:
        from utils.io import atomic_write
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with atomic_write(args.out, 'w') as f:
            f.write(table + '\n')
    return 0


def main(argv=None):
    from engine.errors import run
    return run(_main, argv, SCRIPT)


if __name__ == '__main__':
    sys.exit(main())
