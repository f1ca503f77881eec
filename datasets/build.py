"""Datasets from the configs' specs: ``{dataset: {...}, wrapper: {...}?}`` (the published format), the
normalisation check of a config's ``data_norm``, and the image names behind a dataset.
"""
import os

from .registry import make


def check_data_norm(cfg, where='config'):
    """Accept a config's ``data_norm`` only when it is the published (x - 0.5) / 0.5 every model uses."""
    from utils.config import ConfigError
    norm = cfg.get('data_norm')
    if norm is None:
        return
    if not isinstance(norm, dict):
        raise ConfigError(f'{where}: data_norm must be a mapping {{inp: {{sub, div}}, gt: {{sub, div}}}}')
    for key in ('inp', 'gt'):
        part = norm.get(key) or {}
        try:
            sub = [float(v) for v in part.get('sub', [0.5])]
            div = [float(v) for v in part.get('div', [0.5])]
        except (TypeError, ValueError, AttributeError):
            raise ConfigError(f'{where}: data_norm.{key} must hold lists of numbers, got {part!r}') from None
        if any(v != 0.5 for v in sub) or any(v != 0.5 for v in div):
            raise ConfigError(f'{where}: data_norm.{key} = {part}: the models here use the published '
                              f'normalisation (x - 0.5) / 0.5 only (sub [0.5], div [0.5])')


def build_dataset(spec, where='config', seed=None):
    """A dataset from ``{dataset: {...}, wrapper: {...}?}`` (the configs' format); ``seed`` is passed to
    wrappers that take one (training)."""
    from utils.config import require
    base = make(require(spec, 'dataset', where=where))
    wrapper = spec.get('wrapper')
    if not wrapper:
        return base
    extra = {'dataset': base}
    if seed is not None:
        extra['seed'] = seed
    return make(wrapper, args=extra)


def image_names(ds):
    """File stems of the HR images behind a (wrapped) dataset, in order, or None."""
    base = getattr(ds, 'dataset', ds)
    folder = getattr(base, 'dataset_2', base)
    files = getattr(folder, 'files', None)
    if not files:
        return None
    return [os.path.splitext(os.path.basename(f))[0] for f in files] * getattr(folder, 'repeat', 1)
