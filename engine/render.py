"""The rendering engine: one query plan per image, and the strategies that execute it.

Every model is driven through ``model.capabilities`` (``models/capabilities.py``) and the protocol its
kind names; nothing here probes attributes or names.

* :class:`QueryPlan` is built once per image from the LR size, the target size, window padding, cell
  clipping (the model's ``max_train_scale``, overridable, or off) and chunking (the model's preferred
  chunk, overridable). It owns the geometry: the padded frame, target coordinates (``utils.coords``,
  (row, col) in the (-1, 1) frame of the padded LR input / tile), cells and query blocks.
* Strategies :class:`Dense`, :class:`Tiled` and :class:`CMSR` take a model and a normalised LR batch
  (``(x - 0.5) / 0.5``, (B, 3, h, w)) and return ``(prediction (B, 3, H, W) normalised, RenderStats)``.
* :func:`choose` is the one place that decides which strategy renders a request (CMSR only beyond the
  training scale, ``engine.cmsr.applies``).

Window padding (SwinIR): the LR input is padded at the bottom/right to a multiple of ``window``; the
published protocol (``published_window=True``) always adds 1..window pixels by mirroring with edge
repetition, and queries the padded HR grid, which is cropped. Target pixels are queried at their
positions inside the padded frame (the same points, so the same values, as the published crop).

Tiling: the encoder sees overlapping tiles and each tile answers the queries whose LR position lies in
its core. With an overlap of at least ``capabilities.exact_tile_overlap`` the result equals the untiled
one up to float rounding for CNN encoders; for attention encoders tiling is an approximation.
"""
import dataclasses
import math
from typing import Tuple

import torch

from models.decoders.implicit import grid_blocks
from models.layers.padding import mirror_pad, pad_to_multiple
from utils.coords import clipped_cell, make_coord, pixel_position, target_axis, target_range

from . import cmsr as cmsr_lib

NORM_MEAN, NORM_STD = 0.5, 0.5
#: Queries per call when a model states no preference.
DEFAULT_CHUNK = 65536


def normalise(img):
    """[0, 1] images -> the models' input space ``(x - 0.5) / 0.5``."""
    return (img - NORM_MEAN) / NORM_STD


def denormalise(x):
    return x * NORM_STD + NORM_MEAN


def window_pad(x, window, published=False):
    """Pad (B, C, h, w) bottom/right to a multiple of ``window`` (any size: ``models.layers.padding``).

    ``published=True`` reproduces the LIIF/LTE/LMF test script: it always adds 1..window pixels (never
    0), by mirroring with edge repetition. Otherwise the minimal reflect padding (none for multiples).
    """
    if not window:
        return x
    h, w = x.shape[-2:]
    if published:
        return mirror_pad(x, padded_size(h, window, True) - h, padded_size(w, window, True) - w, 'symmetric')
    return pad_to_multiple(x, window, 'reflect')


