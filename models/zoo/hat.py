"""HAT (Chen et al. 2023, Hybrid Attention Transformer) + IGConv / IGConv+ (published ``HAT``; ``upsample``,
C = ``embed_dim`` = 180).

Each residual hybrid attention group (RHAG) runs ``depths[i]`` hybrid attention blocks (HAB: window attention,
shifted every other block, plus ``conv_scale`` x a channel-attention conv branch, then an MLP) and one
overlapping cross-attention block (OCAB: queries from ws x ws windows, keys and values from the overlapping
``ws + int(ws * overlap_ratio)`` window around each, zero-padded at the border). The model owns the relative
position indices (``relative_position_index_SA`` / ``_OCA``); the shifted-window mask is computed per input size.
HAT does not pad: ``run`` needs sizes that are multiples of ``window_size`` (the test forward pads).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (DropPath, Mlp, WindowSelfAttention, map_to_tokens, relative_position_bias,
                      relative_position_index, shifted_window_mask, split_heads, window_attention, window_partition,
                      window_reverse)
from ..layers.trunk import TokenTrunk, init_transformer_weights, stochastic_depth_rates
from .base import DIV2K_MEAN, _check_return_skip, _MeanShifted, published_arch
from .swinir import check_fixed_options, check_upsampler, check_window_multiple

PUBLISHED_OPTIONS_HAT = {'in_chans': 3, 'img_size': 64, 'window_size': 16, 'compress_ratio': 3, 'squeeze_factor': 30,
                         'conv_scale': 0.01, 'overlap_ratio': 0.5, 'img_range': 1.0, 'depths': [6] * 6,
                         'embed_dim': 180, 'num_heads': [6] * 6, 'mlp_ratio': 2, 'upsampler': 'igconv+igsample',
                         'resi_connection': '1conv', 'return_skip': False, 'geo_ensemble': True}


def overlapping_relative_position_index(ws, ows):
    """(ws*ws, ows*ows) index into the (ws + ows - 1)^2 OCAB bias table: key offset minus query offset, shifted
    by ``ws - ows + 1`` as published (negative entries address the table from its end; the map stays one-to-one)."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij')
    q = torch.stack([ys.flatten(), xs.flatten()])
    ys, xs = torch.meshgrid(torch.arange(ows), torch.arange(ows), indexing='ij')
    k = torch.stack([ys.flatten(), xs.flatten()])
    rel = k[:, None, :] - q[:, :, None] + (ws - ows + 1)
    return rel[0] * (ws + ows - 1) + rel[1]


class ChannelAttention(nn.Module):
    """RCAN's channel attention: ``x * sigmoid(conv(relu(conv(avgpool(x)))))`` (name ``attention.{1,3}``)."""

    def __init__(self, num_feat, squeeze_factor):
        super().__init__()
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
                                       nn.ReLU(inplace=True), nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
                                       nn.Sigmoid())

    def forward(self, x):
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block: 3x3 conv to C / compress_ratio, GELU, 3x3 conv back, channel attention."""

    def __init__(self, num_feat, compress_ratio, squeeze_factor):
        super().__init__()
        self.cab = nn.Sequential(nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
                                 nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
                                 ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x):
        return self.cab(x)


class HAB(nn.Module):
    """Hybrid attention block: ``x + attn(norm1 x) + conv_scale * CAB(norm1 x)``, then ``+ mlp(norm2 .)``."""

    def __init__(self, dim, num_heads, window_size, shift_size, compress_ratio, squeeze_factor, conv_scale,
                 mlp_ratio, drop_path):
        super().__init__()
        self.window_size, self.shift_size, self.conv_scale = window_size, shift_size, conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowSelfAttention(dim, window_size, num_heads)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, x_size, index_sa, attn_mask):
        (H, W), (B, L, C) = x_size, x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x).view(B, H, W, C)
        conv_x = map_to_tokens(self.conv_block(y.permute(0, 3, 1, 2)))
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, ws), index_sa, attn_mask if s else None), ws, H, W)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y.reshape(B, L, C)) + conv_x * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention block: each ws x ws query window attends to the ``ows x ows`` window centred on
    it (zero padding at the border); then the projection, the residual and ``+ mlp(norm2 .)``."""

    def __init__(self, dim, window_size, overlap_ratio, num_heads, mlp_ratio):
        super().__init__()
        self.window_size, self.num_heads = window_size, num_heads
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.scale = (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window_size + self.overlap_win_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, x_size, index_oca):
        (H, W), (B, L, C) = x_size, x.shape
        ws, ows = self.window_size, self.overlap_win_size
        qkv = self.qkv(self.norm1(x))
        q = window_partition(qkv[..., :C].reshape(B, H, W, C), ws)
        p = (ows - ws) // 2
        kv = F.pad(qkv[..., C:].transpose(1, 2).reshape(B, 2 * C, H, W), (p, p, p, p))
        kv = kv.unfold(2, ows, ws).unfold(3, ows, ws)                        # (B, 2C, H/ws, W/ws, ows, ows)
        kv = kv.reshape(B, 2, C, -1, ows * ows).permute(1, 0, 3, 4, 2).reshape(2, -1, ows * ows, C)
        heads = self.num_heads
        table = self.relative_position_bias_table
        bias = relative_position_bias(table, index_oca % table.shape[0])
        y = window_attention(split_heads(q, heads) * self.scale, split_heads(kv[0], heads), split_heads(kv[1], heads),
                             bias)
        x = self.proj(window_reverse(y, ws, H, W).reshape(B, L, C)) + x
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    """The blocks of one RHAG: HABs (``blocks``, shift on odd ones), then the OCAB ``overlap_attn``."""

    def __init__(self, dim, depth, num_heads, window_size, compress_ratio, squeeze_factor, conv_scale, overlap_ratio,
                 mlp_ratio, drop_path):
        super().__init__()
        self.blocks = nn.ModuleList([
            HAB(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, compress_ratio, squeeze_factor,
                conv_scale, mlp_ratio, drop_path[i]) for i in range(depth)])
        self.overlap_attn = OCAB(dim, window_size, overlap_ratio, num_heads, mlp_ratio)

    def forward(self, x, x_size, index_sa, index_oca, attn_mask):
        for blk in self.blocks:
            x = blk(x, x_size, index_sa, attn_mask)
        return self.overlap_attn(x, x_size, index_oca)


