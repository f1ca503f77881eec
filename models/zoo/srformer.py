"""SRFormer (Zhou et al. 2023, permuted self-attention) + IGConv / IGConv+ (published ``SRFormer``; ``upsample``,
C = ``embed_dim`` = 180).

SwinIR's trunk with permuted self-attention (PSA) blocks: in each ws x ws window the ws^2 queries attend to
(ws/2)^2 keys/values, each the concatenation of the ``dim / 4``-channel key/value projections of one 2x2 patch
(so keys carry all ``dim`` channels); the relative position bias is that of the patch a query lies in
(``aligned_relative_position_index``). Shifted blocks mask by regions as Swin does, the key regions cut on the
half-resolution grid at ``-ws/2`` and ``-(shift // 2)`` (as published). The feed-forward is a ConvFFN
(depthwise 5x5). The network reflect-pads its input to multiples of ``window_size`` itself and crops the output.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (ConvFFN, DropPath, region_mask, relative_position_bias, relative_position_index,
                      shifted_window_labels, split_heads, window_attention, window_partition, window_reverse)
from ..layers.trunk import TokenTrunk, init_transformer_weights, stochastic_depth_rates
from .base import DIV2K_MEAN, _check_return_skip, _MeanShifted, published_arch
from .swinir import check_fixed_options, check_upsampler, check_window_multiple

PUBLISHED_OPTIONS_SRFORMER = {'upscale': 4, 'in_chans': 3, 'img_size': 64, 'window_size': 22, 'img_range': 1.0,
                              'depths': [6] * 6, 'embed_dim': 180, 'num_heads': [6] * 6, 'mlp_ratio': 2,
                              'upsampler': 'igconv+igsample', 'resi_connection': '1conv', 'return_skip': False}


def permuted_window_mask(H, W, ws, shift, device=None):
    """(nW, ws^2, ws^2 / 4) mask of shifted PSA windows: query regions on the H x W grid, key regions on the
    H/2 x W/2 grid of 2x2 patches (windows ws/2, shift ``shift // 2``)."""
    return region_mask(shifted_window_labels(H, W, ws, shift, device),
                       shifted_window_labels(H // 2, W // 2, ws // 2, shift // 2, device))


class PSA(nn.Module):
    """Permuted self-attention in a ws x ws window (state-dict names ``relative_position_bias_table``,
    ``aligned_relative_position_index``, ``kv``, ``q``, ``proj``)."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.num_heads, self.half = num_heads, window_size // 2
        self.scale = (dim // num_heads) ** -0.5
        half = self.half
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * half - 1) ** 2, num_heads))
        # query (2i + dy, 2j + dx) takes the bias of its patch (i, j)
        index = relative_position_index(half).view(half, 1, half, 1, -1).expand(half, 2, half, 2, -1)
        self.register_buffer('aligned_relative_position_index', index.reshape(window_size ** 2, half * half))
        self.kv = nn.Linear(dim, dim // 2)
        self.q = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        """x (B*nW, ws^2, C) window tokens, mask (nW, ws^2, ws^2 / 4) or None -> (B*nW, ws^2, C)."""
        Bw, N, C = x.shape
        half, heads = self.half, self.num_heads
        # (Bw, i, dy, j, dx, k|v, C/4) -> (k|v, Bw, heads, patch (i, j), channels (dy, dx, C/4) per head)
        kv = self.kv(x).reshape(Bw, half, 2, half, 2, 2, C // 4).permute(0, 1, 3, 5, 2, 4, 6)
        kv = kv.reshape(Bw, N // 4, 2, heads, C // heads).permute(2, 0, 3, 1, 4)
        bias = relative_position_bias(self.relative_position_bias_table, self.aligned_relative_position_index)
        q = split_heads(self.q(x), heads) * self.scale
        return self.proj(window_attention(q, kv[0], kv[1], bias, mask))


class PSABlock(nn.Module):
    """``x + attn(norm1 x)`` in (shifted) windows, then ``+ ConvFFN(norm2 .)``; the shifted-window mask for the
    ``input_resolution`` is a buffer (``attn_mask``), other sizes compute theirs."""

    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, mlp_ratio, drop_path):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PSA(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), 5)
        mask = permuted_window_mask(*self.input_resolution, window_size, shift_size) if shift_size else None
        self.register_buffer('attn_mask', mask)

    def forward(self, x, x_size):
        (H, W), (B, L, C) = x_size, x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x).view(B, H, W, C)
        mask = None
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
            mask = (self.attn_mask if tuple(x_size) == self.input_resolution
                    else permuted_window_mask(H, W, ws, s, device=x.device))
        y = window_reverse(self.attn(window_partition(y, ws), mask), ws, H, W)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x), x_size))


class PSABlocks(nn.Module):
    """The ``blocks`` of one PSA group (shift ``window_size // 2`` on odd ones)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, drop_path):
        super().__init__()
        self.blocks = nn.ModuleList([
            PSABlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                     mlp_ratio, drop_path[i]) for i in range(depth)])

    def forward(self, x, x_size):
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


@published_arch('SRFormer', options=PUBLISHED_OPTIONS_SRFORMER, aliases=('srformer',))
class SRFormer(_MeanShifted, TokenTrunk):
    """SRFormer with IGConv fed the ``embed_dim``-channel ``conv_after_body(body) + conv_first(x)`` (published
    ``SRFormer``).

    Arguments as the published ``network_g`` (defaults: the released SRFormer-IGConv+ configuration;
    ``PUBLISHED_OPTIONS['SRFormer']`` is ``SRFormer_IGConvPlus_DF2K.yaml``'s, ``SRFormer_IGConv_DF2K.yaml`` sets
    ``upsampler: igconv, geo_ensemble: false``). ``upscale`` is accepted and unused; ``max_s`` is not a published
    SRFormer argument (the published class keeps 4), here it caps IGConv's scale phase. The stored attention masks
    are for ``img_size`` rounded up to a multiple of ``window_size``, which must be even, with ``embed_dim`` a
    multiple of 4 and the padded ``img_size`` above the window (published constraints). Only the published
    settings of the inherited Swin options are supported.
    """

    TEST_FORWARD = 'window_pad'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6,
                 window_size=22, mlp_ratio=2.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1, ape=False, patch_norm=True, use_checkpoint=False, upscale=4, img_range=1.0,
                 upsampler='igconv+igsample', resi_connection='1conv', sk_kernel_size=3, implicit_dim=256,
                 latent_layers=4, geo_ensemble=True, max_s=4, return_skip=False):
        super().__init__()
        check_fixed_options('SRFormer', patch_size=patch_size, in_chans=in_chans, qkv_bias=qkv_bias,
                            qk_scale=qk_scale, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, ape=ape,
                            patch_norm=patch_norm, use_checkpoint=use_checkpoint, resi_connection=resi_connection)
        plus = check_upsampler('SRFormer', upsampler, depths, num_heads, embed_dim)
        resolution = -(-img_size // window_size) * window_size
        if window_size % 2 or embed_dim % 4 or resolution <= window_size:
            raise ValueError(f'SRFormer: needs an even window_size, embed_dim a multiple of 4 and img_size above the '
                             f'window; got window_size {window_size}, embed_dim {embed_dim}, img_size {img_size}')
        self.window_size = self.window = int(window_size)
        self._set_mean(DIV2K_MEAN, img_range)
        rates = stochastic_depth_rates(drop_path_rate, depths)
        self.build_token_trunk(in_chans, embed_dim, (
            PSABlocks(embed_dim, (resolution, resolution), depth, num_heads[i], window_size, mlp_ratio, rates[i])
            for i, depth in enumerate(depths)))
        self._make_upsamplers(embed_dim, sk_kernel_size, implicit_dim, latent_layers, bool(geo_ensemble), plus, max_s)
        _check_return_skip('SRFormer', return_skip)
        self.apply(init_transformer_weights)     # after the upsamplers, as published

    def encode(self, x):
        """Mean-shifted (B, 3, h, w), h and w multiples of ``window_size`` -> F (B, embed_dim, h, w)."""
        check_window_multiple('SRFormer', x, self.window_size)
        return self.trunk(x)

    def run(self, inp, r):
        """The published network: reflect-pad to multiples of the window, run, crop to r (h, w)."""
        h, w = inp.shape[-2:]
        ph, pw = (-h) % self.window_size, (-w) % self.window_size
        if not (ph or pw):
            return super().run(inp, r)
        if ph >= h or pw >= w:
            raise ValueError(f'SRFormer: input {h}x{w} is too small to reflect-pad to a multiple of the window '
                             f'{self.window_size}')
        out, skip = super().run(F.pad(inp, (0, pw, 0, ph), mode='reflect'), r)
        return out[..., :r * h, :r * w], None if skip is None else skip[..., :r * h, :r * w]
