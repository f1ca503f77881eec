"""Residual Channel Attention Network (Zhang et al. 2018); registered, as in LMF, but unused by configs."""
from torch import nn

from ..registry import register
from .common import MeanShift, SubPixelUpsampler, conv3x3


class CALayer(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    def __init__(self, n_feats, reduction, k=3):
        super().__init__()
        self.body = nn.Sequential(conv3x3(n_feats, n_feats, k), nn.ReLU(inplace=True), conv3x3(n_feats, n_feats, k),
                                  CALayer(n_feats, reduction))

    def forward(self, x):
        return self.body(x) + x


class ResidualGroup(nn.Module):
    def __init__(self, n_feats, reduction, n_resblocks, k=3):
        super().__init__()
        self.body = nn.Sequential(*[RCAB(n_feats, reduction, k) for _ in range(n_resblocks)],
                                  conv3x3(n_feats, n_feats, k))

    def forward(self, x):
        return self.body(x) + x


class RCAN(nn.Module):
    def __init__(self, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, scale=2, no_upsampling=False,
                 rgb_range=1):
        super().__init__()
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv3x3(3, n_feats))
        self.body = nn.Sequential(*[ResidualGroup(n_feats, reduction, n_resblocks) for _ in range(n_resgroups)],
                                  conv3x3(n_feats, n_feats))
        self.no_upsampling = no_upsampling
        # channel attention pools globally, so no finite radius makes tiling exact
        self.receptive_radius = None
        if no_upsampling:
            self.out_dim = n_feats
        else:
            self.out_dim = 3
            self.tail = nn.Sequential(SubPixelUpsampler(scale, n_feats), conv3x3(n_feats, 3))

    def forward(self, x):
        x = self.head(x)
        res = self.body(x) + x
        return res if self.no_upsampling else self.tail(res)


@register('rcan')
def make_rcan(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, scale=2, no_upsampling=False, rgb_range=1):
    return RCAN(n_resgroups, n_resblocks, n_feats, reduction, scale, no_upsampling, rgb_range)
