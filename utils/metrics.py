"""Image quality metrics for super-resolution, in the two protocols papers use.

Inputs are float tensors (B, 3, H, W) (or one image (3, H, W)) with RGB values in [0, 1]; every function
returns one value per image (a tensor (B,), or a 0-d tensor for a single image). Predictions are
expected to be clamped to [0, 1] by the caller, as the published evaluators do.

* LIIF / LTE / LMF protocol, ``psnr(pred, gt, dataset, scale)`` (the published ``calc_psnr``): no
  quantisation; ``'benchmark'`` shaves ``scale`` pixels and uses the Y difference
  ``sum_c diff_c * [65.738, 129.057, 25.064]_c / 256``; ``'div2k'`` shaves ``scale + 6`` pixels, RGB;
  ``None`` is plain RGB PSNR on the whole image (training validation).
* BasicSR / IGConv protocol, ``psnr_y_uint8`` and ``ssim``: quantise to uint8 (clamp, x255, round), Y of
  ITU-R BT.601 with the +16 offset (``rgb_to_y``) on [0, 255], crop ``crop_border`` pixels, PSNR peak 255;
  SSIM with an 11 x 11 Gaussian window (sigma 1.5), C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, averaged
  over the 'valid' region of the map (MATLAB reference / BasicSR), in float64.

The two protocols differ slightly (quantisation, coefficient rounding); never mix them in one table.
"""
import math

import torch
import torch.nn.functional as F

Y_DIFF_COEFFS = (65.738, 129.057, 25.064)      # / 256, the published calc_psnr
Y_COEFFS = (65.481, 128.553, 24.966)           # BT.601 for RGB in [0, 1], output in [0, 255] (+16)


def _batched(x):
    if x.dim() == 3:
        return x.unsqueeze(0), True
    if x.dim() != 4:
        raise ValueError(f'expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(x.shape)}')
    return x, False


def _check_pair(pred, gt):
    if pred.shape != gt.shape:
        raise ValueError(f'prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape')


def _shave(x, border):
    if border <= 0:
        return x
    if 2 * border >= min(x.shape[-2:]):
        raise ValueError(f'cannot remove a border of {border} px from a {x.shape[-2]}x{x.shape[-1]} image')
    return x[..., border:-border, border:-border]


def _finish(values, single):
    return values[0] if single else values


def psnr(pred, gt, dataset=None, scale=1, rgb_range=1):
    """PSNR of the published ``calc_psnr`` (LIIF / LTE / LMF ``test.py``), one value per image.

    Args:
        pred, gt: (B, C, H, W) (or (C, H, W)) with values in [0, rgb_range].
        dataset: None (whole image, RGB), ``'benchmark'`` (shave ``scale``, Y difference) or ``'div2k'``
            (shave ``scale + 6``, RGB).
        scale: the SR scale (shave width); a non-integer scale, which the published code cannot
            evaluate, shaves ``ceil(scale)``.
    """
    _check_pair(pred, gt)
    (pred, single), (gt, _) = _batched(pred), _batched(gt)
    diff = (pred - gt) / rgb_range
    if dataset is not None:
        if dataset == 'benchmark':
            shave = math.ceil(scale)
            if diff.shape[1] > 1:
                coeffs = diff.new_tensor(Y_DIFF_COEFFS).view(1, 3, 1, 1) / 256
                diff = diff.mul(coeffs).sum(dim=1)
        elif dataset == 'div2k':
            shave = math.ceil(scale) + 6
        else:
            raise ValueError(f"unknown PSNR protocol {dataset!r}; use None, 'benchmark' or 'div2k'")
        diff = _shave(diff, shave)
    mse = diff.pow(2).flatten(1).mean(dim=1)
    return _finish(-10 * torch.log10(mse), single)


def rgb_to_y(img):
    """BT.601 luma with offset: ``16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1].

    Args:
        img: (..., 3, H, W) in [0, 1].
    Returns:
        (..., 1, H, W), values in [16, 235] (the [0, 255] scale).
    """
    if img.shape[-3] != 3:
        raise ValueError(f'rgb_to_y expects 3 channels in dim -3, got shape {tuple(img.shape)}')
    w = img.new_tensor(Y_COEFFS).view(3, 1, 1)
    return (img * w).sum(dim=-3, keepdim=True) + 16


def _to_255(x, quantize):
    """(B, C, H, W) float in [0, 1] or uint8 -> float64 on [0, 255] (rounded to integers if quantize)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float64)
    x = x.to(torch.float64).clamp(0, 1) * 255
    return x.round() if quantize else x


def _prepare(pred, gt, crop_border, y_channel, quantize):
    _check_pair(pred, gt)
    (pred, single), (gt, _) = _batched(pred), _batched(gt)
    out = []
    for x in (pred, gt):
        x = _to_255(x, quantize)
        if y_channel and x.shape[1] == 3:
            x = rgb_to_y(x / 255)
        out.append(_shave(x, crop_border))
    return out[0], out[1], single


def psnr_y_uint8(pred, gt, crop_border, y_channel=True):
    """PSNR of the BasicSR protocol: uint8 quantisation, Y (BT.601, +16), border crop, peak 255.

    Args:
        pred, gt: (B, 3, H, W) floats in [0, 1] (or uint8 tensors); ``crop_border`` is usually the scale.
    """
    x, y, single = _prepare(pred, gt, crop_border, y_channel, quantize=True)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return _finish(10 * torch.log10(255.0 ** 2 / mse), single)


def gaussian_kernel(size=11, sigma=1.5, dtype=torch.float64):
    """Normalised 1-D Gaussian (size,), as OpenCV's ``getGaussianKernel``; the SSIM window is its outer
    product with itself."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim_255(x, y, size=11, sigma=1.5):
    """SSIM of float64 images (B, C, H, W) on [0, 255]: mean of the 'valid' SSIM map, per image.

    The Gaussian window is applied separably (rows, then columns), which equals the 2-D window up to
    floating-point rounding.
    """
    if min(x.shape[-2:]) < size:
        raise ValueError(f'SSIM needs images of at least {size}x{size} px after cropping, got {tuple(x.shape[-2:])}')
    b, c = x.shape[:2]
    g = gaussian_kernel(size, sigma, x.dtype).to(x.device)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1).flatten(0, 1).unsqueeze(1)   # (5BC, 1, H, W)
    stack = F.conv2d(stack, g.view(1, 1, size, 1))
    stack = F.conv2d(stack, g.view(1, 1, 1, size))
    mu1, mu2, xx, yy, xy = stack.view(b, 5, c, *stack.shape[-2:]).unbind(1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq, sigma2_sq, sigma12 = xx - mu1_sq, yy - mu2_sq, xy - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return ssim_map.flatten(1).mean(dim=1)   # channels have equal sizes: the mean of per-channel means


def ssim(pred, gt, crop_border, y_channel=True, quantize=True):
    """SSIM of the BasicSR / MATLAB protocol, one value per image.

    Args:
        pred, gt: (B, 3, H, W) floats in [0, 1] (or uint8 tensors).
        crop_border: pixels removed on each side (usually the scale).
        y_channel: compute on Y (BT.601, +16, [0, 255]); otherwise average over the RGB channels.
        quantize: round to uint8 first, as the protocol's ``tensor2img`` does.
    """
    x, y, single = _prepare(pred, gt, crop_border, y_channel, quantize)
    return _finish(ssim_255(x, y), single)
