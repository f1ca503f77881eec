"""Benchmark evaluation behind ``test.py``: per-image scores under registered protocols and metrics.

A test config names its ``protocol`` and optionally its ``metrics`` (``[psnr, ssim]``, the default). Both
are registries: a new protocol is one class registered in ``PROTOCOLS`` (how PSNR and SSIM are computed,
which border is removed), a new metric one function registered in ``TEST_METRICS``
(``fn(protocol, pred, gt, dataset, scale) -> float or None``). Registered protocols (never mix them in one
table):

* ``test-original`` (LIIF / LTE papers, and what LMF compares against): the published MATLAB-bicubic LR
  files for x2-x4 where a dataset has them, on-the-fly PIL-bicubic LR beyond; benchmarks are scored on
  the Y channel with ``scale`` border pixels removed, DIV2K validation in RGB with ``scale + 6`` removed.
  PSNR follows the published ``calc_psnr`` (no 8-bit quantisation of the prediction; Y weights applied
  to the difference); SSIM is the standard 11x11 Gaussian (sigma 1.5) SSIM on the BT.601 Y channel of
  8-bit images, with the same border removed.
* ``test-lmf`` (the LMF repository's own test configs): on-the-fly PIL-bicubic LR at every scale, same
  scoring; ``unspecified`` (a config without ``protocol``): the same scoring.
* ``basicsr`` (the IGConv paper and every BasicSR-based method): MATLAB-bicubic LR files for x2-x4,
  on-the-fly PIL-bicubic LR beyond (x8); the prediction is quantised to uint8 (clamp, x255, round),
  PSNR (peak 255) and SSIM on the BT.601 Y channel *with* the +16 offset, ``crop_border = scale``
  (``utils.metrics.psnr_y_uint8`` / ``ssim``).
"""
import math
import re
import time

import torch

from utils.metrics import psnr as calc_psnr
from utils.metrics import psnr_y_uint8
from utils.metrics import ssim as calc_ssim
from utils.registry import Registry

PROTOCOLS = Registry('protocol', ValueError)
TEST_METRICS = Registry('metric', ValueError)
#: The metrics of a config without ``metrics``.
DEFAULT_METRICS = ('psnr', 'ssim')
#: SSIM's window: images whose scored area is smaller get no SSIM.
SSIM_WINDOW = 11


class NonFinitePrediction(ValueError):
    """The model predicted NaN/inf for an image (``name``); callers add what they know about the cause."""

    def __init__(self, name):
        super().__init__(f'the model predicted non-finite values (NaN/inf) for image {name}; no result reported')
        self.name = name


def check_scores(name, scores):
    """Refuse a non-finite score of one image (it would make the means and summary.json NaN/inf): one line
    naming the image and the metric. Predictions are finite here (``NonFinitePrediction`` comes first)."""
    for metric, value in scores.items():
        if value is None or math.isfinite(value):
            continue
        why = (' (the prediction equals the ground truth in the scored area)' if metric == 'psnr' and value > 0
               else '')
        raise ValueError(f'image {name}: {metric.upper()} is {value}{why}; no mean can be reported, no result written')


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


@PROTOCOLS.register('test-original')
class LIIFProtocol:
    """The LIIF / LTE / LMF scoring: the published ``calc_psnr`` and the 8-bit Y SSIM, with the dataset's border."""

    def border(self, dataset, scale):
        if dataset == 'benchmark':
            return math.ceil(scale)
        if dataset == 'div2k':
            return math.ceil(scale) + 6
        return 0

    def psnr(self, pred, gt, dataset, scale):
        return float(calc_psnr(pred, gt, dataset=dataset, scale=scale)[0])

    def ssim(self, pred, gt, dataset, scale):
        return float(calc_ssim(pred, gt, crop_border=self.border(dataset, scale))[0])


@PROTOCOLS.register('test-lmf')
class LMFProtocol(LIIFProtocol):
    """The LMF repository's configs (PIL-bicubic LR at every scale): the LIIF scoring."""


@PROTOCOLS.register('unspecified')
class UnspecifiedProtocol(LIIFProtocol):
    """A config that names no protocol: the LIIF scoring."""


@PROTOCOLS.register('basicsr')
class BasicSRProtocol(LIIFProtocol):
    """BasicSR: uint8-quantised prediction, Y with +16 offset, border ``ceil(scale)``, PSNR peak 255, SSIM."""

    def border(self, dataset, scale):
        return math.ceil(scale) if dataset is not None else 0

    def psnr(self, pred, gt, dataset, scale):
        return float(psnr_y_uint8(pred, gt, crop_border=self.border(dataset, scale))[0])


