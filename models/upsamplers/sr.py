"""IGConv / IGConv+ super-resolution models: one of our encoders + IGConv (+ IGSample skip).

Registered names (all build :class:`IGConvSR`; ``models.make({'name': ..., 'args': {...}})``):

==============================  ==============================================================
``igconv-sr``                   generic: ``encoder_spec``, ``upsampler_spec``, ``plus``, ``skip_spec``
``igconv-edsr-baseline``        EDSR-baseline (64 ch, 16 res-blocks, no upsampling) + IGConv
``igconv-plus-edsr-baseline``   the same, IGConv+ (FGRep + IGSample; train with the FFT loss)
``igconv-rdn`` / ``igconv-plus-rdn``        RDN (G0 64, config B)
``igconv-swinir`` / ``igconv-plus-swinir``  SwinIR (classical): its 180-ch ``conv_after_body(...) + x``
                                            feeds IGConv (as published; encoder ``swinir-body``)
==============================  ==============================================================

The convenience names take ``encoder_args`` (overrides of the encoder's arguments, e.g.
``{'n_resblocks': 1}``), ``upsampler_spec`` and ``skip_spec``.

Normalisation: like every model of this code base the input and the output are ``(x - 0.5) / 0.5``;
IGSample resamples the normalised LR image (it is linear in the image, so this only shifts a constant),
and nothing else changes compared with the official DIV2K-mean normalisation (docs/deviations.md, "Our own choices").

IGConv models are *fixed-grid*: only integer scales, the same for rows and columns
(``integer_scales_only = True``; :func:`check_integer_scale` refuses the rest).
"""
import copy

import torch

from utils.coords import make_coord, nearest_index, spatial_size

from .. import registry
from ..capabilities import Capabilities, SRModel, encoder_traits
from ..encoders.swinir import SwinIR
from ..registry import register
from .igconv import IntegerScaleError, check_integer_scale

__all__ = ['IGConvSR', 'InstantiatedIGConvSR', 'check_integer_scale', 'IntegerScaleError', 'scale_from_cell',
           'match_feature_size']


def scale_from_cell(cell, lr_size, n_queries=None, tol=1e-3):
    """Integer scale of a LIIF-style query from its cell (B, Q, 2) and the LR size (h, w).

    ``r = 2 / (cell * (h, w))`` per axis; all cells must be equal. Test-time cell clipping (cells
    multiplied by ``max(scale / max_train_scale, 1)``) makes the cell of a large scale look like a
    smaller one: when ``n_queries`` is the size of a full grid ``(g h) x (g w)`` of an integer scale g
    larger than the cell's, g wins, so full-grid evaluation works whether or not the caller clipped.
    Raises :class:`IntegerScaleError` for non-integer or asymmetric scales.
    """
    h, w = lr_size
    c = cell.detach().reshape(-1, 2).double()
    if c.shape[0] == 0:
        raise IntegerScaleError('empty cell tensor: cannot derive the scale')
    if not bool(torch.allclose(c, c[:1].expand_as(c), rtol=1e-4, atol=0)):
        raise IntegerScaleError('IGConv supports integer scales only, one scale per call: the cells differ '
                                'between queries; use an implicit model such as lmliif or liif for that.')
    sh, sw = 2 / (float(c[0, 0]) * h), 2 / (float(c[0, 1]) * w)
    if n_queries is not None and abs(sh - sw) < tol:
        g = round((n_queries / (h * w)) ** 0.5)
        if g * g * h * w == n_queries and g > sh + tol:
            return g
    return check_integer_scale(sh, sw, tol)


def check_grid_size(size, lr_size):
    """The integer scale r of a target ``size`` (H, W) = (r h, r w); ``IntegerScaleError`` otherwise."""
    (H, W), (h, w) = size, lr_size
    r = check_integer_scale(H / h, W / w)
    if H != r * h or W != r * w:
        raise IntegerScaleError(f'IGConv produces integer multiples of the input size; {W}x{H} is not '
                                f'{r} x {w}x{h}')
    return r


