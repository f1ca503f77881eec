"""Full EDSR + IGConv / IGConv+ (published ``EDSRIG`` / ``EDSRIGPlus``; ``upsample``, C = 256).
"""
from torch import nn

from .base import DIV2K_MEAN, _MeanShifted, _check_return_skip, published_arch


PUBLISHED_OPTIONS_EDSRIG = {'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 256, 'num_block': 32, 'upscale': 2,
                           'res_scale': 0.1, 'img_range': 1.0, 'rgb_mean': [0.4488, 0.4371, 0.4040],
                           'implicit_dim': 256, 'latent_layers': 4}
PUBLISHED_OPTIONS_EDSRIGPLUS = {**PUBLISHED_OPTIONS_EDSRIG, 'geo_ensemble': True, 'return_skip': False}


class ResidualBlockNoBN(nn.Module):
    """BasicSR's residual block: ``x + res_scale * conv2(relu(conv1(x)))``."""

    def __init__(self, num_feat=64, res_scale=1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


@published_arch('EDSRIG', options=PUBLISHED_OPTIONS_EDSRIG, aliases=('edsr-ig',))
class EDSRIG(_MeanShifted):
    """Full EDSR encoder + IGConv (published ``EDSRIG``; ``upscale`` / ``num_out_ch`` are accepted and unused)."""

    _PLUS = False

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4, res_scale=1.0,
                 img_range=255.0, rgb_mean=DIV2K_MEAN, implicit_dim=256, latent_layers=4, geo_ensemble=None,
                 sk_kernel_size=3, max_s=4, return_skip=False):
        super().__init__()
        if num_in_ch != 3 or num_out_ch != 3:
            raise ValueError(f'{type(self).__name__}: only RGB (num_in_ch = num_out_ch = 3) is supported')
        if not isinstance(num_block, int) or num_block < 0 or not isinstance(num_feat, int) or num_feat < 1:
            raise ValueError(f'{type(self).__name__}: num_feat and num_block must be integers, '
                             f'got {num_feat!r}, {num_block!r}')
        self._set_mean(rgb_mean, img_range)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        geo = self._PLUS if geo_ensemble is None else bool(geo_ensemble)
        self._make_upsamplers(num_feat, sk_kernel_size, implicit_dim, latent_layers, geo, self._PLUS, max_s)
        _check_return_skip(type(self).__name__, return_skip)
        self.receptive_radius = 2 * num_block + 2

    def encode(self, x):
        x = self.conv_first(x)
        return self.conv_after_body(self.body(x)) + x


@published_arch('EDSRIGPlus', options=PUBLISHED_OPTIONS_EDSRIGPLUS, aliases=('edsr-ig-plus',))
class EDSRIGPlus(EDSRIG):
    """Full EDSR encoder + IGConv+ (FGRep + IGSample skip; published ``EDSRIGPlus``)."""

    _PLUS = True
