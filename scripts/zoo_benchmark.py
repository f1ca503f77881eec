"""Cost of every published IGConv architecture (the model zoo): parameters, MACs, seconds and peak memory.

    python -m scripts.zoo_benchmark                                  # all architectures, x4, 320x180 input
    python -m scripts.zoo_benchmark --archs EDSRIGPlus,SMFANetIGPlus --input 160x90 --scale 2 --threads 2
    python -m scripts.zoo_benchmark --no-time                        # parameters and MACs only (seconds)

Each row builds the architecture with the ``network_g`` arguments of its published option file (random
weights: they do not change the cost) and runs its published test-time forward (``model(x, scale)``: plain,
window padding or 200-pixel tiles) on a random WIDTHxHEIGHT input. MACs are counted on the meta device
(``FlopCounterMode``: matrix products, convolutions and attention products; MambaIR's selective-scan
recurrence is element-wise and not counted). Seconds: median of ``--repeats`` runs after ``--warmup``
(the memory run before them warms up too); GMAC/s: counted MACs over those seconds, and its share of the
machine's best float32 rate measured at the start of the same run (``engine.profiling.reference_rates``:
a GEMM, a oneDNN convolution and MLP-shaped linears, the fastest named); peak memory: the resident-set
growth of one run (engine/profiling.py). Writes zoo_benchmark.md and .csv to --out.
"""
import argparse
import csv
import os
import sys
import time

if not __package__:
    sys.exit('zoo_benchmark.py: error: run it from the repository root as a module: python -m scripts.zoo_benchmark')

import torch  # noqa: E402

import models  # noqa: E402
from engine import cli  # noqa: E402
from engine.errors import run  # noqa: E402
from engine.profiling import count_macs, peak_memory, reference_rates, time_fn  # noqa: E402
from models.zoo import PUBLISHED_OPTIONS  # noqa: E402
from models.zoo.mambair import PUBLISHED_OPTION_FILES as MAMBAIR_FILES  # noqa: E402
from utils import validate  # noqa: E402
from utils.io import atomic_write  # noqa: E402

#: Row name -> (registered architecture, network_g arguments of the published option file).
ROWS = {name: (name, opts) for name, opts in PUBLISHED_OPTIONS.items()}
ROWS['MambaIR-Light'] = ('MambaIR', MAMBAIR_FILES['MambaIR_Light_IGConvPlus_DIV2K'])
#: Largest input (pixels) accepted, so that a typo cannot start an hour-long run.
MAX_PIXELS = 1920 * 1080


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--archs', default=','.join(ROWS), help=f'comma list of rows (default: all: {", ".join(ROWS)})')
    p.add_argument('--input', default='320x180', help='input size WIDTHxHEIGHT (default 320x180)')
    p.add_argument('--scale', type=int, default=4, help='integer scale (default 4)')
    p.add_argument('--repeats', type=int, default=1, help='timed runs per row (default 1)')
    p.add_argument('--warmup', type=int, default=0, help='untimed runs before timing (default 0)')
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N or mps (default cpu)')
    p.add_argument('--no-time', action='store_true', help='count parameters and MACs only')
    p.add_argument('--out', default='outputs/zoo_benchmark', help='folder for zoo_benchmark.md / .csv')
    cli.add_threads_arg(p)
    return p.parse_args(argv)


def check_args(args):
    archs = [a.strip() for a in args.archs.split(',') if a.strip()]
    unknown = [a for a in archs if a not in ROWS]
    if unknown or not archs:
        raise validate.InputError(f'--archs: unknown row {unknown[0] if unknown else "(empty)"!r}; '
                                 f'choose from {", ".join(ROWS)}')
    h, w = validate.size_text(args.input, '--input', order='WxH')
    if w * h > MAX_PIXELS:
        raise validate.InputError(f'--input {w}x{h}: more than {MAX_PIXELS} pixels; this benchmark is for '
                                 f'representative sizes')
    validate.integer(args.scale, '--scale (the published models are x2-x4, x8 for S8)', 2, 8)
    validate.integer(args.repeats, '--repeats', 1, 100)
    validate.integer(args.warmup, '--warmup', 0, 100)
    return archs, (h, w)


def measure(row, size, args):
    arch, opts = ROWS[row]
    spec = {'name': arch, 'args': dict(opts)}
    h, w = size
    with torch.device('meta'):
        meta_model = models.make(spec).eval().requires_grad_(False)
    macs = count_macs(lambda: meta_model(torch.zeros(1, 3, h, w, device='meta'), args.scale))
    result = {'row': row, 'arch': arch, 'params': sum(p.numel() for p in meta_model.parameters()),
              'gmacs': macs / 1e9, 'seconds': None, 'peak_mb': None, 'forward': meta_model.TEST_FORWARD}
    if args.no_time:
        return result
    model = models.make(spec).eval().requires_grad_(False).to(args.device)
    x = torch.rand(1, 3, h, w, device=args.device)
    with torch.no_grad():
        peak = peak_memory(lambda: model(x, args.scale), args.device)
    result['peak_mb'] = None if peak is None else peak / 2 ** 20
    result['seconds'] = time_fn(lambda: model(x, args.scale), args.device, repeats=args.repeats,
                                warmup=args.warmup)
    return result


def fmt(v, spec):
    return '-' if v is None else format(v, spec)


def main(argv=None):
    args = parse_args(argv)
    archs, size = check_args(args)
    args.device = str(cli.choose_device(args.device, script='zoo_benchmark.py'))
    cli.apply_threads(args)
    h, w = size
    header = (f'IGConv zoo, x{args.scale} on a {w}x{h} input, {args.device}, {torch.get_num_threads()} thread(s), '
              f'torch {torch.__version__}, {time.strftime("%Y-%m-%d")}, load average at start {os.getloadavg()[0]:.1f} '
              f'on {os.cpu_count()} cores')
    print(header, flush=True)
    best = None
    if not args.no_time:
        refs = reference_rates(args.device, bf16=False)
        best = refs.best[1]
        header += (f'; machine\'s best float32 rate measured now: {best:.1f} GMAC/s ({refs.best[0]}: '
                   f'{refs.describe(refs.best[0])})')
        print('\n'.join(refs.lines()), flush=True)
    lines = ['| model | test forward | params (M) | GMACs | seconds | GMAC/s (share of best) | peak memory (MB) |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    rows = []
    for row in archs:
        r = measure(row, size, args)
        r['gmac_per_s'] = None if r['seconds'] is None else r['gmacs'] / r['seconds']
        r['share_of_best'] = None if best is None or r['gmac_per_s'] is None else r['gmac_per_s'] / best
        rows.append(r)
        rate = '-' if r['gmac_per_s'] is None else f'{r["gmac_per_s"]:.1f} ({100 * r["share_of_best"]:.0f}%)'
        line = (f'| {row} | {r["forward"]} | {r["params"] / 1e6:.2f} | {r["gmacs"]:.0f} | '
                f'{fmt(r["seconds"], ".1f")} | {rate} | {fmt(r["peak_mb"], ".0f")} |')
        lines.append(line)
        print(line, flush=True)
    os.makedirs(args.out, exist_ok=True)
    with atomic_write(os.path.join(args.out, 'zoo_benchmark.md'), mode='w') as f:
        f.write('\n'.join([header, ''] + lines) + '\n')
    with atomic_write(os.path.join(args.out, 'zoo_benchmark.csv'), mode='w') as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    print(f'wrote {args.out}/zoo_benchmark.md and .csv')


if __name__ == '__main__':
    sys.exit(run(main, script='zoo_benchmark.py'))
