"""ATD (Zhang et al. 2024, Adaptive Token Dictionary) + IGConv+ (published ``ATD``; ``upsample``, C = ``embed_dim``
= 210): the IGConv paper's headline model ATD-IGConv+.

Every ATD layer adds three attentions of one normalised input to the residual:
* window attention (``attn_win``, shifted every other layer) on the layer's shared ``wqkv`` projection;
* token-dictionary cross-attention (``attn_atd``): cosine similarity of ``reducted_dim``-channel projections of the
  tokens and of the group's ``num_tokens`` dictionary entries, scaled by ``1 + clamp(scale, 0, 1) log(num_tokens)``,
  softmax over the entries; its output attends to the dictionary values;
* category attention (``attn_aca``): tokens sorted by the dictionary entry they are most similar to (argmax of the
  similarity; a *stable* sort here, the published sort is unstable: tie order moves outputs by < 1e-6), cut into
  groups of ``category_size`` (the last filled with the preceding tokens mirrored), attention inside each group
  on the ``wqkv`` projection with a learned ``logit_scale`` (no 1/sqrt(d)), unsorted.
Then a ConvFFN; except in a group's last layer, the dictionary is updated: ``td <- s td + (1 - s) A x`` with
``s = sigmoid(sigma)`` and ``A`` the softmax over tokens of the instance-normalised (``norm3``) similarity.
The network flip-pads its input to multiples of ``window_size`` itself (rows/columns mirrored, the edge repeated)
and crops the output.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import (ConvFFN, relative_position_bias, relative_position_index, shifted_window_mask,
                      window_attention, window_partition, window_reverse)
from ..layers.trunk import TokenTrunk, init_transformer_weights
from .base import DIV2K_MEAN, _check_return_skip, _MeanShifted, published_arch
from .swinir import check_fixed_options, check_upsampler, check_window_multiple

PUBLISHED_OPTIONS_ATD = {'upscale': 2, 'in_chans': 3, 'img_size': 96, 'embed_dim': 210, 'depths': [6] * 6,
                         'num_heads': [6] * 6, 'window_size': 16, 'category_size': 256, 'num_tokens': 128,
                         'reducted_dim': 20, 'convffn_kernel_size': 5, 'img_range': 1.0, 'mlp_ratio': 2,
                         'upsampler': 'igconv+igsample', 'resi_connection': '1conv', 'return_skip': False,
                         'geo_ensemble': True, 'use_checkpoint': True}
#: Groups whose layers the published code wraps in activation checkpointing when ``use_checkpoint`` is set.
CHECKPOINTED_GROUPS = 4


class QKVWindowAttention(nn.Module):
    """Window attention on a given (B*nW, N, 3C) q|k|v projection: relative position bias (index given),
    output projection ``proj``."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, qkv, index, mask=None):
        Bw, N, C3 = qkv.shape
        qkv = qkv.reshape(Bw, N, 3, self.num_heads, C3 // (3 * self.num_heads)).permute(2, 0, 3, 1, 4)
        bias = relative_position_bias(self.relative_position_bias_table, index)
        return self.proj(window_attention(qkv[0] * self.scale, qkv[1], qkv[2], bias, mask))


class TokenDictionaryAttention(nn.Module):
    """ATD_CA: tokens (B, N, C) attend to the dictionary (B, m, C); returns (output (B, N, C), attention (B, N, m))."""

    def __init__(self, dim, num_tokens, reducted_dim):
        super().__init__()
        self.num_tokens = num_tokens
        self.wq = nn.Linear(dim, reducted_dim)
        self.wk = nn.Linear(dim, reducted_dim)
        self.wv = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.full((num_tokens,), 0.5))

    def forward(self, x, td):
        q = F.normalize(self.wq(x), dim=-1)
        k = F.normalize(self.wk(td), dim=-1)
        attn = q @ k.transpose(-2, -1)
        attn = (attn * (1 + self.scale.clamp(0, 1) * math.log(self.num_tokens))).softmax(dim=-1)
        return attn @ self.wv(td), attn


