"""torch.hub entry points.

    import torch
    up = torch.hub.load('path/to/clone', 'lm_liif', source='local')        # bundled LM-LIIF, image to image
    big = up(torch.rand(1, 3, 48, 48), 2.5)               # float (B, 3, h, w) in [0, 1] -> (B, 3, 120, 120)
    pil = up(Image.open('photo.png'), size=(1920, 1080))   # PIL in, PIL out; size is (width, height)
    out = torch.hub.load('path/to/clone', 'upscale', 'photo.png', scale=3.5, network='lm_lte', source='local')

The model entries return an ``api.ImageUpscaler``: the network (``.sr_model``, in eval mode; its inputs are
normalised as (x - 0.5) / 0.5) with the engine around it, so calling it on an image with a scale or a size
renders it as ``demo.py`` does (``api.upscale``: PIL images, numpy arrays, tensors, paths). Every error is an
``engine.errors.UpscaleError`` with a one-line message.

* ``lm_liif``, ``lm_lte``: EDSR-baseline LM-LIIF / LM-LTE; ``pretrained=True`` (default; a bool, anything
  else such as the string 'False' is refused) loads the bundled
  weights (``save/pretrained_models/*.safetensors``, trained on the stand-in photos of this repository).
* ``liif``, ``lte``, ``metasr``, ``igconv``, ``igconv_plus``: EDSR-baseline architectures with random
  weights (no bundled weights: ``pretrained=True`` raises); pass ``weights=PATH`` to load a checkpoint.
* ``from_checkpoint(path)``: any checkpoint of this repository or the published LIIF/LTE/LMF code
  (.pth or .safetensors).
* ``upscale(image, scale=None, size=None, network=None, ...)``: ``api.upscale`` (path, folder, PIL image,
  numpy array or tensor in, the same kind out); ``network`` is an entry name such as 'lm_lte', a checkpoint
  path or a model (``torch.hub.load`` keeps the keyword ``model`` for itself, so the API's ``model=`` is
  spelled ``network=`` here; called directly, ``model=`` works too).
"""
import copy
import os

dependencies = ['torch', 'numpy', 'PIL', 'yaml']

from engine.inference import BUNDLED_DIR as _BUNDLED, REPO_ROOT as _ROOT  # noqa: E402  (the one root)

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


def _error(message):
    from engine.errors import UpscaleError
    return UpscaleError(message)


def _bundled_file(stem):
    for ext in ('.safetensors', '.pth'):
        path = os.path.join(_BUNDLED, stem + ext)
        if os.path.exists(path):
            return path
    raise _error(f'bundled weights {stem}.safetensors not found in {_BUNDLED}')


def _network(name, pretrained, weights, device):
    import models
    from utils.config import load_config
    config, stem = _MODELS[name]
    if weights is not None and pretrained:
        raise _error(f'{name}: give pretrained=True or weights=PATH, not both')
    if weights is not None:
        return _load(weights, device)
    if pretrained:
        if stem is None:
            bundled = ', '.join(k for k, (_, s) in _MODELS.items() if s)
            raise _error(f'{name}: no bundled weights (bundled: {bundled}); use pretrained=False or weights=PATH')
        return _load(_bundled_file(stem), device)
    spec = copy.deepcopy(load_config(os.path.join(_ROOT, config))['model'])
    return models.make(spec).to(device).eval()


def _build(name, pretrained, weights, device):
    """The ``ImageUpscaler`` of entry ``name``; ``pretrained``: None (the entry's default) or a bool."""
    import api
    if pretrained is not None and not isinstance(pretrained, bool):
        raise _error(f'{name}: pretrained must be True or False, got {pretrained!r:.40}')
    if pretrained is None:
        pretrained = _MODELS[name][1] is not None and weights is None
    with api._translated():
        return api.ImageUpscaler(_network(name, pretrained, weights, device))


def _entry(name):
    def entry(pretrained=None, weights=None, device='cpu'):
        return _build(name, pretrained, weights, device)
    bundled = _MODELS[name][1] is not None
    entry.__name__ = name
    entry.__doc__ = (f'EDSR-baseline {name} ({_MODELS[name][0]}). '
                     + ('pretrained=True (default): the bundled weights. ' if bundled else
                        'Random weights (pretrained=False, default); weights=PATH loads a checkpoint. ')
                     + 'Returns an ``api.ImageUpscaler`` (call it on an image with a scale or a size; the network '
                       'is ``.sr_model``), in eval mode on ``device``.')
    return entry


lm_liif = _entry('lm_liif')
lm_lte = _entry('lm_lte')
liif = _entry('liif')
lte = _entry('lte')
metasr = _entry('metasr')
igconv = _entry('igconv')
igconv_plus = _entry('igconv_plus')


def _load(path, device):
    from engine.inference import load_model
    return load_model(os.fspath(path), device, 'hubconf')


def from_checkpoint(path, device='cpu'):
    """An ``api.ImageUpscaler`` for a checkpoint (.pth or .safetensors), in eval mode on ``device``; the
    network's ``capabilities`` carry the checkpoint's training scale, so calling it gives what ``demo.py``
    gives for the same file."""
    import api
    with api._translated():
        return api.ImageUpscaler(_load(path, device))


def upscale(image, scale=None, size=None, network=None, **kwargs):
    """``api.upscale``; ``network`` (``model=`` when called directly) is an entry name ('lm_liif', 'lm_lte',
    ...), a checkpoint path, a model or None (the bundled LM-LIIF)."""
    import api
    if 'model' in kwargs:
        if network is not None:
            raise _error('upscale: give network= or model=, not both')
        network = kwargs.pop('model')
    if isinstance(network, str) and network in _MODELS:
        network = _build(network, None, None, kwargs.get('device') or 'cpu')
    return api.upscale(image, scale=scale, size=size, model=network, **kwargs)
