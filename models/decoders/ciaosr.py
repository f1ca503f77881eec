"""CiaoSR (Cao et al., CVPR 2023) as re-implemented in LIIF layout by the LMF code, and its
cross-scale non-local attention, shared with LM-CiaoSR.

Conventions: inputs/outputs normalised ``(x - 0.5) / 0.5``; ``coord``/``cell`` (B, Q, 2) ordered
(row, col) in (-1, 1); feature maps (B, C, h, w).

Decoding a query (local attention over the 4 nearest LR pixels):

* query = nearest(unfold3x3(feat)) (9C);
* for each neighbour (vy, vx) in (-1,-1), (-1,+1), (+1,-1), (+1,+1) the query is shifted by
  ``sign(v) * r + 1e-6`` per axis with CiaoSR's own offset ``r_y = (1 - cell_y) / (h - 1)``
  (``r_x`` likewise, from the first query's cell), clamped to [-1 + 1e-6, 1 - 1e-6];
  key = nearest(unfold3x3(feat)), value = [key, nonlocal(feat)] (9C + C);
  ``rel = (query - centre) * (h, w)``, ``sc = cell * (h, w)``;
  ``K = key * imnet_k([key, rel, sc])``, ``V = value * imnet_v([value, rel, sc])``;
* ``a = softmax(query . K / softmax_scale)`` over the neighbours, ``rgb = imnet_q(sum a V)``, plus the
  bilinear (border) LR skip.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from ..complexity import linear_macs
from ..registry import register
from .implicit import CLAMP, EPS_SHIFT, ImplicitDecoder, State, flat_index, gather, pixel_table
from .liif import unfold3x3
from .lte import bilinear_skip

#: Non-local attention tile (docs/deviations.md, B15): inputs with h*w > TILE**2 are processed in TILE x TILE tiles.
NONLOCAL_TILE = 48


# ---------------------------------------------------------------------------------------------------
# cross-scale non-local attention (CSNLN / CiaoSR)
# ---------------------------------------------------------------------------------------------------
def same_pad(x, ksize, stride):
    """TensorFlow 'same' zero padding of (B, C, H, W) for a ksize x ksize window at ``stride``."""
    rows, cols = x.shape[-2:]
    out_r, out_c = (rows + stride - 1) // stride, (cols + stride - 1) // stride
    pr = max(0, (out_r - 1) * stride + ksize - rows)
    pc = max(0, (out_c - 1) * stride + ksize - cols)
    return F.pad(x, (pc // 2, pc - pc // 2, pr // 2, pr - pr // 2))


def patches(x, ksize, stride):
    """'same'-padded ksize x ksize patches of (1, C, H, W) -> (L, C, ksize, ksize), raster order."""
    C = x.shape[1]
    p = F.unfold(same_pad(x, ksize, stride), ksize, stride=stride)       # (1, C*k*k, L)
    return p.view(C, ksize, ksize, -1).permute(3, 0, 1, 2)


class ConvPReLU(nn.Sequential):
    """1x1 conv (with bias) + PReLU: keys ``0.weight``, ``0.bias``, ``1.weight``."""

    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 1), nn.PReLU())


class CrossScaleAttention(nn.Module):
    """Cross-scale non-local attention: every pixel attends to 3x3 patches of the x0.5 (bilinear)
    downscaled map and assembles the matching 6x6 patches of the full-resolution embedding.

    (B, C, H, W) -> (B, C * len(scale), H, W). Keys: ``escape_NaN`` (buffer), ``conv_match_1``,
    ``conv_match_2`` (C -> C/reduction), ``conv_assembly`` (C -> C), ``down`` (3x3 stride-2 conv that
    brings the stride-2 reconstruction back to H x W; ``downx3`` / ``downx4`` for scales 3 / 4).
    """

    def __init__(self, channel=64, reduction=2, ksize=3, scale=(2,), stride=1, softmax_scale=10, average=True):
        super().__init__()
        scale = list(scale) if isinstance(scale, (list, tuple)) else [scale]
        bad = [s for s in scale if s not in (2, 3, 4)]
        if bad:
            raise ValueError(f'CrossScaleAttention: scale must be in (2, 3, 4), got {bad}')
        self.ksize, self.stride, self.softmax_scale, self.scale, self.average = \
            ksize, stride, softmax_scale, scale, average
        self.register_buffer('escape_NaN', torch.tensor([1e-4]))
        self.conv_match_1 = ConvPReLU(channel, channel // reduction)
        self.conv_match_2 = ConvPReLU(channel, channel // reduction)
        self.conv_assembly = ConvPReLU(channel, channel)
        if 2 in scale:
            self.down = nn.Conv2d(channel, channel, ksize, 2, 1)
        if 3 in scale:
            self.downx3 = nn.Conv2d(channel, channel, ksize, 3, 1)
        if 4 in scale:
            self.downx4 = nn.Conv2d(channel, channel, ksize, 4, 1)

    def _down(self, s):
        return {2: 'down', 3: 'downx3', 4: 'downx4'}[s]

    def forward(self, x):
        _, _, H, W = x.shape
        outs = []
        for s in self.scale:
            ph, pw = (s - H % s) % s, (s - W % s) % s
            xp = F.pad(x, (0, pw, 0, ph), mode='reflect') if (ph or pw) else x
            embed = self.conv_assembly(xp)
            match = self.conv_match_1(xp)
            ref = self.conv_match_2(F.interpolate(xp, scale_factor=1.0 / s, mode='bilinear', align_corners=False))
            k = s * self.ksize
            ys = []
            for b in range(x.shape[0]):
                raw = patches(embed[b:b + 1], k, self.stride * s)                # (L, C, k, k)
                wi = patches(ref[b:b + 1], self.ksize, self.stride)              # (L, C', 3, 3)
                norm = torch.sqrt((wi ** 2).sum(dim=(1, 2, 3), keepdim=True))
                wi = wi / torch.max(norm, self.escape_NaN)
                yi = F.conv2d(same_pad(match[b:b + 1], self.ksize, 1), wi)     # (1, L, Hp, Wp)
                yi = F.softmax(yi * self.softmax_scale, dim=1)
                if not self.average:
                    yi = (yi == yi.max(dim=1, keepdim=True)[0]).float()
                yi = F.conv_transpose2d(yi, raw, stride=self.stride * s, padding=s)
                ys.append(yi)
            y = getattr(self, self._down(s))(torch.cat(ys)) / 6.0
            outs.append(y[:, :, :H, :W])
        return torch.cat(outs, dim=1)


def tiled_nonlocal(attn, feat, tile=NONLOCAL_TILE):
    """Non-local features of (B, C, h, w), in ``tile`` x ``tile`` tiles when h*w > tile**2 (published rule).

    Tiles start every ``tile`` pixels; the last tile of each axis takes the remainder (up to 2*tile - 1).
    Each tile is computed with 1 pixel of context on each side where the image has it, and its centre
    is kept. As published (docs/deviations.md, B15), when h*w > tile**2 but h < tile or w < tile no tile runs and the
    non-local feature is all zeros.
    """
    B, C, h, w = feat.shape
    if h * w <= tile * tile:
        return attn(feat)
    out = feat.new_zeros(B, C * len(attn.scale), h, w)
    nh, nw = h // tile, w // tile
    for i in range(nh):
        i1, i2 = i * tile, ((i + 1) * tile if i < nh - 1 else h)
        for j in range(nw):
            j1, j2 = j * tile, ((j + 1) * tile if j < nw - 1 else w)
            t, bt = (1 if i1 >= 1 else 0), (1 if i2 + 1 <= h else 0)
            le, r = (1 if j1 >= 1 else 0), (1 if j2 + 1 <= w else 0)
            y = attn(feat[:, :, i1 - t:i2 + bt, j1 - le:j2 + r])
            out[:, :, i1:i2, j1:j2] = y[:, :, t:t + i2 - i1, le:le + j2 - j1]
    return out


def nonlocal_macs_per_pixel(attn):
    """Closed-form MACs per LR pixel of ``CrossScaleAttention`` for an h x w map, as a function of
    the number L of reference patches (L = h*w / s^2): returns (fixed, per_patch) so that
    MACs/pixel = fixed + per_patch * L."""
    C = attn.conv_assembly[0].out_channels
    Cm = attn.conv_match_1[0].out_channels
    fixed, per_patch = 0, 0
    for s in attn.scale:
        fixed += C * C + Cm * C + Cm * C / s ** 2           # assembly, match_1, match_2 (on the x1/s map)
        per_patch += Cm * attn.ksize ** 2                    # correlation
        per_patch += C * (s * attn.ksize) ** 2               # transposed conv: each (L, H, W) score spreads a patch
        fixed += C * C * 9                                    # down conv (back to H x W)
    return fixed, per_patch


# ---------------------------------------------------------------------------------------------------
# CiaoSR
# ---------------------------------------------------------------------------------------------------
def neighbour_offsets(local_size):
    """CiaoSR's neighbour list: (v_row, v_col) pairs in range(-1, 2, 4 - local_size), row outer."""
    if local_size == 1:
        return [(0, 0)]
    if local_size not in (2, 3):
        raise ValueError(f'local_size must be 1, 2 or 3, got {local_size}')
    step = 4 - local_size
    return [(i, j) for i in range(-1, 2, step) for j in range(-1, 2, step)]


