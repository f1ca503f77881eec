"""Images stored in a BasicSR lmdb folder (``X.lmdb/``), read with the optional ``lmdb`` package.

BasicSR's ``scripts/data_preparation/create_lmdb.py`` writes a folder whose name ends in ``.lmdb``::

    DIV2K_train_HR_sub.lmdb/
        data.mdb, lock.mdb    the lmdb environment: key (image name without extension, ASCII) -> PNG bytes
        meta_info.txt         one line per image: '<name>.png (<h>,<w>,<c>) <compression level>'

The keys are read from ``meta_info.txt`` as BasicSR does (the text before the first '.' of each line), in
file order. Values are decoded with PIL and returned as float32 RGB (3, H, W) in [0, 1] (an 8-bit sample k
becomes k / 255, as ``utils.image``; gray images are repeated over three channels).

The environment is opened on first access in each process, once per folder (read-only, no lock, no
read-ahead, as BasicSR's ``LmdbBackend``), so the dataset can be sent to DataLoader workers. Without the ``lmdb``
package, constructing one raises ``DatasetError`` naming the folder and the package to install.
"""
import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from utils.image import array_to_tensor

from .registry import DatasetError

META_INFO = 'meta_info.txt'


def _lmdb_module(root):
    try:
        import lmdb
    except ImportError:
        raise DatasetError(f'{root}: reading an lmdb folder needs the optional lmdb package (pip install lmdb), '
                           f'or io_backend type disk with an image folder') from None
    return lmdb


def lmdb_keys(root):
    """The keys of a BasicSR lmdb folder, from its meta_info.txt, in file order."""
    if not str(root).endswith('.lmdb'):
        raise DatasetError(f'{root}: an lmdb folder name must end in .lmdb (BasicSR layout)')
    meta = os.path.join(root, META_INFO)
    if not os.path.isfile(meta):
        raise DatasetError(f'{root}: not a BasicSR lmdb folder (no {META_INFO})')
    with open(meta) as f:
        keys = [line.split('.')[0] for line in f if line.strip()]
    if not keys:
        raise DatasetError(f'{meta}: lists no image')
    return keys


#: (process id, folder) -> open environment: lmdb refuses to open a folder twice in one process, and a
#: forked DataLoader worker must not use its parent's handle.
_ENVS = {}


def _environment(root):
    key = (os.getpid(), os.path.realpath(root))
    if key not in _ENVS:
        _ENVS[key] = _lmdb_module(root).open(root, readonly=True, lock=False, readahead=False)
    return _ENVS[key]


class LmdbImages(Dataset):
    """The images of a BasicSR lmdb folder: item i is the image of ``keys[i % len(keys)]``.

    Args:
        root: the ``.lmdb`` folder.
        keys: the keys to read, in this order (default: all of meta_info.txt).
    """

    def __init__(self, root, keys=None):
        _lmdb_module(root)
        self.root = os.path.normpath(os.fspath(root))
        if not os.path.isfile(os.path.join(self.root, 'data.mdb')):
            raise DatasetError(f'{self.root}: not an lmdb environment (no data.mdb)')
        self.keys = list(keys) if keys is not None else lmdb_keys(self.root)

    def __len__(self):
        return len(self.keys)

    def path(self, idx):
        return f'{self.root}[{self.keys[idx % len(self.keys)]}]'

    def __getitem__(self, idx):
        key = self.keys[idx % len(self.keys)]
        with _environment(self.root).begin(write=False) as txn:
            data = txn.get(key.encode('ascii'))
        if data is None:
            raise DatasetError(f'{self.root}: key {key!r} (listed in {META_INFO}) is not in the database')
        try:
            with Image.open(io.BytesIO(data)) as im:
                return array_to_tensor(np.array(im.convert('RGB')))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DatasetError(f'{self.path(idx)}: cannot decode the stored image ({e})') from None
