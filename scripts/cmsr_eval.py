"""PSNR, rendered fraction and decoder time of an LM model with and without CMSR on benchmark sets.

    python -m scripts.cmsr_eval --model save/pretrained_models/edsr-b_lm-liif.pth \\
        --cmsr save/pretrained_models/edsr-b_lm-liif_cmsr.yaml --sets Set5,Set14 --scales 8,12

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


def evaluate(model, data, scale, tables, repeats):
    up = Upscaler(model, cmsr_tables=tables)
    scores, dec = [], 0.0
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            inp = item['inp'].unsqueeze(0)
            H, W = round(2 / float(item['cell'][0, 0])), round(2 / float(item['cell'][0, 1]))
            gt = item['gt'].view(1, H, W, 3).permute(0, 3, 1, 2)
            pred = up(inp, (H, W))
            scores.append(float(psnr(pred, gt, dataset='benchmark', scale=scale)[0]))
            total = time_fn(lambda: up(inp, (H, W)), repeats=repeats, warmup=0)
            enc = time_fn(lambda: model.encoder(normalise(inp)), repeats=repeats, warmup=0)
            dec += max(total - enc, 0.0)
    stats = up.stats
    fraction, share = (stats.fraction, stats.render_share) if tables is not None else (1.0, 1.0)
    return sum(scores) / len(scores), fraction, share, dec


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
    args = p.parse_args(argv)
    model = load_model(args.model, 'cpu', 'cmsr_eval.py')
    from engine import cmsr
    tables = cmsr.load_tables(args.cmsr, model.capabilities)
    print('| set | scale | PSNR (dB) | PSNR with CMSR | rendered fraction | render-MLP queries | decoder s '
          '| decoder s with CMSR |')
    print('|---|---|---|---|---|---|---|---|')
    for name in args.sets.split(','):
        base = datasets.make({'name': 'image-folder', 'args': {'root_path': os.path.join(args.root, name, 'HR')}})
        for s in (int(v) for v in args.scales.split(',')):
            data = datasets.make({'name': 'sr-implicit-downsampled', 'args': {'scale_min': s}}, args={'dataset': base})
            p0, _, _, d0 = evaluate(model, data, s, None, args.repeats)
            p1, frac, share, d1 = evaluate(model, data, s, tables, args.repeats)
            print(f'| {name} | x{s} | {p0:.2f} | {p1:.2f} | {frac:.3f} | {share:.3f} | {d0:.2f} | {d1:.2f} |',
                  flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
