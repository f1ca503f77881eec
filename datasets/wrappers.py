"""Super-resolution wrappers: turn HR images (or LR/HR pairs) into training and test items (as published).

Implicit wrappers (LIIF / LTE / LMF) return ``{'inp' (3, h, w), 'coord' (Q, 2), 'cell' (Q, 2),
'gt' (Q, 3)}``: ``coord`` / ``gt`` come from ``utils.coords.to_pixel_samples`` of the HR (raster order,
(row, col) coordinates), optionally ``sample_q`` rows without replacement, and ``cell`` is
(2 / H_hr, 2 / W_hr) for every row; their ``-fast`` variants (grid models: LTE-fast) return ``coord``
(H', W', 2), ``gt`` (3, H', W') and one ``cell`` (2,) per item. The integer-scale wrapper (IGConv) returns
``{'inp' (3, h, w), 'gt' (3, s*h, s*w), 'scale': s}``. LR images are made by ``pil_bicubic_resize``
(the published ``resize_fn``: uint8 PIL bicubic).

Augmentation (``augment=True``): three independent coin flips applied identically to LR and HR:
``hflip`` flips dim -2 (rows, the published naming), ``vflip`` flips dim -1, ``dflip`` transposes.

Reproducible randomness. Every random choice of an item (scale, crop position, flips, query sampling,
drawn in that order) comes from its own generator ``PCG64(SeedSequence([seed, epoch, index]))``, never
from the global ``random`` / ``np.random`` / ``torch`` state. An item is therefore a pure function of
(seed, epoch, index): identical whichever DataLoader worker builds it, so a resumed run replays its
data bit-exactly. Call ``set_epoch(epoch)`` before each epoch; the epoch is read at ``__getitem__`` time,
so with ``num_workers > 0`` it reaches the workers when they are created, i.e. at each
``iter(loader)`` with the default ``persistent_workers=False`` (persistent workers would keep a stale
epoch). This deliberately differs from the published Python-``random`` streams (docs/deviations.md, B23: fixing
that nondeterminism): sampled items follow the same distributions but are not the same draws.
"""
import math

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.coords import coord_axis, make_cell, make_coord, to_pixel_samples
from utils.imresize import pil_bicubic_resize
from utils.untrusted import excerpt

from .registry import DatasetError, register


