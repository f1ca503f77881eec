"""CMSR: Controllable Multi-Scale Rendering for LM models (LMF, spec §4).

The *modulation intensity* of an LR pixel is the mean absolute value of its shift modulations
(``mod[M/2 : M]``). Smooth regions have low intensity and can be rendered at a lower resolution and
bilinearly upsampled. A *Scale2Mod table* maps each decode scale to the largest intensity that may
be rendered at that scale; a *table set* maps target scales to tables::

    {8: {1: 0.33, 2: 0.38, 4: 0.56, 6: 0.6, 8: 1}, 12: {...}, ...}

Thresholds are in the units of the modulations themselves. ``build_table`` (used by ``init_cmsr.py``)
measures errors in the models' normalised output space ([-1, 1]); an MSE threshold ``t`` there is
``t / 4`` in [0, 1] pixel units (2e-5 normalised = 5e-6 in [0, 1], i.e. about 53 dB PSNR).

Rendering (``render``) follows the published algorithm (spec §4.3) with its edge cases fixed (B11):
batch > 1 is handled image by image, levels that select nothing are skipped, and the result is
always resampled to the exact target grid.
"""
import math

import torch
import torch.nn.functional as F
import yaml

from utils.config import load_yaml
from utils.coords import make_coord, nearest_index
from utils.io import atomic_write

from .complexity import decoder_macs_per_pixel
from .decoders.implicit import chunked

#: Decode scales a new table starts from (published ``init_cmsr.py``).
INITIAL_SCALES = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class CMSRError(ValueError):
    """A Scale2Mod table file is missing or malformed, or CMSR was asked of a model without it."""


# ---------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------
def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CMSRError(f'{what} must be a finite number, got {value!r}')
    return value


def validate_tables(tables, source='table'):
    """Check the structure ``{target: {decode_scale: threshold}}``; keeps the given key order."""
    if not isinstance(tables, dict) or not tables:
        raise CMSRError(f'{source}: expected a non-empty mapping target_scale -> {{decode_scale: threshold}}')
    for target, table in tables.items():
        _number(target, f'{source}: target scale')
        if not isinstance(table, dict) or not table:
            raise CMSRError(f'{source}: table for target scale {target} must be a non-empty mapping')
        for s, thr in table.items():
            _number(s, f'{source}: decode scale in table {target}')
            _number(thr, f'{source}: threshold of scale {s} in table {target}')
    return tables


def load_tables(path):
    """Read a Scale2Mod YAML file (ours or the shipped ``*_mse2e-5.yaml`` files)."""
    return validate_tables(load_yaml(path, 'CMSR table file', CMSRError), path)


def _key(k):
    return int(k) if float(k).is_integer() else k


def save_tables(path, tables):
    """Write tables as YAML (keys sorted; 18.0 written as 18), atomically."""
    validate_tables(tables, path)
    data = {_key(k): {_key(s): t for s, t in sorted(v.items())} for k, v in sorted(tables.items())}
    with atomic_write(path, 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)


def choose_table(tables, S):
    """The first table (in the file's key order) whose target scale is >= S, else the last one."""
    for target, table in tables.items():
        if target >= S:
            return target, table
    target = list(tables)[-1]
    return target, tables[target]


def levels(table, S):
    """Rendering levels for target scale S: list of (decode_scale, low, high), last one open-ended.

    ``scales`` = table keys strictly below S; thresholds ``[0, t_1, ..., t_n]``; when ``t_n < 1`` a last
    level at S itself renders everything above ``t_n``. Level i selects intensities m with
    ``low <= m <= high`` (first level: ``m <= high``; last level: ``m >= low``).
    """
    scales = [s for s in table if s < S]
    thr = [0] + [table[s] for s in scales]
    if thr[-1] < 1:
        scales.append(S)
        thr.append(1)
    return [(s, thr[i], thr[i + 1]) for i, s in enumerate(scales)]


def select(m, i, n_levels, low, high):
    """Selection mask of level ``i`` of ``n_levels`` for intensities ``m`` (published rules)."""
    if i == n_levels - 1:
        return m >= low
    if i == 0:
        return m <= high
    return (m - (low + high) / 2).abs() <= (high - low) / 2


