"""PSNR, rendered fraction and decoder time of an LM model with and without CMSR on benchmark sets.

    python -m scripts.cmsr_eval --model save/pretrained_models/edsr-b_lm-liif.pth \\
        --cmsr save/pretrained_models/edsr-b_lm-liif_cmsr.yaml --sets Set5,Set14 --scales 8,12

One row per set, scale and CMSR level grid (--cmsr-grid: exact, published or both; engine/cmsr.py). The
"border / interior" column is the largest |CMSR - plain| in 8-bit levels (rounded outputs) over the last 8
rows and columns of each image, and over the rest: the published grid leaves flat blocks along the right and
bottom borders.

LR images are made on the fly by PIL bicubic from the HR images in <root>/<set>/HR (the LIIF/LTE protocol
beyond x4); PSNR on Y with a border of `scale` pixels removed. Decoder time = upscaling time minus the
encoder's time on the same input (medians of --repeats runs per image, summed over the set).
Prints a markdown table.
"""
import argparse
import os
import sys

if not __package__:   # run as a file: the project's packages are importable only from the repository root
    sys.exit('cmsr_eval.py: error: run it from the repository root as a module: python -m scripts.cmsr_eval ...')

import torch  # noqa: E402

import datasets  # noqa: E402
from engine.inference import Upscaler, normalise  # noqa: E402
from engine.profiling import time_fn  # noqa: E402
from utils.metrics import psnr  # noqa: E402


def evaluate(model, data, scale, tables, repeats, exact_grid=True, plain=None, bar=None):
    """(mean PSNR, rendered fraction, render share, decoder seconds, predictions, (border, interior) max
    |difference| from ``plain`` in 8-bit levels or None)."""
    up = Upscaler(model, cmsr_tables=tables, cmsr_exact_grid=exact_grid)
    scores, dec, preds, border, interior = [], 0.0, [], 0.0, 0.0
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            inp = item['inp'].unsqueeze(0)
            H, W = round(2 / float(item['cell'][0, 0])), round(2 / float(item['cell'][0, 1]))
            gt = item['gt'].view(1, H, W, 3).permute(0, 3, 1, 2)
            pred = up(inp, (H, W))
            scores.append(float(psnr(pred, gt, dataset='benchmark', scale=scale)[0]))
            preds.append(pred)
            if plain is not None:
                d = ((pred * 255).round() - (plain[i] * 255).round()).abs()
                border = max(border, d[..., -8:, :].max().item(), d[..., :, -8:].max().item())
                interior = max(interior, d[..., :-8, :-8].max().item())
            total = time_fn(lambda: up(inp, (H, W)), repeats=repeats, warmup=0)
            enc = time_fn(lambda: model.encoder(normalise(inp)), repeats=repeats, warmup=0)
            dec += max(total - enc, 0.0)
            if bar is not None:
                bar.update(1)
    stats = up.stats
    fraction, share = (stats.fraction, stats.render_share) if tables is not None else (1.0, 1.0)
    return (sum(scores) / len(scores), fraction, share, dec, preds,
            (border, interior) if plain is not None else None)


def main(argv=None):
    from engine.errors import run
    return run(_main, argv, 'cmsr_eval.py')


def _main(argv=None):
    from engine.inference import load_model
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='LM checkpoint (a bare name is looked up in save/pretrained_models/)')
    p.add_argument('--cmsr', required=True, help='Scale2Mod table YAML')
    p.add_argument('--root', default='load/benchmark', help='folder holding <set>/HR (default load/benchmark)')
    p.add_argument('--sets', default='Set5,Set14')
    p.add_argument('--scales', default='8,12')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--cmsr-grid', choices=('exact', 'published', 'both'), default='both',
                   help='CMSR level grids to evaluate (default both: one row each)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (stderr)')
    args = p.parse_args(argv)
    model = load_model(args.model, 'cpu', 'cmsr_eval.py')
    from engine import cmsr
    tables = cmsr.load_tables(args.cmsr, model.capabilities)
    grids = ('exact', 'published') if args.cmsr_grid == 'both' else (args.cmsr_grid,)
    sets = []
    for name in args.sets.split(','):
        base = datasets.make({'name': 'image-folder', 'args': {'root_path': os.path.join(args.root, name, 'HR')}})
        sets.append((name, base))
    scales = [int(v) for v in args.scales.split(',')]
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(b) for _, b in sets) * len(scales) * (1 + len(grids)), unit='img', leave=False,
                   dynamic_ncols=True)
    print('| set | scale | CMSR grid | PSNR (dB) | PSNR with CMSR | rendered fraction | render-MLP queries '
          '| decoder s | decoder s with CMSR | CMSR - plain, border / interior (levels) |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    try:
        for name, base in sets:
            for s in scales:
                data = datasets.make({'name': 'sr-implicit-downsampled', 'args': {'scale_min': s}},
                                     args={'dataset': base})
                p0, _, _, d0, plain, _ = evaluate(model, data, s, None, args.repeats, bar=bar)
                for grid in grids:
                    p1, frac, share, d1, _, (b, i) = evaluate(model, data, s, tables, args.repeats,
                                                              grid == 'exact', plain, bar)
                    line = (f'| {name} | x{s} | {grid} | {p0:.2f} | {p1:.2f} | {frac:.3f} | {share:.3f} | {d0:.2f} '
                            f'| {d1:.2f} | {b:.0f} / {i:.0f} |')
                    if bar is not None:
                        bar.write(line)
                    else:
                        print(line, flush=True)
    finally:
        if bar is not None:
            bar.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
