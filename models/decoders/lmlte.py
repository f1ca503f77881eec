"""LM-LTE: LTE as a Latent Modulated Function (He & Jin, CVPR 2024)."""
import math

import torch
from torch import nn

from .. import registry
from ..registry import register
from .implicit import State, feat_coord_table, gather, pixel_table
from .lmliif import LMDecoder
from .lte import bilinear_skip, fourier_basis


@register('lmlte')
class LMLTE(LMDecoder):
    """LM-LTE. Latent MLP input per LR pixel: ``coef * [cos(pi G), sin(pi G)]`` with
    ``G_j = freq_2j + freq_2j+1 + phase(rel cell)_j`` (LTE's basis at rel_coord = (1, 1)); output M
    modulations (+ 2hd channels with ``mod_input``: a render amplitude map A and frequency map F).
    Render input per query: ``A(p) * [cos(pi g), sin(pi g)]``, g from F(p), rel_coord and
    ``imphase(rel_cell)``. A bilinear LR skip is added after the blend.

    ``cell_decode=False`` (no published config uses it) drops both phase terms."""

    def __init__(self, encoder_spec, imnet_spec=None, hypernet_spec=None, hidden_dim=128, local_ensemble=True,
                 cell_decode=True, mod_input=False, cmsr_spec=None, mixed_le=None):
        super().__init__(encoder_spec, cmsr_spec, mixed_le)
        self.local_ensemble, self.cell_decode, self.mod_input = local_ensemble, cell_decode, mod_input
        c = self.encoder.out_dim
        hd = dict(imnet_spec['args'])['hidden_dim']
        self.coef = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = registry.make(imnet_spec, args={'in_dim': hd if mod_input else hidden_dim,
                                                     'mod_up_merge': False})
        self.mod_dim = self.imnet.mod_dim
        self.hypernet = registry.make(hypernet_spec, args={'in_dim': hidden_dim,
                                                           'out_dim': self.mod_dim + (2 * hd if mod_input else 0)})
        if mod_input:
            self.imphase = nn.Linear(2, hd // 2, bias=False)

    def prepare(self, inp, cell=None, inp_coord=None):
        feat = self.encoder(inp)
        B, C, h, w = feat.shape
        coef = self.coef(feat).permute(0, 2, 3, 1)
        freq = self.freq(feat).permute(0, 2, 3, 1)
        g = freq.unflatten(-1, (-1, 2)).sum(-1)
        if self.cell_decode:
            g = g + self.phase(self.hidden_cell(cell, (h, w))).view(B, 1, 1, -1)
        g = g * math.pi
        mod = self.hypernet(coef * torch.cat([torch.cos(g), torch.sin(g)], dim=-1)).reshape(B * h * w, -1)
        if self.mod_input:
            hd = self.imnet.hidden_dim
            amp = mod[:, self.mod_dim:self.mod_dim + hd].contiguous()
            frq = mod[:, self.mod_dim + hd:self.mod_dim + 2 * hd].contiguous()
        else:
            amp, frq = coef.reshape(B * h * w, -1), freq.reshape(B * h * w, -1)
        return State(inp=inp, mod=mod, amp=amp, frq=frq, size=(h, w),
                     feat_coord=feat_coord_table(inp_coord, feat))

    def render_input(self, state, idx, rel, rel_cell):
        phase = (self.imphase if self.mod_input else self.phase)(rel_cell) if self.cell_decode else 0
        return gather(state.amp, idx) * fourier_basis(gather(state.frq, idx), rel, phase)

    def skip(self, state, coord):
        return bilinear_skip(state.inp, coord)