class CategoryAttention(nn.Module):
    """AC_MSA: attention inside groups of ``category_size`` tokens sharing their most similar dictionary entry."""

    def __init__(self, dim, num_heads, category_size):
        super().__init__()
        self.num_heads, self.category_size = num_heads, category_size
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(1, 1)))

    def forward(self, qkv, sim):
        """qkv (B, N, 3C), sim (B, N, m) -> (B, N, C)."""
        B, N, C3 = qkv.shape
        C, heads = C3 // 3, self.num_heads
        gs = min(N, self.category_size)
        groups = -(-N // gs)
        pad = groups * gs - N
        order = torch.sort(sim.argmax(dim=-1), dim=-1, stable=True).indices          # (B, N)
        y = take_rows(qkv, order)
        if pad:
            y = torch.cat([y, y[:, N - pad:].flip(1)], dim=1)
        q, k, v = y.view(B, groups, gs, 3, heads, C // heads).permute(3, 0, 1, 4, 2, 5)  # (B, groups, heads, gs, d)
        q = q * self.logit_scale.clamp(max=math.log(100.0)).exp()
        y = ((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v).permute(0, 1, 3, 2, 4).reshape(B, groups * gs, C)
        inverse = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=order.device).expand(B, N))
        return self.proj(take_rows(y[:, :N], inverse))


def take_rows(x, index):
    """``x[b, index[b, n]]`` for x (B, N, C), index (B, N) (row gather)."""
    B, N = index.shape
    offsets = torch.arange(B, device=index.device).unsqueeze(1) * x.shape[1]
    return x.reshape(-1, x.shape[-1]).index_select(0, (index + offsets).reshape(-1)).view(B, N, -1)


class ATDLayer(nn.Module):
    """One ATD transformer layer (published ``ATDTransformerLayer``): ``forward(x, td, x_size, index, mask)`` ->
    (x, td), x (B, N, C) tokens, td (B, m, C) the dictionary."""

    def __init__(self, dim, num_heads, window_size, shift_size, category_size, num_tokens, reducted_dim,
                 convffn_kernel_size, mlp_ratio, is_last):
        super().__init__()
        self.window_size, self.shift_size, self.is_last = window_size, shift_size, is_last
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        if not is_last:
            self.norm3 = nn.InstanceNorm1d(num_tokens, affine=True)
            self.sigma = nn.Parameter(torch.zeros(num_tokens, 1))
        self.wqkv = nn.Linear(dim, 3 * dim)
        self.attn_win = QKVWindowAttention(dim, window_size, num_heads)
        self.attn_atd = TokenDictionaryAttention(dim, num_tokens, reducted_dim)
        self.attn_aca = CategoryAttention(dim, num_heads, category_size)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), convffn_kernel_size)

    def forward(self, x, td, x_size, index, mask):
        (H, W), (B, N, C) = x_size, x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x)
        qkv = self.wqkv(y)
        x_atd, sim = self.attn_atd(y, td)
        x_aca = self.attn_aca(qkv, sim)
        qkv = qkv.view(B, H, W, 3 * C)
        if s:
            qkv = torch.roll(qkv, shifts=(-s, -s), dims=(1, 2))
        x_win = window_reverse(self.attn_win(window_partition(qkv, ws), index, mask if s else None), ws, H, W)
        if s:
            x_win = torch.roll(x_win, shifts=(s, s), dims=(1, 2))
        x = x + x_win.reshape(B, N, C) + x_atd + x_aca
        x = x + self.convffn(self.norm2(x), x_size)
        if not self.is_last:
            weights = self.norm3(sim.transpose(1, 2)).softmax(dim=-1)                   # (B, m, N)
            keep = torch.sigmoid(self.sigma)
            td = keep * td + (1 - keep) * (weights @ x)
        return x, td


class ATDBlocks(nn.Module):
    """The layers of one ATD block and its token dictionary ``td`` (num_tokens, C), shared by the batch."""

    def __init__(self, dim, depth, num_heads, window_size, category_size, num_tokens, reducted_dim,
                 convffn_kernel_size, mlp_ratio, checkpointed):
        super().__init__()
        self.checkpointed = checkpointed
        self.layers = nn.ModuleList([
            ATDLayer(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, category_size, num_tokens,
                     reducted_dim, convffn_kernel_size, mlp_ratio, is_last=i == depth - 1) for i in range(depth)])
        self.td = nn.Parameter(torch.randn(num_tokens, dim))

    def forward(self, x, x_size, index, mask):
        td = self.td.expand(x.shape[0], -1, -1)
        for layer in self.layers:
            if self.checkpointed and torch.is_grad_enabled():    # memory saving only (published: fairscale)
                x, td = checkpoint(layer, x, td, x_size, index, mask, use_reentrant=False)
            else:
                x, td = layer(x, td, x_size, index, mask)
        return x


