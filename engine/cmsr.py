"""CMSR: Controllable Multi-Scale Rendering for LM models (LMF), a rendering strategy.

The *modulation intensity* of an LR pixel is the mean absolute value of its shift modulations
(``model.modulation_intensity(state)``, the capability protocol of ``modulated`` models). Smooth
regions have low intensity and can be rendered at a lower resolution and bilinearly upsampled. A
*Scale2Mod table* maps each decode scale to the largest intensity that may be rendered at that scale;
a *table set* maps target scales to tables::

    {8: {1: 0.33, 2: 0.38, 4: 0.56, 6: 0.6, 8: 1}, 12: {...}, ...}

Tables are data passed to the CMSR strategy (``engine.render.CMSR``), never model state. Files written
by ``init_cmsr.py`` record the model kind they were built for in a first-line YAML comment,
``# model: lmliif``, which YAML parsers (the published ``test.py`` / ``init_cmsr.py`` included) ignore, so
the published code reads them; loading them for another model kind is refused. Files without it (the
published ones) are accepted for every LM model; files of earlier versions of this code base, which
recorded it under a top-level ``model:`` key (a key the published parser cannot read), still load.

Thresholds are in the units of the modulations themselves. ``build_table`` (used by ``init_cmsr.py``)
measures errors in the models' normalised output space ([-1, 1]); an MSE threshold ``t`` there is
``t / 4`` in [0, 1] pixel units (2e-5 normalised = 5e-6 in [0, 1], i.e. about 53 dB PSNR).

Rendering (``render_levels``) follows the published algorithm with its edge cases fixed (docs/deviations.md, B11):
batch > 1 is handled image by image, levels that select nothing are skipped, and the result is
always resampled to the exact target grid. Levels are rendered on exact pixel-centre grids by default
(``GRIDS``: ``'exact'``); ``'published'`` renders them on the published grid (the LR pixel-centre map resized
bilinearly), which repeats the outermost LR centres along the right and bottom borders and leaves flat blocks
there (up to 45 grey levels from plain rendering at x8/x12 where the interior differs by at most 22); it is
kept to reproduce the published numbers and tables. Exact grids also move the points that fall on the last LR
row's / column's pixel centres slightly inward (``exact_level_grid``). Coordinates are (row, col) in the (-1, 1) frame of the
(padded) LR input; images are normalised ``(x - 0.5) / 0.5``.
"""
import math
import re

import torch
import torch.nn.functional as F
import yaml

from models.decoders.implicit import chunked, grid_blocks
from utils.config import load_yaml
from utils.coords import cell_clip_factor, make_coord, nearest_index
from utils.io import atomic_write

#: Decode scales a new table starts from (published ``init_cmsr.py``).
INITIAL_SCALES = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)
#: First-line comment of a table file naming the model kind the tables were built for (``# model: lmliif``).
MODEL_COMMENT = re.compile(r'#\s*model:\s*([\w.+-]+)')
#: Level grids of ``render_levels``: exact pixel-centre grids (the default, no border artefacts) or the
#: published bilinearly resized LR-centre grid (reproduces the published code).
GRIDS = ('exact', 'published')
#: Top-level key of the same information in files of earlier versions (not readable by the published code).
MODEL_KEY = 'model'


class CMSRError(ValueError):
    """A Scale2Mod table file is missing or malformed, or CMSR was asked of a model without it."""


# ---------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------
def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CMSRError(f'{what} must be a finite number, got {value!r}')
    return value


