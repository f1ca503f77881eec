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
from torch import nn

from utils.coords import coord_axis, nearest_index

from .. import registry

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


def lookup(coord, size, feat_coord=None, shift=(0.0, 0.0)):
    """Nearest LR pixel of (shifted, clamped) queries and the centre of that pixel.

    Args:
        coord: (B, Q, 2) queries.
        size: (h, w) of the feature map.
        feat_coord: optional (B, h*w, 2) pixel-centre table (``inp_coord``); default: the regular grid.
        shift: added to (row, col) before clamping.
    Returns:
        index (B, Q) long, centre (B, Q, 2).
    """
    h, w = size
    cy = (coord[..., 0] + shift[0]).clamp_(-CLAMP, CLAMP)
    cx = (coord[..., 1] + shift[1]).clamp_(-CLAMP, CLAMP)
    iy, ix = nearest_index(cy, h), nearest_index(cx, w)
    index = iy * w + ix
    if feat_coord is None:
        centre = torch.stack([coord_axis(h, device=coord.device)[iy], coord_axis(w, device=coord.device)[ix]], -1)
    else:
        centre = gather(feat_coord.reshape(-1, 2), flat_index(index, h * w)).view(*index.shape, 2)
    return index, centre


def neighbours(coord, size, local_ensemble=True, feat_coord=None):
    """The §0.4 ensemble geometry for queries ``coord`` (B, Q, 2) on a feature map of ``size``."""
    h, w = size
    if local_ensemble:
        shifts = [(vy / h + EPS_SHIFT, vx / w + EPS_SHIFT) for vy, vx in ENSEMBLE_OFFSETS]
    else:
        shifts = [(0.0, 0.0)]
    scale = coord.new_tensor([h, w])
    indices, rels, areas = [], [], []
    for shift in shifts:
        index, centre = lookup(coord, size, feat_coord, shift)
        rel = (coord - centre) * scale
        indices.append(index)
        rels.append(rel)
        areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    areas = torch.stack(areas)
    if local_ensemble:
        weight = areas.flip(0) / areas.sum(0)
    else:
        weight = areas / areas
    return Neighbours(torch.stack(indices), torch.stack(rels), weight)


def blend(preds, weight):
    """preds (K, B, Q, C) weighted by (K, B, Q), summed over K in order."""
    out = preds[0] * weight[0].unsqueeze(-1)
    for k in range(1, preds.shape[0]):
        out = out + preds[k] * weight[k].unsqueeze(-1)
    return out


def relative_cell(cell, size):
    """cell (B, Q, 2) in target-pixel units -> size of a target pixel in LR pixels, times 2."""
    return cell * cell.new_tensor(size)


def chunk_sizes(n_queries, bsize):
    """Chunk length after the published rebalancing: ceil(Q / ceil(Q / bsize))."""
    if bsize is None or bsize >= n_queries:
        return max(n_queries, 1)
    return math.ceil(n_queries / math.ceil(n_queries / bsize))


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


class ImplicitDecoder(nn.Module):
    """Base class: an encoder plus a decoder that answers continuous queries.

    Subclasses implement ``prepare(inp, cell, inp_coord) -> state`` (encoder and per-image maps,
    computed once) and ``query(state, coord, cell) -> (B, Q, 3)``. ``forward`` runs both; in eval mode
    the queries go in chunks of ``bsize`` (default ``eval_bsize``) so memory stays bounded for any
    output size. Chunking never changes the result.

    Inputs and outputs are normalised as ``(x - 0.5) / 0.5``.
    """

    #: Largest training scale: test-time cells are clipped by max(scale / max_train_scale, 1).
    max_train_scale = 4
    #: Default number of queries per chunk in eval mode.
    eval_bsize = 65536

    def __init__(self, encoder_spec):
        super().__init__()
        self.encoder = registry.make(encoder_spec)

    def prepare(self, inp, cell=None, inp_coord=None):
        raise NotImplementedError

    def query(self, state, coord, cell):
        raise NotImplementedError

    def forward(self, inp, coord=None, cell=None, bsize=None, inp_coord=None, progress=None):
        """inp (B, 3, h, w); coord, cell (B, Q, 2) -> (B, Q, 3). Without coord and cell: encoder features."""
        if coord is None and cell is None:
            return self.encoder(inp)
        state = self.prepare(inp, cell, inp_coord)
        if self.training:
            return self.query(state, coord, cell)
        return chunked(lambda c, s: self.query(state, c, s), coord, cell, bsize or self.eval_bsize, progress)


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

