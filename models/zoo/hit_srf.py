"""HiT-SRF (Zhang et al., ECCV 2024, "HiT-SR: Hierarchical Transformer for Efficient Image Super-Resolution")
+ IGConv / IGConv+ (published ``HiT_SRF``; ``upsample``, C = ``embed_dim`` = 60).

Body: ``conv_first``, ``patch_embed`` (LayerNorm), residual groups (RHTB) of hierarchical transformer blocks,
``norm``, ``conv_after_body``; F = ``conv_after_body(body) + conv_first(x)`` (the SwinIR wiring).
Block ``i`` of every group works in windows of ``base_win_size * hier_win_ratios[i]`` (published: 4, 8, 16,
32, 48, 64 px) with spatial-channel correlation (SCC):

* ``qv = DFE(x)`` (a 1x1 -> 3x3 -> 1x1 conv branch times a 1x1 conv), split per window into q and v, each
  ``num_heads`` heads of ``dim / (2 num_heads)`` channels;
* spatial: v pooled per head by ``spatial_linear`` (a learned linear map over each sub-block of
  ``window / base`` x ``window / base`` tokens, base = min(window, base_win_size)) to one token per sub-block;
  ``(q v'^T / head_dim + bias) v'`` (no softmax; the divisor is head_dim, not its root). ``bias[head, i, m]``
  is the mean, over the tokens j of sub-block m, of an MLP (``pos``) of the offset token i - token j;
* channel: ``v (q^T v / L)^T`` over all heads' channels at once;
* ``proj`` of both halves concatenated. The block is post-norm: ``x + norm1(SCC(x))``, then
  ``x + norm2(ConvFFN(x))`` (fc1, GELU, + depthwise 5x5 conv with GELU, fc2).

Before SCC every block reflect-pads its map to a multiple of its window, as published
(``check_image_size``): when the padding needed is >= the size in either direction, both directions are
first padded by (size - 1), then by the rest, which can be negative (a crop); the result is cropped back
after SCC. Inputs need h, w >= 17 for the published 64-px window (smaller ones raise ``ValueError``).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.swinir import SwinTrunk
from ..layers import DropPath, PatchEmbedNorm, map_to_tokens, tokens_to_map
from ..layers.residual_group import ResidualGroup
from .base import DIV2K_MEAN, _MeanShifted, _check_return_skip, published_arch

PUBLISHED_OPTIONS_HIT_SRF_IGCONV = {'upscale': 2, 'in_chans': 3, 'img_size': 64, 'base_win_size': [8, 8],
                                   'img_range': 1.0, 'depths': [6, 6, 6, 6], 'embed_dim': 60,
                                   'num_heads': [6, 6, 6, 6], 'expansion_factor': 2, 'resi_connection': '1conv',
                                   'hier_win_ratios': [0.5, 1, 2, 4, 6, 8], 'upsampler': 'igconv',
                                   'geo_ensemble': False}
PUBLISHED_OPTIONS_HIT_SRF_IGCONVPLUS = {**PUBLISHED_OPTIONS_HIT_SRF_IGCONV, 'upsampler': 'igconv+igsample',
                                       'return_skip': False, 'geo_ensemble': True}
#: ``network_g`` of every published HiT_SRF option file (test and train agree), by test option-file stem.
PUBLISHED_OPTION_FILES = {'HiT_SRF_IGConv_DIV2K': PUBLISHED_OPTIONS_HIT_SRF_IGCONV,
                          'HiT_SRF_IGConvPlus_DIV2K': PUBLISHED_OPTIONS_HIT_SRF_IGCONVPLUS}


def pad_to_window(x, win_h, win_w):
    """The published ``check_image_size`` on a map (B, C, h, w): reflect-pad bottom/right to multiples of
    (win_h, win_w); where the pad is >= the size in either direction, first pad both by (size - 1), then
    by the rest (negative: crop)."""
    h, w = x.shape[-2:]
    need_h, need_w = (-h) % win_h, (-w) % win_w
    if need_h >= h or need_w >= w:
        x = F.pad(x, (0, w - 1, 0, h - 1), mode='reflect')
        need_h, need_w = need_h - (h - 1), need_w - (w - 1)
    H, W = x.shape[-2:]
    if need_h >= H or need_w >= W:
        raise ValueError(f'HiT_SRF: a {h}x{w} feature map is too small to reflect-pad to the {win_h}x{win_w} window '
                         f'(published check_image_size); use an input of at least 17x17')
    x = x[..., :H + min(need_h, 0), :W + min(need_w, 0)]
    if need_h > 0 or need_w > 0:
        x = F.pad(x, (0, max(need_w, 0), 0, max(need_h, 0)), mode='reflect')
    return x


def rect_window_partition(x, wh, ww):
    """(B, H, W, C) -> (B * H/wh * W/ww, wh * ww, C), windows and tokens row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def rect_window_reverse(windows, wh, ww, H, W):
    """(B * nW, wh * ww, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


class DFE(nn.Module):
    """Dual feature extraction: ``conv(x) * linear(x)`` on a map (B, C, h, w)."""

    def __init__(self, dim):
        super().__init__()
        mid = dim // 5
        self.conv = nn.Sequential(nn.Conv2d(dim, mid, 1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(mid, mid, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(mid, dim, 1))
        self.linear = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return self.conv(x) * self.linear(x)


class PositionMLP(nn.Module):
    """The dynamic position bias MLP: offsets (P, 2) -> (P, heads) through three LayerNorm-ReLU-Linear stages
    of width ``dim // 4`` (published ``DynamicPosBias``, non-residual)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        width = dim // 4
        self.pos_proj = nn.Linear(2, width)
        self.pos1 = nn.Sequential(nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Linear(width, width))
        self.pos2 = nn.Sequential(nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Linear(width, width))
        self.pos3 = nn.Sequential(nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Linear(width, num_heads))

    def forward(self, offsets):
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


