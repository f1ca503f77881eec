"""The IGConv repository's BasicSR datasets, under their published ``type`` names and option keys.

An option file's dataset entry (``datasets.test_1`` ...) minus ``name`` / ``type`` (and the training
loader keys, see ``engine.basicsr``) is the constructor's arguments:

* ``FixedScalePairedImageDataset(dataroot_gt, dataroot_lq, ds_scale, io_backend, filename_tmpl='{}')``:
  the published LR files (e.g. ``LR_bicubic/X2/babyx2.png`` for ``HR/baby.png`` with ``filename_tmpl:
  '{}x2'``); the GT is cropped top-left to ``ds_scale`` x the LR size. Test / validation only.
* ``FixedScaleDownsampleImageDataset(dataroot_gt, ds_scale, io_backend, filename_tmpl='{}')``: LR made on
  the fly (x8 in the published files): h = floor(H / s + 1e-9), the GT cropped to (h s, w s), LR = PIL
  bicubic (``utils.imresize.pil_bicubic_resize``, the published ``resize_fn``). ``filename_tmpl`` has no
  effect (as in BasicSR: there is no LR file to name). Test / validation only.
* ``RandomScaleDownsampleImageDataset(dataroot_gt, io_backend, random_scales, lq_size, use_hflip, use_rot,
  filename_tmpl='{}')``: training items for ``(index, scale)`` pairs of
  ``datasets.samplers.ScaleBatchSampler``: a random (lq_size s)-square GT crop, flips / transposition,
  LR = PIL bicubic to lq_size (``datasets.wrappers.SRIntegerDownsampled``, whose per-item generators make
  a resumed run bit-exact). An index beyond the images wraps around (BasicSR's dataset_enlarge_ratio).
  ``use_hflip`` and ``use_rot`` switch the augmentation together (both true in every published file).

``io_backend``: ``{type: disk}`` (image folders, files sorted by name) or ``{type: lmdb}`` (BasicSR lmdb
folders, ``datasets.lmdb_folder``; keys in meta_info.txt order, paired sets by sorted key). Test items are
``{'inp' (3, h, w), 'gt' (3, s h, s w), 'scale': s, 'name': <LR file stem or lmdb key>}``, RGB in [0, 1].
"""
import math
import os

from torch.utils.data import Dataset

from utils.imresize import pil_bicubic_resize

from .image_folder import ImageFolder, image_size, pair_scale
from .lmdb_folder import LmdbImages, lmdb_keys
from .registry import DatasetError, register
from .wrappers import SRIntegerDownsampled, _check_bool, _check_int

BACKENDS = ('disk', 'lmdb')


def backend_type(io_backend, what):
    """'disk' or 'lmdb' from an ``io_backend`` mapping (no other backend options are supported)."""
    if not isinstance(io_backend, dict) or io_backend.get('type') not in BACKENDS:
        raise DatasetError(f'{what}: io_backend must be {{type: disk}} or {{type: lmdb}}, got {io_backend!r:.80}')
    extra = sorted(set(io_backend) - {'type'})
    if extra:
        raise DatasetError(f'{what}: io_backend option(s) {", ".join(extra)} are not supported (only type)')
    return io_backend['type']


def hr_images(root, io_backend, what):
    """The GT images of ``root``: an ``image-folder`` (disk) or ``LmdbImages`` (lmdb)."""
    if not isinstance(root, (str, os.PathLike)):
        raise DatasetError(f'{what}: dataroot_gt must be a path, got {root!r:.80}')
    if backend_type(io_backend, what) == 'lmdb':
        return LmdbImages(root)
    return ImageFolder(root, _arg='dataroot_gt')


def _scale(value, what):
    return _check_int(value, f'{what}: ds_scale', allow_none=False)


def _template(value, what):
    if not isinstance(value, str) or '{}' not in value:
        raise DatasetError(f"{what}: filename_tmpl must be a string with '{{}}' (e.g. '{{}}x2'), got {value!r:.80}")
    return value


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _check_pair(lr_size, hr_size, scale, lr, hr):
    """Refuse an LR/HR pair that is not an x``scale`` pair (LR = HR // s or ceil(HR / s))."""
    if pair_scale(lr_size, hr_size) != scale:
        raise DatasetError(f'LR {lr} ({lr_size[1]}x{lr_size[0]}) and GT {hr} ({hr_size[1]}x{hr_size[0]}) are not an '
                           f'x{scale} pair (ds_scale {scale})')


