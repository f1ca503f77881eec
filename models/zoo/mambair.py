"""MambaIR (Guo et al., ECCV 2024, "MambaIR: A Simple Baseline for Image Restoration with State-Space Model")
+ IGConv / IGConv+ (published ``MambaIR``; ``upsample``, C = ``embed_dim``: 180, MambaIR-Light 60).

Body: ``conv_first``, ``patch_embed`` (LayerNorm), residual state-space groups (RSSG) of VSS blocks,
``norm``, ``conv_after_body``; F = ``conv_after_body(body) + conv_first(x)`` (the SwinIR wiring).
MambaIR-Light is the same class with ``embed_dim`` 60, ``depths`` [6] * 4 and ``mlp_ratio`` 1.5.

VSS block on tokens x (B, h*w, C)::

    x = skip_scale  * x + SS2D(ln_1(x))
    x = skip_scale2 * x + CAB(ln_2(x))            (CAB: conv3x3 C -> C/3, GELU, conv3x3 -> C, channel attention)

SS2D (2-D selective scan), d = ``int(mlp_ratio * C)`` inner channels, n = ``d_state``, R = ceil(C / 16):
``in_proj`` -> (x, z); x <- SiLU(depthwise 3x3 conv(x)); the map is read as four sequences of length
L = h w (row-major, column-major, and both reversed); per direction k, ``x_proj_weight[k]`` gives (dt, B, C)
= (R, n, n) per position and ``dt_projs_weight[k]`` maps dt to d channels; the selective scan
(:mod:`.selective_scan`; A = -exp(``A_logs``), D = ``Ds``, delta bias ``dt_projs_bias``, softplus) runs the
4 d channels with B and C grouped per direction; the four outputs are brought back to row-major order and
summed; ``out_norm``, times SiLU(z), ``out_proj``.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.swinir import SwinTrunk
from ..layers import DropPath, PatchEmbedNorm
from ..layers.residual_group import ResidualGroup
from .base import DIV2K_MEAN, _MeanShifted, _check_return_skip, published_arch
from .selective_scan import selective_scan

PUBLISHED_OPTIONS_MAMBAIR_IGCONV = {'upscale': 2, 'in_chans': 3, 'img_size': 64, 'img_range': 1.0, 'd_state': 16,
                                   'depths': [6, 6, 6, 6, 6, 6], 'embed_dim': 180, 'mlp_ratio': 2,
                                   'upsampler': 'igconv', 'resi_connection': '1conv', 'geo_ensemble': False,
                                   'return_skip': False}
PUBLISHED_OPTIONS_MAMBAIR_IGCONVPLUS = {**PUBLISHED_OPTIONS_MAMBAIR_IGCONV, 'upsampler': 'igconv+igsample',
                                       'geo_ensemble': True}
_LIGHT = {'depths': [6, 6, 6, 6], 'embed_dim': 60, 'mlp_ratio': 1.5}
#: ``network_g`` of every published MambaIR option file (test and train agree), by test option-file stem.
PUBLISHED_OPTION_FILES = {
    'MambaIR_IGConv_DF2K': PUBLISHED_OPTIONS_MAMBAIR_IGCONV,
    'MambaIR_IGConvPlus_DF2K': PUBLISHED_OPTIONS_MAMBAIR_IGCONVPLUS,
    'MambaIR_IGConvPlus_DFL_S8': {**PUBLISHED_OPTIONS_MAMBAIR_IGCONVPLUS, 'max_s': 8},
    'MambaIR_Light_IGConv_DIV2K': {**PUBLISHED_OPTIONS_MAMBAIR_IGCONV, **_LIGHT},
    'MambaIR_Light_IGConvPlus_DIV2K': {**PUBLISHED_OPTIONS_MAMBAIR_IGCONVPLUS, **_LIGHT},
}
#: Scan directions.
K = 4


class ChannelAttention(nn.Module):
    """RCAN channel attention: x * sigmoid(conv(relu(conv(avgpool(x)))))."""

    def __init__(self, num_feat, squeeze_factor):
        super().__init__()
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
                                       nn.ReLU(inplace=True), nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
                                       nn.Sigmoid())

    def forward(self, x):
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block on a map (compression 3, squeeze 30: the published non-light setting, which
    the IGConv upsamplers select for MambaIR-Light too)."""

    def __init__(self, num_feat, compress_ratio=3, squeeze_factor=30):
        super().__init__()
        self.cab = nn.Sequential(nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
                                 nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
                                 ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x):
        return self.cab(x)