@TEST_METRICS.register('psnr')
def psnr_metric(protocol, pred, gt, dataset, scale):
    return protocol.psnr(pred, gt, dataset, scale)


@TEST_METRICS.register('ssim')
def ssim_metric(protocol, pred, gt, dataset, scale):
    """None when the scored area is smaller than SSIM's 11x11 window."""
    if min(gt.shape[-2:]) - 2 * protocol.border(dataset, scale) < SSIM_WINDOW:
        return None
    return protocol.ssim(pred, gt, dataset, scale)


def check_protocol(protocol, metrics=None):
    """Validate a config's ``protocol`` (None / 'unspecified': the LIIF scoring) and ``metrics``;
    returns (protocol name or None, tuple of metric names)."""
    if protocol not in (None, 'unspecified'):
        PROTOCOLS.get(protocol)
    if metrics is None:
        metrics = DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)) or not metrics:
        raise ValueError(f'metrics must be a non-empty list of {", ".join(TEST_METRICS.names())}, got {metrics!r}')
    for m in metrics:
        TEST_METRICS.get(m)
    return (None if protocol in (None, 'unspecified') else protocol), tuple(dict.fromkeys(metrics))


def score(pred, gt, protocol, dataset, scale, metrics=DEFAULT_METRICS):
    """{metric: value or None} for one image pair (1, 3, H, W) in [0, 1] under the protocol named
    ``protocol`` (None: 'unspecified'); every registered metric is a key, those not in ``metrics`` are None."""
    rules = PROTOCOLS.get(protocol or 'unspecified')()
    return {name: (TEST_METRICS.get(name)(rules, pred, gt, dataset, scale) if name in metrics else None)
            for name in TEST_METRICS.names()}


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
        """Mean of the images' values; None when no image has one (e.g. SSIM on images below its window)."""
        vals = [r[key] for r in self.rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None


def evaluate(session, loader, eval_type, names=None, save=None, progress=None, protocol=None, metrics=None):
    """Evaluate an inference session (``engine.inference.Session``: model, window, cell clipping, CMSR) on a
    loader of batch-1 items ``{inp, coord, cell, gt}``.

    Args:
        eval_type: 'benchmark-N' / 'div2k-N' (scoring).
        names: image names per index (for the per-image rows).
        save: optional callable ``save(index, name, pred (3, H, W))``.
        progress: optional callable ``progress(index, evaluation)`` after every image.
        protocol, metrics: scoring (``score``; ``check_protocol``).
    A non-finite prediction raises ``NonFinitePrediction``, a non-finite score ``ValueError`` (``check_scores``),
    before the image is saved or counted.
    Items come from the ``sr-implicit-*`` wrappers (``gt`` (B, Q, 3), ``cell`` (B, Q, 2)) or their
    ``-fast`` variants (``gt`` (B, 3, H, W) images).
    Returns an ``Evaluation``; its ``stats`` are the session's (``engine.render.RenderStats``).
    """
    dataset, scale = parse_eval_type(eval_type)
    protocol, metrics = check_protocol(protocol, metrics)
    result = Evaluation()
    result.stats = session.stats
    for i, batch in enumerate(loader):
        if batch['inp'].shape[0] != 1:
            raise ValueError('test datasets must use batch_size 1 (images differ in size)')
        inp = batch['inp']
        if batch['gt'].dim() == 4:                # -fast wrappers: gt is already an image
            gt = batch['gt']
            H, W = gt.shape[-2:]
        else:
            H, W = hr_size(batch['cell'])
            gt = batch['gt'].view(1, H, W, 3).permute(0, 3, 1, 2)
        pred, elapsed = _timed(session, inp, (H, W))
        s = scale if scale is not None else H / inp.shape[-2]
        pred = pred.cpu()                        # metrics in float64 on the CPU (any device)
        name = names[i] if names is not None and i < len(names) else f'{i + 1:03d}'
        if not bool(torch.isfinite(pred).all()):
            raise NonFinitePrediction(name)
        scores = score(pred, gt.cpu(), protocol, dataset, s, metrics)
        check_scores(name, scores)
        result.add(index=i + 1, name=name, lr_size=f'{inp.shape[-1]}x{inp.shape[-2]}', hr_size=f'{W}x{H}',
                   **scores, seconds=elapsed)
        if save is not None:
            save(i, name, pred[0])
        if progress is not None:
            progress(i, result)
    return result


def _timed(session, inp, size):
    """The session's prediction and its wall time (accelerators synchronised)."""
    sync = torch.cuda.synchronize if str(session.device).startswith('cuda') else (lambda: None)
    sync()
    t = time.perf_counter()
    pred = session(inp, size)
    sync()
    return pred, time.perf_counter() - t
