"""The dataset registry: ``register(name)`` and ``make(spec, args=None)``, mirroring ``models.registry``.

A *spec* is ``{'name': <registered name>, 'args': {...}}``, what YAML configs write under
``dataset:`` and ``wrapper:``. A wrapper receives the dataset it wraps through ``args``:
``make(wrapper_spec, args={'dataset': make(dataset_spec)})``.
"""
from utils.registry import Registry


class DatasetSpecError(ValueError):
    """A dataset spec names an unknown dataset or passes arguments its constructor does not take."""


class DatasetError(ValueError):
    """The data does not fit: a missing or empty folder, unequal pairs, an image too small for a crop."""


DATASETS = Registry('dataset', DatasetSpecError)
register = DATASETS.register
list_datasets = DATASETS.names
get_dataset_class = DATASETS.get


def make(spec, args=None):
    """Build a dataset from ``{'name', 'args'}``; ``args`` are merged over a deep copy of ``spec['args']``."""
    return DATASETS.build(spec, args)
