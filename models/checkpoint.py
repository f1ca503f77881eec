"""Checkpoints: one loader for official LIIF / LTE / LMF files and our own, and atomic saving.

Format (self-describing, as the published ``train.py`` writes it)::

    {'model': {'name': <registry name>, 'args': <constructor args>, 'sd': <state dict>},
     ...optional training state: 'optimizer', 'epoch', ...}

Files are read with ``torch.load(weights_only=True)``: a pickle that would build arbitrary objects
(and could run code) is refused. ``.safetensors`` files (``models/weights.py``: the spec in the metadata)
are read and written without any pickle at all.
"""
import os
import pickle
import struct
import zipfile

import torch

from utils.io import atomic_write
from utils.untrusted import ContentError, check_tree, excerpt

from .budget import ModelSizeError, check_spec_size
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


#: What ``torch.load`` raises on damaged or tampered files (a ``data.pkl`` naming missing records, bad
#: offsets, truncated zip members, nesting bombs, ...).
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, IndexError, TypeError,
               RecursionError, OverflowError, struct.error, zipfile.BadZipFile)


def _load(path, map_location):
    """``torch.load(weights_only=True)``, memory-mapped when the file allows it: tensors are not read (nor
    allocated) before they are used, so a file declaring huge tensors cannot demand memory up front."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except RuntimeError as e:
        if 'mmap' not in str(e) and 'zipfile' not in str(e):      # legacy (non-zip) files cannot be mapped
            raise
    return torch.load(path, map_location=map_location, weights_only=True)


def check_finite(sd, where):
    """Refuse a state dict holding NaN or infinite values, naming the first such tensor."""
    for key, value in sd.items():
        if torch.is_tensor(value) and value.is_floating_point() and value.numel() \
                and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f'{where}: weight {key!r} holds {bad} non-finite value(s) (NaN/inf) of '
                                  f'{value.numel()}; the run that wrote it diverged; use an earlier checkpoint')


def _shape_mismatch(model, sd):
    """One line listing every missing, unexpected and differently shaped entry (None if they agree)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}' for k in own
              if k in sd and torch.is_tensor(sd[k]) and tuple(sd[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (('missing', missing), ('unexpected', unexpected), ('shape (file vs model)', shapes)):
        if items:
            shown = ', '.join(items[:8]) + (f', ... ({len(items) - 8} more)' if len(items) > 8 else '')
            parts.append(f'{len(items)} {label}: {shown}')
    return '; '.join(parts) or None


MAX_ARG = 1 << 16     # no layer width, depth or list entry in a checkpoint's args beyond this


def _large_ints(value, path):
    """(path, value) of the first integer above MAX_ARG inside nested args, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (path, value) if abs(value) > MAX_ARG else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        found = _large_ints(v, f'{path}.{k}' if isinstance(value, dict) else f'{path}[{k}]')
        if found:
            return found
    return None


def _check_spec(spec, where):
    """Before anything is built: the types of the checkpoint's name/args, no absurd sizes in the args (a
    hostile file cannot make the constructor allocate unbounded memory), and a state dict of named
    tensors (memory-mapped, so its declared sizes cost nothing yet). Shapes are then compared by
    ``load_state_dict``, whose full message is kept."""
    from utils.validate import InputError, spec_types

    from .registry import MODELS
    if not isinstance(spec.get('sd'), dict):
        raise CheckpointError(f"{where}: 'model.sd' must be a state dict (mapping), got "
                              f"{type(spec.get('sd')).__name__}")
    bad = [k for k, v in spec['sd'].items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{where}: 'model.sd' entry {excerpt(bad[0], 80)} is not a named tensor")
    try:
        spec_types(spec, MODELS, 'model')
    except InputError as e:
        raise CheckpointError(f'{where}: {e}') from None
    large = _large_ints(spec['args'], 'model.args')
    if large:
        raise CheckpointError(f'{where}: {large[0]} = {large[1]} is implausibly large (limit {MAX_ARG}); '
                              f'refusing to build such a model')


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint dict safely (tensors, containers and plain values only)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    if os.path.isdir(path):
        raise CheckpointError(f'checkpoint path is a directory: {path}')
    if not os.path.isfile(path):      # a FIFO, socket or device would block or stream forever
        raise CheckpointError(f'checkpoint {path} is not a regular file')
    from . import weights
    if weights.is_safetensors(path):
        try:
            return weights.load(path, map_location)
        except weights.WeightsError as e:
            raise CheckpointError(str(e)) from None
    try:
        ckpt = check_tree(_load(path, map_location), path, leaf_types=(torch.Tensor, torch.Size))
    except pickle.UnpicklingError as e:
        raise CheckpointError(f'refusing to load {path}: it is not a plain tensor checkpoint ({_detail(e)}); '
                              f'unpickling it fully could run code') from None
    except ContentError as e:
        raise CheckpointError(str(e)) from None
    except _UNREADABLE as e:    # a tampered archive fails anywhere inside torch.load
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: '
                              f'{_detail(e)[:200]})') from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        from .basicsr_checkpoint import describe, is_basicsr
        if is_basicsr(ckpt):
            raise CheckpointError(f'{path}: a BasicSR checkpoint ({describe(ckpt)}) does not name its architecture: '
                                  f'load it with models.load_model(path, arch=NAME or options=OPTION.yml), or '
                                  f'convert it with scripts/convert_basicsr.py')
        raise CheckpointError(f"{path}: expected a dict with a 'model' entry {{'name', 'args', 'sd'}}; "
                              f"found {describe(ckpt)}")
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


def load_model(path_or_ckpt, map_location='cpu', strict=True, arch=None, options=None, args=None, where=None):
    """Build a model from a checkpoint path (or an already loaded checkpoint dict) and load its weights.

    Handles a ``module.`` prefix (DataParallel / DDP saves); ``args`` may carry the extra keys official
    files can hold (``cmsr_spec``, ``mixed_le``). The model is returned in eval mode on ``map_location``.

    BasicSR checkpoints of the published IGConv architectures (``{'params_ema': sd, 'params': sd}`` or
    ``{'params': sd}``, ``params_ema`` preferred) load with ``arch='EDSRIGPlus'`` (published option
    arguments; ``args`` replaces them) or ``options='option.yml'`` (its ``network_g``; ``args`` updates it):
    see ``models/basicsr_checkpoint.py``.

    Refused with a one-line ``CheckpointError`` (naming ``where``, default the path): wrong types in
    ``name``/``args`` (the entry named), implausibly large sizes in ``args`` (before anything is built),
    non-finite weights (the tensor named), weights that do not fit (every missing / unexpected /
    mis-shaped entry listed, not cut).
    """
    if arch is not None or options is not None:
        from .basicsr_checkpoint import load_basicsr
        return load_basicsr(path_or_ckpt, arch=arch, options=options, args=args, map_location=map_location,
                            strict=strict)
    if args is not None:
        raise CheckpointError('args= is only used with arch= or options= (BasicSR checkpoints)')
    ckpt = load_checkpoint(path_or_ckpt, map_location) if not isinstance(path_or_ckpt, dict) else path_or_ckpt
    if where is None:     # how errors name the checkpoint
        where = path_or_ckpt if not isinstance(path_or_ckpt, dict) else 'checkpoint'
    spec = dict(ckpt['model'])
    args = spec.get('args')
    if args is not None and not isinstance(args, dict):
        raise CheckpointError(f"{where}: 'model.args' must be a mapping, got {type(args).__name__} {excerpt(args, 60)}")
    spec['args'] = dict(args or {})
    _check_spec(spec, where)
    spec['sd'] = strip_prefix(spec['sd'])
    check_finite(spec['sd'], where)
    try:
        check_spec_size(spec, where, holds=sum(v.numel() for v in spec['sd'].values()) if strict else None)
    except ModelSizeError as e:
        raise CheckpointError(str(e)) from None
    try:
        model = make(spec, load_sd=True, strict=strict)
    except ModelSpecError as e:
        raise CheckpointError(f'{where}: {e}') from None
    except (RuntimeError, TypeError, ValueError) as e:
        detail = None
        try:
            detail = _shape_mismatch(make({'name': spec['name'], 'args': spec['args']}), spec['sd'])
        except Exception:      # the constructor itself failed: report its own message
            pass
        raise CheckpointError(f'{where}: weights do not fit model {spec["name"]!r} with these args: '
                              f'{detail or " ".join(str(e).split())[:2000]}') from None
    return model.to(map_location).eval()


def save_checkpoint(path, ckpt):
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename); a ``.safetensors``
    path writes safetensors (``models/weights.py``: no training state, the spec in the metadata)."""
    from . import weights
    if os.fspath(path).lower().endswith(weights.EXTENSION):
        try:
            return weights.save(path, ckpt)
        except weights.WeightsError as e:
            raise CheckpointError(f'{path}: {e}') from None
    try:
        with atomic_write(path, 'wb') as f:
            sink = _RecordingWriter(f)
            try:
                torch.save(ckpt, sink)
            except RuntimeError:
                if sink.error is not None:       # torch reports a failed write as an opaque RuntimeError
                    raise sink.error from None
                raise
    except OSError as e:
        kept = 'the previous file is unchanged' if os.path.exists(path) else 'nothing was written'
        raise OSError(e.errno, f'cannot write {path}: {e.strerror or e} ({kept})') from None


class _RecordingWriter:
    """A binary file wrapper that remembers the ``OSError`` of a failed write (disk full, quota, I/O
    error), which ``torch.save`` would otherwise turn into an unrelated-looking RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        return self.f.flush()
