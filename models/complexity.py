"""Closed-form decoder cost of the implicit models (multiply-accumulates, MACs), from their arguments.

Convention (as LMF's efficiency figure): only the linear layers count (Linear, Conv);
gathers, element-wise work, cos/sin and the bilinear skip are free. The decoder is everything after
the encoder: per-LR-pixel work (3x3 convs of LTE, the latent MLP of LM models) plus per-query work
(the MLP evaluated for each of the K ensemble neighbours).

Each implicit model states its own formula in ``decoder_macs()``; these helpers only add them up.
The formulas count the published algorithm. Our fast LM path evaluates the first render layer's
per-pixel and cell terms once per LR pixel / query instead of once per neighbour, so its counted MACs
are lower.
"""
from torch import nn


def linear_macs(layers):
    """Sum of in*out over the nn.Linear modules of a Sequential."""
    return sum(m.in_features * m.out_features for m in layers if isinstance(m, nn.Linear))


def conv_macs_per_pixel(conv):
    return conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1] // conv.groups


def decoder_macs_per_pixel(model):
    """(MACs per LR pixel, MACs per HR query) of an implicit decoder; None if not an implicit model."""
    if model.capabilities.kind != 'implicit':
        return None
    return model.decoder_macs()


def decoder_macs(model, lr_size, out_size):
    """Closed-form decoder MACs for an (h, w) input decoded to (H, W); None if not an implicit model."""
    per = decoder_macs_per_pixel(model)
    if per is None:
        return None
    (h, w), (H, W) = lr_size, out_size
    return per[0] * h * w + per[1] * H * W
