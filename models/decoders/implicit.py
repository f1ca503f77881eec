"""Machinery shared by every implicit decoder: LR-pixel lookup, the 4-neighbour local ensemble,
relative coordinates and cells, and chunked queries.

Conventions
-----------
* ``coord``: (B, Q, 2) query coordinates in (-1, 1), ordered (row, col); ``cell``: (B, Q, 2) target
  pixel sizes in the same units (see ``utils.coords``).
* Feature maps are read through *pixel tables*: a map (B, C, h, w) is stored as (B*h*w, C) rows, row
  ``b*h*w + y*w + x``, and read with ``gather``; this is what ``grid_sample(mode='nearest')`` computes,
  without its per-channel strided reads.
* Local ensemble (LIIF): for each neighbour (vy, vx) in (-1,-1), (-1,+1), (+1,-1), (+1,+1) (row shift
  outer, column shift inner) the query is shifted by (vy/h + 1e-6, vx/w + 1e-6), clamped to
  [-1 + 1e-6, 1 - 1e-6] and mapped to its nearest LR pixel p. ``rel_coord = (coord - centre(p)) * (h, w)``
  uses the unshifted query. Predictions are blended with the area of the diagonally opposite
  neighbour: ``sum_t pred_t * area_{3-t} / sum_t area_t``, ``area = |rel_y * rel_x| + 1e-9``.
  Without the ensemble there is one neighbour, unshifted, with weight 1.
"""
import math
from typing import NamedTuple

import torch

from utils.coords import coord_axis, spatial_size, traced_coord_axis

from .. import registry
from ..capabilities import Capabilities, SRModel, encoder_traits

ENSEMBLE_OFFSETS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
EPS_SHIFT = 1e-6
CLAMP = 1 - 1e-6


class Neighbours(NamedTuple):
    """The LR pixels a set of queries reads, one row of tensors per ensemble neighbour.

    index: (K, B, Q) long, flat pixel index ``y*w + x`` within each image.
    rel_coord: (K, B, Q, 2) query minus pixel centre, in LR-pixel units (about (-2, 2)).
    weight: (K, B, Q) blend weights (sum to 1 over K).
    """
    index: torch.Tensor
    rel_coord: torch.Tensor
    weight: torch.Tensor


def pixel_table(feat):
    """(B, C, h, w) -> contiguous (B*h*w, C) table of per-pixel rows."""
    B, C, h, w = feat.shape
    return feat.permute(0, 2, 3, 1).reshape(B * h * w, C)


def flat_index(index, pixels_per_image):
    """Add batch offsets to per-image pixel indices (..., B, Q) and flatten to 1-D."""
    B = index.shape[-2]
    offset = torch.arange(B, device=index.device).view(B, 1) * pixels_per_image
    return (index + offset).reshape(-1)


def gather(table, index):
    """Rows of a pixel table for flat indices: (P, C), (N,) -> (N, C)."""
    return table.index_select(0, index)


