"""Image folders: ``image-folder`` and ``paired-image-folders`` (published names and arguments).

Items are float32 RGB tensors (3, H, W) in [0, 1], decoded by ``utils.image`` (any PIL mode becomes RGB;
8-bit samples are k/255 exactly as torchvision's ``ToTensor``). Only image files are listed: hidden
files, text files and sub-folders are skipped. A corrupt file fails with its path in the message.

``cache``:

* ``'none'``: decode the file at every access.
* ``'in_memory'``: decode every file once at construction and keep the uint8 (or uint16) arrays, a
  quarter of the memory of the published float tensors, with identical values.
* ``'bin'``: decode once into ``.npy`` files in the sibling folder ``_bin_<basename of root>`` (written
  atomically; rewritten when the image is newer than its cache file) and read those afterwards. Unlike
  the published code (pickles of ``imageio`` arrays without RGB conversion) the cached arrays are RGB.
"""
import json
import os
import re

import numpy as np
from torch.utils.data import Dataset

from utils.image import ImageError, array_to_tensor, is_image_file, load_array, read_size
from utils.io import atomic_write
from utils.untrusted import excerpt

from .registry import DatasetError, register

CACHE_MODES = ('none', 'bin', 'in_memory')


def _int_arg(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f'image-folder: {name} must be an integer >= {minimum}, got {excerpt(value, 80)}')
    return int(value)


def _list_files(root, split_file, split_key, first_k):
    if not os.path.isdir(root):
        raise DatasetError(f'image folder not found: {root}')
    if split_file is None:
        names = sorted(f for f in os.listdir(root) if is_image_file(f) and os.path.isfile(os.path.join(root, f)))
    else:
        try:
            with open(split_file) as f:
                names = json.load(f)[split_key]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f'cannot read split {split_key!r} from {split_file}: {type(e).__name__}: {e}') from None
        if not isinstance(names, list) or not all(isinstance(n, str) and n and os.path.basename(n) == n
                                                  for n in names):
            raise DatasetError(f'{split_file}: split {split_key!r} must be a list of file names (no folders)')
    if first_k is not None:
        names = names[:first_k]
    if not names:
        raise DatasetError(f'no image files in {root}')
    return [os.path.join(root, n) for n in names]


def _bin_file(path, bin_root):
    """Path of the cache file of ``path``, (re)written if missing or older than the image."""
    target = os.path.join(bin_root, os.path.basename(path) + '.npy')
    if not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(path):
        arr, _ = load_array(path)
        try:
            with atomic_write(target) as f:
                np.save(f, arr)
        except OSError as e:
            raise DatasetError(f'cannot write the bin cache {target}: {e.strerror or e}') from None
    return target


