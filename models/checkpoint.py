"""Checkpoints: one loader for official LIIF / LTE / LMF files and our own, and atomic saving.

Format (self-describing, as the published ``train.py`` writes it)::

    {'model': {'name': <registry name>, 'args': <constructor args>, 'sd': <state dict>},
     ...optional training state: 'optimizer', 'epoch', ...}

Files are read with ``torch.load(weights_only=True)``: a pickle that would build arbitrary objects
(and could run code) is refused.
"""
import os
import pickle

import torch

from utils.io import atomic_write

from .registry import ModelSpecError, make


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unsafe, corrupt or not in the expected format."""


def _detail(error):
    """The informative line of a torch.load error (it wraps the cause in several lines of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        for marker in ('GLOBAL', 'Unsupported global', 'Unsupported operand'):
            if marker in line:
                return line.rstrip('.')
    informative = [line for line in lines if not line.startswith(('Weights only load failed', 'Please file',
                                                                  'Check the documentation'))]
    return (informative or lines or [type(error).__name__])[0].rstrip('.')


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint dict safely (tensors, containers and plain values only)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    if os.path.isdir(path):
        raise CheckpointError(f'checkpoint path is a directory: {path}')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f'refusing to load {path}: it is not a plain tensor checkpoint ({_detail(e)}); '
                              f'unpickling it fully could run code') from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({_detail(e)})') from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' entry {{'name', 'args', 'sd'}}")
    spec = ckpt['model']
    missing = [k for k in ('name', 'sd') if k not in spec]
    if missing:
        raise CheckpointError(f"{path}: the 'model' entry lacks {', '.join(missing)}")
    return ckpt


def model_spec(model_or_spec, sd=None):
    """A spec ``{'name', 'args', 'sd'}`` for saving (``sd`` taken from the model when not given)."""
    spec = dict(model_or_spec.spec if hasattr(model_or_spec, 'spec') else model_or_spec)
    if sd is not None:
        spec['sd'] = sd
    return spec


def strip_prefix(sd, prefix='module.'):
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_model(path_or_ckpt, map_location='cpu', strict=True):
    """Build a model from a checkpoint path (or an already loaded checkpoint dict) and load its weights.

    Handles a ``module.`` prefix (DataParallel / DDP saves); ``args`` may carry the extra keys official
    files can hold (``cmsr_spec``, ``mixed_le``). The model is returned in eval mode on ``map_location``.
    """
    ckpt = load_checkpoint(path_or_ckpt, map_location) if not isinstance(path_or_ckpt, dict) else path_or_ckpt
    spec = dict(ckpt['model'])
    spec['args'] = dict(spec.get('args') or {})
    spec['sd'] = strip_prefix(spec['sd'])
    where = path_or_ckpt if not isinstance(path_or_ckpt, dict) else 'checkpoint'
    try:
        model = make(spec, load_sd=True, strict=strict)
    except ModelSpecError as e:
        raise CheckpointError(f'{where}: {e}') from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f'{where}: weights do not fit model {spec["name"]!r}: {first}') from None
    return model.to(map_location).eval()


def save_checkpoint(path, ckpt):
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename)."""
    with atomic_write(path, 'wb') as f:
        torch.save(ckpt, f)
