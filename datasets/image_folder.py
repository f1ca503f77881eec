"""Image folders: ``image-folder`` and ``paired-image-folders`` (published names and arguments, spec §6).

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

import numpy as np
from torch.utils.data import Dataset

from utils.image import ImageError, array_to_tensor, is_image_file, load_array
from utils.io import atomic_write

from .registry import DatasetError, register

CACHE_MODES = ('none', 'bin', 'in_memory')


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

    def __init__(self, root_path, split_file=None, split_key=None, first_k=None, repeat=1, cache='none'):
        if cache not in CACHE_MODES:
            raise DatasetError(f'image-folder: cache must be one of {", ".join(CACHE_MODES)}, got {cache!r}')
        if int(repeat) < 1:
            raise DatasetError(f'image-folder: repeat must be >= 1, got {repeat!r}')
        roots = [root_path] if isinstance(root_path, (str, os.PathLike)) else list(root_path)
        if not roots:
            raise DatasetError('image-folder: root_path is an empty list')
        roots = [os.path.normpath(os.fspath(r)) for r in roots]
        self.root, self.repeat, self.cache = roots[0] if len(roots) == 1 else roots, int(repeat), cache
        self.files = [f for r in roots for f in _list_files(r, split_file, split_key, None)]
        if first_k is not None:
            self.files = self.files[:first_k]
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

    def __getitem__(self, idx):
        i = idx % len(self.files)
        if self.arrays is not None:
            return array_to_tensor(self.arrays[i])
        if self.bin_files is not None:
            return array_to_tensor(_load_bin(self.bin_files[i]))
        return array_to_tensor(load_array(self.files[i])[0])


@register('paired-image-folders')
class PairedImageFolders(Dataset):
    """Pairs ``(img_1, img_2)`` of two folders (LR, HR), matched by sorted file order, as published.

    The other arguments apply to both folders (see ``image-folder``). Unequal file counts are an error.
    """

    def __init__(self, root_path_1, root_path_2, split_file=None, split_key=None, first_k=None, repeat=1,
                 cache='none'):
        kwargs = dict(split_file=split_file, split_key=split_key, first_k=first_k, repeat=repeat, cache=cache)
        self.dataset_1 = ImageFolder(root_path_1, **kwargs)
        self.dataset_2 = ImageFolder(root_path_2, **kwargs)
        n1, n2 = len(self.dataset_1.files), len(self.dataset_2.files)
        if n1 != n2:
            raise DatasetError(f'paired folders hold different numbers of images: {self.dataset_1.root} has {n1}, '
                               f'{self.dataset_2.root} has {n2}')

    def __len__(self):
        return len(self.dataset_1)

    def path(self, idx):
        return f'{self.dataset_1.path(idx)} | {self.dataset_2.path(idx)}'

    def __getitem__(self, idx):
        return self.dataset_1[idx], self.dataset_2[idx]