def match_feature_size(encoder, inp, feat):
    """The image at the feature map's size (SwinIR pads its input to the window and keeps the padding)."""
    if inp.shape[-2:] == feat.shape[-2:]:
        return inp
    if encoder_traits(encoder)[0]:        # window-attention encoders (SwinIR) pad to their window
        padded = encoder.pad_to_window(inp)
        if padded.shape[-2:] == feat.shape[-2:]:
            return padded
    raise RuntimeError(f'encoder output size {tuple(feat.shape[-2:])} does not match the input '
                       f'{tuple(inp.shape[-2:])}; IGSample needs the image at the feature size')


@register('igconv-sr')
class IGConvSR(SRModel):
    """Encoder + IGConv (``plus=False``) or IGConv+ (``plus=True``: FGRep on, IGSample skip added).

    Args:
        encoder_spec: a ``no_upsampling`` encoder spec, e.g. ``{'name': 'edsr-baseline', 'args':
            {'no_upsampling': True}}``; its ``out_dim`` is the C fed to IGConv. (SwinIR: the convenience
            names use ``swinir-body``, the 180-ch ``conv_after_body`` output, as the official SwinIR-IGConv;
            the LIIF ``swinir`` encoder would give 64 ch after its extra conv + LeakyReLU.)
        upsampler_spec: optional ``{'name': 'igconv', 'args': {...}}`` overriding IGConv's arguments
            (official names: kernel_size, implicit_dim, latent_layers, geo_ensemble, max_s); ``dim`` is
            always the encoder's ``out_dim``, ``geo_ensemble`` defaults to ``plus``.
        plus: IGConv+: FGRep + IGSample skip (train with ``fft_l1_loss``, weight
            ``fft_loss_weight`` = 0.05).
        skip_spec: optional ``{'name': 'igsample', 'args': {...}}`` overrides (only with ``plus``);
            ``kernel_size``, ``max_s`` and ``geo_ensemble`` default to the upsampler's.

    ``forward(inp (B, 3, h, w), scale: int) -> (B, 3, scale*h, scale*w)``; the LIIF-style
    ``forward(inp, coord, cell) -> (B, Q, 3)`` also works (scale derived from the cell, see
    :meth:`query`). Inputs and outputs are normalised as ``(x - 0.5) / 0.5``.
    """

    #: Fixed-grid model: integer, isotropic scales only (callers check with ``check_integer_scale``).
    integer_scales_only = True
    #: Largest training scale (``models.load_model`` sets it from the checkpoint; IGConv never uses cells).
    max_train_scale = 4

    @property
    def capabilities(self):
        window, radius = encoder_traits(self.encoder)
        return Capabilities(kind='grid', integer_scales_only=True, window=window, receptive_radius=radius,
                            decoder_reach=3, max_train_scale=self.max_train_scale, name='igconv-sr',
                            traceable=True)

    def upscale_grid(self, inp, size, cell=None):
        """Grid protocol: (B, 3, h, w) -> (B, 3, H, W) with H = r h, W = r w for an integer r. ``cell`` (the
        plan's, see ``models.capabilities``) is not used: IGConv's output depends on the scale only."""
        h, w = inp.shape[-2:]
        r = check_grid_size(size, (h, w))
        return self.upsample(inp, r)

    def __init__(self, encoder_spec, upsampler_spec=None, plus=False, skip_spec=None):
        super().__init__()
        self.plus = bool(plus)
        self.encoder = registry.make(encoder_spec)
        dim = self.encoder.out_dim
        up_spec = upsampler_spec or {'name': 'igconv', 'args': {}}
        up_args = {'geo_ensemble': self.plus, **(up_spec.get('args') or {}), 'dim': dim}
        self.upsampler = registry.make({'name': up_spec.get('name', 'igconv'), 'args': up_args})
        if self.plus:
            sk_spec = skip_spec or {'name': 'igsample', 'args': {}}
            sk_args = {'kernel_size': self.upsampler.kernel_size, 'max_s': self.upsampler.max_s,
                       'geo_ensemble': self.upsampler.geo_ensemble, **(sk_spec.get('args') or {}), 'dim': dim}
            self.skip = registry.make({'name': sk_spec.get('name', 'igsample'), 'args': sk_args})
        else:
            if skip_spec is not None:
                raise ValueError('skip_spec is only used with plus=True (IGConv+)')
            self.skip = None

    @property
    def fft_loss_weight(self):
        """Weight of the FFT L1 loss in the published recipe: 0.05 for IGConv+, 0 for IGConv."""
        return 0.05 if self.plus else 0.0

    @staticmethod
    def check_scale(scale_h, scale_w=None):
        return check_integer_scale(scale_h, scale_w)

    def forward(self, inp, scale=None, cell=None, *, coord=None, bsize=None, inp_coord=None, progress=None):
        """``forward(inp, scale)`` -> (B, 3, r h, r w); ``forward(inp, coord, cell)`` -> (B, Q, 3).

        ``bsize`` and ``progress`` (LIIF's chunking arguments) are accepted and ignored.
        """
        if torch.is_tensor(scale) and scale.dim() == 3:
            coord, scale = scale, None
        if coord is not None or cell is not None:
            if scale is not None:
                raise TypeError('pass either a scale or coord and cell, not both')
            return self.query(inp, coord, cell, inp_coord=inp_coord)
        if inp_coord is not None:
            raise ValueError('IGConv models need a regular LR grid (inp_coord is not supported)')
        if scale is None:
            raise TypeError('IGConvSR.forward needs a scale (or coord and cell)')
        return self.upsample(inp, scale)

    def upsample(self, inp, scale):
        r = check_integer_scale(scale)
        h, w = inp.shape[-2:]
        feat = self.encoder(inp)
        out = self.upsampler(feat, r)
        if self.skip is not None:
            out = out + self.skip(match_feature_size(self.encoder, inp, feat), feat, r)
        return out[..., :r * h, :r * w]

    def query(self, inp, coord, cell, inp_coord=None):
        """LIIF-compatible query: coord, cell (B, Q, 2) -> (B, Q, 3).

        The scale comes from the cell (:func:`scale_from_cell`; non-integer / asymmetric scales raise
        :class:`IntegerScaleError`), the full r h x r w image is computed, and the queries read it: a
        full grid in row-major order (LIIF's ``make_coord``) is a reshape, anything else a
        nearest-pixel lookup.
        """
        if coord is None or cell is None:
            raise TypeError('the LIIF-style call needs both coord and cell')
        if inp_coord is not None:
            raise ValueError('IGConv models need a regular LR grid (inp_coord is not supported)')
        h, w = inp.shape[-2:]
        r = scale_from_cell(cell, (h, w), n_queries=coord.shape[1])
        out = self.upsample(inp, r)
        B, C, H, W = out.shape
        flat = out.permute(0, 2, 3, 1).reshape(B, H * W, C)
        Q = coord.shape[1]
        if Q == H * W and coord.shape[0] == B:
            grid = make_coord((H, W), device=coord.device).to(coord.dtype)
            if bool((coord == grid).all()):
                return flat
        iy = nearest_index(coord[..., 0].clamp(-1, 1), H)
        ix = nearest_index(coord[..., 1].clamp(-1, 1), W)
        index = (iy * W + ix).expand(B, Q)
        return flat.gather(1, index.unsqueeze(-1).expand(B, Q, C))

    def traced_upsample(self, inp, r):
        """``upsample(inp, r)`` in traceable form for a 0-d int64 tensor ``r`` (the ONNX graph that takes the
        scale at run time): kernels generated in the graph, convolutions as unfold + matmul."""
        h, w = spatial_size(inp)
        feat = self.encoder(inp)
        out = self.upsampler.traced_forward(feat, r)
        if self.skip is not None:
            out = out + self.skip.traced_forward(match_feature_size(self.encoder, inp, feat), feat, r)
        return out[..., :r * h, :r * w]

    @torch.no_grad()
    def instantiate(self, scale):
        """A deployment model for one scale: the *same* encoder (shared, not copied) and the upsampler
        (and IGSample) folded into fixed convs. ``forward(inp, scale=None)``."""
        r = check_integer_scale(scale)
        skip = self.skip.instantiate(r) if self.skip is not None else None
        return InstantiatedIGConvSR(self.encoder, self.upsampler.instantiate(r), skip, r)