class LRGrid:
    """The LR pixel grid of one feature map (h, w) and the constants its lookups need, built once per
    image (``prepare``) rather than per query chunk.

    Args:
        size: (h, w).
        like: a tensor giving device and dtype.
        feat_coord: optional (B, h*w, 2) table of pixel centres (``inp_coord``); default the regular
            ``make_coord`` grid.
    """

    def __init__(self, size, like, feat_coord=None):
        h, w = size
        self.size = (h, w)
        self.feat_coord = feat_coord
        self.axis_y = coord_axis(h, device=like.device).to(like.dtype)
        self.axis_x = coord_axis(w, device=like.device).to(like.dtype)
        self.half = like.new_tensor([h / 2, w / 2])
        self.inv = like.new_tensor([1 / h, 1 / w])
        self.scale = like.new_tensor([h, w])
        self.ensemble_shifts = like.new_tensor(
            [(vy / h + EPS_SHIFT, vx / w + EPS_SHIFT) for vy, vx in ENSEMBLE_OFFSETS]).view(-1, 1, 1, 2)

    def pixels(self, shifted):
        """Nearest LR pixel of clamped queries (..., 2), as ``grid_sample(mode='nearest')`` picks it.

        Returns the flat index ``y*w + x`` (...) and the pixel centre (..., 2). The unnormalisation
        ``(c + 1) * (size / 2) - 0.5`` and round-half-to-even match PyTorch's CPU kernel (see
        ``utils.coords.nearest_index``).
        """
        h, w = self.size
        pos = torch.round((shifted + 1).mul_(self.half).sub_(0.5))
        iy = pos[..., 0].clamp_(0, h - 1).long()
        ix = pos[..., 1].clamp_(0, w - 1).long()
        flat = iy * w + ix
        if self.feat_coord is None:
            centre = torch.stack([self.axis_y[iy], self.axis_x[ix]], -1)
        else:
            centre = gather(self.feat_coord.reshape(-1, 2), flat_index(flat, h * w)).view(*flat.shape, 2)
        return flat, centre

    def lookup(self, coord, shift=(0.0, 0.0)):
        """Nearest pixel (B, Q) and its centre (B, Q, 2) of queries shifted by ``shift`` and clamped."""
        return self.pixels((coord + coord.new_tensor(shift)).clamp_(-CLAMP, CLAMP))

    def neighbours(self, coord, local_ensemble=True):
        """LIIF local-ensemble geometry (the 4 LR pixels around a query) of queries (B, Q, 2); all K on (K, B, Q, 2)."""
        if local_ensemble:
            shifted = (coord.unsqueeze(0) + self.ensemble_shifts).clamp_(-CLAMP, CLAMP)
        else:
            shifted = coord.clamp(-CLAMP, CLAMP).unsqueeze(0)
        index, centre = self.pixels(shifted)
        rel = (coord - centre).mul_(self.scale)
        area = (rel[..., 0] * rel[..., 1]).abs_().add_(1e-9)
        weight = area.flip(0) / area.sum(0) if local_ensemble else area / area
        return Neighbours(index, rel, weight)

    def axis_neighbours(self, values, axis, local_ensemble=True):
        """Separable form of ``neighbours`` for a grid of queries, along one axis (0 rows, 1 columns).

        ``values`` (n,) coordinates on that axis -> a list over the axis' ensemble shifts (-1, +1), or
        one unshifted entry without the ensemble, of (pixel index (n,) long, rel (n,) in LR pixels),
        computed with exactly the float operations of ``neighbours`` (same pixels, same rel values).
        Only for the regular grid (``feat_coord`` None).
        """
        n_px = self.size[axis]
        table = self.axis_y if axis == 0 else self.axis_x
        shifts = [self.ensemble_shifts[0, 0, 0, axis], self.ensemble_shifts[-1, 0, 0, axis]] if local_ensemble \
            else [None]
        out = []
        for s in shifts:
            shifted = (values + s).clamp_(-CLAMP, CLAMP) if s is not None else values.clamp(-CLAMP, CLAMP)
            pos = torch.round((shifted + 1).mul_(self.half[axis]).sub_(0.5))
            idx = pos.clamp_(0, n_px - 1).long()
            out.append((idx, (values - table[idx]).mul_(self.scale[axis])))
        return out

    def relative_cell(self, cell):
        """cell (..., 2) in normalised units -> in LR pixels (2 / scale for a full grid)."""
        return cell * self.scale