@published_arch('HAT', options=PUBLISHED_OPTIONS_HAT, aliases=('hat',))
class HAT(_MeanShifted, TokenTrunk):
    """HAT with IGConv fed the ``embed_dim``-channel ``conv_after_body(body) + conv_first(x)`` (published ``HAT``).

    Arguments as the published ``network_g`` (defaults: the released HAT-IGConv+ configuration).
    ``upsampler``: ``'igconv'`` or ``'igconv+igsample'`` (IGConv+). ``upscale`` is accepted and unused (the scale
    is a forward argument). ``max_s`` is not a published HAT argument (the published class swallows it and keeps
    4); here it sets the scale phase cap of IGConv as in the other architectures. Only the published settings of
    the inherited Swin options are supported (patch_size 1, qkv_bias, no qk_scale, no dropout, no absolute
    position embedding, patch norm, '1conv', no checkpointing). ``img_size`` must exceed ``window_size`` and
    ``int(window_size * overlap_ratio)`` must be even (the published code fails otherwise).
    """

    TEST_FORWARD = 'window_pad'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6,
                 window_size=16, compress_ratio=3, squeeze_factor=30, conv_scale=0.01, overlap_ratio=0.5,
                 mlp_ratio=2.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                 ape=False, patch_norm=True, use_checkpoint=False, upscale=2, img_range=1.0,
                 upsampler='igconv+igsample', resi_connection='1conv', sk_kernel_size=3, implicit_dim=256,
                 latent_layers=4, geo_ensemble=True, max_s=4, return_skip=False):
        super().__init__()
        check_fixed_options('HAT', patch_size=patch_size, in_chans=in_chans, qkv_bias=qkv_bias, qk_scale=qk_scale,
                            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, ape=ape, patch_norm=patch_norm,
                            use_checkpoint=use_checkpoint, resi_connection=resi_connection)
        plus = check_upsampler('HAT', upsampler, depths, num_heads, embed_dim)
        ows_extra = int(window_size * overlap_ratio)
        if img_size <= window_size or ows_extra % 2:
            raise ValueError(f'HAT: needs img_size > window_size and an even int(window_size * overlap_ratio); got '
                             f'img_size {img_size}, window_size {window_size}, overlap_ratio {overlap_ratio}')
        self.window_size = self.window = int(window_size)
        self.register_buffer('relative_position_index_SA', relative_position_index(window_size))
        self.register_buffer('relative_position_index_OCA',
                             overlapping_relative_position_index(window_size, window_size + ows_extra))
        self._set_mean(DIV2K_MEAN, img_range)
        rates = stochastic_depth_rates(drop_path_rate, depths)
        self.build_token_trunk(in_chans, embed_dim, (
            AttenBlocks(embed_dim, depth, num_heads[i], window_size, compress_ratio, squeeze_factor, conv_scale,
                        overlap_ratio, mlp_ratio, rates[i]) for i, depth in enumerate(depths)))
        self.apply(init_transformer_weights)     # before the upsamplers, as published
        self._make_upsamplers(embed_dim, sk_kernel_size, implicit_dim, latent_layers, bool(geo_ensemble), plus, max_s)
        _check_return_skip('HAT', return_skip)

    def encode(self, x):
        """Mean-shifted (B, 3, h, w), h and w multiples of ``window_size`` -> F (B, embed_dim, h, w)."""
        H, W = check_window_multiple('HAT', x, self.window_size)
        mask = shifted_window_mask(H, W, self.window_size, self.window_size // 2, device=x.device)
        return self.trunk(x, self.relative_position_index_SA, self.relative_position_index_OCA, mask)