def validate_tables(tables, source='table', capabilities=None):
    """Check ``{target: {decode_scale: threshold}}``; keeps the given key order.

    Scales must be positive, thresholds in [0, 1] and non-decreasing with the decode scale. With the
    ``capabilities`` of a modulated model, thresholds below 1 must also lie in its intensity range
    (LM-LTE: [0, 0.5]); 1 always means "everything left". Each failure is one line naming ``source``
    and the bad entry.
    """
    if not isinstance(tables, dict) or not tables:
        raise CMSRError(f'{source}: expected a non-empty mapping target_scale -> {{decode_scale: threshold}}')
    lo, hi = (capabilities.intensity_range if capabilities is not None and capabilities.intensity_range
              else (0.0, 1.0))
    for target, table in tables.items():
        if _number(target, f'{source}: target scale {target!r}') <= 0:
            raise CMSRError(f'{source}: target scale {target} must be positive')
        if not isinstance(table, dict) or not table:
            raise CMSRError(f'{source}: table for target scale {target} must be a non-empty mapping')
        previous = None
        for s in sorted(table, key=lambda k: _number(k, f'{source}: decode scale {k!r} in table {target}')):
            thr = _number(table[s], f'{source}: threshold of decode scale {s} in table {target}')
            if s <= 0:
                raise CMSRError(f'{source}: decode scale {s} in table {target} must be positive')
            if not 0 <= thr <= 1:
                raise CMSRError(f'{source}: threshold {thr} of decode scale {s} in table {target} is outside [0, 1]')
            if thr != 1 and not lo <= thr <= hi:
                raise CMSRError(f'{source}: threshold {thr} of decode scale {s} in table {target} is outside the '
                                f'intensity range [{lo:g}, {hi:g}] of {capabilities.name or "this model"}')
            if previous is not None and thr < previous[1]:
                raise CMSRError(f'{source}: threshold {thr} of decode scale {s} in table {target} is below the '
                                f'{previous[1]} of decode scale {previous[0]}; thresholds must not decrease '
                                f'with the decode scale')
            previous = (s, thr)
    return tables