class TracedGrid(LRGrid):
    """``LRGrid`` (regular grid, no ``inp_coord``) with the size read from the feature map, so that it follows
    the input size in a traced (ONNX) graph: ``size`` holds 0-d int64 tensors and the pixel-centre axes are
    built from them (``utils.coords.traced_coord_axis``); every lookup is ``LRGrid``'s own code, so results are
    bit-identical to ``LRGrid``'s (``tests/test_onnx.py``)."""

    def __init__(self, feat):       # LRGrid.__init__ builds the same constants from Python numbers
        h, w = spatial_size(feat)
        self.size = (h, w)
        self.feat_coord = None
        self.axis_y, self.axis_x = traced_coord_axis(h, feat), traced_coord_axis(w, feat)
        hw = torch.stack([h, w]).to(feat.device)
        self.scale = hw.to(feat.dtype)                   # (h, w)
        self.half = self.scale / 2                       # (h / 2, w / 2), exact in float32
        hwd = hw.to(torch.float64)
        self.inv = (1.0 / hwd).to(feat.dtype)            # (1 / h, 1 / w)
        offsets = torch.tensor(ENSEMBLE_OFFSETS, dtype=torch.float64, device=feat.device)
        self.ensemble_shifts = (offsets / hwd + EPS_SHIFT).to(feat.dtype).view(-1, 1, 1, 2)


def blend(preds, weight):
    """preds (K, B, Q, C) weighted by (K, B, Q), summed over K in order."""
    out = preds[0] * weight[0].unsqueeze(-1)
    for k in range(1, preds.shape[0]):
        out = out + preds[k] * weight[k].unsqueeze(-1)
    return out


def chunk_sizes(n_queries, bsize):
    """Chunk length after the published rebalancing: ceil(Q / ceil(Q / bsize))."""
    if bsize is None or bsize >= n_queries:
        return max(n_queries, 1)
    return math.ceil(n_queries / math.ceil(n_queries / bsize))


