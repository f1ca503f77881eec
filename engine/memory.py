"""Memory estimates for an upscale, checked before any compute: refuse what cannot fit and say why.

``estimate(model, lr_size, out_size, ...)`` returns an :class:`Estimate` with the bytes of its three
parts, all float32:

* ``output``: the (3, H, W) prediction buffer, plus (``host_copy``) the integer image written to disk
  (1 or 2 bytes per sample) and a copy on the host when rendering on an accelerator.
* ``input``: the decoded LR image (file samples, float copy and normalised copy).
* ``encoder``: the encoder's activations on the whole LR input (or on one tile with its overlap):
  ``4 x widest conv/linear channel count x pixels`` (a few feature maps alive at once) plus the input.
* ``decoder``: one chunk of queries, the chunk the query plan uses (``QueryPlan.chunk``: ``--bsize``, else
  the model's ``capabilities.chunk``, e.g. 2^20 for LM models on accelerators): ``4 (LIIF-style ensemble)
  x sum of the decoder MLP widths x chunk`` (implicit models); grid models render the whole output at
  once, so their "chunk" is the widest upsampler layer over every output pixel.

The numbers are deliberately rough upper bounds (x1.5 safety margin on the total); their purpose is to
refuse ``--scale 1e6`` or a 100000x100000 ``--size`` in one line before allocating, not to predict
the peak to the byte. ``check(...)`` compares the total with the free memory of the device
(``MemAvailable`` of /proc/meminfo on the CPU, ``torch.cuda.mem_get_info`` on CUDA) and raises
``MemoryEstimateError`` naming the option that makes it fit (``--tile``, ``--bsize``, a smaller
``--size``/``--scale``). ``engine.inference.Session.check`` calls it with the plan it will render.
"""
import dataclasses

from utils.resources import available_memory  # noqa: F401  (re-exported: engine.memory.available_memory)

SAFETY = 1.5
GIB = 1 << 30


class MemoryEstimateError(ValueError):
    """The requested work cannot fit in the available memory; the message says which option helps."""


@dataclasses.dataclass
class Estimate:
    output: int
    encoder: int
    decoder: int
    input: int = 0

    @property
    def total(self):
        return int((self.output + self.encoder + self.decoder + self.input) * SAFETY)


def gib(n):
    return f'{n / GIB:.3g} GiB'


def _layers(model):
    """(widest conv/linear channel count, sum of Linear widths) of a torch module."""
    import torch.nn as nn
    widest, linear = 3, 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            widest = max(widest, m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            widest = max(widest, m.in_features, m.out_features)
            linear += m.out_features
            linear = max(linear, m.in_features + m.out_features)
    return widest, linear


def _kind(model):
    try:
        caps = model.capabilities
    except AttributeError:
        return 'implicit'     # no descriptor (yet): the implicit estimate is the most demanding
    return caps.kind


def plan_chunk(model, chunk=None):
    """Queries per decoder call the query plan uses: ``chunk`` if given, else the model's preferred one."""
    from .render import DEFAULT_CHUNK
    return chunk or model.capabilities.chunk or DEFAULT_CHUNK


def estimate(model, lr_size, out_size, chunk=None, tile=None, tile_overlap=None, batch=1, bit_depth=8,
             host_copy=True):
    """Estimate the bytes an upscale of (h, w) -> (H, W) needs; see the module docstring.

    Args:
        model: a torch module (None: only the output buffer is counted).
        chunk: queries per decoder call (default: the plan's, ``plan_chunk``).
        tile, tile_overlap: LR tile size and context (None: whole image).
    """
    h, w = lr_size
    H, W = out_size
    out_px = H * W * batch
    output = out_px * 3 * 4
    if host_copy:
        output += out_px * 4 * (2 if bit_depth == 16 else 1)      # integer image (+ alpha) for saving
    inp = h * w * batch * 3 * 4 * 2 + h * w * batch * 4 * (2 if bit_depth == 16 else 1)   # float + normalised + file
    if model is None:
        return Estimate(int(output), 0, 0, int(inp))
    widest, linear = _layers(model)
    if tile:
        ov = tile_overlap or 0
        enc_px = min(h, tile + 2 * ov) * min(w, tile + 2 * ov) * batch
    else:
        enc_px = h * w * batch
    encoder = enc_px * (4 * widest + 3) * 4
    kind = _kind(model)
    if kind == 'implicit':
        q = min(plan_chunk(model, chunk), out_px)
        decoder = q * 4 * max(linear, widest) * 4 + q * 2 * 2 * 4      # activations + coord/cell
    elif kind == 'grid':
        decoder = out_px * 2 * widest * 4 if not tile else \
            min(out_px, (tile * max(H / h, 1)) * (tile * max(W / w, 1)) * batch) * 2 * widest * 4
        decoder = int(decoder)
    else:
        decoder = out_px * 3 * 8 * 2       # bicubic baseline: float64 passes
    return Estimate(int(output), int(encoder), int(decoder), int(inp))


def check(model, lr_size, out_size, device='cpu', chunk=None, tile=None, tile_overlap=None, batch=1,
          bit_depth=8, available=None, what='output'):
    """Raise ``MemoryEstimateError`` when the estimate exceeds the available memory of ``device``.

    The message names the part that dominates and the option that makes it fit. Returns the estimate.
    """
    est = estimate(model, lr_size, out_size, chunk=chunk, tile=tile, tile_overlap=tile_overlap, batch=batch,
                   bit_depth=bit_depth)
    avail = available if available is not None else available_memory(device)
    if avail is None or est.total <= avail:
        return est
    H, W = out_size
    h, w = lr_size
    need = f'needs about {gib(est.total)} but only {gib(avail)} is available on {device}'
    budget = avail / SAFETY
    if est.input >= budget * 0.5:
        raise MemoryEstimateError(f'the {w}x{h} input {need} (the input alone takes {gib(est.input)}); use a '
                                  f'smaller input image')
    if est.output >= budget * 0.8:
        raise MemoryEstimateError(
            f'{what} {W}x{H} {need} (the {W}x{H} result alone takes {gib(est.output)}); '
            f'use a smaller --size or --scale')
    if est.encoder >= est.decoder:
        room = max(budget - est.output - est.decoder - est.input, 0)
        per_px = max(est.encoder / max(h * w * batch, 1), 1)
        side = int((room / per_px) ** 0.5) - 2 * (tile_overlap or 40)
        hint = f'--tile {max(side, 16)}' if side >= 16 else 'a smaller input'
        raise MemoryEstimateError(f'encoding the {w}x{h} input {need} ({gib(est.encoder)} for encoder activations); '
                                  f'use {hint}')
    room = max(budget - est.output - est.encoder - est.input, 0)
    q = min(plan_chunk(model, chunk), H * W * batch)
    per_q = est.decoder / max(q, 1)
    fit = int(room / per_q) if per_q else 0
    hint = f'--bsize {fit}' if fit >= 1 else 'a smaller --size or --scale'
    raise MemoryEstimateError(f'decoding {q} queries at a time {need} ({gib(est.decoder)} per chunk); use {hint}')
