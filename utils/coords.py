"""Continuous coordinates and cells: the geometry every implicit model shares.

Conventions (identical to LIIF / LTE / LMF, so official checkpoints see the inputs they were trained on):

* An image of n pixels along an axis spans the interval (-1, 1); pixel k has its centre at
  ``-1 + (2k + 1) / n``. Coordinates are ordered **(row, col) = (y, x)**; ``grid_sample`` wants
  (x, y), so callers flip the last axis before sampling.
* A *cell* is the size of one target pixel in the same units: ``(2 / H, 2 / W)`` for an H x W output.
  Decoders use the *relative cell* ``cell * (h, w)`` (h x w = LR feature size), which is ``2 / scale``.
* *Cell clipping*: at test time a cell is multiplied by ``max(scale / max_train_scale, 1)`` so that
  scales beyond the training range are decoded with the cell of the largest training scale.
"""
import math

import torch


def coord_axis(n, v0=-1.0, v1=1.0, device=None, dtype=torch.float32):
    """Pixel-centre coordinates of an axis of ``n`` pixels spanning (v0, v1), shape (n,).

    Computed as ``v0 + r + 2r * k`` in float32, exactly like the published ``make_coord``, so that
    coordinates (and therefore nearest-neighbour decisions) agree to the last bit.
    """
    r = (v1 - v0) / (2 * n)
    return v0 + r + (2 * r) * torch.arange(n, device=device, dtype=dtype)


def traced_coord_axis(n, like):
    """``coord_axis(n)`` for a 0-d int64 tensor ``n`` (a size read from a tensor in a traced ONNX graph),
    bit-identical: ``fl32(-1 + r) + fl32(2r) * k`` with ``r = 1 / n`` in float64, k = 0..n-1. Shape (n,),
    dtype and device of ``like``."""
    r = 2.0 / (2 * n.to(torch.float64))
    k = torch.arange(n, device=like.device).to(like.dtype)
    return (-1.0 + r).to(like.dtype) + (2 * r).to(like.dtype) * k


def spatial_size(x):
    """(h, w) of a (..., h, w) tensor as 0-d int64 tensors (``Shape`` + ``Gather`` in a traced graph)."""
    shape = torch._shape_as_tensor(x)
    return shape[-2], shape[-1]


def make_coord(shape, ranges=None, flatten=True, device=None):
    """Pixel-centre coordinates of a grid.

    Args:
        shape: sizes of the grid, e.g. ``(H, W)``.
        ranges: optional ``[(v0, v1), ...]`` per axis; default (-1, 1) for every axis.
        flatten: return (prod(shape), ndim) instead of (*shape, ndim).
    Returns:
        float32 tensor whose last dimension holds the coordinates in axis order ((row, col) for 2-D).
    """
    axes = []
    for i, n in enumerate(shape):
        v0, v1 = (-1.0, 1.0) if ranges is None else ranges[i]
        axes.append(coord_axis(n, v0, v1, device=device))
    ret = torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1)
    if flatten:
        ret = ret.view(-1, ret.shape[-1])
    return ret


def to_pixel_samples(img):
    """Split an image (C, H, W) into ``coord`` (H*W, 2) and values (H*W, C), in raster order."""
    coord = make_coord(img.shape[-2:], device=img.device)
    values = img.reshape(img.shape[0], -1).t()
    return coord, values


def make_cell(size, n=None, device=None, batch=None):
    """Cells of a full H x W target grid: (H*W, 2) filled with (2/H, 2/W) (or (n, 2) if ``n``).

    With ``batch`` the result gets a leading batch dimension (batch, n, 2).
    """
    H, W = size
    n = H * W if n is None else n
    cell = torch.empty(n, 2, device=device)
    cell[:, 0] = 2 / H
    cell[:, 1] = 2 / W
    if batch is not None:
        cell = cell.unsqueeze(0).expand(batch, n, 2).contiguous()
    return cell


def cell_clip_factor(scale, max_train_scale=4):
    """Test-time cell clipping factor ``max(scale / max_train_scale, 1)`` (scale may be a float)."""
    return max(float(scale) / max_train_scale, 1.0)


def pixel_position(coord, size):
    """Normalised coordinates (-1, 1) along an axis of ``size`` pixels -> positions in pixel units, pixel
    ``i`` centred at ``i`` (the unnormalisation of ``grid_sample(align_corners=False)``)."""
    return (coord + 1) * (size / 2) - 0.5


