"""SwinIR (Liang et al. 2021) as a feature encoder, in the configuration LIIF/LTE/LMF use.

``swinir`` always builds the classical configuration (embed 180, 6 RSTBs x 6 blocks, 6 heads, window 8,
MLP ratio 2, stochastic depth 0.1) with upsampler 'none' followed by a 3x3 conv to 64 channels and a
LeakyReLU of slope 0.01. Like the published factory it ignores ``no_upsampling``.

Input sizes that are not multiples of the window are reflect-padded at the bottom/right and the
features are **not** cropped back (published behaviour, docs/deviations.md, B14): evaluate with window padding
(``test.py --window 8``), which makes the padded size explicit.
"""
import torch
from torch import nn

from ..layers.padding import pad_to_multiple
from ..layers import DropPath, Mlp, WindowAttention, shifted_window_mask, window_partition, window_reverse
from ..layers.trunk import TokenTrunk, init_transformer_weights, stochastic_depth_rates
from ..registry import register


class SwinBlock(nn.Module):
    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, mlp_ratio, drop_path_p):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        if min(self.input_resolution) <= window_size:
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads)
        self.drop_path = DropPath(drop_path_p)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = (shifted_window_mask(*self.input_resolution, self.window_size, self.shift_size)
                if self.shift_size > 0 else None)
        self.register_buffer('attn_mask', mask)

    def forward(self, x, x_size):
        H, W = x_size
        B, L, C = x.shape
        ws, s = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        mask = None
        if s > 0:
            mask = (self.attn_mask if tuple(x_size) == self.input_resolution
                    else shifted_window_mask(H, W, ws, s, device=x.device))
        x = window_reverse(self.attn(window_partition(x, ws), mask=mask), ws, H, W)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, drop_path_ps):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                      mlp_ratio, drop_path_ps[i]) for i in range(depth)])

    def forward(self, x, x_size):
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


class SwinTrunk(TokenTrunk):
    """SwinIR's shallow conv and deep-feature body (:class:`models.layers.trunk.TokenTrunk` with residual Swin
    transformer blocks, RSTB = Swin blocks + 3x3 conv + residual), under the published state-dict names
    ``conv_first``, ``patch_embed``, ``layers``, ``norm``, ``conv_after_body`` (shared by ``SwinIR`` and the
    published ``SwinIRMS``).

    ``build_trunk(...)`` (call it in ``__init__``) creates the layers: RSTB i has ``depths[i]`` Swin blocks
    with ``num_heads[i]`` heads; stochastic depth rises linearly from 0 to ``drop_path_rate`` over all
    blocks; attention masks are precomputed for ``img_size`` x ``img_size`` (other sizes compute theirs).
    ``trunk(x)``: (B, in_chans, h, w), h and w multiples of the window -> ``conv_after_body(body(f)) + f``
    with ``f = conv_first(x)``, (B, embed_dim, h, w). ``_init_weights`` is the published initialisation
    (``self.apply`` it once every layer it should reach exists).
    """

    _init_weights = staticmethod(init_transformer_weights)

    def build_trunk(self, img_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, drop_path_rate):
        res = (img_size, img_size)
        rates = stochastic_depth_rates(drop_path_rate, depths)
        self.build_token_trunk(in_chans, embed_dim, (
            BasicLayer(embed_dim, res, depth, num_heads[i], window_size, mlp_ratio, rates[i])
            for i, depth in enumerate(depths)))


class SwinIR(SwinTrunk):
    """SwinIR body with upsampler 'none'; (B, 3, h, w) -> (B, num_feat, h', w'), h', w' padded to the window."""

    def __init__(self, img_size=48, in_chans=3, embed_dim=180, depths=(6, 6, 6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6, 6, 6), window_size=8, mlp_ratio=2.0, drop_path_rate=0.1, num_feat=64):
        super().__init__()
        self.window_size = window_size
        self.build_trunk(img_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, drop_path_rate)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.out_dim = num_feat
        # shifted-window attention: features depend on window partitions, tiling is approximate
        self.receptive_radius = None
        self.apply(self._init_weights)

    def pad_to_window(self, x):
        return pad_to_multiple(x, self.window_size, 'reflect')

    def forward(self, x):
        return self.conv_before_upsample(self.trunk(self.pad_to_window(x)))


@register('swinir')
def make_swinir(no_upsampling=True):
    """The published factory ignores its argument and always builds the classical configuration."""
    return SwinIR()