class InstantiatedIGConvSR(SRModel):
    """IGConvSR folded at one integer scale (see :meth:`IGConvSR.instantiate`)."""

    integer_scales_only = True

    @property
    def capabilities(self):
        window, radius = encoder_traits(self.encoder)
        return Capabilities(kind='grid', integer_scales_only=True, scales=(self.scale,), window=window,
                            receptive_radius=radius, decoder_reach=3,
                            name='igconv-sr-instantiated')

    def upscale_grid(self, inp, size, cell=None):
        """Grid protocol at the one instantiated scale (``cell`` not used, as in ``IGConvSR``)."""
        r = check_grid_size(size, inp.shape[-2:])
        if r != self.scale:
            raise ValueError(f'this model was instantiated for x{self.scale}, got x{r}')
        return self.forward(inp)

    def __init__(self, encoder, upsampler, skip, scale):
        super().__init__()
        self.encoder, self.upsampler, self.skip, self.scale = encoder, upsampler, skip, int(scale)

    def forward(self, inp, scale=None):
        r = self.scale
        if scale is not None and check_integer_scale(scale) != r:
            raise ValueError(f'this model was instantiated for x{r}, got x{scale}')
        h, w = inp.shape[-2:]
        feat = self.encoder(inp)
        out = self.upsampler(feat)
        if self.skip is not None:
            out = out + self.skip(match_feature_size(self.encoder, inp, feat), feat)
        return out[..., :r * h, :r * w]


