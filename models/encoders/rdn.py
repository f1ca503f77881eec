"""Residual Dense Network (Zhang et al. 2018), configs A (20, 6, 32) and B (16, 8, 64)."""
import torch
from torch import nn

from ..registry import register
from .common import channels_last_call, cpu_inference

RDN_CONFIGS = {'A': (20, 6, 32), 'B': (16, 8, 64)}  # (D blocks, C convs per block, G growth)


class RDBConv(nn.Module):
    def __init__(self, in_ch, growth, k=3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, growth, k, padding=(k - 1) // 2), nn.ReLU())

    def forward(self, x):
        return torch.cat((x, self.conv(x)), 1)


class RDB(nn.Module):
    def __init__(self, g0, growth, n_convs, k=3):
        super().__init__()
        self.convs = nn.Sequential(*[RDBConv(g0 + c * growth, growth, k) for c in range(n_convs)])
        self.LFF = nn.Conv2d(g0 + n_convs * growth, g0, 1)

    def forward(self, x):
        return self.LFF(self.convs(x)) + x


class RDNTrunk(nn.Module):
    """The RDN feature trunk, built on the module itself under the published state-dict names ``SFENet1``,
    ``SFENet2``, ``RDBs``, ``GFF`` (shared by ``RDN`` and the published ``RDNIGPlus``).

    ``build_trunk(G0, k, D, C, G)`` (call it in ``__init__``) creates the layers: shallow convs with G0
    channels and kernel k, D residual dense blocks of C convs with growth G, global feature fusion; it sets
    ``receptive_radius``. ``trunk(x)`` maps (B, 3, h, w) to F = GFF(cat(RDB outputs)) + SFENet1(x), (B, G0, h, w).
    """

    def build_trunk(self, G0, k, D, C, G):
        self.SFENet1 = nn.Conv2d(3, G0, k, padding=(k - 1) // 2)
        self.SFENet2 = nn.Conv2d(G0, G0, k, padding=(k - 1) // 2)
        self.RDBs = nn.ModuleList([RDB(G0, G, C, k) for _ in range(D)])
        self.GFF = nn.Sequential(nn.Conv2d(D * G0, G0, 1), nn.Conv2d(G0, G0, k, padding=(k - 1) // 2))
        self.receptive_radius = (k // 2) * (D * C + 3)   # SFENet1, SFENet2, D*C dense convs, GFF 3x3

    def trunk(self, x):
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return self.GFF(torch.cat(outs, 1)) + f1


class RDN(RDNTrunk):
    """Shallow features, D residual dense blocks, global feature fusion; (B, G0, h, w) output."""

    def __init__(self, G0=64, RDNkSize=3, RDNconfig='B', scale=2, no_upsampling=False):
        super().__init__()
        if RDNconfig not in RDN_CONFIGS:
            raise ValueError(f'RDNconfig must be one of {sorted(RDN_CONFIGS)}, got {RDNconfig!r}')
        D, C, G = RDN_CONFIGS[RDNconfig]
        k = RDNkSize
        self.build_trunk(G0, k, D, C, G)
        self.no_upsampling = no_upsampling
        if no_upsampling:
            self.out_dim = G0
            return
        self.out_dim = 3
        if scale in (2, 3):
            self.UPNet = nn.Sequential(nn.Conv2d(G0, G * scale * scale, k, padding=(k - 1) // 2),
                                       nn.PixelShuffle(scale), nn.Conv2d(G, 3, k, padding=(k - 1) // 2))
        elif scale == 4:
            self.UPNet = nn.Sequential(nn.Conv2d(G0, G * 4, k, padding=(k - 1) // 2), nn.PixelShuffle(2),
                                       nn.Conv2d(G, G * 4, k, padding=(k - 1) // 2), nn.PixelShuffle(2),
                                       nn.Conv2d(G, 3, k, padding=(k - 1) // 2))
        else:
            raise ValueError(f'RDN upsampling supports scales 2, 3, 4, got {scale!r}')

    #: CPU inference in channels-last layout (``common.channels_last_call``); False: the NCHW path
    channels_last = True

    def forward(self, x):
        if self.channels_last and cpu_inference(self, x):
            return channels_last_call(self, x)
        x = self.trunk(x)
        return x if self.no_upsampling else self.UPNet(x)


@register('rdn')
def make_rdn(G0=64, RDNkSize=3, RDNconfig='B', scale=2, no_upsampling=False):
    return RDN(G0, RDNkSize, RDNconfig, scale, no_upsampling)
