"""LM-CiaoSR: CiaoSR's local attention as the latent MLP of a Latent Modulated Function.

Conventions: inputs/outputs normalised ``(x - 0.5) / 0.5``; ``coord``/``cell`` (B, Q, 2) ordered
(row, col) in (-1, 1); per-pixel tables (B*h*w, C) in raster order (see ``implicit``).

Per LR pixel (``prepare``, the published ``query_latent``), with ``rich = unfold3x3(feat)`` (576 ch):

* for (vx, vy) in (-1,-1), (-1,+1), (+1,-1), (+1,+1) (published names: vx offsets rows, vy columns):
  ``t = round(vy/2 + 0.5)``, ``l = round(vx/2 + 0.5)`` (row index from the column offset, as
  published); key = ``rich`` viewed as a row-major
  (3, 3, 64) array, ``[t:t+2, l:l+2, :]`` (256 channels; *not* a clean 2x2 neighbourhood because
  unfold's channel order is c*9 + k, but the published weights depend on it, docs/deviations.md, B4);
  value = [key, nonlocal(feat)] (320);
  ``rel = (-vx/h, -vy/w)`` (the published code's shift of v/h^2, multiplied back by h), ``sc`` the
  relative cell of the first query;
  ``K = key * imnet_k([key, rel, sc])``, ``V = value * imnet_v([value, rel, sc])``;
* ``a = softmax(prenet_q(rich) . K / softmax_scale)`` over the 4, ``z = sum a V`` (320);
* ``mod = hypernet_q(z)``: M = 2 * hd * D modulations, then (``mod_input``) a 2hd render latent.

Per query: the LIIF local ensemble; render input ``[latent(p) (2hd), rel_coord (2)]`` (no cell), modulations
of the same pixel; blend; **plus the bilinear LR skip**, in evaluation and (fixing the published
training path, docs/deviations.md, B1) in training too, so that training and evaluation compute the same function.
CMSR table building renders without the skip (published ``init_cmsr``, docs/deviations.md, B1): see
``capabilities.cmsr_build_skip`` and ``lr_skip`` in the state.
"""
import torch

from utils.untrusted import excerpt

from .. import registry
from ..complexity import linear_macs
from ..registry import register
from .ciaosr import NONLOCAL_TILE, CrossScaleAttention, nonlocal_macs_per_pixel, tiled_nonlocal
from .implicit import State
from .liif import unfold3x3
from .lmliif import LMDecoder
from .lte import bilinear_skip

#: encoder channels the published model hard-codes (docs/deviations.md, B4)
BASE_C = 64
#: (v_row, v_col) neighbour order of ``query_latent``
LATENT_OFFSETS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


