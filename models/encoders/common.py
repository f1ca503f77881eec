"""Small building blocks shared by the CNN encoders."""
import math

import torch
from torch import nn


def conv3x3(in_ch, out_ch, kernel_size=3, bias=True):
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding ``sign * rgb_range * mean`` (kept for state-dict compatibility).

    The LIIF family never calls it in ``forward``; the keys ``sub_mean.*`` / ``add_mean.*`` must still
    exist so that official checkpoints load strictly.
    """

    def __init__(self, rgb_range=1, rgb_mean=(0.4488, 0.4371, 0.4040), rgb_std=(1.0, 1.0, 1.0), sign=-1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean) / std)
        for p in self.parameters():
            p.requires_grad = False


class SubPixelUpsampler(nn.Sequential):
    """Conv + PixelShuffle stages: one x3 stage, or log2(scale) x2 stages for powers of two."""

    def __init__(self, scale, n_feats, out_feats=None):
        out_feats = n_feats if out_feats is None else out_feats
        layers = []
        if scale == 3:
            layers += [conv3x3(n_feats, 9 * out_feats), nn.PixelShuffle(3)]
        elif scale >= 2 and (scale & (scale - 1)) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv3x3(n_feats, 4 * out_feats), nn.PixelShuffle(2)]
        else:
            raise ValueError(f'sub-pixel upsampler supports scale 3 or a power of two, got {scale!r}')
        super().__init__(*layers)
