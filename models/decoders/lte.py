"""LTE: Local Texture Estimator (Lee & Jin, CVPR 2022)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from ..complexity import conv_macs_per_pixel, linear_macs
from ..registry import register
from .implicit import ImplicitDecoder, State, blend, flat_index, gather, pixel_table


def fourier_basis(freq, rel_coord, phase):
    """LTE's basis: freq (..., 2K) interleaved as (f_0y, f_0x, f_1y, f_1x, ...), rel_coord (..., 2),
    phase (..., K) -> (..., 2K) = [cos(pi g), sin(pi g)] with g_j = f_jy * rel_y + f_jx * rel_x + phase_j.
    """
    f = freq.unflatten(-1, (-1, 2))
    g = (f * rel_coord.unsqueeze(-2)).sum(-1) + phase
    g = g * math.pi
    return torch.cat([torch.cos(g), torch.sin(g)], dim=-1)


def bilinear_skip(inp, coord):
    """Bilinear (border-padded) sample of the LR input at the queries: (B, 3, h, w), (B, Q, 2) -> (B, Q, 3)."""
    out = F.grid_sample(inp, coord.flip(-1).unsqueeze(1), mode='bilinear', padding_mode='border',
                        align_corners=False)
    return out[:, :, 0, :].permute(0, 2, 1)


@register('lte')
class LTE(ImplicitDecoder):
    """Amplitude (``coef``) and frequency (``freq``) maps from 3x3 convs, a cell-dependent ``phase``,
    a Fourier basis per query, an MLP, the 4-neighbour blend and a bilinear LR skip."""

    eval_bsize = 30000
    traceable = True

    def __init__(self, encoder_spec, imnet_spec=None, hidden_dim=256, cmsr_spec=None):
        super().__init__(encoder_spec)
        c = self.encoder.out_dim
        self.coef = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = registry.make(imnet_spec, args={'in_dim': hidden_dim})

    def decoder_macs(self):
        per_lr = conv_macs_per_pixel(self.coef) + conv_macs_per_pixel(self.freq)
        per_hr = 4 * (self.phase.in_features * self.phase.out_features + linear_macs(self.imnet.layers))
        return per_lr, per_hr

    def latent_state(self, inp, feat, grid, cell):
        return State(inp=inp, coef=pixel_table(self.coef(feat)), freq=pixel_table(self.freq(feat)), grid=grid)

    def query(self, state, coord, cell):
        grid = state.grid
        h, w = grid.size
        nb = grid.neighbours(coord)
        K, B, Q = nb.index.shape
        idx = flat_index(nb.index, h * w)
        coef = gather(state.coef, idx).view(K, B, Q, -1)
        freq = gather(state.freq, idx).view(K, B, Q, -1)
        phase = self.phase(grid.relative_cell(cell))
        preds = self.imnet(coef * fourier_basis(freq, nb.rel_coord, phase))
        return blend(preds, nb.weight) + bilinear_skip(state.inp, coord)
