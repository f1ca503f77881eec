"""Sizes of a model before it exists, so that a config or checkpoint declaring an absurd model (60,000
features, 2,000 blocks) is refused in one line instead of allocating gigabytes.

:func:`check_spec_size` first takes a crude upper bound from the spec's integer arguments (free); only
when that bound could exceed the memory does it build the spec on the ``meta`` device (nothing allocated,
nothing initialised) and count the elements of its parameters and buffers exactly. The meta build can cost
seconds the first time (PyTorch imports its meta kernels), which is why it is not done for every model.
"""
import torch

from utils.resources import available_memory

from .registry import MODELS

#: Bytes per element of a float32 tensor.
FLOAT32 = 4


class ModelSizeError(ValueError):
    """A spec declares a model that cannot fit in memory, or larger than the weights a checkpoint holds."""


def crude_element_bound(args):
    """A rough bound on the tensor elements a spec's constructor allocates, from its explicit integer arguments
    (defaults are the code's own, not hostile): 32 x (largest integer)^2 x (sum of integers) covers
    convolutions up to 5x5 and several layers per block."""
    largest = total = 0
    stack = [args]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            largest, total = max(largest, abs(v)), total + abs(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return 32 * largest * largest * max(total, 1)


def tensor_count(spec):
    """Elements in the parameters and buffers the model of ``spec`` would have (None when its constructor
    cannot run on the meta device, e.g. it reads a value with ``.item()``)."""
    try:
        with torch.device('meta'):
            model = MODELS.build(spec)
    except (NotImplementedError, RuntimeError):
        return None
    return sum(t.numel() for t in model.parameters()) + sum(b.numel() for b in model.buffers())


def check_spec_size(spec, where, copies=1, holds=None, device='cpu'):
    """Refuse ``spec`` when its tensors (``copies`` float32 copies of them: 4 for training with Adam) exceed
    the free memory of ``device``, or, with ``holds`` (the element count of a checkpoint's state dict), when
    the model would be larger than the weights it is loaded from. Returns the exact count when computed."""
    free = available_memory(device)
    bound = crude_element_bound(spec.get('args') or {})
    if free is None or bound * FLOAT32 * copies <= free // 2:
        return None
    n = tensor_count(spec)
    if n is None:
        return None
    if holds is not None and n > holds:
        raise ModelSizeError(f'{where}: the model declared by its args has {n:,} weight elements but the file holds '
                             f'only {holds:,}: the args do not describe these weights')
    need = n * FLOAT32 * copies
    if free is not None and need > free:
        raise ModelSizeError(f'{where}: the model has {n:,} weight elements, {need / 2**30:.3g} GiB '
                             f'({copies} float32 cop{"y" if copies == 1 else "ies"}), more than the '
                             f'{free / 2**30:.3g} GiB of free memory')
    return n
