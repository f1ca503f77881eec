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

* ``basicsr`` (the IGConv paper and every BasicSR-based method): MATLAB-bicubic LR files for x2-x4,
  on-the-fly PIL-bicubic LR beyond (x8); the prediction is quantised to uint8 (clamp, x255, round),
  PSNR (peak 255) and SSIM on the BT.601 Y channel *with* the +16 offset, ``crop_border = scale``
  (``utils.metrics.psnr_y_uint8`` / ``ssim``).

A test config names its ``protocol`` and optionally its ``metrics`` (``[psnr, ssim]``, the default);
``score`` computes them.
"""
import math
import re
import time

import torch

from utils.metrics import psnr as calc_psnr
from utils.metrics import psnr_y_uint8
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
    if s < 1:
        raise ValueError(f'eval_type {eval_type!r}: the scale must be >= 1')
    return m.group(1), int(s) if s.is_integer() else s


PROTOCOLS = ('test-original', 'test-lmf', 'basicsr')
METRICS = ('psnr', 'ssim')


def check_protocol(protocol, metrics=None):
    """Validate a config's ``protocol`` (None / 'unspecified': the LIIF ``calc_psnr`` scoring) and ``metrics``;
    returns (protocol or None, tuple of metric names)."""
    if protocol in (None, 'unspecified'):
        protocol = None
    elif protocol not in PROTOCOLS:
        raise ValueError(f'protocol must be one of {", ".join(PROTOCOLS)}, got {protocol!r}')
    if metrics is None:
        metrics = METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)) or not metrics or any(m not in METRICS for m in metrics):
        raise ValueError(f'metrics must be a non-empty list of {", ".join(METRICS)}, got {metrics!r}')
    return protocol, tuple(dict.fromkeys(metrics))


def score(pred, gt, protocol, dataset, scale, metrics=METRICS):
    """{metric: value or None} for one image pair (1, 3, H, W) in [0, 1] under ``protocol``.

    ``basicsr``: uint8-quantised prediction, Y with +16 offset, border ``ceil(scale)``, PSNR peak 255, SSIM;
    otherwise the LIIF ``calc_psnr`` for ``dataset`` ('benchmark' / 'div2k' / None) and the 8-bit Y SSIM
    with the dataset's shave. SSIM is None when the cropped image is smaller than its 11x11 window.
    """
    H, W = gt.shape[-2:]
    if protocol == 'basicsr':
        shave = math.ceil(scale) if dataset is not None else 0
        psnr_fn = lambda: float(psnr_y_uint8(pred, gt, crop_border=shave)[0])   # noqa: E731
    else:
        shave = shave_for(dataset, scale)
        psnr_fn = lambda: float(calc_psnr(pred, gt, dataset=dataset, scale=scale)[0])   # noqa: E731
    out = {'psnr': None, 'ssim': None}
    if 'psnr' in metrics:
        out['psnr'] = psnr_fn()
    if 'ssim' in metrics and min(H, W) - 2 * shave >= 11:
        out['ssim'] = float(calc_ssim(pred, gt, crop_border=shave)[0])
    return out


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
             device='cpu', save=None, progress=None, clip_cells=True, max_train_scale=None, cmsr_tables=None,
             cmsr_exact_grid=False, protocol=None, metrics=None):
    """Evaluate ``model`` on a loader of batch-1 items ``{inp, coord, cell, gt}``.

    Args:
        eval_type: 'benchmark-N' / 'div2k-N' (scoring); N is also the scale of window padding.
        names: image names per index (for the per-image rows).
        save: optional callable ``save(index, name, pred (3, H, W))``.
        clip_cells: test-time cell clipping by ``max(scale / max_train_scale, 1)`` (False: the LIIF
            repository protocol, no clipping); ``max_train_scale`` overrides the model's.
        cmsr_tables / cmsr_exact_grid: CMSR rendering (``engine.inference.Upscaler``).
        protocol, metrics: scoring (``score``; ``check_protocol``): 'basicsr' quantises to uint8 and uses Y
            with +16; anything else the LIIF ``calc_psnr``.
    Items come from the ``sr-implicit-*`` wrappers (``gt`` (B, Q, 3), ``cell`` (B, Q, 2)) or their
    ``-fast`` variants (``gt`` (B, 3, H, W) images).
    Returns an ``Evaluation``; its ``stats`` are the renderer's (``engine.render.RenderStats``).
    """
    dataset, scale = parse_eval_type(eval_type)
    protocol, metrics = check_protocol(protocol, metrics)
    upscaler = Upscaler(model, bsize=bsize, tile=tile, tile_overlap=tile_overlap, window=window,
                        published_window=bool(window), clip_cells=clip_cells, max_train_scale=max_train_scale,
                        cmsr_tables=cmsr_tables, cmsr_exact_grid=cmsr_exact_grid)
    result = Evaluation()
    result.stats = upscaler.stats
    for i, batch in enumerate(loader):
        if batch['inp'].shape[0] != 1:
            raise ValueError('test datasets must use batch_size 1 (images differ in size)')
        inp = batch['inp'].to(device)
        if batch['gt'].dim() == 4:                # -fast wrappers: gt is already an image
            gt = batch['gt'].to(device)
            H, W = gt.shape[-2:]
        else:
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
        scores = score(pred, gt, protocol, dataset, s, metrics)
        p, q = scores['psnr'], scores['ssim']
        name = names[i] if names is not None and i < len(names) else f'{i + 1:03d}'
        result.add(index=i + 1, name=name, lr_size=f'{inp.shape[-2]}x{inp.shape[-1]}', hr_size=f'{H}x{W}',
                   psnr=p, ssim=q, seconds=elapsed)
        if save is not None:
            save(i, name, pred[0])
        if progress is not None:
            progress(i, result)
    return result