def padded_size(n, window, published=False):
    """Size of an axis of ``n`` LR pixels after ``window_pad``."""
    if not window:
        return n
    return (n // window + 1) * window if published else n + (-n) % window


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{what} must be a positive integer, got {value!r}')
    return value


# ---------------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QueryPlan:
    """Geometry of one upscaling (h, w) -> (H, W); see the module docstring.

    Attributes:
        lr_size, out_size: (h, w), (H, W).
        window, published_window: window padding of every frame (image or tile).
        max_train_scale: cells are clipped by ``max(scale / max_train_scale, 1)`` per axis if ``clip``.
        chunk: queries per ``query`` call.
    """
    lr_size: Tuple[int, int]
    out_size: Tuple[int, int]
    window: int = 0
    published_window: bool = False
    max_train_scale: float = 4
    clip: bool = True
    chunk: int = DEFAULT_CHUNK

    @classmethod
    def build(cls, capabilities, lr_size, out_size, window=None, published_window=False, max_train_scale=None,
              clip=True, chunk=None):
        """Plan for a model: ``window`` default 0 (pass ``capabilities.window`` for the encoder's),
        ``max_train_scale`` and ``chunk`` default to the model's."""
        (h, w), (H, W) = lr_size, out_size
        for v, what in ((h, 'input height'), (w, 'input width'), (H, 'output height'), (W, 'output width')):
            _positive_int(int(v) if not isinstance(v, bool) and float(v).is_integer() else v, what)
        window = 0 if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f'window must be a non-negative integer, got {window!r}')
        mts = capabilities.max_train_scale if max_train_scale is None else max_train_scale
        if not (isinstance(mts, (int, float)) and mts > 0):
            raise ValueError(f'max_train_scale must be positive, got {mts!r}')
        chunk = chunk or capabilities.chunk or DEFAULT_CHUNK
        _positive_int(chunk, 'chunk (queries per call)')
        return cls((int(h), int(w)), (int(H), int(W)), window, bool(published_window), mts, bool(clip), chunk)

    @property
    def scale(self):
        """(rows, cols) scale factors of the real (unpadded) target."""
        return self.out_size[0] / self.lr_size[0], self.out_size[1] / self.lr_size[1]

    @property
    def area_scale(self):
        """sqrt(H W / (h w)): the single scale CMSR uses (equal to the scale for isotropic targets)."""
        sy, sx = self.scale
        return math.sqrt(sy * sx)

    def frame(self, x):
        """The (padded) input a frame of the image or of a tile is encoded from."""
        return window_pad(x, self.window, self.published_window)

    def frame_size(self, rows=None, cols=None):
        """(hf, wf) of the frame of LR rows [r0, r1) x cols [c0, c1) (default the whole image)."""
        (h, w) = self.lr_size
        r0, r1 = rows or (0, h)
        c0, c1 = cols or (0, w)
        return (padded_size(r1 - r0, self.window, self.published_window),
                padded_size(c1 - c0, self.window, self.published_window))

    def cell(self, frame_size):
        """Clipped cell (cy, cx) of the target grid in a frame of ``frame_size`` LR pixels."""
        return clipped_cell(self.out_size, self.lr_size, frame_size, self.max_train_scale, self.clip)

    def axes(self, core_rows, core_cols, origin=(0, 0), frame_size=None, device=None):
        """Target index ranges whose LR position lies in the core and their coordinates in the frame.

        Returns ((i0, i1), (j0, j1), ys (i1-i0,), xs (j1-j0,)).
        """
        (h, w), (H, W) = self.lr_size, self.out_size
        hf, wf = frame_size or self.frame_size()
        i0, i1 = target_range(core_rows[0], core_rows[1], H, h)
        j0, j1 = target_range(core_cols[0], core_cols[1], W, w)
        ys = target_axis(H, h, hf, i0, i1, origin[0], device=device)
        xs = target_axis(W, w, wf, j0, j1, origin[1], device=device)
        return (i0, i1), (j0, j1), ys, xs

    def blocks(self, n_rows, n_cols, runs=None):
        """Query blocks [(a, b), (c, d)) of an n_rows x n_cols target grid, at most ``chunk`` queries each.

        Without ``runs``: whole rows where a row fits (each call is one contiguous band of the output).
        With ``runs`` (``lr_row_runs``: consecutive target rows between the same two LR pixel centres,
        which read the same LR rows): blocks hold whole runs, as many as fit, and a run too long for one
        block is split into equal column ranges instead, so that grid models (``query_grid``) see whole
        groups of rows sharing their per-pixel terms (``grid_blocks``).
        """
        return grid_blocks(n_rows, n_cols, self.chunk, runs)

    @staticmethod
    def lr_row_runs(ys, frame_rows):
        """Runs [(a, b)) of consecutive target rows (coordinates ``ys`` (n,) in a frame of ``frame_rows`` LR
        rows) that lie between the same two LR pixel centres. (A boundary off by one row costs speed only.)"""
        cell = torch.floor(pixel_position(ys.double(), frame_rows))       # the LR row centre at or above
        cuts = (torch.nonzero(cell[1:] != cell[:-1]).flatten() + 1).tolist()
        edges = [0] + cuts + [ys.numel()]
        return list(zip(edges[:-1], edges[1:]))