def nearest_index(coord, size):
    """Index of the pixel that ``grid_sample(mode='nearest', align_corners=False)`` picks.

    Args:
        coord: (..., ) normalised coordinates along one axis.
        size: number of pixels along that axis.
    Returns:
        long tensor of the same shape, clamped to [0, size - 1] (``grid_sample`` would return zeros
        for points outside the image; every caller clamps its coordinates first, so this only
        matters for queries outside (-1, 1)).

    The unnormalisation ``(c + 1) * (size / 2) - 0.5`` and round-half-to-even reproduce PyTorch's
    CPU kernel; queries never fall on a tie in practice because callers shift them by 1e-6.
    """
    return torch.round(pixel_position(coord, size)).long().clamp_(0, size - 1)


def is_integer_scale(scale, tol=1e-6):
    return abs(scale - round(scale)) < tol


def parse_scale(text):
    """Parse ``"4"``, ``"2.5"`` or ``"3,2"`` (rows, cols) into a (sy, sx) tuple of positive floats."""
    parts = [p.strip() for p in str(text).split(',')]
    if len(parts) not in (1, 2) or any(p == '' for p in parts):
        raise ValueError(f"scale {text!r} must be a number or two numbers 'rows,cols'")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"scale {text!r} is not a number") from None
    for v in vals:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"scale {text!r} must be finite and positive")
    if len(vals) == 1:
        vals = vals * 2
    return tuple(vals)


# ---------------------------------------------------------------------------------------------------
# target grids inside a (padded or tiled) LR frame: the only place query coordinates are computed
# ---------------------------------------------------------------------------------------------------
def target_axis(n_out, n_lr, n_frame, start=0, stop=None, origin=0, device=None):
    """Centres of target pixels ``start .. stop-1`` of an ``n_out``-pixel axis over ``n_lr`` LR pixels,
    in the (-1, 1) frame of ``n_frame`` LR pixels that begins ``origin`` LR pixels into the image
    (padding at the end: window padding; ``origin`` > 0: a tile). Float32, shape (stop - start,).

    Target pixel i has its centre at ``u = (i + 0.5) * n_lr / n_out`` LR pixels; in the frame that is
    ``2 (u - origin) / n_frame - 1``. When the frame starts at 0 and its target grid
    ``n_out * n_frame / n_lr`` has an integer size, the result is ``coord_axis`` of that grid, cropped
    (bit-identical to the published protocol of querying the padded HR grid with ``make_coord``).
    """
    stop = n_out if stop is None else stop
    full = n_out * n_frame / n_lr
    if origin == 0 and abs(full - round(full)) < 1e-9:
        return coord_axis(int(round(full)), device=device)[start:stop]
    u = (torch.arange(start, stop, dtype=torch.float64, device=device) + 0.5) * (n_lr / n_out) - origin
    return (2 * u / n_frame - 1).float()


def target_range(lo, hi, n_out, n_lr):
    """Target indices [i0, i1) whose centre ``(i + 0.5) n_lr / n_out`` lies in the LR interval [lo, hi)."""
    def first_at_or_after(x):      # smallest i with (i + 0.5) * n_lr / n_out >= x
        i = max(math.ceil(x * n_out / n_lr - 0.5) - 1, 0)
        while i < n_out and (i + 0.5) * n_lr / n_out < x:
            i += 1
        return min(i, n_out)
    return first_at_or_after(lo), first_at_or_after(hi)


def clipped_cell(out_size, lr_size, frame_size=None, max_train_scale=4, clip=True):
    """Cell (cy, cx) of an ``out_size`` target grid over ``lr_size`` LR pixels, in the units of a frame
    of ``frame_size`` LR pixels (default: the LR image itself), with test-time cell clipping per axis
    (``cell_clip_factor(H / h, max_train_scale)`` for rows, the same for columns) unless ``clip`` is False.
    """
    (H, W), (h, w) = out_size, lr_size
    hf, wf = frame_size or lr_size
    cy, cx = 2 / H * h / hf, 2 / W * w / wf
    if clip:
        cy, cx = cy * cell_clip_factor(H / h, max_train_scale), cx * cell_clip_factor(W / w, max_train_scale)
    return cy, cx