def _load_bin(path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ImageError(f'{path}: unreadable bin cache file ({e}); delete it to rebuild') from None


@register('image-folder')
class ImageFolder(Dataset):
    """The images of a folder, sorted by name, as float RGB (3, H, W) tensors.

    Args:
        root_path: the folder, or a list of folders whose files are concatenated (each sorted).
        split_file, split_key: take the file names from ``json.load(split_file)[split_key]`` instead.
        first_k: keep only the first k files.
        repeat: the dataset has ``repeat`` x n items; item i is file i mod n.
        cache: ``'none'``, ``'in_memory'`` or ``'bin'`` (module docstring).
    """

    def __init__(self, root_path, split_file=None, split_key=None, first_k=None, repeat=1, cache='none',
                 _arg='root_path'):
        if not isinstance(cache, str) or cache not in CACHE_MODES:
            raise DatasetError(f'image-folder: cache must be one of {", ".join(CACHE_MODES)}, got {cache!r}')
        repeat = _int_arg(repeat, 'repeat', 1)
        first_k = None if first_k is None else _int_arg(first_k, 'first_k', 1)
        if isinstance(root_path, (str, os.PathLike)):
            roots = [root_path]
        elif isinstance(root_path, (list, tuple)) and all(isinstance(r, (str, os.PathLike)) for r in root_path):
            roots = list(root_path)
        else:
            raise DatasetError(f'image-folder: {_arg} must be a folder path (or a list of them), got '
                               f'{type(root_path).__name__} {excerpt(root_path, 80)}')
        if not roots:
            raise DatasetError(f'image-folder: {_arg} is an empty list')
        if split_file is not None and not isinstance(split_file, (str, os.PathLike)):
            raise DatasetError(f'image-folder: split_file must be a path, got {type(split_file).__name__}')
        from engine.inference import repo_relative      # config paths work from any working directory
        roots = [os.path.normpath(repo_relative(r)) for r in roots]
        self.root, self.repeat, self.cache = roots[0] if len(roots) == 1 else roots, int(repeat), cache
        self.files = [f for r in roots for f in _list_files(r, split_file, split_key, None)]
        if first_k is not None:
            self.files = self.files[:first_k]
        self._build_cache(cache)

    def _build_cache(self, cache):
        self.cache = cache
        self.arrays = None
        self.bin_files = None
        if cache == 'in_memory':
            self.arrays = [load_array(f)[0] for f in self.files]
        elif cache == 'bin':
            self.bin_files = []
            for f in self.files:
                root = os.path.dirname(f)
                bin_root = os.path.join(os.path.dirname(root), '_bin_' + os.path.basename(root))
                try:
                    os.makedirs(bin_root, exist_ok=True)
                except OSError as e:
                    raise DatasetError(f'cannot create the bin cache folder {bin_root}: {e.strerror or e}') from None
                self.bin_files.append(_bin_file(f, bin_root))

    def __len__(self):
        return len(self.files) * self.repeat

    def path(self, idx):
        """The image file behind item ``idx``."""
        return self.files[idx % len(self.files)]

    def array(self, idx):
        """The decoded uint8 (or uint16) array (H, W[, C]) of item ``idx``, before conversion to float:
        ``__getitem__(idx)`` is ``array_to_tensor(array(idx))``. Wrappers crop it first (``region``)."""
        i = idx % len(self.files)
        if self.arrays is not None:
            return self.arrays[i]
        if self.bin_files is not None:
            return _load_bin(self.bin_files[i])
        return load_array(self.files[i])[0]

    def region(self, idx):
        """``(size (H, W), crop)`` of item ``idx``: ``crop(y0, x0, h, w)`` equals
        ``self[idx][:, y0:y0 + h, x0:x0 + w]`` (same values) but converts only that window to float."""
        arr = self.array(idx)
        return arr.shape[:2], lambda y0, x0, h, w: array_to_tensor(arr[y0:y0 + h, x0:x0 + w])

    def __getitem__(self, idx):
        return array_to_tensor(self.array(idx))


SCALE_SUFFIX = re.compile(r'^(?P<stem>.+?)(?:_LRBI|_LR|_lr)?[_-]?[xX](?P<scale>\d+(?:\.\d+)?)$')
SRF = re.compile(r'^(?P<stem>.+?)_SRF_(?P<scale>\d+)_(?:LR|HR)$')      # SelfExSR layout: img_001_SRF_2_LR.png


def image_size(path):
    """(rows, cols) of an image file from its header (``utils.image.read_size``)."""
    return read_size(path)


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def match_pairs(lr_files, hr_files, lr_root, hr_root):
    """Pair LR files with HR files by name: ``baby.png`` <-> ``baby.png``, ``babyx4.png``, ``baby_x4.png``,
    ``baby_LRBI_x4.png``, ``baby_LR.png`` (HR ``baby_HR.png``), ``img_001_SRF_4_LR.png`` (HR
    ``img_001_SRF_4_HR.png``): the published benchmark, DIV2K and SelfExSR layouts. Returns (pairs
    [(lr, hr)] in HR order, {lr: the scale its name states, or None}).

    Every file must find exactly one partner; otherwise a DatasetError names the first file without one.
    """
    hr_by_stem = {}
    for f in hr_files:
        hr_by_stem.setdefault(_stem(f), f)
    for f in hr_files:          # secondary keys: '<name>_HR', '<name>_SRF_<s>_HR' -> '<name>'
        stem = _stem(f)
        m = SRF.match(stem)
        for key in ([m.group('stem')] if m else []) + ([stem[:-3]] if stem.endswith('_HR') else []):
            hr_by_stem.setdefault(key, f)
    lr_for_hr, name_scale = {}, {}
    for f in lr_files:
        stem = _stem(f)
        match, scale = None, None
        if stem in hr_by_stem:
            match = hr_by_stem[stem]
        else:
            for pattern in (SCALE_SUFFIX, SRF):
                m = pattern.match(stem)
                if m and m.group('stem') in hr_by_stem:
                    match, scale = hr_by_stem[m.group('stem')], float(m.group('scale'))
                    break
            if match is None and stem.endswith('_LR') and stem[:-3] in hr_by_stem:
                match = hr_by_stem[stem[:-3]]
        if match is None:
            raise DatasetError(f'LR file {f} has no HR partner in {hr_root} (expected {stem}.png, or '
                               f'<name>.png for an LR named <name>x<scale>.png); LR and HR are matched by name')
        if match in lr_for_hr:
            raise DatasetError(f'LR files {lr_for_hr[match]} and {f} both match the HR file {match}')
        lr_for_hr[match] = f
        name_scale[f] = scale
    unmatched = [f for f in hr_files if f not in lr_for_hr]
    if unmatched:
        raise DatasetError(f'HR file {unmatched[0]} has no LR partner in {lr_root}'
                           + (f' ({len(unmatched) - 1} more HR files unmatched)' if len(unmatched) > 1 else ''))
    return [(lr_for_hr[f], f) for f in hr_files], name_scale


def pair_scale(lr_size, hr_size, name_scale=None):
    """The integer scale s of an LR/HR pair, or None when the sizes do not make one.

    A pair is accepted when the LR is the HR downscaled by s, cropped to a multiple of s first
    (h = H // s, the published benchmark files) or not (h = ceil(H / s), MATLAB ``imresize``), for both
    axes, and when ``H // h == W // w == s``: the scale ``sr-implicit-paired`` computes from the sizes.
    ``name_scale`` (the ``x<s>`` of the LR file name) must then be that s.
    """
    (h, w), (H, W) = lr_size, hr_size
    if h < 1 or w < 1:
        return None
    s = H // h
    if s < 1 or W // w != s:
        return None
    if name_scale is not None and name_scale != s:
        return None
    if h not in (H // s, -(-H // s)) or w not in (W // s, -(-W // s)):
        return None
    return s


@register('paired-image-folders')
class PairedImageFolders(Dataset):
    """Pairs ``(img_1, img_2)`` of two folders (LR, HR), matched by file name and checked by size.

    ``baby.png`` in the HR folder pairs with ``baby.png``, ``babyx4.png`` or ``baby_x4.png`` in the LR
    folder (the published benchmark / DIV2K layouts; the published code paired by sorted order, which
    gives the same pairs for these layouts). Every pair must be an integer-scale pair: the LR is
    ``(H // s, W // s)`` for the HR's ``(H, W)`` (and ``s`` is the ``x<s>`` of the LR name when there is
    one). Files without a partner, or pairs of the wrong size, are refused naming the files.
    ``pair_scales`` holds the scale of every pair (``check_pair_scale`` compares it with a config's).

    The other arguments apply to both folders (see ``image-folder``).
    """

    def __init__(self, root_path_1, root_path_2, split_file=None, split_key=None, first_k=None, repeat=1,
                 cache='none'):
        kwargs = dict(split_file=split_file, split_key=split_key, repeat=repeat, cache='none')
        self.dataset_1 = ImageFolder(root_path_1, _arg='root_path_1', **kwargs)
        self.dataset_2 = ImageFolder(root_path_2, _arg='root_path_2', **kwargs)
        n1, n2 = len(self.dataset_1.files), len(self.dataset_2.files)
        pairs, name_scale = match_pairs(self.dataset_1.files, self.dataset_2.files, self.dataset_1.root,
                                        self.dataset_2.root)
        if n1 != n2:
            raise DatasetError(f'paired folders hold different numbers of images: {self.dataset_1.root} has {n1}, '
                               f'{self.dataset_2.root} has {n2}')
        if first_k is not None:          # the first k pairs in HR order (= each folder's first k, as published)
            pairs = pairs[:_int_arg(first_k, 'first_k', 1)]
        self.pair_scales = []
        for lr, hr in pairs:
            lr_size, hr_size = image_size(lr), image_size(hr)
            s = pair_scale(lr_size, hr_size, name_scale.get(lr))
            if s is None:
                named = name_scale.get(lr)
                expect = f'; its name says x{named:g}' if named is not None else ''
                raise DatasetError(f'LR {lr} ({lr_size[1]}x{lr_size[0]}) and HR {hr} ({hr_size[1]}x{hr_size[0]}) '
                                   f'are not an integer-scale pair (LR = HR // s){expect}')
            self.pair_scales.append(s)
        # the folders in matched order (then the requested cache, built on the matched lists)
        for ds, files in ((self.dataset_1, [p[0] for p in pairs]), (self.dataset_2, [p[1] for p in pairs])):
            ds.files = files
            ds._build_cache(cache)

    def __len__(self):
        return len(self.dataset_1)

    def path(self, idx):
        return f'{self.dataset_1.path(idx)} | {self.dataset_2.path(idx)}'

    def __getitem__(self, idx):
        return self.dataset_1[idx], self.dataset_2[idx]


def check_pair_scale(dataset, scale, where='config'):
    """Refuse LR/HR pairs whose scale differs from ``scale`` (a config's eval_type scale); no-op for
    datasets without stored pairs or when ``scale`` is None."""
    if scale is None:
        return
    ds = dataset
    for _ in range(8):          # unwrap wrappers (they hold the wrapped dataset in ``.dataset``)
        if isinstance(ds, PairedImageFolders):
            break
        ds = getattr(ds, 'dataset', None)
    if not isinstance(ds, PairedImageFolders):
        return
    for i, s in enumerate(ds.pair_scales):
        if s != scale:
            lr, hr = ds.dataset_1.files[i], ds.dataset_2.files[i]
            raise DatasetError(f'{where}: the eval_type scale is x{scale:g} but {lr} is an x{s} LR of {hr}; '
                               f'use the LR folder of x{scale:g} (or a config for x{s})')