def ciaosr_shifted(coord, cell, size, v):
    """Query shifted to neighbour ``v`` with CiaoSR's offsets (float32 order of the published code).

    r_axis = 1 / ((n - 1) / (1 - cell_axis)) with the first query's cell, shift = sign(v) r + 1e-6 on
    axes with v != 0; then clamped."""
    shifted = coord.clone()
    for axis, (n, va) in enumerate(zip(size, v)):
        if va == 0:
            continue
        t = (n - 1) / (1 - cell[:, 0, axis])                     # (B,)
        r = torch.nan_to_num((2 * abs(va) - 1) / t, nan=0.0)    # 0/0 (one LR row, cell 1): no shift
        shifted[:, :, axis] += (va / abs(va) * r + EPS_SHIFT).view(-1, 1)
    return shifted.clamp_(-CLAMP, CLAMP)


@register('ciaosr')
class CiaoSR(ImplicitDecoder):
    """CiaoSR decoder (LIIF layout). ``imnet_q``/``imnet_k``/``imnet_v`` are ``mlp`` specs whose in/out
    dims are set here (``in``: q 9C + C*len(multi_scale), k 9C + 4, v 9C + 4 + C*len(multi_scale)).
    The encoder is built with ``no_upsampling``."""

    eval_bsize = 4096
    #: ensemble neighbour + 3x3 unfold + margin; the non-local attention is global within its tile
    decoder_reach = 3

    def __init__(self, encoder, imnet_q, imnet_k, imnet_v, local_size=2, feat_unfold=True, non_local_attn=True,
                 multi_scale=(2,), softmax_scale=1, cmsr_spec=None):
        enc = dict(encoder)
        enc['args'] = {**(encoder.get('args') or {}), 'no_upsampling': True}
        super().__init__(enc)
        # cmsr_spec: injected into every model by the published scripts (docs/deviations.md, B2); no effect here.
        self.local_size, self.feat_unfold, self.non_local_attn = local_size, feat_unfold, non_local_attn
        self.multi_scale = list(multi_scale) if isinstance(multi_scale, (list, tuple)) else [multi_scale]
        self.softmax_scale = softmax_scale
        self.offsets = neighbour_offsets(local_size)
        c = self.encoder.out_dim
        d = c * 9 if feat_unfold else c
        nl = c * len(self.multi_scale) if non_local_attn else 0
        self.imnet_q = registry.make(imnet_q, args={'in_dim': d + nl})
        self.imnet_k = registry.make(imnet_k, args={'in_dim': d + 4, 'out_dim': d})
        self.imnet_v = registry.make(imnet_v, args={'in_dim': d + 4 + nl, 'out_dim': d + nl})
        if non_local_attn:
            self.cs_attn = CrossScaleAttention(channel=c, scale=self.multi_scale)

    def decoder_macs(self):
        """(per LR pixel, per HR query), linear layers and convolutions only (``models.complexity``).
        The non-local attention's cost per pixel grows with the number L of reference patches; it is
        counted for a 48x48 tile (L = 576), the size it is tiled to (smaller inputs cost less)."""
        per_lr = 0
        if self.non_local_attn:
            fixed, per_patch = nonlocal_macs_per_pixel(self.cs_attn)
            per_lr = int(fixed + per_patch * (NONLOCAL_TILE ** 2) / 4)
        K = len(self.offsets)
        per_hr = K * (linear_macs(self.imnet_k.layers) + linear_macs(self.imnet_v.layers)) + \
            linear_macs(self.imnet_q.layers)
        return per_lr, per_hr

    @property
    def capabilities(self):
        # the non-local attention is global within its 48x48 tiles: no finite overlap makes tiling exact
        caps = super().capabilities
        return caps.replace(receptive_radius=None) if self.non_local_attn else caps

    def latent_state(self, inp, feat, grid, cell):
        rich = unfold3x3(feat) if self.feat_unfold else feat
        value = rich
        if self.non_local_attn:
            value = torch.cat([rich, tiled_nonlocal(self.cs_attn, feat)], dim=1)
        return State(inp=inp, key=pixel_table(rich), value=pixel_table(value), grid=grid)

    def query(self, state, coord, cell):
        grid = state.grid
        h, w = grid.size
        B, Q = coord.shape[:2]
        # the query itself: nearest pixel of the unshifted (unclamped) coordinate, as grid_sample picks it
        q_idx, _ = grid.pixels(coord.clone())
        query = gather(state.key, flat_index(q_idx, h * w)).view(B, Q, -1)
        sc = grid.relative_cell(cell)
        ks, vs = [], []
        for v in self.offsets:
            idx, centre = grid.pixels(ciaosr_shifted(coord, cell, (h, w), v))
            fidx = flat_index(idx, h * w)
            key = gather(state.key, fidx).view(B, Q, -1)
            value = gather(state.value, fidx).view(B, Q, -1)
            rel = (coord - centre) * grid.scale
            ks.append(key * self.imnet_k(torch.cat([key, rel, sc], dim=-1)))
            vs.append(value * self.imnet_v(torch.cat([value, rel, sc], dim=-1)))
        attn = torch.stack([(query * k).sum(-1) for k in ks], dim=-1)         # (B, Q, K)
        attn = (attn / self.softmax_scale).softmax(dim=-1)
        x = attn[..., 0:1] * vs[0]
        for i in range(1, len(vs)):
            x = x + attn[..., i:i + 1] * vs[i]
        return self.imnet_q(x) + bilinear_skip(state.inp, coord)