def grid_blocks(n_rows, n_cols, chunk, runs=None):
    """Blocks [(a, b), (c, d)) of an n_rows x n_cols query grid, at most ``chunk`` queries each.

    Without ``runs``: whole rows where a row fits (each block is one contiguous band of the grid).
    With ``runs`` (consecutive row ranges [(a, b)) to keep together, e.g. rows that read the same LR rows):
    blocks hold whole runs, as many as fit, and a run too long for one block is split into equal column
    ranges instead.
    """
    if runs is None:
        cols = min(n_cols, chunk)
        rows = max(1, chunk // max(cols, 1))
        for a in range(0, n_rows, rows):
            for c in range(0, n_cols, cols):
                yield (a, min(a + rows, n_rows)), (c, min(c + cols, n_cols))
        return
    i = 0
    while i < len(runs):
        a, b = runs[i]
        i += 1
        while i < len(runs) and (runs[i][1] - a) * n_cols <= chunk:
            b = runs[i][1]
            i += 1
        parts = -(-(b - a) * n_cols // chunk)           # column ranges of at most chunk queries
        step = -(-n_cols // parts)
        for c in range(0, n_cols, step):
            yield (a, b), (c, min(c + step, n_cols))


def chunked(fn, coord, cell, bsize, progress=None):
    """Apply ``fn(coord_chunk, cell_chunk) -> (B, q, C)`` over query chunks and concatenate."""
    Q = coord.shape[1]
    step = chunk_sizes(Q, bsize)
    if step >= Q:
        return fn(coord, cell)
    outs = []
    for start in range(0, Q, step):
        outs.append(fn(coord[:, start:start + step], cell[:, start:start + step]))
        if progress is not None:
            progress(min(start + step, Q) - start)
    return torch.cat(outs, dim=1)


class ImplicitDecoder(SRModel):
    """Base class: an encoder plus a decoder that answers continuous queries.

    Subclasses implement ``latent_state(inp, feat, grid, cell) -> state`` (the per-image maps computed once
    from the encoder features ``feat`` on the LR ``grid``; ``prepare`` runs the encoder first) and
    ``query(state, coord, cell) -> (B, Q, 3)``. ``forward`` runs both; in eval mode
    the queries go in chunks of ``bsize`` (default ``capabilities.chunk``) so memory stays bounded for
    any output size. Chunking never changes the result. Rendering whole images (window padding, cell
    clipping, tiling, CMSR) is the engine's job (``engine/render.py``), not the model's.

    Inputs and outputs are normalised as ``(x - 0.5) / 0.5``.

    Models with ``traceable = True`` also have a traceable form for ONNX export (``engine/export.py``):
    ``traced_prepare`` (the same state on a :class:`TracedGrid`, whose sizes follow the input in the graph)
    and ``traced_query`` (by default ``query``; models whose query updates views in place override it).
    """

    #: Largest training scale: test-time cells are clipped by max(scale / max_train_scale, 1).
    max_train_scale = 4
    #: Default number of queries per chunk in eval mode.
    eval_bsize = 65536
    #: LR pixels a query reads beyond its own pixel: 1 for the ensemble neighbour, +1 for a 3x3 unfold or
    #: 3x3 coef/freq convs, +1 margin (a generated 3x3 conv).
    decoder_reach = 3
    #: CMSR: modulated (LM) models only.
    modulated = False
    intensity_range = None
    #: set on every registered subclass by the registry
    registry_name = None
    #: has a traceable form (``traced_prepare`` / ``traced_query``) that ONNX export runs
    traceable = False

    def __init__(self, encoder_spec):
        super().__init__()
        self.encoder = registry.make(encoder_spec)

    def preferred_chunk(self):
        """Queries per ``query`` call the engine should use (results never depend on it)."""
        return self.eval_bsize

    @property
    def capabilities(self):
        window, radius = encoder_traits(self.encoder)
        return Capabilities(kind='implicit', window=window, receptive_radius=radius,
                            decoder_reach=self.decoder_reach, max_train_scale=self.max_train_scale,
                            chunk=self.preferred_chunk(), modulated=self.modulated,
                            intensity_range=self.intensity_range, name=self.registry_name, traceable=self.traceable)

    def decoder_macs(self):
        """(MACs per LR pixel, MACs per HR query) of the decoder, closed form (``models.complexity``)."""
        return None

    def prepare(self, inp, cell=None, inp_coord=None):
        """Encoder, LR grid (``inp_coord`` (B, h, w, 2): an irregular grid of pixel centres), then the
        per-image work of ``latent_state``."""
        feat = self.encoder(inp)
        grid = LRGrid(tuple(feat.shape[-2:]), feat, feat_coord_table(inp_coord, feat))
        return self.latent_state(inp, feat, grid, cell)

    def latent_state(self, inp, feat, grid, cell):
        """Per-image state from the encoder features ``feat`` (B, C, h, w) on ``grid`` and the queries'
        ``cell`` (B, Q, 2)."""
        raise NotImplementedError

    def query(self, state, coord, cell):
        raise NotImplementedError

    def traced_prepare(self, inp, cell):
        """``prepare`` in traceable form: the same state on a :class:`TracedGrid` (regular grids only)."""
        feat = self.encoder(inp)
        return self.latent_state(inp, feat, TracedGrid(feat), cell)

    def traced_query(self, state, coord, cell):
        """``query`` in traceable form (models whose query is not traceable override it)."""
        return self.query(state, coord, cell)

    def forward(self, inp, coord=None, cell=None, bsize=None, inp_coord=None, progress=None):
        """inp (B, 3, h, w); coord, cell (B, Q, 2) -> (B, Q, 3). Without coord and cell: encoder features."""
        if coord is None and cell is None:
            return self.encoder(inp)
        state = self.prepare(inp, cell, inp_coord)
        if self.training:
            return self.query(state, coord, cell)
        return chunked(lambda c, s: self.query(state, c, s), coord, cell, bsize or self.preferred_chunk(), progress)


def feat_coord_table(inp_coord, feat):
    """Optional (B, h, w, 2) ``inp_coord`` -> (B, h*w, 2) pixel-centre table (None -> regular grid)."""
    if inp_coord is None:
        return None
    B, _, h, w = feat.shape
    if tuple(inp_coord.shape) != (B, h, w, 2):
        raise ValueError(f'inp_coord must have shape {(B, h, w, 2)}, got {tuple(inp_coord.shape)}')
    return inp_coord.reshape(B, h * w, 2).to(feat.dtype)


class State(dict):
    """Per-image tensors computed by ``prepare`` (attribute access for readability)."""
    __getattr__ = dict.__getitem__

