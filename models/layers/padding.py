"""Mirror padding of (B, C, h, w) maps at the bottom/right, for any pad size.

``torch.nn.functional.pad(mode='reflect')`` and the published flip-and-concatenate window padding fail
(or silently come up short) when the pad is as large as the input (``--window 64`` on a 16x20 image,
SwinIR on 3x3). :func:`mirror_pad` extends the input periodically by reflection instead, so it works for
every size and equals those two for every pad they accept:

* ``'reflect'``: the edge pixel is not repeated (``a b c | b a``), period ``2 (n - 1)`` (a 1-pixel axis
  repeats its pixel), like ``F.pad(mode='reflect')``;
* ``'symmetric'``: the edge pixel is repeated (``a b c | c b a``), period ``2 n``, like the LIIF/LTE/LMF
  test scripts' ``cat([x, flip(x)])``.
"""
import torch

MODES = ('reflect', 'symmetric')


def mirror_index(n, total, mode):
    """Indices (total,) into an axis of ``n`` samples that extend it by mirroring to ``total`` samples."""
    if mode not in MODES:
        raise ValueError(f'mirror padding mode must be one of {MODES}, got {mode!r}')
    i = torch.arange(total)
    if mode == 'symmetric':
        j = i % (2 * n)
        return torch.where(j < n, j, 2 * n - 1 - j)
    if n == 1:
        return torch.zeros(total, dtype=torch.long)
    j = i % (2 * n - 2)
    return torch.where(j < n, j, 2 * n - 2 - j)


def mirror_pad(x, pad_h, pad_w, mode='reflect'):
    """Pad ``x`` (..., h, w) with ``pad_h`` rows at the bottom and ``pad_w`` columns at the right."""
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f'pads must be >= 0, got {pad_h}, {pad_w}')
    h, w = x.shape[-2:]
    if pad_h:
        x = x.index_select(-2, mirror_index(h, h + pad_h, mode).to(x.device))
    if pad_w:
        x = x.index_select(-1, mirror_index(w, w + pad_w, mode).to(x.device))
    return x


def pad_to_multiple(x, multiple, mode='reflect'):
    """Mirror-pad bottom/right to the next multiple of ``multiple`` (nothing for multiples)."""
    h, w = x.shape[-2:]
    return mirror_pad(x, (-h) % multiple, (-w) % multiple, mode)