def recorded_model(path):
    """The model kind a table file records in its first-line comment (``# model: NAME``), or None."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            first = f.readline().strip()
    except OSError:
        return None          # load_yaml reports a missing or unreadable file
    m = MODEL_COMMENT.fullmatch(first)
    return m.group(1) if m else None


def load_tables(path, capabilities=None):
    """Read a Scale2Mod YAML file (ours or the shipped ``*_mse2e-5.yaml`` files) and validate it.

    With a model's ``capabilities`` the file must not record another model kind (first-line comment
    ``# model: NAME``, or the top-level ``model`` key of older files) and its thresholds must fit the
    model's intensity range.
    """
    data = load_yaml(path, 'CMSR table file', CMSRError)
    made_for = recorded_model(path)
    if isinstance(data, dict) and MODEL_KEY in data:
        data = dict(data)
        made_for = data.pop(MODEL_KEY)
        if not isinstance(made_for, str):
            raise CMSRError(f'{path}: {MODEL_KEY!r} must be a model name, got {made_for!r}')
    if made_for and capabilities is not None and capabilities.name and made_for != capabilities.name:
        raise CMSRError(f'{path}: tables were built for a {made_for} model, not for this {capabilities.name} '
                        f'model; build tables for it with init_cmsr.py')
    return validate_tables(data, str(path), capabilities)


def _key(k):
    return int(k) if float(k).is_integer() else k


def save_tables(path, tables, model_name=None):
    """Write tables as YAML (keys sorted; 18.0 written as 18), atomically. ``model_name`` is recorded in a
    first-line comment (``# model: NAME``): the file stays a plain ``{target: {decode_scale: threshold}}``
    mapping, which the published ``test.py`` / ``init_cmsr.py`` read."""
    validate_tables(tables, str(path))
    if model_name and not MODEL_COMMENT.fullmatch(f'# model: {model_name}'):
        raise CMSRError(f'model name {model_name!r} cannot be recorded in a table file')
    data = {_key(k): {_key(s): t for s, t in sorted(v.items())} for k, v in sorted(tables.items())}
    with atomic_write(path, 'w') as f:
        if model_name:
            f.write(f'# model: {model_name}\n')
        yaml.safe_dump(data, f, sort_keys=False)


def applies(scale, max_train_scale):
    """Does CMSR render a target of ``scale`` (rows x cols area ratio ``scale**2``)? Only beyond the
    training range: ``scale > max_train_scale`` (published: Q > 16 h w). The one place this is decided."""
    return scale > max_train_scale


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

    Decode scales below 1 are not rendered (published rule): they are dropped here, so the first level
    at or above 1 is the "first level" and selects every ``m <= high``, the intensities of the dropped
    levels included.
    """
    scales = [s for s in table if s < S]
    thr = [0] + [table[s] for s in scales]
    if thr[-1] < 1:
        scales.append(S)
        thr.append(1)
    return [(s, thr[i], thr[i + 1]) for i, s in enumerate(scales) if s >= 1]


def select(m, i, n_levels, low, high):
    """Selection mask of level ``i`` of ``n_levels`` for intensities ``m`` (published rules)."""
    if i == n_levels - 1:
        return m >= low
    if i == 0:
        return m <= high
    return (m - (low + high) / 2).abs() <= (high - low) / 2


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def sample_nearest(values, coord, size):
    """Per-pixel scalars (h*w,) of one image at coords (N, 2), nearest pixel, no shift."""
    h, w = size
    return values[nearest_index(coord[:, 0], h) * w + nearest_index(coord[:, 1], w)]


def sample_nearest_grid(values, ys, xs, size):
    """``sample_nearest`` on the separable grid meshgrid(``ys``, ``xs``) -> (len(ys) * len(xs),), row-major: the
    nearest pixel of each row and column once (the same indices, so bitwise the same values)."""
    h, w = size
    return values[(nearest_index(ys, h) * w).unsqueeze(1) + nearest_index(xs, w).unsqueeze(0)].reshape(-1)


def bilinear(img, coord):
    """Bilinear border-padded sampling: img (1, 3, h, w), coord (N, 2) (row, col) -> (N, 3)."""
    out = F.grid_sample(img, coord.flip(-1).view(1, 1, -1, 2), mode='bilinear', padding_mode='border',
                        align_corners=False)
    return out[0, :, 0, :].t()


def level_grid(size, level_size, device=None):
    """Level coordinates: the LR pixel-centre map of ``size`` resized bilinearly to ``level_size`` ->
    (qh*qw, 2).

    Near the borders (within S/2 output pixels) this repeats the outermost LR centres rather than giving
    exact pixel centres; the published code renders on this grid (``exact_grid=False``; the default,
    ``exact_grid=True``, uses ``make_coord``).
    """
    fc = make_coord(size, device=device, flatten=False)
    grid = F.interpolate(fc.permute(2, 0, 1).unsqueeze(0), size=level_size, mode='bilinear', align_corners=False)
    return grid[0].permute(1, 2, 0).reshape(-1, 2)


#: How far (normalised units) ``exact_level_grid`` moves points off the last LR row's / column's pixel centres.
LAST_CENTRE_OFFSET = 1e-5


def exact_level_grid(size, level_size, device=None):
    """Exact level coordinates: the pixel centres of a ``level_size`` grid (``make_coord``) -> (qh*qw, 2), with
    the rows (columns) that fall exactly on the last LR row's (column's) pixel centres moved inward by
    ``LAST_CENTRE_OFFSET``.

    Levels of odd integer scale (x1, x3, x5) contain the LR pixel centres. At the centres of the last LR row the
    local ensemble (shifts ``v/h + 1e-6``, clamped) maps both row neighbours onto that row, every area weight
    becomes the same 1e-9 and the query returns the plain mean of its column neighbours (the last column
    likewise): a band of 30-40 grey levels from plain rendering around the last LR row's centres at x8 (Set5
    ``woman``). A point 1e-5 inside gets the ensemble's limit value there instead; levels of other scales are
    unchanged, and so is a level that renders the target grid itself (its points stay the plain rendering's).
    """
    h, w = size
    grid = make_coord(level_size, device=device)
    for axis, n in ((0, h), (1, w)):
        last = 1 - 1 / n
        on = (grid[:, axis] - last).abs() < 2e-6      # within the ensemble shift (1e-6) of it, float rounding
        grid[on, axis] = last - LAST_CENTRE_OFFSET
    return grid


def render_points(model, state, coord, cell, chunk):
    """Eval-path renders of arbitrary points (N, 2) with cells (N, 2) for a single image -> (N, 3)."""
    return chunked(lambda c, s: model.query(state, c, s), coord.unsqueeze(0), cell.unsqueeze(0), chunk)[0]


#: Smallest block ``render_on_grid`` sends through ``query_grid`` (a grid call costs about as much as a few
#: thousand general-path queries on a CPU).
GRID_BLOCK_MIN = 8192


def render_on_grid(model, state, grid, qh, qw, cell, chunk, sel=None, exact=False):
    """Renders of the points ``sel`` (indices into a qh x qw grid, row-major, increasing; None: all) of a
    separable grid ``grid`` (qh*qw, 2) with one cell (2,) for a single image -> (len(sel), 3).

    Models with ``grid_queries`` answer (rows x selected columns) blocks with ``query_grid``: consecutive rows
    selecting the same columns (CMSR selects per LR pixel, so whole runs of rows do) form one block, split
    to at most ``chunk`` queries; blocks under ``GRID_BLOCK_MIN`` queries (where a call's fixed cost would
    dominate) are answered together through ``query`` instead. Points whose coordinates are not exactly those of their row and column
    (``level_grid`` resizes a coordinate map bilinearly, which can differ by an ulp across a row, enough to
    change the nearest pixel at a tie) are answered again through ``query`` at their own coordinates.
    Other models answer every point through ``query`` (``render_points``). The results equal the
    point-by-point ones up to float rounding. ``exact``: the grid is a meshgrid by construction (``make_coord``,
    ``exact_level_grid``), so the check for points off their row and column is skipped.
    """
    sel = torch.arange(qh * qw, device=grid.device) if sel is None else sel
    n = sel.numel()
    if not model.capabilities.grid_queries:
        return render_points(model, state, grid[sel], cell.view(1, 2).expand(n, 2), chunk)
    g = grid.view(qh, qw, 2)
    ys, xs = g[:, 0, 0], g[0, :, 1]
    rows = torch.div(sel, qw, rounding_mode='floor')
    row_ids, counts = torch.unique_consecutive(rows, return_counts=True)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    row_ids, counts = row_ids.tolist(), counts.tolist()
    out = grid.new_empty(n, 3)
    rest = []          # positions (in sel) of the points of small blocks
    cols_of = lambda i: sel[starts[i]:starts[i] + counts[i]] - row_ids[i] * qw   # noqa: E731
    i = 0
    while i < len(row_ids):
        cols = cols_of(i)
        j = i + 1          # rows i..j-1: consecutive rows with the same selected columns
        while j < len(row_ids) and row_ids[j] == row_ids[j - 1] + 1 and counts[j] == counts[i] \
                and torch.equal(cols_of(j), cols):
            j += 1
        nc = cols.numel()
        if (j - i) * nc < GRID_BLOCK_MIN:
            rest.append(torch.arange(starts[i], starts[i] + (j - i) * nc, device=sel.device))
            i = j
            continue
        xs_sel = xs[cols]
        for (a, b), (c, d) in grid_blocks(j - i, nc, chunk):
            pred = model.query_grid(state, ys[row_ids[i] + a:row_ids[i] + b], xs_sel[c:d], cell.view(1, 2))[0]
            # selected points of rows a..b are stored row by row, nc each
            dst = out[starts[i] + a * nc:starts[i] + b * nc].view(b - a, nc, 3)
            dst[:, c:d] = pred
        i = j
    off_grid = sel.new_empty(0) if exact else \
        ((g[..., 0] != ys[:, None]) | (g[..., 1] != xs[None, :])).view(-1)[sel].nonzero().squeeze(1)
    pos = torch.cat(rest + [off_grid]).unique() if rest else off_grid
    if pos.numel():
        out[pos] = render_points(model, state, grid[sel[pos]], cell.view(1, 2).expand(pos.numel(), 2), chunk)
    return out


def _cells(n, qh, qw, factor, like):
    """(n, 2) cells (2/qh, 2/qw) times ``factor``, in float32 in the published order of operations."""
    c = like.new_empty(n, 2)
    c[:, 0] = 2 / qh
    c[:, 1] = 2 / qw
    return c * factor if factor != 1 else c


# ---------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------
def render_levels(model, state, inp, coord, tables, S=None, chunk=None, stats=None, exact_grid=True,
           max_train_scale=4, macs_per_query=0):
    """CMSR rendering of one image.

    Args:
        model: a ``modulated`` implicit model in eval mode (``query``, ``modulation_intensity``).
        state: ``model.prepare`` of ``inp``.
        inp: (1, 3, h, w) the (padded) normalised LR input the state was prepared from.
        coord: (1, Q, 2) target coordinates in the frame of ``inp``.
        tables: a validated table set.
        S: target scale (default ``sqrt(Q / (h w))``, the published value for a full grid).
        chunk: queries per ``query`` call.
        stats: an ``engine.render.RenderStats`` accumulating the rendered fraction (``add``, ``queries``).
        exact_grid: True (default): render levels on exact pixel-centre grids (``exact_level_grid``; a level
            that renders the target grid uses ``make_coord``, exactly the plain fast path's points), so the
            borders carry no flat blocks; False: the published bilinearly resized LR-centre grid (published
            numbers).
        max_train_scale: level cells are clipped by ``max(s / max_train_scale, 1)``.
    Returns (1, Q, 3).
    """
    if coord.shape[0] != 1 or inp.shape[0] != 1:
        raise ValueError('cmsr.render_levels takes one image; the engine loops over the batch')
    h, w = inp.shape[-2:]
    Q = coord.shape[1]
    S = math.sqrt(Q / (h * w)) if S is None else S
    _, table = choose_table(tables, S)
    lv = levels(table, S)
    m = model.modulation_intensity(state)
    if m.shape[0] != h * w:
        raise ValueError(f'modulation intensity has {m.shape[0]} values for a {h}x{w} input')
    # which points each level renders
    plan = []
    for i, (s, low, high) in enumerate(lv):
        if s < 1:
            continue
        qh, qw = int(h * s), int(w * s)
        if not exact_grid:
            grid = level_grid((h, w), (qh, qw), coord.device)
        elif s >= S and qh * qw == Q:       # the target grid itself: the plain fast path's points
            grid = make_coord((qh, qw), device=coord.device)
        else:
            grid = exact_level_grid((h, w), (qh, qw), coord.device)
        if exact_grid:          # a meshgrid by construction: nearest pixels per row and column
            g = grid.view(qh, qw, 2)
            near = sample_nearest_grid(m, g[:, 0, 0], g[0, :, 1], (h, w))
        else:
            near = sample_nearest(m, grid, (h, w))
        sel = select(near, i, len(lv), low, high).nonzero().squeeze(1)
        plan.append((s, qh, qw, grid, sel))
        if stats is not None:
            stats.add(sel.numel(), s, S)
    if stats is not None:
        stats.queries += Q
        stats.macs_per_query = macs_per_query
    # compose from coarse to fine; a level that selects nothing is skipped
    img, done = inp, False
    for k, (s, qh, qw, grid, sel) in enumerate(plan):
        if not sel.numel():
            continue
        cell = _cells(1, qh, qw, cell_clip_factor(s, max_train_scale), grid)[0]
        renders = render_on_grid(model, state, grid, qh, qw, cell, chunk, sel, exact=exact_grid)
        flat = bilinear(img, grid)
        flat[sel] = renders.to(flat.dtype)
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
    (docs/deviations.md, B9), so no pixel reaches the target resolution; without it, those pixels go to the next
    level up. (The tables shipped with LMF were pruned by hand in the same spirit.)
    """
    target = max(table)
    return {s: t for s, t in table.items() if s == target or t < 1}


@torch.no_grad()
def update_table(model, inp, table, mse_threshold, scale, cell_clip=1.0, chunk=None):
    """One image of the published table-building algorithm (published ``init_cmsr``); updates ``table`` in place.

    ``inp`` (1, 3, h, w) is the (padded) normalised LR image, ``scale`` the target scale S: the
    full-resolution reference is the (h*S, w*S) grid with cells clipped by ``cell_clip``; lower decode
    scales use exact grids and unclipped cells. Errors are MSE in the normalised space. Intensity
    buckets span ``model.capabilities.intensity_range`` (101 values). The initial table
    (``initial_table(S)``) may lack S itself (e.g. 18); the final step then adds it, as the published
    code does.
    """
    if inp.shape[0] != 1:
        raise ValueError('CMSR table building processes one image at a time')
    caps = model.capabilities
    if not caps.modulated:
        raise CMSRError(f'CMSR tables are built for modulated (LM) models, not {caps.name}')
    chunk = chunk or caps.chunk
    S = scale
    h, w = inp.shape[-2:]
    H, W = round(h * S), round(w * S)
    coord = make_coord((H, W), device=inp.device)
    cell = _cells(H * W, H, W, cell_clip, coord)
    state = model.prepare(inp, cell.unsqueeze(0))
    if not caps.cmsr_build_skip:     # LM-CiaoSR builds without its LR skip (published; docs/deviations.md, B1)
        state['lr_skip'] = False
    full = render_on_grid(model, state, coord, H, W, cell[0], chunk)
    m_hr = sample_nearest(model.modulation_intensity(state), coord, (h, w))
    lo, hi = caps.intensity_range
    buckets = [lo + (hi - lo) * i / 100 for i in range(101)]
    s_img = math.sqrt(H * W / (h * w))
    for s in sorted(table):
        if s >= s_img:
            break
        qh, qw = int(h * s), int(w * s)
        low_coord = make_coord((qh, qw), device=inp.device)
        low = render_on_grid(model, state, low_coord, qh, qw, _cells(1, qh, qw, 1.0, low_coord)[0], chunk)
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
