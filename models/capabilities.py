"""What a model can do, declared once, read by the rendering engine (``engine/render.py``).

Every registered SR model exposes ``model.capabilities`` (a property returning :class:`Capabilities`).
The engine never probes models with ``hasattr``/names: it reads this descriptor and calls the protocol
that ``kind`` names.

Kinds and their protocols (inputs/outputs normalised as ``(x - 0.5) / 0.5`` unless ``input_range``
says otherwise):

* ``'implicit'`` (LIIF, LTE, MetaSR, LM-*, CiaoSR, ...):
  ``state = model.prepare(inp, cell)`` once per image (or tile), then
  ``model.query(state, coord, cell) -> (B, Q, 3)`` for chunks of queries; ``coord``/``cell`` (B, Q, 2)
  ordered (row, col) in the (-1, 1) frame of the (possibly padded) LR input.
  ``modulated`` models (LM-*) also expose ``model.modulation_intensity(state) -> (B*h*w,)``, which is
  what CMSR needs.
* ``'grid'`` (IGConv SR models, LTE-fast): ``model.upscale_grid(inp, size, cell) -> (B, 3, H, W)`` renders
  a whole target grid at once (integer scales only when ``integer_scales_only``). ``cell`` (cy, cx) is the
  cell of every target pixel in the units of ``inp``'s frame, clipped (or not) by the engine's plan: the
  model never decides cell clipping (IGConv models, whose output depends on the scale only, ignore it).
* ``'image'`` (the bicubic baseline): ``model.upscale_to(inp, size) -> (B, 3, H, W)`` directly.
"""
import dataclasses
from typing import Optional, Tuple

from torch import nn

KINDS = ('implicit', 'grid', 'image')


class SRModel(nn.Module):
    """A whole super-resolution model (what the engine renders with), as opposed to a building block (an
    encoder, an MLP). Subclasses declare ``capabilities`` and implement the protocol its ``kind`` names;
    ``isinstance(model, SRModel)`` is how the engine and the API tell the two apart."""

    @property
    def capabilities(self):
        raise NotImplementedError(f'{type(self).__name__} must declare its capabilities')


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """Declared properties of a model.

    Attributes:
        kind: 'implicit', 'grid' or 'image' (see the module docstring).
        integer_scales_only: only integer scales, equal for rows and columns (IGConv).
        scales: for grid models with a finite set of scales, the scales supported (None: any allowed).
        window: the encoder needs its input padded to a multiple of this (SwinIR: 8); 0 if not.
        receptive_radius: LR pixels beyond a pixel that its encoder feature depends on; None when
            unbounded (attention encoders): tiling is then approximate.
        decoder_reach: LR pixels a query reads beyond the pixel containing it (LIIF-style ensemble +
            3x3 unfold/convs: 3).
        max_train_scale: largest training scale; test-time cells are clipped by
            ``max(scale / max_train_scale, 1)``. Models report their ``max_train_scale`` attribute, which
            ``models.load_model`` sets from the checkpoint's training config when it has one.
        chunk: preferred number of queries per ``query`` call (None: the engine's default).
        modulated: LM model (exposes ``modulation_intensity``; CMSR can render it).
        input_range: 'normalised' ((x - 0.5) / 0.5, every LIIF-family model) or 'unit' ([0, 1]; the
            published IGConv/BasicSR architectures).
        intensity_range: modulated models: the (low, high) range of modulation intensities that CMSR
            tables are built over (LM-LIIF (0, 1), LM-LTE/LM-CiaoSR (0, 0.5)); None otherwise.
        name: the registered model name (CMSR tables record it; None if unknown).
        grid_queries: implicit models that also answer whole query grids with
            ``model.query_grid(state, ys (n,), xs (m,), cell (B, 2)) -> (B, n, m, 3)`` (equal to ``query``
            on the meshgrid, faster: LM models broadcast per-pixel terms over the rows of a pixel).
        cmsr_build_skip: modulated models: whether CMSR table building renders with the model's LR
            skip. False for LM-CiaoSR (published ``init_cmsr``, docs/deviations.md, B1): the builder then sets
            ``state['lr_skip'] = False`` on the prepared state before rendering.
        traceable: the model has a traceable form that ONNX export runs (implicit models:
            ``traced_prepare`` / ``traced_query``; IGConv models: ``traced_upsample`` and ``instantiate``).
    """
    kind: str
    integer_scales_only: bool = False
    scales: Optional[Tuple[int, ...]] = None
    window: int = 0
    receptive_radius: Optional[int] = 0
    decoder_reach: int = 0
    max_train_scale: float = 4
    chunk: Optional[int] = None
    modulated: bool = False
    input_range: str = 'normalised'
    intensity_range: Optional[Tuple[float, float]] = None
    name: Optional[str] = None
    cmsr_build_skip: bool = True
    grid_queries: bool = False
    traceable: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'capabilities: kind must be one of {KINDS}, got {self.kind!r}')
        if self.input_range not in ('normalised', 'unit'):
            raise ValueError(f"capabilities: input_range must be 'normalised' or 'unit', got {self.input_range!r}")

    @property
    def exact_tile_overlap(self):
        """LR pixels of tile context that make tiling exact, or None when no overlap can."""
        if self.receptive_radius is None:
            return None
        return self.receptive_radius + self.decoder_reach

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def encoder_traits(encoder):
    """(window, receptive_radius) of an encoder module: the encoder protocol every encoder follows.

    ``receptive_radius`` (int, or None for attention encoders) is required; ``window_size`` is only
    defined by window-attention encoders (SwinIR), 0 for the others. This is the one place encoders
    are read; models put the values in their ``Capabilities``.
    """
    return int(getattr(encoder, 'window_size', 0) or 0), encoder.receptive_radius
