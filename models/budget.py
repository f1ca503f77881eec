"""Sizes of a model before it exists: build a spec on the ``meta`` device (no memory is allocated, no
weights are initialised for real) and count its parameters and buffers, so that a config or checkpoint
declaring an absurd model (60,000 features, 2,000 blocks) is refused in one line instead of
allocating gigabytes.
"""
import torch

from .registry import MODELS


def tensor_count(spec):
    """Elements in the parameters and buffers of the model ``spec`` would build (None when its constructor
    cannot run on the meta device, e.g. it reads a value with ``.item()``)."""
    try:
        with torch.device('meta'):
            model = MODELS.build(spec)
    except (NotImplementedError, RuntimeError):
        return None
    return sum(t.numel() for t in model.parameters()) + sum(b.numel() for b in model.buffers())


def parameter_bytes(spec, copies=1):
    """Float32 bytes of ``copies`` copies of the model's tensors (None when unknown)."""
    n = tensor_count(spec)
    return None if n is None else 4 * n * copies
