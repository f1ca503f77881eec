"""The published IGConv / IGConv+ SR architectures (Lee, Yun & Ro, arXiv 2408.09674).

Registered under the published ``network_g`` type names, with the published constructor arguments and
state-dict key names, so that a BasicSR option file's ``network_g`` builds the model and a released
checkpoint (``{'params_ema': sd, 'params': sd}`` or ``{'params': sd}``) loads strictly:

===============  ==================================================================  ==============  =====
name             encoder (feature F fed to the upsampler)                            upsampler key   C
===============  ==================================================================  ==============  =====
``EDSRIG``       full EDSR (256 ch x 32 blocks, res_scale 0.1), F = body + skip      ``upsample``    256
``EDSRIGPlus``   the same, IGConv+ (FGRep + IGSample ``skip``)                        ``upsample``    256
``RDNIGPlus``    RDN config B (G0 64, 16 RDB x 8 convs, growth 64), IGConv+           ``UPNet``       64
``RCANIGPlus``   RCAN 10 groups x 20 RCAB, 64 ch, reduction 16, IGConv+               ``tail``        64
``SwinIRMS``     SwinIR classical (embed 180, 6 x 6 RSTB), F = conv_after_body + x   ``upsample``    180
===============  ==================================================================  ==============  =====

Lower-case aliases: ``edsr-ig``, ``edsr-ig-plus``, ``rdn-ig-plus``, ``rcan-ig-plus``, ``swinir-ms``.

Conventions (unlike the LIIF-family models of this code base):

* Input and output are RGB in **[0, 1]** (``capabilities.input_range == 'unit'``), not ``(x - 0.5) / 0.5``.
  EDSR and SwinIR mean-shift internally: ``x' = (x - rgb_mean) * img_range`` and the IGConv branch is
  mapped back by ``/ img_range + rgb_mean`` (``img_range`` is 1 in every published option file); RDN has
  no mean shift; RCAN uses its ``sub_mean`` / ``add_mean`` 1x1 convs, which are trainable parameters in
  the published code (docs/deviations.md, I8) and are kept trainable here.
* IGConv+: ``SR = IGConv_r(F) [mapped back] + IGSample_r(x, F)`` where ``x`` is the raw [0, 1] input.
* ``forward(inp (B, 3, h, w), scale: int) -> (B, 3, scale h, scale w)``; integer scales only.
  ``upscale_grid(inp, size)`` is the engine's entry (``size`` must be an integer multiple of the input).
* No output clamp (clamping belongs to the metric / image conversion), as published.
* SwinIRMS pads its input to a multiple of ``window_size`` (reflect, bottom/right, like the published
  ``SwinIRMSModel.test``) and crops the output, so any input size works; inputs that already are
  multiples are used as they are.
* ``instantiate(r)`` returns the deployment model for one scale: the same encoder modules (shared, not
  copied) with IGConv folded into a bias-free conv + PixelShuffle and IGSample's kernel generated once.
"""
import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..basicsr_checkpoint import ALIASES
from ..capabilities import Capabilities
from ..encoders.rcan import ResidualGroup
from ..encoders.rdn import RDN_CONFIGS, RDNTrunk
from ..encoders.swinir import SwinTrunk
from ..registry import register
from .igconv import IGConv, check_integer_scale
from .igsample import IGSample

__all__ = ['PublishedIGConvSR', 'EDSRIG', 'EDSRIGPlus', 'RDNIGPlus', 'RCANIGPlus', 'SwinIRMS', 'PUBLISHED_ARCHS']

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class PublishedIGConvSR(nn.Module):
    """Base of the published architectures: mean shift, encoder, IGConv (+ IGSample), back-shift.

    Subclasses set ``UPSAMPLER`` (the published attribute name of the IGConv module) and implement
    ``encode(x)`` (mean-shifted input -> feature F (B, C, h, w)) and optionally ``pre`` / ``post``.
    """

    UPSAMPLER = 'upsample'
    #: Fixed-grid model: integer, isotropic scales only.
    integer_scales_only = True
    instantiated_scale = None

    def _make_upsamplers(self, dim, sk_kernel_size, implicit_dim, latent_layers, geo_ensemble, plus, max_s,
                         skip_implicit_dim=None, skip_latent_layers=None):
        for name, value in (('implicit_dim', implicit_dim), ('latent_layers', latent_layers),
                            ('sk_kernel_size', sk_kernel_size), ('max_s', max_s)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'{type(self).__name__}: {name} must be a positive integer, got {value!r}')
        self.plus = bool(plus)
        self.add_module(self.UPSAMPLER, IGConv(dim, sk_kernel_size, implicit_dim, latent_layers,
                                               geo_ensemble=geo_ensemble, max_s=max_s))
        if self.plus:
            self.skip = IGSample(dim, sk_kernel_size,
                                 implicit_dim // 2 if skip_implicit_dim is None else skip_implicit_dim,
                                 latent_layers // 2 if skip_latent_layers is None else skip_latent_layers,
                                 geo_ensemble=geo_ensemble, max_s=max_s)
        else:
            self.skip = None
        self.feat_dim = dim
        self.max_s = max_s
        # LR pixels the head reads beyond a pixel: the k x k conv, plus IGSample's bilinear neighbour (exact
        # while its learned offsets stay below one LR pixel, which nothing enforces)
        self._reach = sk_kernel_size // 2 + (1 if self.plus else 0)

    @property
    def upsampler(self):
        """The IGConv module (published name: ``upsample`` / ``UPNet`` / ``tail``)."""
        return self._modules[self.UPSAMPLER]

    @property
    def fft_loss_weight(self):
        """Weight of the FFT L1 loss in the published recipe: 0.05 for IGConv+, 0 for IGConv."""
        return 0.05 if self.plus else 0.0

    # ---- what the engine reads ----
    receptive_radius = None      # encoder radius (LR px); None: unbounded (attention)
    window = 0

    @property
    def capabilities(self):
        r = self.instantiated_scale
        return Capabilities(kind='grid', integer_scales_only=True, scales=None if r is None else (r,),
                            window=self.window, receptive_radius=self.receptive_radius, decoder_reach=self._reach,
                            max_train_scale=self.max_s if self.max_s > 4 else 4, input_range='unit',
                            name=getattr(self, 'registry_name', type(self).__name__))

    @property
    def max_train_scale(self):
        return self.capabilities.max_train_scale

    @staticmethod
    def check_scale(scale_h, scale_w=None):
        return check_integer_scale(scale_h, scale_w)

    # ---- forward ----
    def pre(self, x):
        return x

    def post(self, y):
        return y

    def encode(self, x):
        raise NotImplementedError

    def _scale(self, scale):
        if scale is None:
            if self.instantiated_scale is None:
                raise TypeError(f'{type(self).__name__}.forward needs an integer scale')
            return self.instantiated_scale
        r = check_integer_scale(scale)
        if self.instantiated_scale is not None and r != self.instantiated_scale:
            raise ValueError(f'this model was instantiated for x{self.instantiated_scale}, got x{r}')
        return r

    def run(self, inp, r):
        """(out, skip_out or None) on an input whose size the encoder accepts."""
        feat = self.encode(self.pre(inp))
        out = self.post(self.upsampler(feat, r))
        skip = None
        if self.skip is not None:
            skip = self.skip(inp, feat, r)
            out = out + skip
        return out, skip

    def forward(self, inp, scale=None):
        """inp (B, 3, h, w) in [0, 1], integer scale -> (B, 3, scale h, scale w) (not clamped)."""
        _check_input(inp, type(self).__name__)
        r = self._scale(scale)
        h, w = inp.shape[-2:]
        x = self.pad_input(inp)
        out, _ = self.run(x, r)
        return out[..., :r * h, :r * w] if x.shape[-2:] != (h, w) else out

    def pad_input(self, x):
        return x

    def upscale_grid(self, inp, size):
        """Engine entry: inp (B, 3, h, w) in [0, 1] -> (B, 3, H, W) with (H, W) = r (h, w), r an integer."""
        _check_input(inp, type(self).__name__)
        H, W = (int(s) for s in size)
        h, w = inp.shape[-2:]
        r = check_integer_scale(H / h, W / w)
        if (H, W) != (r * h, r * w):
            raise ValueError(f'{type(self).__name__} renders integer multiples of the input size; '
                             f'size {H}x{W} is not {r} x {h}x{w}')
        return self(inp, r)

    @torch.no_grad()
    def instantiate(self, scale):
        """Deployment model for one integer scale (docs/deviations.md, I5): encoder shared, IGConv folded into a fixed
        bias-free conv + PixelShuffle (FGRep average included), IGSample's kernel generated once.
        ``forward(inp, scale=None)``; another scale raises ``ValueError``."""
        r = check_integer_scale(scale)
        new = copy.copy(self)
        # own containers (modules, parameters, hooks), shared submodules: folding leaves ``self`` untouched
        new.__dict__ = {k: type(v)(v) if isinstance(v, dict) else v for k, v in self.__dict__.items()}
        new._modules[self.UPSAMPLER] = self.upsampler.instantiate(r)
        if self.skip is not None:
            new._modules['skip'] = self.skip.instantiate(r)
        new.instantiated_scale = r
        new.__dict__.pop('spec', None)     # the registry spec describes the unfolded model, not this one
        return new


def _check_return_skip(who, return_skip):
    """``return_skip`` (the published DualStreamLoss hook) is False in every released option; only that is
    supported."""
    if return_skip:
        raise ValueError(f'{who}: return_skip=True (DualStreamLoss) is not supported; every published option '
                         f'file sets it to false')


def _check_input(inp, who):
    if not torch.is_tensor(inp) or inp.dim() != 4 or inp.shape[1] != 3:
        shape = tuple(inp.shape) if torch.is_tensor(inp) else type(inp).__name__
        raise ValueError(f'{who}: input must be a (B, 3, h, w) tensor of RGB in [0, 1], got {shape}')
    if not inp.is_floating_point():
        raise ValueError(f'{who}: input must be a float tensor in [0, 1], got {inp.dtype}')


def _mean_tensor(rgb_mean, who):
    if len(rgb_mean) != 3:
        raise ValueError(f'{who}: rgb_mean must have 3 values, got {rgb_mean!r}')
    return torch.tensor([float(v) for v in rgb_mean]).view(1, 3, 1, 1)


class _MeanShifted(PublishedIGConvSR):
    """``x' = (x - mean) * img_range``; IGConv output ``/ img_range + mean`` (EDSR, SwinIR)."""

    def _set_mean(self, rgb_mean, img_range):
        if not (isinstance(img_range, (int, float)) and img_range > 0):
            raise ValueError(f'{type(self).__name__}: img_range must be a positive number, got {img_range!r}')
        self.img_range = float(img_range)
        # not a buffer: published models keep it as a plain tensor attribute (not in the state dict)
        self.mean = _mean_tensor(rgb_mean, type(self).__name__)

    def pre(self, x):
        return (x - self.mean.to(x)) * self.img_range

    def post(self, y):
        return y / self.img_range + self.mean.to(y)


# ------------------------------------------------------------------------------------------ EDSR

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


@register('EDSRIG')
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


@register('EDSRIGPlus')
class EDSRIGPlus(EDSRIG):
    """Full EDSR encoder + IGConv+ (FGRep + IGSample skip; published ``EDSRIGPlus``)."""

    _PLUS = True


# ------------------------------------------------------------------------------------------ RDN

@register('RDNIGPlus')
class RDNIGPlus(PublishedIGConvSR, RDNTrunk):
    """RDN (config B) + IGConv+ (published ``RDNIGPlus``); no mean shift: F = GFF(...) + SFENet1(x).

    ``RDNconfig``: 'B' (published: 16 blocks x 8 convs, growth 64), 'A' (20, 6, 32), or an explicit
    (D, C, G) triple (our extension, for small experiments). The encoder is ``models.encoders.rdn.RDNTrunk``
    (the same layers and state-dict names as ``rdn``)."""

    UPSAMPLER = 'UPNet'

    def __init__(self, G0=64, RDNkSize=3, RDNconfig='B', implicit_dim=256, latent_layers=4, geo_ensemble=True,
                 sk_kernel_size=3, max_s=4, return_skip=False):
        super().__init__()
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


