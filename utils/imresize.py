"""Bicubic resizing: PIL's (the published ``resize_fn``) and MATLAB's ``imresize``.

Two different bicubic resizers matter for super-resolution numbers:

* ``pil_bicubic_resize`` is LIIF / LTE / LMF's ``resize_fn`` (and the IGConv training LR): float image
  -> uint8 by ``mul(255)`` and a truncating cast (torchvision ``ToPILImage``) -> PIL ``resize(BICUBIC)``
  (antialiased, a = -0.5) -> float / 255. It makes the LR of implicit downsampling datasets.
* ``imresize`` is MATLAB's ``imresize(..., 'bicubic')``: cubic kernel a = -0.5, widened by 1/scale when
  downscaling (antialiasing), symmetric border padding, MATLAB's index and weight computation, one 1-D
  pass per dimension, the dimension with the smaller scale first (rows first on ties). On uint8 data it
  rounds to uint8 after each pass, as MATLAB stores the intermediate in the input's class; that is what
  made the published benchmark LR files ``LR_bicubic/X2..X4`` (reproduced bit-exactly). The published
  X8 files instead match the same resize rounded once at the end (``round_each_pass=False``).

Images are tensors whose last two dimensions are (H, W): (C, H, W) or (B, C, H, W).
"""
import math

import numpy as np
import torch
from PIL import Image


# ----------------------------------------------------------------------------- PIL (published resize_fn)

def torchvision_resize_size(h, w, size):
    """Output (h, w) of torchvision's ``Resize(size)``: an int sets the shorter side, keeping the aspect.

    The longer side is ``int(size * long / short)``. For the square crops the published code resizes,
    an int therefore gives a ``size`` x ``size`` square. A pair is taken as (h, w).
    """
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f'size must be an int or (h, w), got {size!r}')
        return int(size[0]), int(size[1])
    size = int(size)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def pil_bicubic_resize(img, size):
    """Resize like the published ``resize_fn``: uint8 PIL bicubic (antialiased), bit-exact.

    Args:
        img: float (C, H, W) with C in {1, 3} (or a batch (B, C, H, W)), values in [0, 1]; values
            k/255 (as loaded by ``utils.image``) pass through uint8 unchanged.
        size: (h, w), or an int that sets the shorter side like torchvision's ``Resize`` (a square
            for square inputs, which is how the published code uses it).
    Returns:
        float32 tensor (C, h, w) with values k/255. The input is truncated to uint8 first
        (``mul(255)`` then a truncating cast, after clamping to [0, 1]), exactly as ``ToPILImage``.
    """
    if img.dim() == 4:
        return torch.stack([pil_bicubic_resize(x, size) for x in img])
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f'pil_bicubic_resize expects (C, H, W) with C in (1, 3), got {tuple(img.shape)}')
    h, w = torchvision_resize_size(img.shape[-2], img.shape[-1], size)
    arr = img.detach().float().cpu().clamp(0, 1).mul(255).to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    out = np.asarray(pil.resize((w, h), Image.BICUBIC))
    if out.ndim == 2:
        out = out[..., None]
    return torch.from_numpy(out.copy()).permute(2, 0, 1).float().div(255).to(img.device)


# ----------------------------------------------------------------------------- MATLAB imresize

def _cubic(x):
    """MATLAB's bicubic kernel (Keys, a = -0.5)."""
    ax = np.abs(x)
    ax2 = ax ** 2
    ax3 = ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((1 < ax) & (ax <= 2)))


def contributions(in_length, out_length, scale, antialiasing=True):
    """MATLAB ``imresize``'s ``contributions``: per output pixel, weights and 0-based input indices.

    Returns:
        (weights float64 (out_length, P), indices int64 (out_length, P)); columns whose weights are
        all zero are removed, as MATLAB does.
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        def kernel(x):
            return scale * _cubic(scale * x)
        kernel_width = kernel_width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)            # 1-based input coordinate of each output pixel
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    total = weights[:, 0].copy()
    for p in range(1, taps):                          # sequential sum, as MATLAB's row sum
        total += weights[:, p]
    weights = weights / total[:, None]
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])  # symmetric padding
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _round_half_away(x):
    """MATLAB's double -> uint8 conversion: round half away from zero, saturate to [0, 255]."""
    r = torch.floor(x)
    r = r + (x - r >= 0.5).to(x.dtype)
    return r.clamp_(0, 255)