class SS2D(nn.Module):
    """The 2-D selective-scan mixer on a map (B, h, w, C) -> (B, h, w, C) (module docstring)."""

    def __init__(self, d_model, d_state=16, expand=2.0, d_conv=3):
        super().__init__()
        self.d_state = d_state
        self.d_inner = d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(K, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        """The published (Mamba) initialisation: default Linear init of x_proj, dt_proj weights uniform in
        +-dt_rank^-0.5, dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], A = -(1 .. n), D = 1."""
        bound = 1 / math.sqrt(self.d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(K, self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def scan(self, x):
        """x (B, d, h, w) -> (B, d, h*w): the four directional scans, summed in row-major order."""
        B, d, H, W = x.shape
        L = H * W
        rows, cols = x.reshape(B, d, L), x.transpose(2, 3).reshape(B, d, L)
        xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)                  # (B, K, d, L)
        x_dbl = torch.einsum('bkdl,kcd->bkcl', xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum('bkrl,kdr->bkdl', dts, self.dt_projs_weight)
        y = selective_scan(xs.reshape(B, K * d, L), dts.reshape(B, K * d, L), -torch.exp(self.A_logs),
                           Bs.contiguous(), Cs.contiguous(), self.Ds, delta_bias=self.dt_projs_bias.reshape(-1),
                           delta_softplus=True).view(B, K, d, L)
        y_rows = y[:, 0] + y[:, 2].flip(-1)
        y_cols = y[:, 1] + y[:, 3].flip(-1)
        return y_rows + y_cols.view(B, d, W, H).transpose(2, 3).reshape(B, d, L)

    def forward(self, x):
        B, H, W, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self.scan(x).transpose(1, 2).reshape(B, H, W, -1)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class VSSBlock(nn.Module):
    def __init__(self, dim, d_state, expand, drop_path_p):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(dim, d_state, expand)
        self.drop_path = DropPath(drop_path_p)
        self.skip_scale = nn.Parameter(torch.ones(dim))
        self.conv_blk = CAB(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.skip_scale2 = nn.Parameter(torch.ones(dim))

    def forward(self, x, x_size):
        B, L, C = x.shape
        x = x.reshape(B, x_size[0], x_size[1], C)
        x = x * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x)))
        x = x * self.skip_scale2 + self.conv_blk(self.ln_2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x.reshape(B, L, C)


@published_arch('MambaIR', options=PUBLISHED_OPTIONS_MAMBAIR_IGCONVPLUS, aliases=('mambair',))
class MambaIR(_MeanShifted, SwinTrunk):
    """MambaIR with IGConv fed the ``embed_dim``-ch ``conv_after_body(...) + x`` (module docstring).

    ``upsampler``: ``'igconv'`` or ``'igconv+igsample'`` (IGConv+). FGRep follows ``geo_ensemble``
    (published default True). As published, ``max_s`` (the IGConv scale-phase saturation) reaches the
    upsamplers only with ``'igconv+igsample'``: with ``'igconv'`` only the default 4 is accepted. Only the
    published settings of the other options are supported (patch_size 1, patch norm, no dropout,
    ``resi_connection`` '1conv', no checkpointing); ``img_size`` and ``upscale`` are accepted and unused, as
    published with the IGConv upsamplers.
    """

    TEST_FORWARD = 'tiles'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6), drop_rate=0.0,
                 d_state=16, mlp_ratio=2.0, drop_path_rate=0.1, patch_norm=True, use_checkpoint=False, upscale=2,
                 img_range=1.0, upsampler='igconv', resi_connection='1conv', sk_kernel_size=3, implicit_dim=256,
                 latent_layers=4, geo_ensemble=True, max_s=4, return_skip=False):
        super().__init__()
        fixed = {'patch_size': (patch_size, 1), 'in_chans': (in_chans, 3), 'patch_norm': (patch_norm, True),
                 'use_checkpoint': (use_checkpoint, False), 'resi_connection': (resi_connection, '1conv'),
                 'drop_rate': (drop_rate, 0.0)}
        for name, (got, want) in fixed.items():
            if got != want:
                raise ValueError(f'MambaIR: only {name}={want!r} is supported, got {got!r}')
        if upsampler not in ('igconv', 'igconv+igsample'):
            raise ValueError(f"MambaIR: upsampler must be 'igconv' or 'igconv+igsample', got {upsampler!r}")
        plus = upsampler == 'igconv+igsample'
        if not plus and max_s != 4:
            raise ValueError(f"MambaIR: the published model ignores max_s with upsampler 'igconv' (its IGConv "
                             f"keeps max_s 4); got max_s={max_s!r}")
        if not isinstance(d_state, int) or d_state < 1:
            raise ValueError(f'MambaIR: d_state must be a positive integer, got {d_state!r}')
        self.upsampler_name = upsampler
        self._set_mean(DIV2K_MEAN, img_range)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbedNorm(embed_dim)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            p = dpr[sum(depths[:i]):sum(depths[:i + 1])]
            self.layers.append(ResidualGroup(embed_dim, [VSSBlock(embed_dim, d_state, mlp_ratio, p[j])
                                                         for j in range(depth)]))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self._make_upsamplers(embed_dim, sk_kernel_size, implicit_dim, latent_layers, bool(geo_ensemble), plus, max_s)
        _check_return_skip(type(self).__name__, return_skip)
        self.apply(self._init_weights)     # after the upsamplers, as published
        self.receptive_radius = None       # the scans see the whole input

    def encode(self, x):
        return self.trunk(x)
