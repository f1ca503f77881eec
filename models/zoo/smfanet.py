"""SMFANet + IGConv / IGConv+ (published ``SMFANetIG`` / ``SMFANetIGPlus``; ``to_img``, C = ``dim`` = 48).

Encoder: SMFANet (Zheng et al., ECCV 2024), ``F = feats(to_feat(x)) + to_feat(x)`` with ``feats`` a chain of
feature-modulation blocks (FMB). No mean shift: ``SMFANetIG`` outputs the IGConv branch alone (no image
skip, so with untrained weights its output is not an image), ``SMFANetIGPlus`` adds the IGSample skip.

Every FMB's self-modulation reads the whole image (a max-pool to ``h // 8 x w // 8`` cells and a
per-channel variance over all pixels), so the receptive field is unbounded and inputs need h, w >= 8.
"""
import torch
import torch.nn.functional as F
from torch import nn

from utils.validate import integer, number

from .base import PublishedIGConvSR, _check_return_skip, published_arch


PUBLISHED_OPTIONS_SMFANETIG = {'dim': 48, 'n_blocks': 12, 'ffn_scale': 2, 'upscaling_factor': 2}
PUBLISHED_OPTIONS_SMFANETIGPLUS = {**PUBLISHED_OPTIONS_SMFANETIG, 'return_skip': False}

#: SMFA pools its modulation branch to (h // POOL, w // POOL) cells.
POOL = 8
#: Share of PCFN's hidden channels that go through its 3x3 conv.
PCFN_PARTIAL = 0.25


class DMlp(nn.Module):
    """Local detail branch: depthwise 3x3 (``dim`` -> ``growth * dim``), 1x1, GELU, 1x1 back to ``dim``."""

    def __init__(self, dim, growth_rate=2.0):
        super().__init__()
        hidden = int(dim * growth_rate)
        self.conv_0 = nn.Sequential(nn.Conv2d(dim, hidden, 3, 1, 1, groups=dim), nn.Conv2d(hidden, hidden, 1))
        self.act = nn.GELU()
        self.conv_1 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.conv_1(self.act(self.conv_0(x)))


class PCFN(nn.Module):
    """Partial convolution feed-forward: 1x1 expand + GELU; a 3x3 conv + GELU on the first quarter of the
    hidden channels only; 1x1 back to ``dim``."""

    def __init__(self, dim, growth_rate=2.0):
        super().__init__()
        hidden = int(dim * growth_rate)
        self.p_dim = int(hidden * PCFN_PARTIAL)
        self.conv_0 = nn.Conv2d(dim, hidden, 1)
        self.conv_1 = nn.Conv2d(self.p_dim, self.p_dim, 3, 1, 1)
        self.act = nn.GELU()
        self.conv_2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        x = self.act(self.conv_0(x))
        part, rest = x[:, :self.p_dim], x[:, self.p_dim:]
        return self.conv_2(torch.cat([self.act(self.conv_1(part)), rest], dim=1))


class SMFA(nn.Module):
    """Self-modulation feature aggregation. ``linear_0`` splits the input into ``y`` (local details,
    :class:`DMlp`) and ``x`` (modulated by a gate built from its max-pooled map and its per-channel variance,
    ``alpha`` / ``belt`` weighting the two, nearest-upsampled back to h x w)."""

    def __init__(self, dim):
        super().__init__()
        self.linear_0 = nn.Conv2d(dim, dim * 2, 1)
        self.linear_1 = nn.Conv2d(dim, dim, 1)
        self.linear_2 = nn.Conv2d(dim, dim, 1)
        self.lde = DMlp(dim, 2)
        self.dw_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.gelu = nn.GELU()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.belt = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, f):
        h, w = f.shape[-2:]
        y, x = self.linear_0(f).chunk(2, dim=1)
        pooled = self.dw_conv(F.adaptive_max_pool2d(x, (h // POOL, w // POOL)))
        variance = torch.var(x, dim=(-2, -1), keepdim=True, correction=1)
        gate = self.gelu(self.linear_1(pooled * self.alpha + variance * self.belt))
        x = x * F.interpolate(gate, size=(h, w), mode='nearest')
        return self.linear_2(x + self.lde(y))


class FMB(nn.Module):
    """Feature modulation block: SMFA and PCFN, each on the pixel-wise L2-normalised input, with a residual."""

    def __init__(self, dim, ffn_scale=2.0):
        super().__init__()
        self.smfa = SMFA(dim)
        self.pcfn = PCFN(dim, ffn_scale)

    def forward(self, x):
        x = self.smfa(F.normalize(x, dim=1)) + x
        return self.pcfn(F.normalize(x, dim=1)) + x


@published_arch('SMFANetIG', options=PUBLISHED_OPTIONS_SMFANETIG, aliases=('smfanet-ig',))
class SMFANetIG(PublishedIGConvSR):
    """SMFANet encoder + IGConv (published ``SMFANetIG``): ``SR = to_img(F, r)``, no mean shift, no skip.

    ``upscaling_factor`` is accepted and unused (the scale is a forward argument); ``geo_ensemble`` None is
    the published default (off here, on for IGConv+); ``max_s`` (the IGConv phase clamp) is fixed to 4 in the
    published code and exposed here as an extension, as is ``return_skip`` (False only) for SMFANetIG."""

    UPSAMPLER = 'to_img'
    _PLUS = False

    def __init__(self, dim=36, n_blocks=8, ffn_scale=2, upscaling_factor=4, sk_kernel_size=3, implicit_dim=256,
                 latent_layers=4, geo_ensemble=None, max_s=4, return_skip=False):
        super().__init__()
        who = type(self).__name__
        dim = integer(dim, f'{who}: dim', minimum=1, allow_none=False)
        n_blocks = integer(n_blocks, f'{who}: n_blocks', minimum=0, allow_none=False)
        hidden = int(dim * number(ffn_scale, f'{who}: ffn_scale', positive=True, allow_none=False))
        if int(hidden * PCFN_PARTIAL) < 1:
            raise ValueError(f'{who}: ffn_scale {ffn_scale!r} leaves PCFN fewer than 4 hidden channels')
        self.to_feat = nn.Conv2d(3, dim, 3, 1, 1)
        self.feats = nn.Sequential(*[FMB(dim, ffn_scale) for _ in range(n_blocks)])
        geo = self._PLUS if geo_ensemble is None else bool(geo_ensemble)
        self._make_upsamplers(dim, sk_kernel_size, implicit_dim, latent_layers, geo, self._PLUS, max_s)
        _check_return_skip(who, return_skip)
        self.receptive_radius = None if n_blocks else 1    # FMBs pool over the whole image

    @property
    def fft_loss_weight(self):
        """0.05 for both: the published IGConv recipe keeps the original SMFANet's FFT loss."""
        return 0.05

    def encode(self, x):
        h, w = x.shape[-2:]
        if (h < POOL or w < POOL) and len(self.feats):
            raise ValueError(f'{type(self).__name__}: input {h}x{w} is too small; SMFANet pools to '
                             f'(h // {POOL}, w // {POOL}) and needs h, w >= {POOL}')
        x = self.to_feat(x)
        return self.feats(x) + x


@published_arch('SMFANetIGPlus', options=PUBLISHED_OPTIONS_SMFANETIGPLUS, aliases=('smfanet-ig-plus',))
class SMFANetIGPlus(SMFANetIG):
    """SMFANet encoder + IGConv+ (published ``SMFANetIGPlus``): ``SR = to_img(F, r) + skip(x, F, r)``."""

    _PLUS = True