@register('FixedScalePairedImageDataset')
class FixedScalePairedImageDataset(Dataset):
    """Published LR files and their GT at one integer scale (module docstring). On disk the LR of
    ``HR/<stem><ext>`` is ``<dataroot_lq>/<filename_tmpl.format(stem)><ext>``; both folders must hold the
    same number of images and every pair must be an x``ds_scale`` pair (checked from the file headers)."""

    def __init__(self, dataroot_gt, dataroot_lq, ds_scale, io_backend, filename_tmpl='{}'):
        what = 'FixedScalePairedImageDataset'
        self.scale = _scale(ds_scale, what)
        template = _template(filename_tmpl, what)
        if backend_type(io_backend, what) == 'lmdb':
            keys = lmdb_keys(dataroot_lq)
            if set(keys) != set(lmdb_keys(dataroot_gt)):
                raise DatasetError(f'{what}: the lmdb folders {dataroot_lq} and {dataroot_gt} hold different keys')
            keys = sorted(keys)
            self.lq, self.gt, self.names = LmdbImages(dataroot_lq, keys), LmdbImages(dataroot_gt, keys), keys
            return
        self.gt = ImageFolder(dataroot_gt, _arg='dataroot_gt')
        self.lq = ImageFolder(dataroot_lq, _arg='dataroot_lq')
        if len(self.lq.files) != len(self.gt.files):
            raise DatasetError(f'{what}: {dataroot_lq} holds {len(self.lq.files)} images but {dataroot_gt} holds '
                               f'{len(self.gt.files)}')
        lq_files = []
        for hr in self.gt.files:
            lr = os.path.join(self.lq.root, template.format(_stem(hr)) + os.path.splitext(hr)[1])
            if not os.path.isfile(lr):
                raise DatasetError(f'{what}: no LR file {lr} for {hr} (filename_tmpl {template!r})')
            _check_pair(image_size(lr), image_size(hr), self.scale, lr, hr)
            lq_files.append(lr)
        self.lq.files = lq_files
        self.names = [_stem(f) for f in lq_files]

    def __len__(self):
        return len(self.names)

    def __getitem__(self, idx):
        lq, gt = self.lq[idx], self.gt[idx]
        s = self.scale
        _check_pair(tuple(lq.shape[-2:]), tuple(gt.shape[-2:]), s, self.lq.path(idx), self.gt.path(idx))
        h, w = lq.shape[-2:]
        return {'inp': lq, 'gt': gt[:, :h * s, :w * s], 'scale': s, 'name': self.names[idx]}


@register('FixedScaleDownsampleImageDataset')
class FixedScaleDownsampleImageDataset(Dataset):
    """GT images and their PIL-bicubic LR at one integer scale, made on the fly (module docstring)."""

    def __init__(self, dataroot_gt, ds_scale, io_backend, filename_tmpl='{}'):
        what = 'FixedScaleDownsampleImageDataset'
        self.scale = _scale(ds_scale, what)
        _template(filename_tmpl, what)       # accepted and unused, as in BasicSR
        self.gt = hr_images(dataroot_gt, io_backend, what)

    def __len__(self):
        return len(self.gt)

    def __getitem__(self, idx):
        img, s = self.gt[idx], self.scale
        h = math.floor(img.shape[-2] / s + 1e-9)
        w = math.floor(img.shape[-1] / s + 1e-9)
        if min(h, w) < 1:
            raise DatasetError(f'{self.gt.path(idx)}: a {img.shape[-1]}x{img.shape[-2]} image is too small for x{s}')
        gt = img[:, :h * s, :w * s]
        name = _stem(self.gt.files[idx]) if isinstance(self.gt, ImageFolder) else self.gt.keys[idx]
        return {'inp': pil_bicubic_resize(gt, (h, w)), 'gt': gt, 'scale': s, 'name': name}


@register('RandomScaleDownsampleImageDataset')
class RandomScaleDownsampleImageDataset(SRIntegerDownsampled):
    """IGConv's multi-scale training set (module docstring); indexed by ``(index, scale)``."""

    def __init__(self, dataroot_gt, io_backend, random_scales, lq_size, use_hflip=False, use_rot=False,
                 filename_tmpl='{}', seed=0):
        what = 'RandomScaleDownsampleImageDataset'
        _check_bool(use_hflip, f'{what}: use_hflip')
        _check_bool(use_rot, f'{what}: use_rot')
        if use_hflip != use_rot:
            raise DatasetError(f'{what}: use_hflip and use_rot must be equal here (flips and rotations are drawn '
                               f'together), got {use_hflip} and {use_rot}')
        _template(filename_tmpl, what)       # accepted and unused, as in BasicSR
        super().__init__(hr_images(dataroot_gt, io_backend, what), inp_size=lq_size, scales=random_scales,
                         augment=use_hflip, seed=seed)
        if self.inp_size is None:
            raise DatasetError(f'{what}: lq_size is required')
