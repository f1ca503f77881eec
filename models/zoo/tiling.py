"""The published ``MambaMSModel.test`` (HiT_SRF, MambaIR): the LR input in overlapping tiles.

Along each axis of length n: ``k = n // 200 + 1`` tiles; the input is reflect-padded at the bottom/right to
``N = k * ceil(n / k)`` (the pad is < k); each tile owns ``size = N / k`` rows (columns) and is widened by
``shave = size // 10`` on each side that has a neighbour. Each tile runs through the network on its own;
the output keeps, of each tile, the ``scale * size`` rows (columns) it owns and drops the shaved margins;
the result is cropped to ``scale * n``. Inputs under 200 px in both directions run whole (one tile).
Unlike the published canvas (batch 1, CPU), any batch size, device and dtype work.
"""
import torch.nn.functional as F

#: LR size that starts a second tile (published: ``h // 200 + 1`` tiles).
TILE = 200


def tile_layout(n, tile=TILE):
    """(pad, size, spans) for an axis of length n: ``spans[i] = (start, stop, keep)``: tile i reads padded
    input [start, stop) and its output rows [keep, keep + size) (in LR units) fill [i size, (i + 1) size)."""
    k = n // tile + 1
    pad = (-n) % k
    size = (n + pad) // k
    shave = size // 10
    spans = [(i * size - (shave if i > 0 else 0), (i + 1) * size + (shave if i < k - 1 else 0),
              shave if i > 0 else 0) for i in range(k)]
    return pad, size, spans


def tiled_forward(model, x, r):
    """``model.run`` on overlapping tiles of x (B, 3, h, w), stitched (module docstring) -> (B, 3, r h, r w)."""
    h, w = x.shape[-2:]
    pad_h, size_h, rows = tile_layout(h)
    pad_w, size_w, cols = tile_layout(w)
    if len(rows) == 1 and len(cols) == 1:
        return model.run(x, r)[0]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode='reflect')
    out = None
    for i, (top, bottom, keep_h) in enumerate(rows):
        for j, (left, right, keep_w) in enumerate(cols):
            y = model.run(x[..., top:bottom, left:right], r)[0]
            if out is None:
                out = y.new_zeros(*y.shape[:2], r * x.shape[-2], r * x.shape[-1])
            out[..., r * i * size_h:r * (i + 1) * size_h, r * j * size_w:r * (j + 1) * size_w] = \
                y[..., r * keep_h:r * (keep_h + size_h), r * keep_w:r * (keep_w + size_w)]
    return out[..., :r * h, :r * w]
