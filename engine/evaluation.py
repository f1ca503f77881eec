"""Benchmark evaluation behind ``test.py``: per-image PSNR / SSIM under the published protocols.

Protocols (named in every test config as ``protocol``; never mix them in one table):

* ``test-original`` (LIIF / LTE papers, and what LMF compares against): the published MATLAB-bicubic LR
  files for x2-x4 where a dataset has them, on-the-fly PIL-bicubic LR beyond; benchmarks are scored on
  the Y channel with ``scale`` border pixels removed, DIV2K validation in RGB with ``scale + 6`` removed.
* ``test-lmf`` (the LMF repository's own test configs): on-the-fly PIL-bicubic LR at every scale, same
  scoring.

PSNR follows the published ``calc_psnr`` (no 8-bit quantisation of the prediction; Y weights applied
to the difference). SSIM is the standard 11x11 Gaussian (sigma 1.5) SSIM on the BT.601 Y channel of
8-bit images, with the same border removed.
"""
import math
import re
import time

import torch

from utils.metrics import psnr as calc_psnr
from utils.metrics import ssim as calc_ssim

from .inference import Upscaler


def parse_eval_type(eval_type):
    """``'benchmark-4'`` -> ('benchmark', 4); ``'div2k-2.5'`` -> ('div2k', 2.5); None -> (None, None)."""
    if eval_type is None:
        return None, None
    m = re.fullmatch(r'(benchmark|div2k)-(\d+(?:\.\d+)?)', str(eval_type))
    if not m:
        raise ValueError(f"eval_type must look like 'benchmark-4' or 'div2k-2', got {eval_type!r}")
    s = float(m.group(2))
    return m.group(1), int(s) if s.is_integer() else s


def shave_for(dataset, scale):
    if dataset == 'benchmark':
        return math.ceil(scale)
    if dataset == 'div2k':
        return math.ceil(scale) + 6
    return 0


def hr_size(cell):
    """(H, W) of the full target grid from its cell (B, Q, 2) = (2/H, 2/W)."""
    c = cell[0, 0]
    return round(2 / float(c[0])), round(2 / float(c[1]))


class Evaluation:
    """Accumulates per-image rows and their means."""

    def __init__(self):
        self.rows = []

    def add(self, **row):
        self.rows.append(row)

    def mean(self, key):
        vals = [r[key] for r in self.rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else float('nan')


def evaluate(model, loader, eval_type, names=None, bsize=None, window=0, tile=None, tile_overlap=None,
             device='cpu', save=None, progress=None):
    """Evaluate ``model`` on a loader of batch-1 items ``{inp, coord, cell, gt}``.

    Args:
        eval_type: 'benchmark-N' / 'div2k-N' (scoring); N is also the scale of window padding.
        names: image names per index (for the per-image rows).
        save: optional callable ``save(index, name, pred (3, H, W))``.
    Returns an ``Evaluation``.
    """
    dataset, scale = parse_eval_type(eval_type)
    shave = shave_for(dataset, scale or 1)
    upscaler = Upscaler(model, bsize=bsize, tile=tile, tile_overlap=tile_overlap, window=window,
                        published_window=bool(window))
    result = Evaluation()
    for i, batch in enumerate(loader):
        if batch['inp'].shape[0] != 1:
            raise ValueError('test datasets must use batch_size 1 (images differ in size)')
        inp = batch['inp'].to(device)
        H, W = hr_size(batch['cell'])
        gt = batch['gt'].to(device).view(1, H, W, 3).permute(0, 3, 1, 2)
        if device != 'cpu' and torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        pred = upscaler(inp, (H, W))
        if device != 'cpu' and torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
        s = scale if scale is not None else H / inp.shape[-2]
        pred, gt = pred.cpu(), gt.cpu()          # metrics in float64 on the CPU (any device)
        p = float(calc_psnr(pred, gt, dataset=dataset, scale=s)[0])
        q = float(calc_ssim(pred, gt, crop_border=shave)[0]) if min(H, W) - 2 * shave >= 11 else None
        name = names[i] if names is not None and i < len(names) else f'{i + 1:03d}'
        result.add(index=i + 1, name=name, lr_size=f'{inp.shape[-2]}x{inp.shape[-1]}', hr_size=f'{H}x{W}',
                   psnr=p, ssim=q, seconds=elapsed)
        if save is not None:
            save(i, name, pred[0])
        if progress is not None:
            progress(i, result)
    return result