# ---- SwinIR as IGConv reads it: the 180-ch body output, no 64-ch conv_before_upsample ----

@register('swinir-body')
class SwinIRBody(SwinIR):
    """SwinIR classical (embed 180, 6 x 6 RSTB, window 8), features ``conv_after_body(body(x)) + x`` with
    ``embed_dim`` channels: what the published SwinIR-IGConv feeds its upsampler. Input
    reflect-padded to the window (features keep the padding, like ``swinir``); ``out_dim`` = 180."""

    def __init__(self, no_upsampling=True):
        super().__init__()
        del self.conv_before_upsample
        self.out_dim = self.conv_after_body.out_channels

    def forward(self, x):
        return self.trunk(self.pad_to_window(x))


# ---- convenience names: one encoder each, plain and plus ----

_ENCODERS = {
    'edsr-baseline': {'name': 'edsr-baseline', 'args': {'no_upsampling': True}},
    'rdn': {'name': 'rdn', 'args': {'no_upsampling': True}},
    'swinir': {'name': 'swinir-body', 'args': {'no_upsampling': True}},
}


def _encoder_spec(key, encoder_args):
    spec = copy.deepcopy(_ENCODERS[key])
    spec['args'].update(encoder_args or {})
    return spec


def _register_pair(key):
    def plain(encoder_args=None, upsampler_spec=None):
        return IGConvSR(_encoder_spec(key, encoder_args), upsampler_spec, plus=False)

    def plus(encoder_args=None, upsampler_spec=None, skip_spec=None):
        return IGConvSR(_encoder_spec(key, encoder_args), upsampler_spec, plus=True, skip_spec=skip_spec)

    plain.__doc__ = f'IGConv on the {key} encoder (``encoder_args`` override its arguments).'
    plus.__doc__ = f'IGConv+ (FGRep + IGSample) on the {key} encoder (``encoder_args`` override its arguments).'
    plain.__name__ = f'make_igconv_{key.replace("-", "_")}'
    plus.__name__ = f'make_igconv_plus_{key.replace("-", "_")}'
    register(f'igconv-{key}')(plain)
    register(f'igconv-plus-{key}')(plus)


for _key in _ENCODERS:
    _register_pair(_key)
