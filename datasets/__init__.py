"""Datasets: image folders and the super-resolution wrappers, built by name from specs.

    >>> import datasets
    >>> hr = datasets.make({'name': 'image-folder', 'args': {'root_path': 'load/div2k/DIV2K_train_HR'}})
    >>> train = datasets.make({'name': 'sr-implicit-downsampled',
    ...                        'args': {'inp_size': 48, 'scale_max': 4, 'augment': True, 'sample_q': 2304}},
    ...                       args={'dataset': hr})

Registered names (the published LIIF / LMF ones, plus IGConv's integer-scale wrapper): ``image-folder``,
``paired-image-folders``, ``sr-implicit-downsampled``, ``sr-implicit-paired``,
``sr-implicit-uniform-varied``, ``sr-integer-downsampled``. ``datasets.samplers.ScaleBatchSampler``
forms single-scale batches for the latter. The IGConv repository's BasicSR datasets keep their published
names and option keys (``datasets.paired``: ``FixedScalePairedImageDataset``,
``FixedScaleDownsampleImageDataset``, ``RandomScaleDownsampleImageDataset``; disk or BasicSR lmdb folders). ``build_dataset(spec)`` builds a config's
``{dataset, wrapper}`` entry (``datasets/build.py``).
"""
from .registry import DatasetError, DatasetSpecError, get_dataset_class, list_datasets, make, register

from . import image_folder, wrappers, paired  # noqa: E402,F401  (populate the registry)
from .samplers import ScaleBatchSampler  # noqa: E402,F401
from .build import build_dataset, check_data_norm, image_names  # noqa: E402,F401
