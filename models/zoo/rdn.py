"""RDN (config B) + IGConv+ (published ``RDNIGPlus``; ``UPNet``, C = 64).
"""
from ..encoders.rdn import RDN_CONFIGS, RDNTrunk
from .base import PublishedIGConvSR, _check_return_skip, published_arch


PUBLISHED_OPTIONS_RDNIGPLUS = {'implicit_dim': 256, 'latent_layers': 4, 'geo_ensemble': True, 'return_skip': False}


@published_arch('RDNIGPlus', options=PUBLISHED_OPTIONS_RDNIGPLUS, aliases=('rdn-ig-plus',))
class RDNIGPlus(PublishedIGConvSR, RDNTrunk):
    """RDN (config B) + IGConv+ (published ``RDNIGPlus``); no mean shift: F = GFF(...) + SFENet1(x).

    ``RDNconfig``: 'B' (published: 16 blocks x 8 convs, growth 64), 'A' (20, 6, 32), or an explicit
    (D, C, G) triple (our extension, for small experiments). The encoder is ``models.encoders.rdn.RDNTrunk``
    (the same layers and state-dict names as ``rdn``). Arguments, order and defaults as published
    (``geo_ensemble`` False, as the published class; its option file sets it true); ``n_colors``: 3 only."""

    UPSAMPLER = 'UPNet'

    def __init__(self, G0=64, RDNkSize=3, RDNconfig='B', n_colors=3, sk_kernel_size=3, implicit_dim=256,
                 latent_layers=4, geo_ensemble=False, max_s=4, return_skip=False):
        super().__init__()
        if n_colors != 3:
            raise ValueError(f'RDNIGPlus: only RGB (n_colors = 3) is supported, got {n_colors!r}')
        if isinstance(RDNconfig, (list, tuple)):     # extension: explicit (D blocks, C convs, G growth)
            if len(RDNconfig) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                              for v in RDNconfig):
                raise ValueError(f'RDNIGPlus: RDNconfig must be A, B or (D, C, G) positive integers, '
                                 f'got {RDNconfig!r}')
            D, C, G = RDNconfig
        elif RDNconfig in RDN_CONFIGS:
            D, C, G = RDN_CONFIGS[RDNconfig]
        else:
            raise ValueError(f'RDNIGPlus: RDNconfig must be one of {sorted(RDN_CONFIGS)} or (D, C, G), '
                             f'got {RDNconfig!r}')
        self.build_trunk(G0, RDNkSize, D, C, G)        # sets receptive_radius
        self._make_upsamplers(G0, sk_kernel_size, implicit_dim, latent_layers, geo_ensemble, True, max_s)
        _check_return_skip(type(self).__name__, return_skip)

    def encode(self, x):
        return self.trunk(x)
