"""LM-LTE: LTE as a Latent Modulated Function (He & Jin, CVPR 2024)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from ..complexity import conv_macs_per_pixel, linear_macs
from ..registry import register
from .implicit import State, gather
from . import fused_render
from .lmliif import LMDecoder
from .lte import bilinear_skip


@register('lmlte')
class LMLTE(LMDecoder):
    """LM-LTE. Latent MLP input per LR pixel: ``coef * [cos(pi G), sin(pi G)]`` with
    ``G_j = freq_2j + freq_2j+1 + phase(rel cell)_j`` (LTE's basis at rel_coord = (1, 1)); output M
    modulations (+ 2hd channels with ``mod_input``: a render amplitude map A and frequency map F).
    Render input per query: ``A(p) * [cos(pi g), sin(pi g)]``, g from F(p), rel_coord and
    ``imphase(rel_cell)``. A bilinear LR skip is added after the blend.

    ``cell_decode=False`` (no published config uses it) drops both phase terms."""

    intensity_range = (0.0, 0.5)     # CMSR intensity buckets (published)
    traceable = True

    def __init__(self, encoder_spec, imnet_spec=None, hypernet_spec=None, hidden_dim=128, local_ensemble=True,
                 cell_decode=True, mod_input=False, cmsr_spec=None, mixed_le=None):
        super().__init__(encoder_spec, cmsr_spec, mixed_le)
        self.local_ensemble, self.cell_decode, self.mod_input = local_ensemble, cell_decode, mod_input
        c = self.encoder.out_dim
        hd = self.render_width(imnet_spec)
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

    def decoder_macs(self):
        K = 4 if self.local_ensemble else 1
        phase = self.phase.in_features * self.phase.out_features
        per_lr = conv_macs_per_pixel(self.coef) + conv_macs_per_pixel(self.freq) + phase + \
            linear_macs(self.hypernet.layers)
        render_phase = self.imphase if self.mod_input else self.phase
        per_hr = K * (render_phase.in_features * render_phase.out_features + linear_macs(self.imnet.layers))
        return per_lr, per_hr

    def latent_state(self, inp, feat, grid, cell):
        B, C, h, w = feat.shape
        coef = self.coef(feat).permute(0, 2, 3, 1)
        freq = self.freq(feat).permute(0, 2, 3, 1)
        g = freq.unflatten(-1, (-1, 2)).sum(-1)
        if self.cell_decode:
            g = g + self.phase(self.hidden_cell(cell, grid)).view(B, 1, 1, -1)
        g = g * math.pi
        mod = self.hypernet(coef * torch.cat([torch.cos(g), torch.sin(g)], dim=-1)).reshape(B * h * w, -1)
        if self.mod_input:   # render amplitude map A and frequency map F (interleaved pairs)
            amp, frq = mod[:, self.mod_dim:].chunk(2, dim=1)
        else:
            amp, frq = coef.reshape(B * h * w, -1), freq.reshape(B * h * w, -1)
        # one table per pixel, [A | F_y | F_x]: a single gather per query and contiguous-ish halves
        basis = torch.cat([amp, frq[:, 0::2], frq[:, 1::2]], dim=1).contiguous()
        return State(inp=inp, mod=mod, basis=basis, grid=grid)

    def render_input(self, state, idx, rel, rel_cell):
        """``A(p) * [cos(pi g), sin(pi g)]`` with ``g = F_y(p) rel_y + F_x(p) rel_x + phase(rel_cell)``.

        ``rel_cell`` is per query (B*q, 2); its phase is computed once and shared by the K neighbours.
        """
        t = gather(self.table(state, 'basis') if not self.training else state.basis, idx)
        n = t.shape[1] // 4
        amp, fy, fx = t[:, :2 * n], t[:, 2 * n:3 * n], t[:, 3 * n:]
        g = fy * rel[:, :1]
        g.addcmul_(fx, rel[:, 1:])
        if self.cell_decode:
            layer = self.imphase if self.mod_input else self.phase
            g.view(-1, rel_cell.shape[0], n).add_(F.linear(rel_cell, layer.weight.to(rel_cell.dtype)))
        g.mul_(math.pi)
        return torch.cat([torch.cos(g), torch.sin(g)], dim=1).mul_(amp)

    def traced_render_input(self, state, idx, rel, rel_cell):
        """``render_input`` without in-place updates of views (``rel_cell`` has one row per neighbour and
        query), for ``traced_query``."""
        t = gather(state.basis, idx)
        n = t.shape[1] // 4
        amp, fy, fx = t[:, :2 * n], t[:, 2 * n:3 * n], t[:, 3 * n:]
        g = fy * rel[:, :1] + fx * rel[:, 1:]
        if self.cell_decode:
            layer = self.imphase if self.mod_input else self.phase
            g = g + F.linear(rel_cell, layer.weight)
        g = g * math.pi
        return torch.cat([torch.cos(g), torch.sin(g)], dim=1) * amp

    grid_queries = True
    #: layer 0 reads cos/sin of the relative coordinate: not linear in it (own ``render_layer0``/``layer0_grid``)
    linear_layer0 = False

    def render_row_floats(self):
        """The two activation buffers plus layer 0's phases and their [cos, sin] (``layer0_grid``)."""
        return 2 * self.imnet.hidden_dim + 2 * self.imnet.in_dim

    def layer0_grid(self, state, pix, rel_y, rel_x, rel_cell):
        K, G, r = rel_y.shape
        m = rel_x.shape[1]
        t = self.table(state, 'basis').index_select(0, pix.reshape(-1)).view(K, G, 1, m, -1)
        n = t.shape[-1] // 4
        amp, fy, fx = t[..., :2 * n], t[..., 2 * n:3 * n], t[..., 3 * n:]
        g = fy * rel_y.view(K, G, r, 1, 1)
        g.addcmul_(fx, rel_x.view(K, 1, 1, m, 1))
        if self.cell_decode:
            layer = self.imphase if self.mod_input else self.phase
            g.add_(F.linear(rel_cell, layer.weight.to(rel_cell.dtype)))
        g.mul_(math.pi)
        x = torch.cat([torch.cos(g), torch.sin(g)], dim=-1).mul_(amp)
        layer = self.imnet.hidden(0)
        return F.linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))

    def fused_unsupported(self, dtype=None):
        """Besides the width: the fused kernel forms layer 0 from the 16 Fourier features of ``mod_input``."""
        why = super().fused_unsupported(dtype)
        if why is None and self.imnet.in_dim != fused_render.WIDTH:
            why = (f'the kernel forms layer 0 from {fused_render.WIDTH} Fourier features (mod_input); this model '
                   f'has {self.imnet.in_dim}')
        return why

    def fused_layer0(self, state, pix, rel_x, rel_cell):
        """Mode 1 of ``fused_render.render``: the per-pixel [A | F_y | F_x] table, the cell's phase, W0 and b0,
        and layer 0's modulation tables."""
        p = self.grid_params(state)
        layer = self.imnet.hidden(0)
        if 'fused_w0t' not in p:
            p['fused_w0t'] = layer.weight.t().contiguous()
        cphase = None
        if self.cell_decode:
            phase = self.imphase if self.mod_input else self.phase
            cphase = F.linear(rel_cell, phase.weight).contiguous()
        return dict(basis=self.table(state, 'basis'), cphase=cphase, w0t=p['fused_w0t'], b0=layer.bias,
                    s0=p['scale'][0], t0=p['shift'][0])

    def skip_grid(self, state, b, ys, xs):
        coord = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).view(1, -1, 2)
        return bilinear_skip(state.inp[b:b + 1], coord).view(ys.numel(), xs.numel(), -1)

    def render_layer0(self, state, idx, rel, rel_cell):
        layer = self.imnet.hidden(0)
        x = self.render_input(state, idx, rel, rel_cell)
        return F.linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))

    def skip(self, state, coord):
        return bilinear_skip(state.inp, coord)
