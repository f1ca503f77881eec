"""Reading weights safely, shared by every checkpoint format (``models/checkpoint.py``,
``models/basicsr_checkpoint.py``): ``torch.load(weights_only=True)`` (memory-mapped), the checks every state
dict passes (named tensors, finite values) and the one-line description of weights that do not fit.
"""
import torch


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


def check_entries(sd, where, label):
    """Refuse a state dict whose entries are not ``name -> dense tensor`` (a string, a list, a sparse or
    quantised tensor), naming the first bad entry; ``label`` names the dict (``'model.sd'``)."""
    from utils.untrusted import excerpt
    for k, v in sd.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            raise CheckpointError(f"{where}: {label} entry {excerpt(k, 80)} is not a named tensor")
        if v.layout != torch.strided or v.is_quantized or v.is_meta:
            kind = 'quantised' if v.is_quantized else 'meta' if v.is_meta else str(v.layout).replace('torch.', '')
            raise CheckpointError(f"{where}: {label} entry {excerpt(k, 80)} is a {kind} tensor; weights are dense "
                                  f"tensors")


def check_dtypes(model, sd, where):
    """Refuse weights that are not floating point where the model's are (an integer tensor would be cast
    silently and the model's output be garbage or overflow), naming the first such entry."""
    own = model.state_dict()
    for key, value in sd.items():
        if torch.is_tensor(value) and key in own and own[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f'{where}: weight {key!r} is {str(value.dtype).replace("torch.", "")}, not floating '
                                  f'point: these are not trained weights of this model')


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


def strip_prefix(sd, prefix='module.'):
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd
