"""The published IGConv / IGConv+ architectures (Lee, Yun & Ro, arXiv 2408.09674): the shared base.

Every architecture of the published IGConv repository lives in one module of this package and registers
itself with :func:`published_arch` under the published ``network_g`` type name (plus lower-case aliases),
declaring the ``network_g`` arguments of its published option file (what ``models.load_model(path,
arch=NAME)`` builds when no option file is given). ``PUBLISHED_ARCHS``, ``PUBLISHED_OPTIONS`` and
``ALIASES`` are filled from those declarations.

Conventions (unlike the LIIF-family models of this code base):

* Input and output are RGB in **[0, 1]** (``capabilities.input_range == 'unit'``), not ``(x - 0.5) / 0.5``.
  Mean-shifting models map ``x' = (x - rgb_mean) * img_range`` and the IGConv branch back by
  ``/ img_range + rgb_mean``.
* IGConv+: ``SR = IGConv_r(F) [mapped back] + IGSample_r(x, F)`` where ``x`` is the raw [0, 1] input.
* ``forward(inp (B, 3, h, w), scale: int) -> (B, 3, scale h, scale w)``; integer scales only. ``forward``
  is the published **test-time** forward of the architecture's BasicSR model class (``MSRModel``: plain;
  ``SwinIRMSModel``: reflect padding to the window, then crop; ``MambaMSModel``: tiles), so any input size
  works; ``run(x, r)`` is the bare network on an input it accepts. ``upscale_grid(inp, size)`` is the
  engine's entry (``size`` must be an integer multiple of the input).
* No output clamp (clamping belongs to the metric / image conversion), as published.
* ``instantiate(r)`` returns the deployment model for one scale: the same encoder modules (shared, not
  copied) with IGConv folded into a bias-free conv + PixelShuffle and IGSample's kernel generated once.
"""
import copy
import inspect

import torch

from ..capabilities import Capabilities, SRModel
from ..layers.padding import pad_to_multiple
from ..registry import register
from ..upsamplers.igconv import IGConv, check_integer_scale
from ..upsamplers.igsample import IGSample

#: Published architecture name -> class (filled by :func:`published_arch`).
PUBLISHED_ARCHS = {}
#: Published architecture name -> the ``network_g`` arguments of its published option file.
PUBLISHED_OPTIONS = {}
#: Lower-case alias -> published architecture name.
ALIASES = {}


def published_arch(name, options, aliases=()):
    """Class decorator: register a published architecture under ``name`` (and ``aliases``) with the
    ``network_g`` arguments of its published option file (``options``, without ``type``)."""
    def deco(cls):
        register(name)(cls)
        PUBLISHED_ARCHS[name] = cls
        PUBLISHED_OPTIONS[name] = copy.deepcopy(options)
        for alias in aliases:
            ALIASES[alias] = name
            _register_alias(alias, cls)
        return cls
    return deco


def _register_alias(alias, cls):
    def factory(**kwargs):
        return cls(**kwargs)
    factory.__signature__ = inspect.signature(cls)
    factory.__doc__ = f'Alias of ``{cls.registry_name}``: {(cls.__doc__ or "").strip().splitlines()[0]}'
    factory.__name__ = f'make_{alias.replace("-", "_")}'
    register(alias)(factory)


DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class PublishedIGConvSR(SRModel):
    """Base of the published architectures: mean shift, encoder, IGConv (+ IGSample), back-shift.

    Subclasses set ``UPSAMPLER`` (the published attribute name of the IGConv module) and implement
    ``encode(x)`` (mean-shifted input -> feature F (B, C, h, w)) and optionally ``pre`` / ``post``.
    """

    UPSAMPLER = 'upsample'
    #: Fixed-grid model: integer, isotropic scales only.
    integer_scales_only = True
    instantiated_scale = None

    def _make_upsamplers(self, dim, sk_kernel_size, implicit_dim, latent_layers, geo_ensemble, plus, max_s,
                         skip_implicit_dim=None, skip_latent_layers=None, skip_kernel_size=None):
        skip_kernel_size = sk_kernel_size if skip_kernel_size is None else skip_kernel_size
        for name, value in (('implicit_dim', implicit_dim), ('latent_layers', latent_layers),
                            ('sk_kernel_size', sk_kernel_size), ('max_s', max_s), ('skip kernel size', skip_kernel_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'{type(self).__name__}: {name} must be a positive integer, got {value!r}')
        self.plus = bool(plus)
        self.add_module(self.UPSAMPLER, IGConv(dim, sk_kernel_size, implicit_dim, latent_layers,
                                               geo_ensemble=geo_ensemble, max_s=max_s))
        if self.plus:
            self.skip = IGSample(dim, skip_kernel_size,
                                 implicit_dim // 2 if skip_implicit_dim is None else skip_implicit_dim,
                                 latent_layers // 2 if skip_latent_layers is None else skip_latent_layers,
                                 geo_ensemble=geo_ensemble, max_s=max_s)
        else:
            self.skip = None
        self.feat_dim = dim
        self.max_s = max_s
        # largest training scale (``models.load_model`` replaces it by a checkpoint's): the published x8 models
        # (max_s 8) were trained to x8, the others to x4
        self.max_train_scale = max(max_s, 4)
        # LR pixels the head reads beyond a pixel: the k x k conv, plus IGSample's bilinear neighbour (exact
        # while its learned offsets stay below one LR pixel, which nothing enforces)
        self._reach = max(sk_kernel_size // 2, skip_kernel_size // 2 + 1 if self.plus else 0)

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
                            max_train_scale=self.max_train_scale, input_range='unit',
                            name=type(self).registry_name)

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

    #: The published BasicSR model class's test-time forward (see :data:`TEST_FORWARDS`): ``'plain'``
    #: (``MSRModel``), ``'window_pad'`` (``SwinIRMSModel``: reflect-pad to ``window``, crop) or ``'tiles'``
    #: (``MambaMSModel``: overlapping tiles, :mod:`.tiling`).
    TEST_FORWARD = 'plain'

    def forward(self, inp, scale=None):
        """inp (B, 3, h, w) in [0, 1], integer scale -> (B, 3, scale h, scale w) (not clamped), through the
        published test-time forward of the architecture (``TEST_FORWARD``)."""
        _check_input(inp, type(self).__name__)
        r = self._scale(scale)
        return TEST_FORWARDS[self.TEST_FORWARD](self, inp, r)

    def upscale_grid(self, inp, size, cell=None):
        """Engine entry: inp (B, 3, h, w) in [0, 1] -> (B, 3, H, W) with (H, W) = r (h, w), r an integer.
        ``cell`` (the plan's) is not used: the output depends on the scale only."""
        _check_input(inp, type(self).__name__)
        H, W = (int(s) for s in size)
        h, w = inp.shape[-2:]
        r = check_integer_scale(H / h, W / w)
        if (H, W) != (r * h, r * w):
            raise ValueError(f'{type(self).__name__} renders integer multiples of the input size; '
                             f'size {W}x{H} is not {r} x {w}x{h}')
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


def plain_forward(model, x, r):
    """``MSRModel.test``: the network on the whole input."""
    return model.run(x, r)[0]


def window_pad_forward(model, x, r):
    """``SwinIRMSModel.test``: reflect-pad bottom/right to a multiple of ``model.window``, run, crop to r (h, w).
    Inputs smaller than the pad are mirrored periodically (the published ``F.pad`` refuses them)."""
    h, w = x.shape[-2:]
    padded = pad_to_multiple(x, model.window, 'reflect')     # also below the window size (published: fails)
    out = model.run(padded, r)[0]
    return out[..., :r * h, :r * w] if padded.shape[-2:] != (h, w) else out


def tiled_forward(model, x, r):
    """``MambaMSModel.test``: overlapping tiles (:func:`.tiling.tiled_forward`)."""
    from .tiling import tiled_forward as run_tiles
    return run_tiles(model, x, r)


#: Test-time forwards by name (``PublishedIGConvSR.TEST_FORWARD``).
TEST_FORWARDS = {'plain': plain_forward, 'window_pad': window_pad_forward, 'tiles': tiled_forward}


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