def _resize_along(x, dim, out_length, scale, antialiasing):
    weights, indices = contributions(x.shape[dim], out_length, scale, antialiasing)
    shape = [1] * x.dim()
    shape[dim] = out_length
    w = torch.from_numpy(weights).to(x.device)
    idx = torch.from_numpy(indices).to(x.device)
    out = None
    for p in range(weights.shape[1]):                 # taps in order, accumulated in float64
        term = x.index_select(dim, idx[:, p]) * w[:, p].view(shape)
        out = term if out is None else out + term
    return out


def imresize(img, scale=None, size=None, round_each_pass=True, antialiasing=True):
    """MATLAB-compatible ``imresize(img, scale | [h w], 'bicubic')``.

    Args:
        img: tensor (..., H, W), float or uint8 (e.g. (C, H, W) or (B, C, H, W)).
        scale: a factor (< 1 shrinks) or (scale_h, scale_w); the output size is ``ceil(scale * size)``
            and the weights use the scale as given, like MATLAB.
        size: output (h, w) instead of ``scale`` (the scale is then h/H, w/W).
        round_each_pass: uint8 input only: round to uint8 after each 1-D pass (MATLAB's behaviour; it
            reproduces the published X2/X3/X4 LR files). If False, both passes run in float64 and the
            result is rounded once.
        antialiasing: widen the kernel when shrinking (MATLAB's default).
    Returns:
        the resized tensor with the input's dtype (float inputs are computed in float64, not rounded).
    """
    if img.dim() < 2:
        raise ValueError(f'imresize expects a tensor (..., H, W), got shape {tuple(img.shape)}')
    in_size = img.shape[-2:]
    if (scale is None) == (size is None):
        raise ValueError('imresize needs exactly one of scale and size')
    if size is not None:
        out_size = (int(size[0]), int(size[1]))
        scales = (out_size[0] / in_size[0], out_size[1] / in_size[1])
    else:
        scales = tuple(float(s) for s in scale) if isinstance(scale, (tuple, list)) else (float(scale),) * 2
        out_size = tuple(int(math.ceil(s * n)) for s, n in zip(scales, in_size))
    if min(out_size) < 1 or min(scales) <= 0:
        raise ValueError(f'imresize: invalid output size {out_size} for input {tuple(in_size)}')
    is_uint8 = img.dtype == torch.uint8
    if not is_uint8 and not img.is_floating_point():
        raise TypeError(f'imresize expects a float or uint8 tensor, got {img.dtype}')
    x = img.to(torch.float64)
    order = sorted(range(2), key=lambda k: scales[k])  # stable: rows first on ties, as MATLAB's sort
    for k in order:
        x = _resize_along(x, x.dim() - 2 + k, out_size[k], scales[k], antialiasing)
        if is_uint8 and round_each_pass:
            x = _round_half_away(x)
    if is_uint8:
        return _round_half_away(x).to(torch.uint8)
    return x.to(img.dtype)


def matlab_downscale_uint8(hr, scale):
    """The published benchmark LR: crop HR top-left to a multiple of ``scale``, MATLAB bicubic 1/scale.

    Args:
        hr: uint8 numpy array (H, W) / (H, W, C) or uint8 tensor (..., H, W).
        scale: integer downscaling factor.
    Returns:
        uint8 LR of the same kind (numpy in -> numpy (h, w[, C]) out; tensor in -> tensor out),
        rounded after each pass.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f'matlab_downscale_uint8 needs a positive integer scale, got {scale!r}')
    scale = int(scale)
    is_numpy = isinstance(hr, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(hr)) if is_numpy else hr
    if t.dtype != torch.uint8:
        raise TypeError(f'matlab_downscale_uint8 expects uint8 data, got {t.dtype}')
    if is_numpy and t.dim() == 3:
        t = t.permute(2, 0, 1)
    H, W = t.shape[-2:]
    t = t[..., :H - H % scale, :W - W % scale]
    lr = imresize(t, scale=1 / scale)
    if is_numpy:
        lr = lr.permute(1, 2, 0) if lr.dim() == 3 else lr
        return lr.contiguous().numpy()
    return lr
