"""RCAN + IGConv+ (published ``RCANIGPlus``; ``tail``, C = 64).
"""
import torch
from torch import nn

from ..encoders.rcan import ResidualGroup
from .base import DIV2K_MEAN, PublishedIGConvSR, _check_return_skip, _mean_tensor, published_arch


PUBLISHED_OPTIONS_RCANIGPLUS = {'max_s': 8}


@published_arch('RCANIGPlus', options=PUBLISHED_OPTIONS_RCANIGPLUS, aliases=('rcan-ig-plus',))
class RCANIGPlus(PublishedIGConvSR):
    """RCAN + IGConv+ (published ``RCANIGPlus``): ``SR = add_mean(tail(F, r)) + skip(x, F, r)``,
    ``F = body(head(sub_mean(x))) + head(sub_mean(x))``.

    Published arguments, names and defaults: ``conv`` (the conv constructor; only the published default,
    a 'same' conv with bias, given as None), ``sk_kernel_size`` (IGConv's kernel), ``implicit_dim``,
    ``n_layers`` (IGConv's latent layers), ``geo_ensemble``, ``return_skip``, ``dysample_kernel_size``
    (IGSample's kernel), ``max_s``. IGSample: implicit_dim 128, 2 layers (hard-coded in the published code).
    Our extensions (the published code fixes them): ``n_resgroups``, ``n_resblocks``, ``n_feats``,
    ``reduction``, ``rgb_range``, ``rgb_mean``."""

    UPSAMPLER = 'tail'

    def __init__(self, conv=None, sk_kernel_size=3, implicit_dim=256, n_layers=4, geo_ensemble=True,
                 return_skip=False, dysample_kernel_size=3, max_s=4, n_resgroups=10, n_resblocks=20, n_feats=64,
                 reduction=16, rgb_range=1.0, rgb_mean=DIV2K_MEAN):
        super().__init__()
        if conv is not None:
            raise ValueError(f'RCANIGPlus: only the published conv (default_conv, given as None) is supported, '
                             f'got {conv!r}')
        mean = _mean_tensor(rgb_mean, 'RCANIGPlus').view(3)
        self.sub_mean = nn.Conv2d(3, 3, 1)
        self.add_mean = nn.Conv2d(3, 3, 1)
        with torch.no_grad():   # EDSR-PyTorch MeanShift values; trainable, as in the published code
            for conv, sign in ((self.sub_mean, -1), (self.add_mean, 1)):
                conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
                conv.bias.copy_(sign * float(rgb_range) * mean)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        self.body = nn.Sequential(*[ResidualGroup(n_feats, reduction, n_resblocks) for _ in range(n_resgroups)],
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self._make_upsamplers(n_feats, sk_kernel_size, implicit_dim, n_layers, geo_ensemble, True, max_s,
                              skip_implicit_dim=128, skip_latent_layers=2, skip_kernel_size=dysample_kernel_size)
        _check_return_skip(type(self).__name__, return_skip)
        self.receptive_radius = None   # channel attention pools over the whole image

    def pre(self, x):
        return self.sub_mean(x)

    def post(self, y):
        return self.add_mean(y)

    def encode(self, x):
        x = self.head(x)
        return self.body(x) + x
