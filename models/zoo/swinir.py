"""SwinIR classical + IGConv / IGConv+ (published ``SwinIRMS``; ``upsample``, C = 180), and the argument checks
shared by the Swin-derived architectures (SwinIRMS, HAT, SRFormer, ATD).
"""
from ..encoders.swinir import SwinTrunk
from .base import DIV2K_MEAN, _MeanShifted, _check_return_skip, published_arch


PUBLISHED_OPTIONS_SWINIRMS = {'in_chans': 3, 'img_size': 48, 'window_size': 8, 'img_range': 1.0, 'depths': [6] * 6,
                             'embed_dim': 180, 'num_heads': [6] * 6, 'mlp_ratio': 2, 'upsampler': 'igconv+igsample',
                             'resi_connection': '1conv', 'return_skip': False}


#: The published value of the Swin options that the IGConv option files never change.
FIXED_OPTIONS = {'patch_size': 1, 'in_chans': 3, 'qkv_bias': True, 'qk_scale': None, 'drop_rate': 0.0,
                 'attn_drop_rate': 0.0, 'ape': False, 'patch_norm': True, 'use_checkpoint': False,
                 'resi_connection': '1conv'}


def check_fixed_options(who, **given):
    """Refuse a value other than the published one (:data:`FIXED_OPTIONS`) for each given option."""
    for name, got in given.items():
        if got != FIXED_OPTIONS[name]:
            raise ValueError(f'{who}: only {name}={FIXED_OPTIONS[name]!r} is supported, got {got!r}')


def check_upsampler(who, upsampler, depths, num_heads, embed_dim, choices=('igconv', 'igconv+igsample')):
    """Validate ``upsampler`` and the per-group depths / heads; returns True for IGConv+ (``igconv+igsample``)."""
    if upsampler not in choices:
        raise ValueError(f'{who}: upsampler must be one of {", ".join(map(repr, choices))}, got {upsampler!r}')
    if len(depths) != len(num_heads) or any(embed_dim % h for h in num_heads):
        raise ValueError(f'{who}: depths {list(depths)!r} and num_heads {list(num_heads)!r} must have the same '
                         f'length and every head count must divide embed_dim {embed_dim}')
    return upsampler == 'igconv+igsample'


def check_window_multiple(who, x, window_size):
    """(H, W) of ``x`` (..., H, W), or a ValueError when they are not multiples of the window."""
    H, W = x.shape[-2:]
    if H % window_size or W % window_size:
        raise ValueError(f'{who}: the network needs sizes that are multiples of the window {window_size}, got '
                         f'{H}x{W} (the test-time forward model(x, scale) pads)')
    return H, W


@published_arch('SwinIRMS', options=PUBLISHED_OPTIONS_SWINIRMS, aliases=('swinir-ms',))
class SwinIRMS(_MeanShifted, SwinTrunk):
    """SwinIR (BasicSR ``SwinIR`` arguments) with IGConv fed the 180-ch ``conv_after_body(...) + x``.

    ``upsampler``: ``'igconv'`` (the published default) or ``'igconv+igsample'`` (IGConv+); ``geo_ensemble``
    (FGRep) defaults to True for both, as published. ``max_s`` is our extension (the published class
    accepts and ignores it: its IGConv always clamps at 4). Only the published settings of the BasicSR options are supported (patch_size 1,
    no absolute position embedding, patch norm, ``resi_connection`` '1conv'). The encoder is
    ``models.encoders.swinir.SwinTrunk`` (the same layers and state-dict names as ``swinir``).
    """

    TEST_FORWARD = 'window_pad'


    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, ape=False, patch_norm=True, use_checkpoint=False,
                 upscale=2, img_range=1.0, upsampler='igconv', resi_connection='1conv',
                 sk_kernel_size=3, implicit_dim=256, latent_layers=4, geo_ensemble=True, return_skip=False, max_s=4):
        super().__init__()
        check_fixed_options('SwinIRMS', patch_size=patch_size, in_chans=in_chans, qkv_bias=qkv_bias,
                            qk_scale=qk_scale, ape=ape, patch_norm=patch_norm, resi_connection=resi_connection,
                            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate)
        plus = check_upsampler('SwinIRMS', upsampler, depths, num_heads, embed_dim)
        self.upsampler_name = upsampler
        self._set_mean(DIV2K_MEAN, img_range)
        self.window_size = self.window = int(window_size)
        self.build_trunk(img_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, drop_path_rate)
        self._make_upsamplers(embed_dim, sk_kernel_size, implicit_dim, latent_layers, bool(geo_ensemble), plus, max_s)
        _check_return_skip(type(self).__name__, return_skip)
        self.apply(self._init_weights)     # after the upsamplers, as published: their Linear layers too
        self.receptive_radius = None   # shifted-window attention

    def encode(self, x):
        return self.trunk(x)