@published_arch('ATD', options=PUBLISHED_OPTIONS_ATD, aliases=('atd',))
class ATD(_MeanShifted, TokenTrunk):
    """ATD with IGConv+ fed the ``embed_dim``-channel ``conv_after_body(body) + conv_first(x)`` (published ``ATD``).

    Arguments as the published ``network_g`` (defaults: the released ATD-IGConv+ configuration). ``upscale`` and
    ``img_size`` are accepted and unused (the scale is a forward argument; masks are computed per input size).
    ``use_checkpoint`` recomputes the first four groups' layers in the backward pass (memory only). Only
    ``upsampler: igconv+igsample`` is supported (the published 'igconv' path crops by ``upscale``, not the
    scale); only the published settings of the inherited Swin options.
    """

    TEST_FORWARD = 'window_pad'

    def __init__(self, img_size=96, patch_size=1, in_chans=3, embed_dim=210, depths=(6,) * 6, num_heads=(6,) * 6,
                 window_size=16, category_size=256, num_tokens=128, reducted_dim=20, convffn_kernel_size=5,
                 mlp_ratio=2.0, qkv_bias=True, ape=False, patch_norm=True, use_checkpoint=True, upscale=2,
                 img_range=1.0, upsampler='igconv+igsample', resi_connection='1conv', sk_kernel_size=3,
                 implicit_dim=256, latent_layers=4, geo_ensemble=True, max_s=4, return_skip=False):
        super().__init__()
        check_fixed_options('ATD', patch_size=patch_size, in_chans=in_chans, qkv_bias=qkv_bias, ape=ape,
                            patch_norm=patch_norm, resi_connection=resi_connection)
        check_upsampler('ATD', upsampler, depths, num_heads, embed_dim, choices=('igconv+igsample',))
        self.window_size = self.window = int(window_size)
        self._set_mean(DIV2K_MEAN, img_range)
        self.build_token_trunk(in_chans, embed_dim, (
            ATDBlocks(embed_dim, depth, num_heads[i], window_size, category_size, num_tokens, reducted_dim,
                      convffn_kernel_size, mlp_ratio, bool(use_checkpoint) and i < CHECKPOINTED_GROUPS)
            for i, depth in enumerate(depths)))
        self.register_buffer('relative_position_index_SA', relative_position_index(window_size))
        self.apply(init_transformer_weights)     # before the upsamplers, as published
        self._make_upsamplers(embed_dim, sk_kernel_size, implicit_dim, latent_layers, bool(geo_ensemble), True, max_s)
        _check_return_skip('ATD', return_skip)

    def encode(self, x):
        """Mean-shifted (B, 3, h, w), h and w multiples of ``window_size`` -> F (B, embed_dim, h, w)."""
        H, W = check_window_multiple('ATD', x, self.window_size)
        mask = shifted_window_mask(H, W, self.window_size, self.window_size // 2, device=x.device)
        return self.trunk(x, self.relative_position_index_SA, mask)

    def run(self, inp, r):
        """The published network: pad to multiples of the window by mirroring (edge repeated), run, crop."""
        h, w = inp.shape[-2:]
        ph, pw = (-h) % self.window_size, (-w) % self.window_size
        if not (ph or pw):
            return super().run(inp, r)
        if ph > h or pw > w:
            raise ValueError(f'ATD: input {h}x{w} is too small to mirror-pad to a multiple of the window '
                             f'{self.window_size}')
        x = torch.cat([inp, inp.flip(2)], dim=2)[..., :h + ph, :]
        x = torch.cat([x, x.flip(3)], dim=3)[..., :w + pw]
        out, skip = super().run(x, r)
        return out[..., :r * h, :r * w], skip[..., :r * h, :r * w]
