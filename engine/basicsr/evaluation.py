"""BasicSR validation / testing of one dataset (``MSRModel.nondist_validation``): per image the test-time
forward, the prediction quantised as BasicSR's ``tensor2img`` (clamp to [0, 1], x255 in float32, round
half to even, uint8), optionally saved, and the metrics of ``val.metrics`` on the uint8 images with
``crop_border`` = the dataset's scale: PSNR (peak 255) and SSIM (11 x 11 Gaussian, sigma 1.5) on the
BT.601 Y channel with the +16 offset when ``test_y_channel`` (``utils.metrics``), else on RGB. The
dataset's value is the mean over its images; the log lines are BasicSR's::

    Validation Set5X2
    	 # psnr: 38.1234	Best: 38.1234 @ 5000 iter
    	 # ssim: 0.9612	Best: 0.9612 @ 5000 iter
"""
import math
import os

import torch

from utils.image import save_image
from utils.metrics import psnr_y_uint8, ssim

from ..run_setup import TrainingDiverged


def quantize(img):
    """(3, H, W) float -> uint8 (3, H, W), exactly as BasicSR's ``tensor2img`` (float32 arithmetic)."""
    return (img.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)


def image_metric(kind, sr, gt, crop, y_channel):
    """One metric of uint8 images (3, H, W), as BasicSR's ``calculate_psnr`` / ``calculate_ssim``."""
    fn = psnr_y_uint8 if kind == 'psnr' else ssim
    return float(fn(sr[None], gt[None], crop_border=crop, y_channel=y_channel)[0])


class Best:
    """Best value and iteration of each (dataset, metric), as BasicSR's ``best_metric_results``."""

    def __init__(self):
        self.table = {}

    def update(self, dataset, metric, value, label):
        val, at = self.table.get((dataset, metric.name), (-math.inf if metric.higher else math.inf, -1))
        if value >= val if metric.higher else value <= val:
            val, at = value, label
        self.table[dataset, metric.name] = (val, at)
        return val, at


@torch.no_grad()
def evaluate(forward, loader, metrics, device, save=None, pbar=False):
    """{metric name: mean over the dataset}. ``forward(lq, scale)`` is the test-time forward; ``save(name,
    sr_uint8)`` is called per image when given. A non-finite prediction raises ``TrainingDiverged``."""
    sums = {m.name: 0.0 for m in metrics}
    bar = None
    if pbar:
        from tqdm import tqdm
        bar = tqdm(total=len(loader), unit='image')
    count = 0
    try:
        for batch in loader:
            scale, name = int(batch['scale'][0]), batch['name'][0]
            out = forward(batch['inp'].to(device), scale)
            if not bool(torch.isfinite(out).all()):
                raise TrainingDiverged(f'the model predicts non-finite values for {name}')
            sr, gt = quantize(out[0]), quantize(batch['gt'][0])
            if save is not None:
                save(name, sr)
            for m in metrics:
                sums[m.name] += image_metric(m.kind, sr, gt, scale, m.y_channel)
            count += 1
            if bar is not None:
                bar.update(1)
                bar.set_description(f'Test {name}')
    finally:
        if bar is not None:
            bar.close()
    return {k: v / max(count, 1) for k, v in sums.items()}


def image_saver(folder, suffix, per_image_folder=False):
    """``save(name, sr_uint8)`` writing ``<folder>/<name>_<suffix>.png`` (test) or
    ``<folder>/<name>/<name>_<suffix>.png`` (training validation): BasicSR's visualization names."""
    def save(name, sr):
        target = os.path.join(folder, name) if per_image_folder else folder
        os.makedirs(target, exist_ok=True)
        save_image(os.path.join(target, f'{name}_{suffix}.png'), sr.float() / 255)
    return save


def note_crop_border(metrics, log):
    """Say that a ``crop_border`` of the file is replaced by each dataset's scale (as the published models do)."""
    for m in metrics:
        if m.crop_border is not None:
            log(f'val.metrics.{m.name}.crop_border {m.crop_border} is replaced by each dataset\'s scale, as the '
                f'published model classes do')


def report(dataset, values, metrics, best, label, log, tb=None, step=None):
    """Log BasicSR's validation lines for one dataset (and its TensorBoard scalars)."""
    text = f'Validation {dataset}\n'
    for m in metrics:
        val, at = best.update(dataset, m, values[m.name], label)
        text += f'\t # {m.name}: {values[m.name]:.4f}\tBest: {val:.4f} @ {at} iter\n'
        if tb is not None:
            tb.add_scalar(f'metrics/{dataset}/{m.name}', values[m.name], step)
    log(text)
