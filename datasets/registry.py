"""The dataset registry: ``register(name)`` and ``make(spec, args=None)``, mirroring ``models.registry``.

A *spec* is ``{'name': <registered name>, 'args': {...}}``, what YAML configs write under
``dataset:`` and ``wrapper:``. A wrapper receives the dataset it wraps through ``args``:
``make(wrapper_spec, args={'dataset': make(dataset_spec)})``.
"""
import copy
import difflib
import inspect

_DATASETS = {}


class DatasetSpecError(ValueError):
    """A dataset spec names an unknown dataset or passes arguments its constructor does not take."""


class DatasetError(ValueError):
    """The data does not fit: a missing or empty folder, unequal pairs, an image too small for a crop."""


def register(name):
    """Decorator that registers a dataset class under ``name``."""
    def decorator(cls):
        if name in _DATASETS:
            raise KeyError(f'dataset name {name!r} is registered twice')
        _DATASETS[name] = cls
        cls.registry_name = name
        return cls
    return decorator


def list_datasets():
    """Sorted names of every registered dataset."""
    return sorted(_DATASETS)


def get_dataset_class(name):
    if name not in _DATASETS:
        hint = difflib.get_close_matches(str(name), _DATASETS, n=1)
        hint = f' (did you mean {hint[0]!r}?)' if hint else ''
        raise DatasetSpecError(f'unknown dataset {name!r}{hint}; registered datasets: {", ".join(list_datasets())}')
    return _DATASETS[name]


def make(spec, args=None):
    """Build a dataset from ``{'name', 'args'}``; ``args`` are merged over a deep copy of ``spec['args']``."""
    if not isinstance(spec, dict) or 'name' not in spec:
        raise DatasetSpecError(f'a dataset spec must be a dict with a "name" key, got {spec!r:.200}')
    name = spec['name']
    cls = get_dataset_class(name)
    ds_args = copy.deepcopy(spec.get('args') or {})
    if not isinstance(ds_args, dict):
        raise DatasetSpecError(f'dataset {name!r}: "args" must be a mapping, got {type(ds_args).__name__}')
    if args:
        ds_args.update(args)
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(ds_args) - set(params))
        if unknown:
            raise DatasetSpecError(f'dataset {name!r} does not take argument(s) {", ".join(map(repr, unknown))}; '
                                   f'it takes: {", ".join(params)}')
        missing = [k for k, p in params.items() if p.default is p.empty and k not in ds_args
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            raise DatasetSpecError(f'dataset {name!r} needs argument(s) {", ".join(map(repr, missing))}')
    return cls(**ds_args)
