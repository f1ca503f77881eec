"""EDSR and EDSR-baseline (Lim et al. 2017), as used by LIIF/LTE/LMF (mean shift never applied)."""
from torch import nn

from ..registry import register
from .common import MeanShift, SubPixelUpsampler, channels_last_call, conv3x3, cpu_inference


class ResBlock(nn.Module):
    def __init__(self, n_feats, kernel_size=3, res_scale=1.0):
        super().__init__()
        self.body = nn.Sequential(conv3x3(n_feats, n_feats, kernel_size), nn.ReLU(inplace=True),
                                  conv3x3(n_feats, n_feats, kernel_size))
        self.res_scale = res_scale

    def forward(self, x):
        res = self.body(x)
        # res_scale 1 (EDSR-baseline): multiplying by 1 changes no value, forward or backward; skip the pass
        return (res if self.res_scale == 1 else res.mul(self.res_scale)) + x


class EDSR(nn.Module):
    """Head conv, ``n_resblocks`` residual blocks and a body conv with a global skip.

    Input (B, 3, h, w) in the caller's normalisation; output (B, n_feats, h, w) with
    ``no_upsampling``, else (B, 3, h*scale, w*scale).
    """

    def __init__(self, n_resblocks=16, n_feats=64, res_scale=1, scale=2, no_upsampling=False, rgb_range=1,
                 kernel_size=3):
        super().__init__()
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv3x3(3, n_feats, kernel_size))
        self.body = nn.Sequential(*[ResBlock(n_feats, kernel_size, res_scale) for _ in range(n_resblocks)],
                                  conv3x3(n_feats, n_feats, kernel_size))
        self.no_upsampling = no_upsampling
        # LR pixels beyond a pixel that its feature depends on: head + 2 per block + body conv
        self.receptive_radius = (kernel_size // 2) * (2 * n_resblocks + 2)
        if no_upsampling:
            self.out_dim = n_feats
        else:
            self.out_dim = 3
            self.tail = nn.Sequential(SubPixelUpsampler(scale, n_feats), conv3x3(n_feats, 3, kernel_size))

    #: CPU inference in channels-last layout (``common.channels_last_call``); False: the NCHW path
    channels_last = True

    def forward(self, x):
        if self.channels_last and cpu_inference(self, x):
            return channels_last_call(self, x)
        x = self.head(x)
        res = self.body(x) + x
        return res if self.no_upsampling else self.tail(res)


@register('edsr-baseline')
def make_edsr_baseline(n_resblocks=16, n_feats=64, res_scale=1, scale=2, no_upsampling=False, rgb_range=1):
    return EDSR(n_resblocks, n_feats, res_scale, scale, no_upsampling, rgb_range)


@register('edsr')
def make_edsr(n_resblocks=32, n_feats=256, res_scale=0.1, scale=2, no_upsampling=False, rgb_range=1):
    return EDSR(n_resblocks, n_feats, res_scale, scale, no_upsampling, rgb_range)