def _bias_layout(wh, ww, sh, sw):
    """Offsets (P, 2) of the bias MLP ((2wh-1)(2ww-1) of them, row offset outer) and the index (L, M) into the
    box means (see :meth:`SCC.position_bias`) for query token i and key sub-block m."""
    dh, dw = torch.meshgrid(torch.arange(1 - wh, wh), torch.arange(1 - ww, ww), indexing='ij')
    offsets = torch.stack([dh.flatten(), dw.flatten()], dim=1).float()
    qi, qj = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')
    mi, mj = torch.meshgrid(torch.arange(wh // sh) * sh, torch.arange(ww // sw) * sw, indexing='ij')
    rows = qi.reshape(-1, 1) - mi.reshape(1, -1) + wh - sh        # first row of the box of (i, m)
    cols = qj.reshape(-1, 1) - mj.reshape(1, -1) + ww - sw
    return offsets, rows * (2 * ww - sw) + cols


class SCC(nn.Module):
    """Spatial-channel correlation in (win_h, win_w) windows (module docstring)."""

    def __init__(self, dim, base_win_size, window_size, num_heads):
        super().__init__()
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.head_dim = dim // (2 * num_heads)
        self.qv = DFE(dim)
        self.proj = nn.Linear(dim, dim)
        wh, ww = self.window_size
        self.base_win_size = (min(wh, base_win_size[0]), min(ww, base_win_size[1]))
        self.sub = (wh // self.base_win_size[0], ww // self.base_win_size[1])     # sub-block size
        self.spatial_linear = nn.Linear(self.sub[0] * self.sub[1], 1)
        self.pos = PositionMLP(dim // 4, num_heads)
        offsets, index = _bias_layout(wh, ww, *self.sub)
        # depend on the window only: built once, not saved
        self.register_buffer('bias_offsets', offsets, persistent=False)
        self.register_buffer('bias_index', index, persistent=False)

    def position_bias(self):
        """(heads, L, M): the mean of the MLP bias over each key sub-block, as a box mean of the bias table
        ((2wh-1, 2ww-1) offsets) followed by a gather (O(wh ww) memory instead of O(L^2))."""
        wh, ww = self.window_size
        table = self.pos(self.bias_offsets).t().reshape(1, self.num_heads, 2 * wh - 1, 2 * ww - 1)
        box = F.avg_pool2d(table, self.sub, stride=1).flatten(2)[0]           # (heads, (2wh-sh)(2ww-sw))
        return box[:, self.bias_index]

    def pool_values(self, v):
        """v (Bw, heads, L, hd) -> (Bw, heads, M, hd) by ``spatial_linear`` over each sub-block's tokens."""
        Bw, nh, _, hd = v.shape
        (bh, bw), (sh, sw) = self.base_win_size, self.sub
        v = v.view(Bw, nh, bh, sh, bw, sw, hd).permute(0, 1, 2, 4, 6, 3, 5).reshape(Bw, nh, bh * bw, hd, sh * sw)
        return self.spatial_linear(v).squeeze(-1)

    def forward(self, x):
        """x (B, C, H, W), H and W multiples of the window -> (B, H, W, C)."""
        B, C, H, W = x.shape
        wh, ww = self.window_size
        qv = rect_window_partition(self.qv(x).permute(0, 2, 3, 1), wh, ww)
        Bw, L, _ = qv.shape
        q, v = qv.view(Bw, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        pooled = self.pool_values(v)
        corr = q @ pooled.transpose(-2, -1) / self.head_dim + self.position_bias().unsqueeze(0)
        spatial = (corr @ pooled).transpose(1, 2).reshape(Bw, L, C // 2)
        q, v = q.transpose(1, 2).reshape(Bw, L, C // 2), v.transpose(1, 2).reshape(Bw, L, C // 2)
        channel = (((q.transpose(-2, -1) @ v) / L) @ v.transpose(-2, -1)).transpose(-2, -1)
        out = rect_window_reverse(torch.cat([spatial, channel], dim=-1), wh, ww, H, W)
        return self.proj(out)


class DWConv(nn.Module):
    """Depthwise 5x5 conv + GELU on tokens (B, h*w, C)."""

    def __init__(self, dim):
        super().__init__()
        self.depthwise_conv = nn.Sequential(nn.Conv2d(dim, dim, 5, 1, 2, groups=dim), nn.GELU())

    def forward(self, x, x_size):
        return map_to_tokens(self.depthwise_conv(tokens_to_map(x, x_size)))


class ConvFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, x_size):
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x, x_size))


class HierarchicalBlock(nn.Module):
    """Post-norm SCC + ConvFFN block in (win_h, win_w) windows, with the published in-block padding."""

    def __init__(self, dim, num_heads, base_win_size, window_size, mlp_ratio, drop_path_p):
        super().__init__()
        self.window_size = tuple(window_size)
        self.norm1 = nn.LayerNorm(dim)
        self.correlation = SCC(dim, base_win_size, window_size, num_heads)
        self.drop_path = DropPath(drop_path_p)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio))

    def forward(self, x, x_size):
        H, W = x_size
        padded = pad_to_window(tokens_to_map(x, x_size), *self.window_size)
        y = self.correlation(padded)[:, :H, :W].reshape(x.shape)
        x = x + self.drop_path(self.norm1(y))
        return x + self.drop_path(self.norm2(self.mlp(x, x_size)))


def _windows(base_win_size, hier_win_ratios, depths):
    """(win_h, win_w) per block index, checked against the base window (published rules)."""
    if len(base_win_size) != 2 or any(not isinstance(b, int) or b < 1 for b in base_win_size):
        raise ValueError(f'HiT_SRF: base_win_size must be two positive integers, got {base_win_size!r}')
    if max(depths) > len(hier_win_ratios):
        raise ValueError(f'HiT_SRF: every depth must be <= len(hier_win_ratios) = {len(hier_win_ratios)} '
                         f'(block i uses ratio i), got depths {depths!r}')
    windows = [(int(base_win_size[0] * r), int(base_win_size[1] * r)) for r in hier_win_ratios]
    for win in windows:
        for size, base in zip(win, base_win_size):
            if size < 1 or (size > base and size % base):
                raise ValueError(f'HiT_SRF: window {win} from hier_win_ratios must be positive and, where larger '
                                 f'than base_win_size {tuple(base_win_size)}, a multiple of it')
    return windows


@published_arch('HiT_SRF', options=PUBLISHED_OPTIONS_HIT_SRF_IGCONVPLUS, aliases=('hit-srf',))
class HiT_SRF(_MeanShifted, SwinTrunk):
    """HiT-SRF with IGConv fed the ``embed_dim``-ch ``conv_after_body(...) + x`` (module docstring).

    ``upsampler``: ``'igconv'`` (no FGRep) or ``'igconv+igsample'`` (IGConv+ with FGRep); as published,
    FGRep follows the upsampler (``geo_ensemble``, if given, must agree) and the IGConv scale phase
    saturates at ``max_s`` = 4. ``expansion_factor`` is ignored by the published model (the FFN width is
    ``mlp_ratio``); only its published value 2 is accepted. Only the published settings of the other
    options are supported (patch_size 1, patch norm, no absolute position embedding, no dropout,
    ``resi_connection`` '1conv', no checkpointing); ``img_size`` and ``upscale`` are accepted and unused, as
    published with the IGConv upsamplers.
    """

    TEST_FORWARD = 'tiles'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=60, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), base_win_size=(8, 8), mlp_ratio=2.0, drop_rate=0.0, value_drop_rate=0.0,
                 drop_path_rate=0.0, ape=False, patch_norm=True, use_checkpoint=False, upscale=4, img_range=1.0,
                 upsampler='igconv+igsample', resi_connection='1conv', hier_win_ratios=(0.5, 1, 2, 4, 6, 8),
                 sk_kernel_size=3, implicit_dim=256, latent_layers=4, geo_ensemble=None, return_skip=False,
                 expansion_factor=2):
        super().__init__()
        fixed = {'patch_size': (patch_size, 1), 'in_chans': (in_chans, 3), 'ape': (ape, False),
                 'patch_norm': (patch_norm, True), 'use_checkpoint': (use_checkpoint, False),
                 'resi_connection': (resi_connection, '1conv'), 'drop_rate': (drop_rate, 0.0),
                 'value_drop_rate': (value_drop_rate, 0.0), 'expansion_factor': (expansion_factor, 2)}
        for name, (got, want) in fixed.items():
            if got != want:
                raise ValueError(f'HiT_SRF: only {name}={want!r} is supported, got {got!r}')
        if upsampler not in ('igconv', 'igconv+igsample'):
            raise ValueError(f"HiT_SRF: upsampler must be 'igconv' or 'igconv+igsample', got {upsampler!r}")
        plus = upsampler == 'igconv+igsample'
        if geo_ensemble is not None and bool(geo_ensemble) != plus:
            raise ValueError(f'HiT_SRF: the published model fixes geo_ensemble to {plus} for upsampler '
                             f'{upsampler!r}, got {geo_ensemble!r}')
        if len(depths) != len(num_heads):
            raise ValueError(f'HiT_SRF: depths {depths!r} and num_heads {num_heads!r} differ in length')
        windows = _windows(base_win_size, hier_win_ratios, depths)
        self.upsampler_name = upsampler
        self._set_mean(DIV2K_MEAN, img_range)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbedNorm(embed_dim)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            p = dpr[sum(depths[:i]):sum(depths[:i + 1])]
            self.layers.append(ResidualGroup(embed_dim, [
                HierarchicalBlock(embed_dim, heads, base_win_size, windows[j], mlp_ratio, p[j]) for j in range(depth)]))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self._make_upsamplers(embed_dim, sk_kernel_size, implicit_dim, latent_layers, plus, plus, 4)
        _check_return_skip(type(self).__name__, return_skip)
        self.apply(self._init_weights)     # after the upsamplers, as published
        self.receptive_radius = None       # window attention with global channel correlation per window

    def encode(self, x):
        return self.trunk(x)
