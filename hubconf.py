"""torch.hub entry points.

    import torch
    model = torch.hub.load('path/to/clone', 'lm_liif', pretrained=True, source='local')   # bundled LM-LIIF
    out = torch.hub.load('path/to/clone', 'upscale', 'photo.png', scale=3.5, source='local')  # -> photo_x3.5.png

Models (in eval mode; inputs (B, 3, h, w) normalised as (x - 0.5) / 0.5; render whole images with
``engine.inference.Session(model)`` or the ``upscale`` entry):

* ``lm_liif``, ``lm_lte``: EDSR-baseline LM-LIIF / LM-LTE; ``pretrained=True`` (default) loads the bundled
  weights (``save/pretrained_models/*.safetensors``, trained on the stand-in photos of this repository).
* ``liif``, ``lte``, ``metasr``, ``igconv``, ``igconv_plus``: EDSR-baseline architectures with random
  weights (no bundled weights: ``pretrained=True`` raises); pass ``weights=PATH`` to load a checkpoint.
* ``from_checkpoint(path)``: any checkpoint of this repository or the published LIIF/LTE/LMF code
  (.pth or .safetensors).
* ``upscale(image, scale=None, size=None, model=None, ...)``: ``api.upscale`` (path, PIL image, numpy
  array or tensor in, the same kind out); ``model`` may also be an entry name such as 'lm_lte'.
"""
import copy
import os

dependencies = ['torch', 'numpy', 'PIL', 'yaml']

_ROOT = os.path.dirname(os.path.abspath(__file__))
_BUNDLED = os.path.join(_ROOT, 'save', 'pretrained_models')

#: entry name -> (training config whose model spec builds it, bundled weights stem or None)
_MODELS = {
    'lm_liif': ('configs/train-lmf/train_edsr-baseline-lmliif.yaml', 'edsr-b_lm-liif'),
    'lm_lte': ('configs/train-lmf/train_edsr-baseline-lmlte.yaml', 'edsr-b_lm-lte'),
    'liif': ('configs/train-original/train_edsr-baseline-liif.yaml', None),
    'lte': ('configs/train-original/train_edsr-baseline-lte.yaml', None),
    'metasr': ('configs/train-original/train_edsr-baseline-metasr.yaml', None),
    'igconv': ('configs/train-igconv/train_igconv-edsr-baseline.yaml', None),
    'igconv_plus': ('configs/train-igconv/train_igconv-plus-edsr-baseline.yaml', None),
}


def _bundled_file(stem):
    for ext in ('.safetensors', '.pth'):
        path = os.path.join(_BUNDLED, stem + ext)
        if os.path.exists(path):
            return path
    raise ValueError(f'bundled weights {stem}.safetensors not found in {_BUNDLED}')


def _build(name, pretrained, weights, device):
    import models
    from utils.config import load_config
    config, stem = _MODELS[name]
    if weights is not None and pretrained:
        raise ValueError(f'{name}: give pretrained=True or weights=PATH, not both')
    if weights is not None:
        return from_checkpoint(weights, device)
    if pretrained:
        if stem is None:
            bundled = ', '.join(k for k, (_, s) in _MODELS.items() if s)
            raise ValueError(f'{name}: no bundled weights (bundled: {bundled}); use pretrained=False or weights=PATH')
        return from_checkpoint(_bundled_file(stem), device)
    spec = copy.deepcopy(load_config(os.path.join(_ROOT, config))['model'])
    return models.make(spec).to(device).eval()


def _entry(name):
    def entry(pretrained=None, weights=None, device='cpu'):
        default = _MODELS[name][1] is not None
        return _build(name, default if pretrained is None else bool(pretrained), weights, device)
    bundled = _MODELS[name][1] is not None
    entry.__name__ = name
    entry.__doc__ = (f'EDSR-baseline {name} ({_MODELS[name][0]}). '
                     + ('pretrained=True (default): the bundled weights. ' if bundled else
                        'Random weights (pretrained=False, default); weights=PATH loads a checkpoint. ')
                     + 'Returned in eval mode on ``device``.')
    return entry


lm_liif = _entry('lm_liif')
lm_lte = _entry('lm_lte')
liif = _entry('liif')
lte = _entry('lte')
metasr = _entry('metasr')
igconv = _entry('igconv')
igconv_plus = _entry('igconv_plus')


def from_checkpoint(path, device='cpu'):
    """A model from a checkpoint (.pth or .safetensors), in eval mode on ``device``; its ``capabilities``
    carry the checkpoint's training scale, so rendering it (``upscale``, ``engine.inference.Session``) gives
    what ``demo.py`` gives for the same file."""
    from engine.inference import load_model
    return load_model(os.fspath(path), device, 'hubconf')


def upscale(image, scale=None, size=None, model=None, **kwargs):
    """``api.upscale``; ``model`` may be an entry name ('lm_liif', 'lm_lte', ...), a path or a model."""
    import api
    if isinstance(model, str) and model in _MODELS:
        model = _build(model, _MODELS[model][1] is not None, None, kwargs.get('device') or 'cpu')
    return api.upscale(image, scale=scale, size=size, model=model, **kwargs)