def item_rng(seed, epoch, index):
    """The generator of one item: ``Generator(PCG64(SeedSequence([seed, epoch, index])))``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, index])))


def draw_flips(rng, augment):
    """(hflip, vflip, dflip) coin flips (all False, drawing nothing, when ``augment`` is off)."""
    return tuple(bool(v) for v in rng.random(3) < 0.5) if augment else (False, False, False)


def apply_flips(x, flips):
    """Apply (hflip on dim -2, vflip on dim -1, transpose of the last two dims) to an image tensor."""
    hflip, vflip, dflip = flips
    if hflip:
        x = x.flip(-2)
    if vflip:
        x = x.flip(-1)
    if dflip:
        x = x.transpose(-2, -1)
    return x


def random_crop_origin(rng, size, crop, what):
    """Uniform top-left (y0, x0) of a ``crop`` x ``crop`` window inside an image of ``size`` (H, W)."""
    H, W = size
    if crop > H or crop > W:
        raise DatasetError(f'{what}: a {crop}x{crop} crop does not fit in the {W}x{H} image')
    return int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1))


def query_samples(hr, sample_q, rng):
    """``coord`` (Q, 2), ``cell`` (Q, 2), ``gt`` (Q, 3) of an HR image; Q = H*W or ``sample_q`` rows.

    With ``sample_q`` the rows ``sel = rng.choice(H*W, sample_q, replace=False)`` of
    ``to_pixel_samples(hr)`` are returned, computed for those rows only (raster index k is pixel
    (k // W, k % W); the coordinates are the same ``coord_axis`` values), without building the H*W grid."""
    H, W = hr.shape[-2:]
    if sample_q is None:
        coord, gt = to_pixel_samples(hr.contiguous())
        return coord, make_cell((H, W), n=len(coord)), gt
    if sample_q > H * W:
        raise DatasetError(f'sample_q={sample_q} exceeds the {H * W} pixels of the {H}x{W} HR patch')
    sel = torch.from_numpy(rng.choice(H * W, sample_q, replace=False))
    coord = torch.stack([coord_axis(H)[sel // W], coord_axis(W)[sel % W]], dim=-1)
    gt = hr.reshape(hr.shape[0], -1).t()[sel]
    return coord, make_cell((H, W), n=sample_q), gt


def image_region(dataset, idx):
    """``(size (H, W), crop(y0, x0, h, w) -> float (3, h, w))`` of item ``idx``: straight from the decoded
    array for datasets with ``region`` (``image-folder``: only the window is converted to float), else
    windows of ``dataset[idx]``. Both give the same values."""
    if hasattr(dataset, 'region'):
        return dataset.region(idx)
    img = dataset[idx]
    return img.shape[-2:], lambda y0, x0, h, w: img[:, y0:y0 + h, x0:x0 + w]


def _check_int(value, name, minimum=1, allow_none=True):
    """A wrapper argument that must be an integer >= minimum (or None), named in the error."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f'{name} must be an integer >= {minimum}, got {excerpt(value, 80)}')
    return int(value)


def _check_number(value, name, minimum=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or (minimum is not None and value < minimum):
        if isinstance(value, str):
            try:
                v = float(value)
                if math.isfinite(v) and (minimum is None or v >= minimum):
                    return v
            except ValueError:
                pass
        raise DatasetError(f'{name} must be a number' + (f' >= {minimum}' if minimum is not None else '')
                           + f', got {excerpt(value, 80)}')
    return value


def _check_bool(value, name):
    if not isinstance(value, bool):
        raise DatasetError(f'{name} must be true or false, got {excerpt(value, 80)}')
    return value


def _describe(dataset, idx):
    path = getattr(dataset, 'path', None)
    return f'item {idx} ({path(idx)})' if callable(path) else f'item {idx}'


class RandomWrapper(Dataset):
    """Base of the wrappers: holds the wrapped dataset, ``seed`` and ``epoch``; ``rng(index)``."""

    def __init__(self, dataset, seed=0):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DatasetError(f'seed must be a non-negative integer, got {seed!r}')
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Select the random draws of ``epoch`` (call before iterating a DataLoader over this dataset)."""
        self.epoch = int(epoch)

    def rng(self, index):
        return item_rng(self.seed, self.epoch, int(index))

    def __len__(self):
        return len(self.dataset)

    def implicit_item(self, rng, crop_lr, crop_hr):
        """The same flips for LR and HR, then ``sample_q`` HR queries: {inp, coord, cell, gt}."""
        flips = draw_flips(rng, self.augment)
        crop_lr, crop_hr = apply_flips(crop_lr, flips), apply_flips(crop_hr, flips)
        coord, cell, gt = query_samples(crop_hr, self.sample_q, rng)
        return {'inp': crop_lr.contiguous(), 'coord': coord, 'cell': cell, 'gt': gt}


@register('sr-implicit-downsampled')
class SRImplicitDownsampled(RandomWrapper):
    """HR images -> (PIL-bicubic LR, HR queries) at a random scale s ~ U(scale_min, scale_max)

    * Test mode (``inp_size`` None): h = floor(H/s + 1e-9), w = floor(W/s + 1e-9); the HR is cropped to
      its top-left round(h*s) x round(w*s) and resized to (h, w).
    * Train mode: a random round(inp_size*s)-square HR crop, resized to inp_size x inp_size.
    Augmentation after resizing, then ``sample_q`` queries (module docstring).
    """

    def __init__(self, dataset, inp_size=None, scale_min=1, scale_max=None, augment=False, sample_q=None, seed=0):
        super().__init__(dataset, seed)
        self.inp_size = _check_int(inp_size, 'sr-implicit-downsampled: inp_size')
        self.scale_min = _check_number(scale_min, 'sr-implicit-downsampled: scale_min')
        self.scale_max = self.scale_min if scale_max is None else \
            _check_number(scale_max, 'sr-implicit-downsampled: scale_max')
        _check_bool(augment, 'sr-implicit-downsampled: augment')
        sample_q = _check_int(sample_q, 'sr-implicit-downsampled: sample_q')
        if not 0 < self.scale_min <= self.scale_max:
            raise DatasetError(f'need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}')
        self.augment = augment
        self.sample_q = sample_q

    def __getitem__(self, idx):
        rng = self.rng(idx)
        s = self.scale_min if self.scale_min == self.scale_max else rng.uniform(self.scale_min, self.scale_max)
        if self.inp_size is None:
            img = self.dataset[idx]
            h_lr = math.floor(img.shape[-2] / s + 1e-9)
            w_lr = math.floor(img.shape[-1] / s + 1e-9)
            if min(h_lr, w_lr) < 1:
                raise DatasetError(f'{_describe(self.dataset, idx)}: a {img.shape[-1]}x{img.shape[-2]} image is '
                                   f'too small for scale {s}')
            crop_hr = img[:, :round(h_lr * s), :round(w_lr * s)]
            crop_lr = pil_bicubic_resize(crop_hr, (h_lr, w_lr))
        else:
            w_hr = round(self.inp_size * s)
            size, crop = image_region(self.dataset, idx)
            y0, x0 = random_crop_origin(rng, size, w_hr, _describe(self.dataset, idx))
            crop_hr = crop(y0, x0, w_hr, w_hr)
            crop_lr = pil_bicubic_resize(crop_hr, (self.inp_size, self.inp_size))
        return self.implicit_item(rng, crop_lr, crop_hr)


@register('sr-implicit-paired')
class SRImplicitPaired(RandomWrapper):
    """(LR, HR) pairs -> implicit items at the pair's integer scale s = H_hr // H_lr.

    Test mode: the whole LR, the HR cropped top-left to (h*s, w*s). Train mode: a random ``inp_size``
    LR crop and the aligned (inp_size*s)-square HR crop. Augmentation and queries as above.
    """

    def __init__(self, dataset, inp_size=None, augment=False, sample_q=None, seed=0):
        super().__init__(dataset, seed)
        self.inp_size = _check_int(inp_size, 'sr-implicit-paired: inp_size')
        self.augment = _check_bool(augment, 'sr-implicit-paired: augment')
        self.sample_q = _check_int(sample_q, 'sr-implicit-paired: sample_q')

    def __getitem__(self, idx):
        rng = self.rng(idx)
        img_lr, img_hr = self.dataset[idx]
        (h, w), (H, W) = img_lr.shape[-2:], img_hr.shape[-2:]
        s = H // h
        if s < 1 or W < w * s:
            raise DatasetError(f'{_describe(self.dataset, idx)}: LR {w}x{h} and HR {W}x{H} are not an '
                               f'integer-scale pair')
        if self.inp_size is None:
            crop_lr, crop_hr = img_lr, img_hr[:, :h * s, :w * s]
        else:
            y0, x0 = random_crop_origin(rng, (h, w), self.inp_size, _describe(self.dataset, idx))
            crop_lr = img_lr[:, y0:y0 + self.inp_size, x0:x0 + self.inp_size]
            w_hr = self.inp_size * s
            crop_hr = img_hr[:, y0 * s:y0 * s + w_hr, x0 * s:x0 * s + w_hr]
        return self.implicit_item(rng, crop_lr, crop_hr)


def fast_item(rng, crop_lr, crop_hr, flips, n_side):
    """Items of the ``-fast`` wrappers (LTE-fast): ``{inp (3, h, w), coord (H', W', 2), cell (2,),
    gt (3, H', W')}``. Test (``n_side`` None): the whole HR grid. Train: ``n_side**2`` HR pixels drawn
    without replacement, laid out (in draw order) as an ``n_side`` x ``n_side`` grid (published). ``cell``
    is (2 / H_hr, 2 / W_hr)."""
    crop_lr, crop_hr = apply_flips(crop_lr, flips), apply_flips(crop_hr, flips).contiguous()
    H, W = crop_hr.shape[-2:]
    coord = make_coord((H, W), flatten=False)
    gt = crop_hr
    if n_side is not None:
        if n_side * n_side > H * W:
            raise DatasetError(f'{n_side}x{n_side} query grid exceeds the {H}x{W} pixels of the HR patch')
        sel = torch.from_numpy(rng.choice(H * W, n_side * n_side, replace=False))
        coord = coord.view(-1, 2)[sel].view(n_side, n_side, 2)
        gt = crop_hr.reshape(crop_hr.shape[0], -1)[:, sel].view(crop_hr.shape[0], n_side, n_side)
    cell = torch.tensor([2 / H, 2 / W], dtype=torch.float32)
    return {'inp': crop_lr.contiguous(), 'coord': coord, 'cell': cell, 'gt': gt}


def _fast_side(inp_size, sample_q, what):
    """Side of the square training query grid: sqrt(sample_q) if given (a perfect square), else inp_size."""
    if sample_q is None:
        return inp_size
    side = math.isqrt(sample_q)
    if side * side != sample_q:
        raise DatasetError(f'{what}: sample_q must be a perfect square (queries form a square grid), got {sample_q}')
    return side


@register('sr-implicit-downsampled-fast')
class SRImplicitDownsampledFast(SRImplicitDownsampled):
    """``sr-implicit-downsampled`` for grid models (LTE-fast): same LR/HR pairs and random
    draws (scale, crop, flips), but queries as a grid: ``coord`` (H', W', 2), ``gt`` (3, H', W'), one
    ``cell`` (2,). Training draws ``inp_size``^2 (or ``sample_q``, a square) HR pixels laid out as a
    square grid; test mode returns the whole HR grid."""

    def implicit_item(self, rng, crop_lr, crop_hr):
        side = None if self.inp_size is None else \
            _fast_side(self.inp_size, self.sample_q, 'sr-implicit-downsampled-fast')
        return fast_item(rng, crop_lr, crop_hr, draw_flips(rng, self.augment), side)


@register('sr-implicit-paired-fast')
class SRImplicitPairedFast(SRImplicitPaired):
    """``sr-implicit-paired`` for grid models (LTE-fast): queries as a grid (see
    ``sr-implicit-downsampled-fast``)."""

    def implicit_item(self, rng, crop_lr, crop_hr):
        side = None if self.inp_size is None else _fast_side(self.inp_size, self.sample_q, 'sr-implicit-paired-fast')
        return fast_item(rng, crop_lr, crop_hr, draw_flips(rng, self.augment), side)


@register('sr-implicit-uniform-varied')
class SRImplicitUniformVaried(RandomWrapper):
    """LIIF's CelebA wrapper: (LR, HR) pairs; the HR is resized to a size that grows with the index.

    Item i of n: the HR's shorter side becomes round(size_min + (size_max - size_min) * i / (n - 1))
    (torchvision ``Resize`` semantics, via ``pil_bicubic_resize``); ``augment`` flips both images along
    dim -1 with probability 1/2 (the only flip of the published wrapper); ``gt_resize`` resizes the HR
    once more; then queries as above.
    """

    def __init__(self, dataset, size_min, size_max=None, augment=False, gt_resize=None, sample_q=None, seed=0):
        super().__init__(dataset, seed)
        self.size_min = _check_int(size_min, 'sr-implicit-uniform-varied: size_min', allow_none=False)
        self.size_max = self.size_min if size_max is None else \
            _check_int(size_max, 'sr-implicit-uniform-varied: size_max')
        self.augment = _check_bool(augment, 'sr-implicit-uniform-varied: augment')
        self.gt_resize = _check_int(gt_resize, 'sr-implicit-uniform-varied: gt_resize')
        self.sample_q = _check_int(sample_q, 'sr-implicit-uniform-varied: sample_q')

    def __getitem__(self, idx):
        rng = self.rng(idx)
        img_lr, img_hr = self.dataset[idx]
        p = idx / (len(self.dataset) - 1) if len(self.dataset) > 1 else 0.0
        img_hr = pil_bicubic_resize(img_hr, round(self.size_min + (self.size_max - self.size_min) * p))
        if self.augment and rng.random() < 0.5:
            img_lr, img_hr = img_lr.flip(-1), img_hr.flip(-1)
        if self.gt_resize is not None:
            img_hr = pil_bicubic_resize(img_hr, self.gt_resize)
        coord, cell, gt = query_samples(img_hr, self.sample_q, rng)
        return {'inp': img_lr, 'coord': coord, 'cell': cell, 'gt': gt}


@register('sr-integer-downsampled')
class SRIntegerDownsampled(RandomWrapper):
    """HR images -> (LR, HR patch) at an integer scale, for IGConv's multi-scale training (as BasicSR).

    Indexed by ``(index, scale)`` pairs from ``datasets.samplers.ScaleBatchSampler`` (one scale per
    batch); a plain ``index`` uses the only scale, or draws one uniformly from ``scales``.

    * Train mode: a random (inp_size*s)-square HR crop, flips / transpose, then the LR = PIL bicubic of
      the augmented HR to inp_size x inp_size (BasicSR's order: augment before resizing).
    * Test mode (``inp_size`` None): the HR cropped top-left to a multiple of s, LR = PIL bicubic to
      (H // s, W // s).

    Returns ``{'inp' (3, h, w), 'gt' (3, s*h, s*w), 'scale': s}``.
    """

    def __init__(self, dataset, inp_size=48, scales=(2, 3, 4), augment=False, seed=0):
        super().__init__(dataset, seed)
        if not isinstance(scales, (list, tuple)) or not scales \
                or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in scales):
            raise DatasetError(f'sr-integer-downsampled: scales must be a list of positive integers, '
                               f'got {excerpt(scales, 80)}')
        self.scales = [int(s) for s in scales]
        self.inp_size = _check_int(inp_size, 'sr-integer-downsampled: inp_size')
        self.augment = _check_bool(augment, 'sr-integer-downsampled: augment')

    def __getitem__(self, index):
        idx, scale = index if isinstance(index, (tuple, list)) else (index, None)
        rng = self.rng(idx)
        if scale is None:
            scale = self.scales[0] if len(self.scales) == 1 else self.scales[int(rng.integers(len(self.scales)))]
        if int(scale) != scale or scale < 1:
            raise DatasetError(f'sr-integer-downsampled: scale must be a positive integer, got {scale!r}')
        s = int(scale)
        if self.inp_size is None:
            img = self.dataset[idx]
            h, w = img.shape[-2] // s, img.shape[-1] // s
            if min(h, w) < 1:
                raise DatasetError(f'{_describe(self.dataset, idx)}: a {img.shape[-1]}x{img.shape[-2]} image is '
                                   f'too small for scale {s}')
            hr = img[:, :h * s, :w * s]
        else:
            h = w = self.inp_size
            size, crop = image_region(self.dataset, idx)
            y0, x0 = random_crop_origin(rng, size, h * s, _describe(self.dataset, idx))
            hr = crop(y0, x0, h * s, h * s)
        hr = apply_flips(hr, draw_flips(rng, self.augment)).contiguous()
        lr = pil_bicubic_resize(hr, (hr.shape[-2] // s, hr.shape[-1] // s))
        return {'inp': lr, 'gt': hr, 'scale': s}

