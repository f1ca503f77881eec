"""safetensors checkpoints: self-describing weight files that are read without unpickling anything.

A ``.safetensors`` file holds the state dict as raw tensors plus a JSON header; its string metadata
carries the model spec, so the file rebuilds its model on its own (``models.load_model(path)``)::

    assr.format      '1'
    assr.model.name  registry name, e.g. 'lmliif'
    assr.model.args  JSON of the constructor args (nested specs included)
    assr.extra       JSON of the other top-level checkpoint entries (epoch, provenance); optional

Reading parses the JSON header and copies tensor bytes (the ``safetensors`` library: no pickle, no
code), so a file from anywhere is safe to open. Tensors are written in their own dtype and shape: a
round trip is bit-exact. Used through ``models.checkpoint.load_checkpoint`` / ``save_checkpoint`` (by
extension or content) and ``scripts/export_model.py``.
"""
import json
import os
import struct

import torch

from utils.io import atomic_write
from utils.untrusted import MAX_DEPTH, ContentError, check_tree, excerpt, json_depth

FORMAT_VERSION = '1'
EXTENSION = '.safetensors'
#: Largest JSON header accepted (the library's own limit is 100 MB).
MAX_HEADER = 100 * 1024 * 1024


class WeightsError(RuntimeError):
    """Raised by this module; ``models.checkpoint`` turns it into a ``CheckpointError``."""


def is_safetensors(path):
    """True for a ``.safetensors`` name, or a file whose first bytes are a safetensors header
    (8-byte little-endian header length, then a JSON object)."""
    path = os.fspath(path)
    if path.lower().endswith(EXTENSION):
        return True
    try:
        with open(path, 'rb') as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = struct.unpack('<Q', head[:8])[0]
    return head[8:9] == b'{' and 2 <= n <= min(MAX_HEADER, os.path.getsize(path) - 8)


def _json(value, what):
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise WeightsError(f'{what} cannot be stored as JSON metadata ({e})') from None


def to_bytes(ckpt):
    """Serialise a checkpoint dict ``{'model': {'name', 'args', 'sd'}, ...}`` to safetensors bytes.

    Top-level entries other than 'model' must be JSON-serialisable (training state such as optimizer
    tensors is not: strip it first, as ``scripts/export_model.py`` does).
    """
    from safetensors.torch import save
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        raise WeightsError("expected a checkpoint dict with a 'model' entry {'name', 'args', 'sd'}")
    spec = ckpt['model']
    if not isinstance(spec.get('name'), str) or not isinstance(spec.get('sd'), dict):
        raise WeightsError("the 'model' entry needs a 'name' (str) and an 'sd' (state dict)")
    tensors = {}
    for key, value in spec['sd'].items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise WeightsError(f'state dict entry {excerpt(key, 80)} is not a named tensor')
        # a private contiguous CPU copy: safetensors refuses tensors that share memory (tied weights)
        tensors[key] = value.detach().to('cpu', copy=True).contiguous()
    extra = {k: v for k, v in ckpt.items() if k != 'model'}
    meta = {'format': 'pt', 'assr.format': FORMAT_VERSION, 'assr.model.name': spec['name'],
            'assr.model.args': _json(spec.get('args') or {}, "the model's args")}
    if extra:
        meta['assr.extra'] = _json(extra, 'the checkpoint entries ' + ', '.join(map(str, extra)))
    return save(tensors, metadata=meta)


def save(path, ckpt):
    """Write a checkpoint as a safetensors file, atomically."""
    data = to_bytes(ckpt)
    with atomic_write(path, 'wb') as f:
        f.write(data)


def load(path, map_location='cpu'):
    """Read a safetensors checkpoint into ``{'model': {'name', 'args', 'sd'}, **extra}`` (no unpickling)."""
    from safetensors import SafetensorError, safe_open
    path = os.fspath(path)
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f'{path} is not a readable safetensors file ({" ".join(str(e).split())[:300]})') from None
    name = meta.get('assr.model.name')
    if not name:
        raise WeightsError(f'{path}: a safetensors file without a model spec in its metadata '
                           f"('assr.model.name'); write it with scripts/export_model.py")
    version = meta.get('assr.format', FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise WeightsError(f'{path}: metadata format {version!r} is not supported (expected {FORMAT_VERSION!r})')
    try:
        texts = {k: meta.get(k) or '{}' for k in ('assr.model.args', 'assr.extra')}
        for key, text in texts.items():
            if json_depth(text) > MAX_DEPTH:
                raise ContentError(f'metadata {key!r} is nested more than {MAX_DEPTH} levels deep')
        args, extra = (check_tree(json.loads(texts[k]), f'metadata {k!r}') for k in texts)
    except (ValueError, RecursionError) as e:       # ContentError is a ValueError
        detail = ' '.join(str(e).split())[:200]
        raise WeightsError(f'{path}: corrupt model metadata ({detail})') from None
    if not isinstance(args, dict) or not isinstance(extra, dict):
        raise WeightsError(f"{path}: metadata 'assr.model.args' / 'assr.extra' must be JSON objects")
    if map_location is not None and str(map_location) != 'cpu':
        sd = {k: v.to(map_location) for k, v in sd.items()}
    extra.pop('model', None)
    return {**extra, 'model': {'name': name, 'args': args, 'sd': sd}}