# ---------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------
class RenderStats:
    """What renders did, accumulated over calls: queries answered, ``query`` calls and their largest size,
    decoder MACs (closed form, ``models.complexity``), and with CMSR (``engine.cmsr.render_levels``):

    * ``fraction``: the published 'Valid mask' ratio (renders weighted by (s / S)^2, over queries);
    * ``render_share`` (renders / queries): the share of render-MLP evaluations the plain fast path would do;
    * ``macs_saved``: the render-MLP MACs skipped (the per-LR-pixel latent MLP runs either way), from the
      model's per-query MACs.
    """

    def __init__(self):
        self.query_calls = 0
        self.largest_call = 0
        self.queries_answered = 0
        self.macs = 0
        self.cmsr_used = False
        self.rendered = 0.0            # CMSR: renders weighted by (s / S)^2
        self.queries = 0               # CMSR: target queries of the images it rendered
        self.renders = 0               # CMSR: render-MLP evaluations
        self.macs_per_query = 0

    def record_call(self, n):
        self.query_calls += 1
        self.largest_call = max(self.largest_call, n)

    def add(self, n_selected, s, S):
        """CMSR: a level of decode scale ``s`` rendered ``n_selected`` points of a target of scale ``S``."""
        self.rendered += n_selected / (S / s) ** 2
        self.renders += n_selected

    @property
    def fraction(self):
        return self.rendered / self.queries if self.queries else float('nan')

    @property
    def render_share(self):
        return self.renders / self.queries if self.queries else float('nan')

    @property
    def macs_saved(self):
        return (self.queries - self.renders) * self.macs_per_query

    def summary(self):
        """One line for scripts: rendered fraction, render-MLP share and GMACs saved."""
        if not (self.cmsr_used and self.queries):
            return 'CMSR not used (it applies beyond the training scale range only)'
        return (f'CMSR rendered fraction {self.fraction:.4f}, render-MLP queries {self.render_share:.4f} of '
                f'the plain path, {self.macs_saved / 1e9:.2f} GMACs saved')


def _macs(model, lr_size, n_queries):
    per = model.decoder_macs() if model.capabilities.kind == 'implicit' else None
    if per is None:
        return 0
    return per[0] * lr_size[0] * lr_size[1] + per[1] * n_queries


# ---------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------
def check_target(capabilities, lr_size, out_size):
    """Refuse, before any compute, a target the model cannot produce (one line naming the sizes):
    integer-scale grid models need (H, W) = (r h, r w), models with a finite scale set one of those."""
    (h, w), (H, W) = lr_size, out_size
    if capabilities.kind != 'grid':
        return
    name = capabilities.name or 'this model'
    r = H // h
    if capabilities.integer_scales_only and (H != r * h or W != r * w):
        raise ValueError(f'{name} supports integer scales only (the same for rows and columns): {w}x{h} -> '
                         f'{W}x{H} is not an integer multiple; use an implicit model such as lmliif for other scales')
    if capabilities.scales is not None and (H != r * h or W != r * w or r not in capabilities.scales):
        raise ValueError(f'{name} supports scales {", ".join(f"x{v}" for v in capabilities.scales)} only; '
                         f'{w}x{h} -> {W}x{H} is not one of them')


def _frame_target(plan, lr_size, frame_size):
    """Target size of the padded frame of an ``lr_size`` region: (H hf / h, W wf / w), which must be
    integral (grid models render whole grids), else a ValueError."""
    (h, w), (H, W) = plan.lr_size, plan.out_size
    hf, wf = frame_size
    fh, fw = H * hf / h, W * wf / w
    if abs(fh - round(fh)) > 1e-9 or abs(fw - round(fw)) > 1e-9:
        raise ValueError(f'a whole-grid model cannot render {w}x{h} -> {W}x{H} with window padding to '
                         f'{wf}x{hf}: the padded target {fw:g}x{fh:g} is not whole pixels; use --window 0')
    return round(fh), round(fw)


class Dense:
    """The whole image at once: encoder once, queries in blocks of ``plan.chunk``."""

    def __init__(self, plan, progress=None):
        self.plan, self.progress = plan, progress

    def __call__(self, model, x, stats=None):
        stats = stats if stats is not None else RenderStats()
        plan = self.plan
        kind = model.capabilities.kind
        B = x.shape[0]
        H, W = plan.out_size
        if kind == 'image':
            out = model.upscale_to(x, (H, W))
        elif kind == 'grid':
            check_target(model.capabilities, plan.lr_size, plan.out_size)
            xf = plan.frame(x)
            size = (H, W) if xf.shape[-2:] == x.shape[-2:] else _frame_target(plan, x.shape[-2:], xf.shape[-2:])
            out = model.upscale_grid(xf, size, plan.cell(tuple(xf.shape[-2:])))[:, :, :H, :W]
        else:
            out = x.new_empty(B, 3, H, W)
            h, w = plan.lr_size
            render_region(model, plan, x, (0, h), (0, w), out, stats, self.progress)
            return out, stats
        if self.progress is not None:
            self.progress(H * W)
        return out, stats