# ---------------------------------------------------------------------------------------------------
# model-side helpers
# ---------------------------------------------------------------------------------------------------
def modulation_intensity(model, state):
    """Mean |shift modulation| per LR pixel: (B*h*w,) from the model's per-image state."""
    M = model.mod_dim
    return state.mod[:, M // 2:M].abs().mean(dim=1)


def sample_nearest(values, coord, size):
    """Per-pixel scalars (h*w,) of one image at coords (N, 2), nearest pixel, no shift."""
    h, w = size
    return values[nearest_index(coord[:, 0], h) * w + nearest_index(coord[:, 1], w)]


def bilinear(img, coord):
    """Bilinear border-padded sampling: img (1, 3, h, w), coord (N, 2) (row, col) -> (N, 3)."""
    out = F.grid_sample(img, coord.flip(-1).view(1, 1, -1, 2), mode='bilinear', padding_mode='border',
                        align_corners=False)
    return out[0, :, 0, :].t()


def level_grid(feat_coord, size):
    """Level coordinates: the LR pixel-centre map (h, w, 2) resized bilinearly to ``size`` -> (qh*qw, 2).

    Near the borders (within S/2 output pixels) this repeats the outermost LR centres rather than giving
    exact pixel centres; the published code renders on this grid (``render(exact_grid=True)`` does not).
    """
    grid = F.interpolate(feat_coord.permute(2, 0, 1).unsqueeze(0), size=size, mode='bilinear',
                         align_corners=False)
    return grid[0].permute(1, 2, 0).reshape(-1, 2)


def _render_points(model, state, coord, cell, bsize):
    """Fast-path renders of arbitrary points (N, 2) with cells (N, 2) for a single image."""
    return chunked(lambda c, s: model.query_fast(state, c, s), coord.unsqueeze(0), cell.unsqueeze(0), bsize)[0]


# ---------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------
class RenderStats:
    """What CMSR did, accumulated over renders.

    ``fraction`` is the published 'Valid mask' ratio (renders weighted by (s / S)^2, over queries);
    ``render_share`` (renders / queries) is the share of render-MLP evaluations the plain fast path
    would do, and ``macs_saved`` the render-MLP MACs skipped (the per-LR-pixel latent MLP runs either
    way), from the model's per-query MACs that ``render`` records.
    """

    def __init__(self):
        self.rendered = 0.0
        self.queries = 0
        self.renders = 0
        self.macs_per_query = 0

    @property
    def fraction(self):
        return self.rendered / self.queries if self.queries else float('nan')

    @property
    def render_share(self):
        return self.renders / self.queries if self.queries else float('nan')

    @property
    def macs_saved(self):
        return (self.queries - self.renders) * self.macs_per_query

    def add(self, n_selected, s, S):
        self.rendered += n_selected / (S / s) ** 2
        self.renders += n_selected

    def summary(self):
        """One line for scripts: rendered fraction, render-MLP share and GMACs saved."""
        if not self.queries:
            return 'CMSR not used (it applies beyond the training scale range only)'
        return (f'CMSR rendered fraction {self.fraction:.4f}, render-MLP queries {self.render_share:.4f} of '
                f'the plain path, {self.macs_saved / 1e9:.2f} GMACs saved')


def render(model, state, coord, tables, bsize=None, stats=None, exact_grid=False):
    """CMSR rendering of one image: queries ``coord`` (1, Q, 2), the model's per-image ``state``.

    Returns (1, Q, 3). ``stats`` (a ``RenderStats``) accumulates the rendered fraction.
    ``exact_grid``: render levels on exact pixel-centre grids (``make_coord``) instead of the published
    bilinearly resized LR-centre grid; then a level at the target scale renders exactly the plain
    fast path's points.
    """
    if coord.shape[0] != 1:
        raise ValueError('cmsr.render takes one image; LM models loop over the batch')
    h, w = state.grid.size
    Q = coord.shape[1]
    S = math.sqrt(Q / (h * w))
    _, table = choose_table(tables, S)
    lv = levels(table, S)
    m = modulation_intensity(model, state)
    fc = state.grid.feat_coord
    fc = (make_coord((h, w), device=coord.device) if fc is None else fc[0]).view(h, w, 2)
    # which points each level renders
    plan, pts, cells = [], [], []
    for i, (s, low, high) in enumerate(lv):
        if s < 1:
            continue
        qh, qw = int(h * s), int(w * s)
        grid = make_coord((qh, qw), device=coord.device) if exact_grid else level_grid(fc, (qh, qw))
        sel = select(sample_nearest(m, grid, (h, w)), i, len(lv), low, high).nonzero().squeeze(1)
        plan.append((s, qh, qw, grid, sel))
        if sel.numel():
            c = grid.new_empty(sel.numel(), 2)
            c[:, 0] = 2 / qh
            c[:, 1] = 2 / qw
            pts.append(grid[sel])
            cells.append(c * max(s / model.max_train_scale, 1))
        if stats is not None:
            stats.add(sel.numel(), s, S)
    if stats is not None:
        stats.queries += Q
        stats.macs_per_query = decoder_macs_per_pixel(model)[1]
    renders = _render_points(model, state, torch.cat(pts), torch.cat(cells), bsize) if pts else None
    # compose from coarse to fine; a level that selects nothing is skipped
    img, start, done = state.inp, 0, False
    for k, (s, qh, qw, grid, sel) in enumerate(plan):
        if not sel.numel():
            continue
        flat = bilinear(img, grid)
        flat[sel] = renders[start:start + sel.numel()].to(flat.dtype)
        start += sel.numel()
        img = flat.t().reshape(1, 3, qh, qw)
        done = k == len(plan) - 1 and s >= S and qh * qw == Q
    if done:   # the last level rendered the target grid itself
        return img.reshape(1, 3, Q).transpose(1, 2)
    return bilinear(img, coord[0]).unsqueeze(0)


# ---------------------------------------------------------------------------------------------------
# building (init_cmsr.py)
# ---------------------------------------------------------------------------------------------------
def initial_table(S):
    return {s: 1 for s in INITIAL_SCALES if s <= S}


def prune_unvalidated(table):
    """Drop decode scales below the target whose threshold was never lowered from its initial 1.

    With the published semantics such a level renders *every* remaining pixel at that lower scale
    (spec B9), so no pixel reaches the target resolution; without it, those pixels go to the next
    level up. (The tables shipped with LMF were pruned by hand in the same spirit.)
    """
    target = max(table)
    return {s: t for s, t in table.items() if s == target or t < 1}


def bucket_range(model):
    """Intensity buckets scanned when building: LM-LIIF 0..1, LM-LTE 0..0.5 (101 values each)."""
    return (0.0, 0.5) if getattr(model, 'registry_name', '') == 'lmlte' else (0.0, 1.0)


@torch.no_grad()
def update_table(model, inp, table, mse_threshold, scale, cell_clip=1.0, bsize=None):
    """One image of the published table-building algorithm (spec §4.2); updates ``table`` in place.

    ``inp`` (1, 3, h, w) is the LR image, ``scale`` the target scale S: the full-resolution reference
    is the (h*S, w*S) grid with cells clipped by ``cell_clip``; lower decode scales use exact grids and
    unclipped cells. Errors are MSE in the normalised space. The initial table (``initial_table(S)``)
    may lack S itself (e.g. 18); the final step then adds it, as the published code does.
    """
    if inp.shape[0] != 1:
        raise ValueError('CMSR table building processes one image at a time')
    S = scale
    h, w = inp.shape[-2:]
    H, W = round(h * S), round(w * S)
    coord = make_coord((H, W), device=inp.device)
    cell = coord.new_empty(H * W, 2)
    cell[:, 0] = 2 / H
    cell[:, 1] = 2 / W
    cell = cell * cell_clip
    state = model.prepare(inp, cell.unsqueeze(0))
    full = _render_points(model, state, coord, cell, bsize)
    m_hr = sample_nearest(modulation_intensity(model, state), coord, (h, w))
    lo, hi = bucket_range(model)
    buckets = [lo + (hi - lo) * i / 100 for i in range(101)]
    s_img = math.sqrt(H * W / (h * w))
    for s in sorted(table):
        if s >= s_img:
            break
        qh, qw = int(h * s), int(w * s)
        low_coord = make_coord((qh, qw), device=inp.device)
        low_cell = low_coord.new_empty(qh * qw, 2)
        low_cell[:, 0] = 2 / qh
        low_cell[:, 1] = 2 / qw
        low = _render_points(model, state, low_coord, low_cell, bsize)
        up = bilinear(low.t().reshape(1, 3, qh, qw), coord)
        best = table[s]
        for b in list(buckets):
            sel = (m_hr - b).abs() <= 0.001
            if not bool(sel.any()):
                continue
            err = ((up[sel] - full[sel]) ** 2).mean().item()
            if err <= mse_threshold:
                buckets.remove(b)
                best = b
            else:
                break
        table[s] = min(table[s], best)
        for s2 in table:
            if s2 < s:
                table[s2] = min(table[s2], table[s])
    if buckets:
        table[s_img] = buckets[-1]
        for s2 in table:
            if s2 < s_img:
                table[s2] = min(table[s2], table[s_img])
    return table