@register('lmciaosr')
class LMCiaoSR(LMDecoder):
    """LM-CiaoSR. Argument names follow the published constructor (``encoder``,
    ``imnet_q``, ... rather than ``*_spec``); in/out dims of the child MLPs are computed here
    (YAML values ignored, docs/deviations.md, B5). Decoder parameters with the published config: 734,998."""

    #: CMSR intensity buckets 0 .. 0.5 (published)
    intensity_range = (0.0, 0.5)
    #: published chunk for evaluation (1280 x 720 queries); our fast path prefers the machine's chunk
    published_chunk = 1280 * 720

    def __init__(self, encoder, prenet_q=None, hypernet_q=None, imnet_q=None, imnet_k=None, imnet_v=None,
                 local_size=2, feat_unfold=True, non_local_attn=True, multi_scale=(2,), softmax_scale=1,
                 mod_input=False, cmsr_spec=None, mixed_le=None):
        for what, spec in (('prenet_q', prenet_q), ('hypernet_q', hypernet_q), ('imnet_q', imnet_q),
                           ('imnet_k', imnet_k), ('imnet_v', imnet_v)):
            if not isinstance(spec, dict):
                raise ValueError(f'lmciaosr: {what} must be a model spec {{name, args}}, got {excerpt(spec, 80)}')
        if local_size != 2:
            raise ValueError(f'lmciaosr: only local_size=2 is published (4 neighbours), got {local_size}')
        if not feat_unfold:
            raise ValueError('lmciaosr: feat_unfold=False is not supported (the key selection reads the 3x3 unfold)')
        enc = dict(encoder)
        enc['args'] = {**(encoder.get('args') or {}), 'no_upsampling': True}
        super().__init__(enc, cmsr_spec, mixed_le)
        c = self.encoder.out_dim
        if c != BASE_C:
            raise ValueError(f'lmciaosr: the published model hard-codes {BASE_C} encoder channels, '
                             f'encoder {encoder.get("name")!r} gives {c}')
        self.local_size, self.feat_unfold, self.non_local_attn = local_size, feat_unfold, non_local_attn
        self.multi_scale = list(multi_scale) if isinstance(multi_scale, (list, tuple)) else [multi_scale]
        self.softmax_scale, self.mod_input = softmax_scale, mod_input
        self.local_ensemble = True
        hd = self.render_width(imnet_q, 'imnet_q')
        kdim = 4 * BASE_C
        nl = c * len(self.multi_scale) if non_local_attn else 0
        self.prenet_q = registry.make(prenet_q, args={'in_dim': c * 9, 'out_dim': kdim})
        self.imnet_k = registry.make(imnet_k, args={'in_dim': kdim + 4, 'out_dim': kdim})
        self.imnet_v = registry.make(imnet_v, args={'in_dim': kdim + 4 + nl, 'out_dim': kdim + nl})
        self.imnet_q = registry.make(imnet_q, args={'in_dim': (2 * hd if mod_input else kdim + nl) + 2,
                                                    'mod_up_merge': False})
        self.mod_dim = self.imnet_q.mod_dim
        self.hypernet_q = registry.make(hypernet_q, args={'in_dim': kdim + nl,
                                                          'out_dim': self.mod_dim + (2 * hd if mod_input else 0)})
        if non_local_attn:
            self.cs_attn = CrossScaleAttention(channel=c, scale=self.multi_scale)

    @property
    def imnet(self):
        """The render MLP (published key ``imnet_q``), under the name ``LMDecoder`` uses."""
        return self.imnet_q

    @property
    def capabilities(self):
        # CMSR tables are built without the LR skip (published); the non-local attention is global within
        # its 48x48 tiles, so no finite overlap makes tiling exact
        caps = super().capabilities.replace(cmsr_build_skip=False)
        return caps.replace(receptive_radius=None) if self.non_local_attn else caps

    def decoder_macs(self):
        """(per LR pixel, per HR query): latent attention, prenet and hypernet per LR pixel (non-local
        attention counted for a 48x48 tile); the 4-neighbour render MLP per query."""
        per_lr = 4 * (linear_macs(self.imnet_k.layers) + linear_macs(self.imnet_v.layers)) + \
            linear_macs(self.prenet_q.layers) + linear_macs(self.hypernet_q.layers)
        if self.non_local_attn:
            fixed, per_patch = nonlocal_macs_per_pixel(self.cs_attn)
            per_lr += int(fixed + per_patch * (NONLOCAL_TILE ** 2) / 4)
        return per_lr, 4 * linear_macs(self.imnet_q.layers)

    def latent_input(self, feat, cell, grid):
        """The published ``query_latent``: (B, C, h, w) features -> (B*h*w, 320) attended values."""
        B, C, h, w = feat.shape
        rich = unfold3x3(feat)
        nonlocal_feat = tiled_nonlocal(self.cs_attn, feat) if self.non_local_attn else None
        grid_rich = rich.view(B, 3, 3, BASE_C, h, w)
        sc = self.hidden_cell(cell, grid).view(B, 1, 1, 2).expand(B, h, w, 2).to(feat.dtype)
        q = self.prenet_q(rich.permute(0, 2, 3, 1))                          # (B, h, w, 256)
        logits, values = [], []
        for v_row, v_col in LATENT_OFFSETS:
            t, l = round(v_col / 2 + 0.5), round(v_row / 2 + 0.5)   # as published (docs/deviations.md, B4)
            key = grid_rich[:, t:t + 2, l:l + 2].reshape(B, 4 * BASE_C, h, w).permute(0, 2, 3, 1)
            value = key if nonlocal_feat is None else torch.cat([key, nonlocal_feat.permute(0, 2, 3, 1)], dim=-1)
            rel = feat.new_tensor([-v_row / h, -v_col / w]).expand(B, h, w, 2)
            k = key * self.imnet_k(torch.cat([key, rel, sc], dim=-1))
            values.append(value * self.imnet_v(torch.cat([value, rel, sc], dim=-1)))
            logits.append((q * k).sum(-1))
        attn = (torch.stack(logits, dim=-1) / self.softmax_scale).softmax(dim=-1)
        z = attn[..., 0:1] * values[0]
        for i in range(1, len(values)):
            z = z + attn[..., i:i + 1] * values[i]
        return z.reshape(B * h * w, -1)

    def latent_state(self, inp, feat, grid, cell):
        z = self.latent_input(feat, cell, grid)
        mod = self.hypernet_q(z)
        latent = mod[:, self.mod_dim:].contiguous() if self.mod_input else z
        return State(inp=inp, mod=mod, latent=latent, grid=grid, lr_skip=True)

    # render input [latent(p), rel_coord] (no cell): LMDecoder's linear layer 0 (``render_cell`` False)
    grid_queries = True

    def skip_grid(self, state, b, ys, xs):
        if not state.get('lr_skip', True):
            return None
        coord = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).view(1, -1, 2)
        return bilinear_skip(state.inp[b:b + 1], coord).view(ys.numel(), xs.numel(), -1)

    def skip(self, state, coord):
        """Bilinear LR skip, in training as in evaluation (B1 fixed); off when ``state['lr_skip']`` is
        False (CMSR table building renders without it, as published)."""
        if not state.get('lr_skip', True):
            return None
        return bilinear_skip(state.inp, coord)
