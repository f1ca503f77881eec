"""Metrics: PSNR (published calc_psnr and BasicSR protocol) and SSIM against independent references."""
import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from utils.image import load_array
from utils.imresize import imresize
from utils.metrics import psnr, psnr_y_uint8, rgb_to_y, ssim

from .conftest import need


# ----------------------------------------------------------------------------- independent references

def ref_y(rgb_uint8_hwc):
    """MATLAB rgb2ycbcr luma (not rounded) on [0, 255] from a uint8 HWC array."""
    x = rgb_uint8_hwc.astype(np.float64) / 255
    return 16 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def ref_ssim_2d(a, b):
    """SSIM of two float64 2-D arrays on [0, 255]: explicit 11x11 Gaussian window, 'valid' region."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(x):
        return np.einsum('ijkl,kl->ij', sliding_window_view(x, (11, 11)), window)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return m.mean()


def to_hwc_uint8(t):
    return np.round(np.clip(t.permute(1, 2, 0).double().numpy(), 0, 1) * 255).astype(np.uint8)


def image_pairs():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 10, generator=g), size=(40, 36),
                                             mode='bicubic', align_corners=False).clamp(0, 1)[0]
    noisy = (smooth + 0.05 * torch.randn(smooth.shape, generator=g)).clamp(0, 1)
    rand_a, rand_b = torch.rand(3, 30, 33, generator=g), torch.rand(3, 30, 33, generator=g)
    shifted = torch.roll(smooth, 1, dims=-1)
    return [(noisy, smooth), (rand_a, rand_b), (shifted, smooth), (smooth * 0.8, smooth)]


# ----------------------------------------------------------------------------- SSIM

@pytest.mark.parametrize('pair', range(4))
@pytest.mark.parametrize('crop', [0, 3])
def test_ssim_matches_reference_y(pair, crop):
    pred, gt = image_pairs()[pair]
    a, b = ref_y(to_hwc_uint8(pred)), ref_y(to_hwc_uint8(gt))
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    ours = ssim(pred, gt, crop_border=crop).item()
    assert abs(ours - ref_ssim_2d(a, b)) < 1e-6           # measured: ~1e-15


def test_ssim_rgb_mode_and_batches():
    pred, gt = image_pairs()[0]
    a, b = to_hwc_uint8(pred).astype(np.float64), to_hwc_uint8(gt).astype(np.float64)
    ref = np.mean([ref_ssim_2d(a[..., c], b[..., c]) for c in range(3)])
    assert abs(ssim(pred, gt, 0, y_channel=False).item() - ref) < 1e-6
    batch = ssim(torch.stack([pred, gt]), torch.stack([gt, gt]), 2)
    assert batch.shape == (2,) and abs(batch[0].item() - ssim(pred, gt, 2).item()) < 1e-12
    assert abs(batch[1].item() - 1) < 1e-12


def test_ssim_identity_and_uint8_input():
    x = image_pairs()[0][1]
    assert ssim(x, x, 4).item() == pytest.approx(1.0, abs=1e-12)
    u = torch.from_numpy(to_hwc_uint8(x)).permute(2, 0, 1)
    assert ssim(u, u, 0).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        ssim(x[:, :8, :8], x[:, :8, :8], 0)


# ----------------------------------------------------------------------------- PSNR

def test_psnr_plain_matches_formula():
    pred, gt = image_pairs()[0]
    direct = -10 * math.log10(((pred.double() - gt.double()) ** 2).mean().item())
    assert psnr(pred, gt).item() == pytest.approx(direct, abs=1e-4)
    values = psnr(torch.stack([pred, gt * 0.9]), torch.stack([gt, gt]))
    assert values.shape == (2,) and values[0].item() == pytest.approx(direct, abs=1e-4)


def test_psnr_benchmark_and_div2k_protocols():
    pred, gt = image_pairs()[0]
    d = (pred - gt).double()
    y = (d[0] * 65.738 + d[1] * 129.057 + d[2] * 25.064) / 256
    expect = -10 * math.log10((y[4:-4, 4:-4] ** 2).mean().item())
    assert psnr(pred[None], gt[None], 'benchmark', 4).item() == pytest.approx(expect, abs=1e-4)
    expect = -10 * math.log10((d[:, 9:-9, 9:-9] ** 2).mean().item())
    assert psnr(pred[None], gt[None], 'div2k', 3).item() == pytest.approx(expect, abs=1e-4)
    # rgb_range scales the difference; no quantisation happens
    assert psnr(pred * 255, gt * 255, 'div2k', 3, rgb_range=255).item() == pytest.approx(expect, abs=1e-3)
    assert psnr(pred + 0.001, gt).item() != psnr(pred, gt).item()
    with pytest.raises(ValueError):
        psnr(pred, gt, 'urban')
    with pytest.raises(ValueError):
        psnr(pred, gt[:, 1:])


def test_psnr_y_uint8_matches_formula():
    pred, gt = image_pairs()[0]
    a, b = ref_y(to_hwc_uint8(pred))[2:-2, 2:-2], ref_y(to_hwc_uint8(gt))[2:-2, 2:-2]
    expect = 10 * math.log10(255 ** 2 / ((a - b) ** 2).mean())
    assert psnr_y_uint8(pred, gt, 2).item() == pytest.approx(expect, abs=1e-9)
    rgb = to_hwc_uint8(pred).astype(np.float64) - to_hwc_uint8(gt).astype(np.float64)
    expect = 10 * math.log10(255 ** 2 / (rgb ** 2).mean())
    assert psnr_y_uint8(pred, gt, 0, y_channel=False).item() == pytest.approx(expect, abs=1e-9)


def test_rgb_to_y_range():
    black, white = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    assert torch.allclose(rgb_to_y(black), torch.tensor(16.0))
    assert torch.allclose(rgb_to_y(white), torch.tensor(235.0))
    assert rgb_to_y(torch.rand(5, 3, 4, 6)).shape == (5, 1, 4, 6)


def test_protocols_agree_on_real_images(data_dir):
    """Set5 x4 bicubic (float, unquantised): LIIF Y-difference PSNR vs BasicSR uint8 PSNR."""
    root = need(data_dir / 'benchmark' / 'Set5', 'Set5')
    gaps = []
    for name in ['baby', 'bird', 'butterfly', 'head', 'woman']:
        hr, _ = load_array(root / 'HR' / f'{name}.png')
        lr, _ = load_array(root / 'LR_bicubic' / 'X4' / f'{name}x4.png')
        lr_t = torch.from_numpy(lr).permute(2, 0, 1).float() / 255
        gt = torch.from_numpy(hr).permute(2, 0, 1)[:, :lr.shape[0] * 4, :lr.shape[1] * 4].float() / 255
        pred = imresize(lr_t, scale=4).clamp(0, 1)
        gaps.append(psnr(pred[None], gt[None], 'benchmark', 4).item() - psnr_y_uint8(pred, gt, 4).item())
    assert abs(np.mean(gaps)) < 0.02 and max(map(abs, gaps)) < 0.05   # measured: mean +0.0016 dB