def render_region(model, plan, x, core_rows, core_cols, out, stats, progress=None, overlap=0):
    """Implicit models: answer the target pixels whose LR position lies in the core [rows) x [cols)
    into ``out`` (B, 3, H, W), encoding the core plus ``overlap`` LR pixels of context."""
    h, w = plan.lr_size
    r0, r1 = max(core_rows[0] - overlap, 0), min(core_rows[1] + overlap, h)
    c0, c1 = max(core_cols[0] - overlap, 0), min(core_cols[1] + overlap, w)
    xt = plan.frame(x[:, :, r0:r1, c0:c1])
    frame = tuple(xt.shape[-2:])
    (i0, i1), (j0, j1), ys, xs = plan.axes(core_rows, core_cols, (r0, c0), frame, x.device)
    if i1 <= i0 or j1 <= j0:
        return out
    B = x.shape[0]
    cy, cx = plan.cell(frame)
    cell1 = x.new_tensor([cy, cx]).view(1, 1, 2).expand(B, 1, 2)
    state = model.prepare(xt, cell1)
    grid_queries = model.capabilities.grid_queries
    n = 0
    runs = plan.lr_row_runs(ys, frame[0]) if grid_queries else None
    for (a, b), (c, d) in plan.blocks(i1 - i0, j1 - j0, runs):
        q = (b - a) * (d - c)
        if grid_queries:       # the model answers the grid block directly (same values, faster)
            pred = model.query_grid(state, ys[a:b], xs[c:d], cell1[:, 0])
        else:
            coord = torch.stack(torch.meshgrid(ys[a:b], xs[c:d], indexing='ij'), -1).view(1, -1, 2).expand(B, -1, 2)
            pred = model.query(state, coord, cell1.expand(B, q, 2))
        stats.record_call(q)
        out[:, :, i0 + a:i0 + b, j0 + c:j0 + d] = pred.reshape(B, b - a, d - c, 3).permute(0, 3, 1, 2)
        n += q
        if progress is not None:
            progress(q)
    stats.queries_answered += B * n
    stats.macs += B * _macs(model, frame, n)
    return out


class Tiled:
    """The encoder on overlapping LR tiles of ``tile`` pixels with ``overlap`` pixels of context."""

    def __init__(self, plan, tile, overlap, progress=None):
        _positive_int(tile, 'tile')
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise ValueError(f'tile overlap must be a non-negative integer, got {overlap!r}')
        self.plan, self.tile, self.overlap, self.progress = plan, tile, overlap, progress

    def tiles(self, n):
        return [(a, min(a + self.tile, n)) for a in range(0, n, self.tile)]

    def __call__(self, model, x, stats=None):
        stats = stats if stats is not None else RenderStats()
        plan = self.plan
        kind = model.capabilities.kind
        h, w = plan.lr_size
        H, W = plan.out_size
        if kind == 'image':
            return Dense(plan, self.progress)(model, x, stats)
        out = x.new_empty(x.shape[0], 3, H, W)
        if kind == 'implicit':
            for rows in self.tiles(h):
                for cols in self.tiles(w):
                    render_region(model, plan, x, rows, cols, out, stats, self.progress, self.overlap)
            return out, stats
        check_target(model.capabilities, plan.lr_size, plan.out_size)
        r = H // h
        if H != r * h or W != r * w:      # whole-grid models at non-integer scales: no tile boundaries exist
            return Dense(plan, self.progress)(model, x, stats)
        ov = self.overlap
        for a, b in self.tiles(h):
            for c, d in self.tiles(w):
                r0, c0 = max(a - ov, 0), max(c - ov, 0)
                xt = plan.frame(x[:, :, r0:min(b + ov, h), c0:min(d + ov, w)])
                y = model.upscale_grid(xt, (r * xt.shape[-2], r * xt.shape[-1]), plan.cell(tuple(xt.shape[-2:])))
                out[:, :, a * r:b * r, c * r:d * r] = \
                    y[:, :, (a - r0) * r:(b - r0) * r, (c - c0) * r:(d - c0) * r]
        if self.progress is not None:
            self.progress(H * W)
        return out, stats


