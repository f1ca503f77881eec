"""SwinIR classical + IGConv / IGConv+ (published ``SwinIRMS``; ``upsample``, C = 180).
"""
from ..encoders.swinir import SwinTrunk
from .base import DIV2K_MEAN, _MeanShifted, _check_return_skip, published_arch


PUBLISHED_OPTIONS_SWINIRMS = {'in_chans': 3, 'img_size': 48, 'window_size': 8, 'img_range': 1.0, 'depths': [6] * 6,
                             'embed_dim': 180, 'num_heads': [6] * 6, 'mlp_ratio': 2, 'upsampler': 'igconv+igsample',
                             'resi_connection': '1conv', 'return_skip': False}


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
        unsupported = {'patch_size': (patch_size, 1), 'in_chans': (in_chans, 3), 'qkv_bias': (qkv_bias, True),
                       'qk_scale': (qk_scale, None), 'ape': (ape, False), 'patch_norm': (patch_norm, True),
                       'resi_connection': (resi_connection, '1conv'), 'drop_rate': (drop_rate, 0.0),
                       'attn_drop_rate': (attn_drop_rate, 0.0)}
        for name, (got, want) in unsupported.items():
            if got != want:
                raise ValueError(f'SwinIRMS: only {name}={want!r} is supported, got {got!r}')
        if upsampler not in ('igconv', 'igconv+igsample'):
            raise ValueError(f"SwinIRMS: upsampler must be 'igconv' or 'igconv+igsample', got {upsampler!r}")
        if len(depths) != len(num_heads):
            raise ValueError(f'SwinIRMS: depths {depths!r} and num_heads {num_heads!r} differ in length')
        self.upsampler_name = upsampler
        self._set_mean(DIV2K_MEAN, img_range)
        self.window_size = self.window = int(window_size)
        self.build_trunk(img_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, drop_path_rate)
        plus = upsampler == 'igconv+igsample'
        self._make_upsamplers(embed_dim, sk_kernel_size, implicit_dim, latent_layers, bool(geo_ensemble), plus, max_s)
        _check_return_skip(type(self).__name__, return_skip)
        self.apply(self._init_weights)     # after the upsamplers, as published: their Linear layers too
        self.receptive_radius = None   # shifted-window attention

    def encode(self, x):
        return self.trunk(x)
