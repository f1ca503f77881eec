"""Cheap up-front checks of a ``{dataset, wrapper, batch_size}`` spec, before any training or evaluation.

``check_loader_spec(spec, where)`` builds the dataset without its cache (listing the folders and, for
paired folders, reading the image headers: no pixels decoded, nothing written) and the wrapper around
it, so that every wrong argument (a path that is a number, ``inp_size: -5``, ``augment: 3``, a missing
folder, LR/HR files that do not pair) is reported in one line naming the entry before the run starts.
"""
from .registry import DatasetError, make


def check_loader_spec(spec, where):
    """Raise a ValueError-family error naming ``where`` if ``spec`` cannot give a dataset; returns it
    (built without cache) otherwise."""
    if not isinstance(spec, dict):
        raise DatasetError(f'{where}: must be a mapping {{dataset, wrapper, batch_size}}, got {type(spec).__name__}')
    ds_spec = spec.get('dataset')
    if not isinstance(ds_spec, dict):
        raise DatasetError(f'{where}.dataset: must be a mapping {{name, args}}, got {type(ds_spec).__name__}')
    args = ds_spec.get('args')
    if isinstance(args, dict) and args.get('cache') not in (None, 'none'):
        if args['cache'] not in ('bin', 'in_memory'):
            raise DatasetError(f"{where}.dataset.args.cache: must be none, bin or in_memory, got {args['cache']!r}")
        ds_spec = dict(ds_spec, args=dict(args, cache='none'))     # no decoding, no cache files
    try:
        base = make(ds_spec)
        wrapper = spec.get('wrapper')
        if wrapper:
            make(wrapper, args={'dataset': base})
    except ValueError as e:
        if not _rebuildable(e):
            raise
        raise type(e)(f'{where}: {e}') from None
    return base


def _rebuildable(error):
    try:
        type(error)('x')
        return True
    except Exception:
        return False