# ------------------------------------------------------------------------------------------ RCAN

@register('RCANIGPlus')
class RCANIGPlus(PublishedIGConvSR):
    """RCAN + IGConv+ (published ``RCANIGPlus``): ``SR = add_mean(tail(F, r)) + skip(x, F, r)``,
    ``F = body(head(sub_mean(x))) + head(sub_mean(x))``. IGSample: implicit_dim 128, 2 layers (hard-coded
    in the published code)."""

    UPSAMPLER = 'tail'

    def __init__(self, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, rgb_range=1.0,
                 rgb_mean=DIV2K_MEAN, implicit_dim=256, latent_layers=4, geo_ensemble=True, sk_kernel_size=3,
                 max_s=4, return_skip=False):
        super().__init__()
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
        self._make_upsamplers(n_feats, sk_kernel_size, implicit_dim, latent_layers, geo_ensemble, True, max_s,
                              skip_implicit_dim=128, skip_latent_layers=2)
        _check_return_skip(type(self).__name__, return_skip)
        self.receptive_radius = None   # channel attention pools over the whole image

    def pre(self, x):
        return self.sub_mean(x)

    def post(self, y):
        return self.add_mean(y)

    def encode(self, x):
        x = self.head(x)
        return self.body(x) + x


# ------------------------------------------------------------------------------------------ SwinIR

@register('SwinIRMS')
class SwinIRMS(_MeanShifted, SwinTrunk):
    """SwinIR (BasicSR ``SwinIR`` arguments) with IGConv fed the 180-ch ``conv_after_body(...) + x``.

    ``upsampler``: ``'igconv'`` or ``'igconv+igsample'`` (IGConv+, FGRep on unless ``geo_ensemble``
    says otherwise). Only the published settings of the BasicSR options are supported (patch_size 1,
    no absolute position embedding, patch norm, ``resi_connection`` '1conv'). The encoder is
    ``models.encoders.swinir.SwinTrunk`` (the same layers and state-dict names as ``swinir``).
    """

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, ape=False, patch_norm=True, use_checkpoint=False,
                 upscale=2, img_range=1.0, upsampler='igconv+igsample', resi_connection='1conv',
                 implicit_dim=256, latent_layers=4, geo_ensemble=None, sk_kernel_size=3, max_s=4,
                 return_skip=False):
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
        geo = plus if geo_ensemble is None else bool(geo_ensemble)
        self._make_upsamplers(embed_dim, sk_kernel_size, implicit_dim, latent_layers, geo, plus, max_s)
        _check_return_skip(type(self).__name__, return_skip)
        self.apply(self._init_weights)     # after the upsamplers, as published: their Linear layers too
        self.receptive_radius = None   # shifted-window attention

    def pad_input(self, x):
        """Reflect-pad bottom/right to a multiple of the window (published ``SwinIRMSModel.test``)."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.window_size, (-w) % self.window_size
        if ph or pw:
            if ph >= h or pw >= w:
                raise ValueError(f'SwinIRMS: input {h}x{w} is too small to reflect-pad to a multiple of '
                                 f'the window {self.window_size}')
            x = F.pad(x, (0, pw, 0, ph), mode='reflect')
        return x

    def encode(self, x):
        return self.trunk(x)


#: Published architecture names -> classes.
PUBLISHED_ARCHS = {c.registry_name: c for c in (EDSRIG, EDSRIGPlus, RDNIGPlus, RCANIGPlus, SwinIRMS)}



def _register_alias(alias, cls):
    def factory(**kwargs):
        return cls(**kwargs)
    factory.__signature__ = inspect.signature(cls)
    factory.__doc__ = f'Alias of ``{cls.registry_name}``: {cls.__doc__.splitlines()[0]}'
    factory.__name__ = f'make_{alias.replace("-", "_")}'
    register(alias)(factory)


for _alias, _name in ALIASES.items():
    _register_alias(_alias, PUBLISHED_ARCHS[_name])