class CMSR:
    """Controllable multi-scale rendering (``engine/cmsr.py``) with a table set, image by image.

    Under window padding the levels come from the real target grid as in the published test script:
    when the padded target grid has an integer size, that whole grid is rendered (scale
    ``sqrt(Q / (hf wf))``) and cropped; otherwise the target points are rendered at the real scale.
    ``exact_grid``: levels on exact pixel grids (default) or on the published grid (``engine.cmsr.GRIDS``).
    """

    def __init__(self, plan, tables, exact_grid=True, progress=None):
        cmsr_lib.validate_tables(tables)
        self.plan, self.tables, self.exact_grid, self.progress = plan, tables, exact_grid, progress

    def __call__(self, model, x, stats=None):
        stats = stats if stats is not None else RenderStats()
        caps = model.capabilities
        if caps.kind != 'implicit' or not caps.modulated:
            raise cmsr_lib.CMSRError(f'CMSR needs a modulated (LM) model; {caps.name or "this model"} is not one')
        plan = self.plan
        (h, w), (H, W) = plan.lr_size, plan.out_size
        xf = plan.frame(x)
        hf, wf = xf.shape[-2:]
        full_h, full_w = H * hf / h, W * wf / w
        if abs(full_h - round(full_h)) < 1e-9 and abs(full_w - round(full_w)) < 1e-9:
            Hq, Wq = round(full_h), round(full_w)
            coord = make_coord((Hq, Wq), device=x.device).unsqueeze(0)
            S = None                                   # sqrt(Q / (hf wf)): the published value
        else:
            Hq, Wq = H, W
            _, _, ys, xs = plan.axes((0, h), (0, w), (0, 0), (hf, wf), x.device)
            coord = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).view(1, -1, 2)
            S = plan.area_scale
        cy, cx = plan.cell((hf, wf))
        cell1 = x.new_tensor([cy, cx]).view(1, 1, 2)
        per = model.decoder_macs() or (0, 0)
        stats.cmsr_used = True
        outs = []
        for b in range(x.shape[0]):
            state = model.prepare(xf[b:b + 1], cell1)
            renders0 = stats.renders
            pred = cmsr_lib.render_levels(model, state, xf[b:b + 1], coord, self.tables, S, plan.chunk, stats,
                                   self.exact_grid, plan.max_train_scale, per[1])
            stats.macs += per[0] * hf * wf + per[1] * (stats.renders - renders0)
            outs.append(pred.view(1, Hq, Wq, 3).permute(0, 3, 1, 2)[:, :, :H, :W])
        if self.progress is not None:
            self.progress(H * W)
        return torch.cat(outs), stats


def choose(model, plan, tile=None, tile_overlap=None, cmsr_tables=None, cmsr_exact_grid=True, progress=None):
    """The strategy that renders ``plan`` for ``model``: CMSR when tables are given and the scale is
    beyond the training range (``engine.cmsr.applies``), else Tiled when ``tile`` is set, else Dense."""
    caps = model.capabilities
    if cmsr_tables is not None and caps.kind == 'implicit' and cmsr_lib.applies(plan.area_scale, plan.max_train_scale):
        if tile is not None:
            raise ValueError('CMSR renders the whole image at once; it cannot be combined with tiling')
        return CMSR(plan, cmsr_tables, cmsr_exact_grid, progress)
    if tile is not None and caps.kind != 'image':
        if tile_overlap is None:
            tile_overlap = caps.exact_tile_overlap if caps.exact_tile_overlap is not None else 16
        return Tiled(plan, tile, tile_overlap, progress)
    return Dense(plan, progress)


def render(model, img, size, **options):
    """Upscale (B, 3, h, w) images in [0, 1] to ``size`` (H, W): returns ((B, 3, H, W) in [0, 1], stats).

    ``options``: ``window``, ``published_window``, ``max_train_scale``, ``clip``, ``chunk`` (the plan),
    ``tile``, ``tile_overlap``, ``cmsr_tables``, ``cmsr_exact_grid``, ``progress`` (the strategy),
    ``stats`` (a RenderStats to accumulate into).
    """
    plan_keys = ('window', 'published_window', 'max_train_scale', 'clip', 'chunk')
    plan = QueryPlan.build(model.capabilities, tuple(img.shape[-2:]), tuple(size),
                           **{k: options.pop(k) for k in plan_keys if k in options})
    stats = options.pop('stats', None)
    strategy = choose(model, plan, **options)
    with torch.no_grad():
        unit = model.capabilities.input_range == 'unit'   # published BasicSR archs: [0, 1] in and out
        x = img if unit else normalise(img)
        out, stats = strategy(model, x, stats)
        if unit:
            return out.clamp_(0, 1), stats
        return out.mul_(NORM_STD).add_(NORM_MEAN).clamp_(0, 1), stats
