"""LM-LIIF and the machinery common to Latent Modulated Functions (He & Jin, CVPR 2024).

An LM model moves the expensive part of the decoder to LR resolution: a *latent MLP* (``hypernet``)
maps each LR pixel's rich feature to the modulations of a tiny *render MLP* (``imnet``, an ``lmmlp``),
which is the only network evaluated per HR query.

Per-image state (``prepare`` = encoder + ``latent_state``):
    ``mod`` table (B*h*w, M [+ latent]): hypernet output for every LR pixel, computed with the cell of
    the first query (docs/deviations.md, B13: all cells of a query set are equal in every published path).
Per query (``query``):
    training mode -> explicit modulations gathered as full rows (autograd-friendly);
    eval mode     -> ``query_fast`` (chunked by the caller, ``capabilities.chunk`` queries per call).
Per query grid (``query_grid``, what the engine calls for whole target grids): ``render_band`` runs the
render MLP as one dense product per layer over rows grouped by the LR pixel rows they read, with per-pixel
terms broadcast (see its docstring). All three agree to float rounding (tests/test_lm_grid_path.py).

CMSR (multi-scale rendering driven by ``modulation_intensity``) is a rendering strategy of the engine
(``engine/cmsr.py``); the model only exposes the intensity. ``cmsr_spec`` / ``mixed_le`` constructor
arguments are accepted (published checkpoints carry them) and ignored.
"""
import functools

import torch

from utils.untrusted import excerpt

from .. import registry
from ..complexity import linear_macs
from ..registry import register
from .implicit import ImplicitDecoder, State, blend, flat_index, gather, pixel_table
from .mlp import MLP
from . import fused_render, render_kernels


def _cache_bytes(level):
    """Size in bytes of the CPU's level-``level`` data/unified cache (sysfs), or None when unknown."""
    try:
        for idx in range(8):
            base = f'/sys/devices/system/cpu/cpu0/cache/index{idx}/'
            with open(base + 'level') as f:
                if f.read().strip() != str(level):
                    continue
            with open(base + 'type') as f:
                if f.read().strip() == 'Instruction':
                    continue
            with open(base + 'size') as f:
                text = f.read().strip().upper()
            mult = {'K': 1024, 'M': 1024 ** 2}.get(text[-1], 1)
            return int(text.rstrip('KM')) * mult
    except (OSError, ValueError):
        pass
    return None


@functools.lru_cache(maxsize=None)
def machine_chunk(bytes_per_query, device_type='cpu'):
    """Queries per render call for this machine, computed once per process from its cache sizes.

    CPU: the largest power of two whose render working set (``bytes_per_query`` each) fits in half the
    last-level cache (L3; the L2 size when there is no L3; 4 MiB assumed when sysfs says nothing),
    clamped to [4096, 65536]: larger calls amortise the per-call work until the working set spills out
    of the cache. Measured on a 2-core machine (512 KiB L2, 32 MiB L3), LM-LIIF's grid path at 160x90
    x8 (one process, best of 5): 8192 queries 0.63 s, 16384 0.44 s, 24576 0.39 s, 32768 0.34 s (chosen),
    49152 0.45 s, 65536 0.82 s; LM-LTE (twice the bytes per query): 16384 (chosen) 0.74 s, 32768 0.88 s.
    Accelerators: 2**20 (throughput grows with the batch).
    """
    if device_type != 'cpu':
        return 1 << 20
    l3, l2 = _cache_bytes(3), _cache_bytes(2)
    budget = l3 // 4 if l3 else (l2 if l2 else 4 << 20)
    n = 4096
    while n * 2 * bytes_per_query <= budget and n < 65536:
        n *= 2
    return n


def _modulate(x, scale, shift):
    """In place: ``x * scale + shift`` with either factor possibly None (broadcast over x)."""
    if scale is not None and shift is not None:
        torch.addcmul(shift, x, scale, out=x)
    elif scale is not None:
        x.mul_(scale)
    elif shift is not None:
        x.add_(shift)


def row_bands(rows, h):
    """Bands of a query grid's rows for ``LMDecoder.query_grid``.

    ``rows``: ``LRGrid.axis_neighbours`` of the query rows (a list over the ensemble's row shifts of
    (pixel row (n,), rel (n,))); ``h``: LR rows. Consecutive query rows whose neighbours read the same
    pixel rows form a group; groups of equal length r form one band (rows need not be adjacent).
    Returns [(r, first row of each group (G,), the band's rows (G r,) group-major)].
    """
    key = rows[0][0] * (h + 1) + rows[-1][0]
    counts = torch.unique_consecutive(key, return_counts=True)[1]
    starts = torch.cumsum(counts, 0) - counts
    bands = []
    for r in torch.unique(counts).tolist():
        first = starts[counts == r]
        bands.append((r, first, (first.unsqueeze(1) + torch.arange(r, device=first.device)).reshape(-1)))
    return bands


class LMDecoder(ImplicitDecoder):
    """Common parts of LM-LIIF and LM-LTE: hypernet, render MLP, training and fast query paths."""

    modulated = True
    intensity_range = (0.0, 1.0)

    @staticmethod
    def render_width(spec, where='imnet_spec'):
        """The hidden width of a render-MLP spec, which must be an ``lmmlp`` (the modulated MLP) with an
        integer ``hidden_dim``; anything else is refused in one line before the model is built."""
        if not isinstance(spec, dict) or spec.get('name') != 'lmmlp':
            name = spec.get('name') if isinstance(spec, dict) else spec
            raise ValueError(f"{where}: an LM model needs the modulated render MLP 'lmmlp', got {excerpt(name, 40)}")
        hd = (spec.get('args') or {}).get('hidden_dim') if isinstance(spec.get('args') or {}, dict) else None
        if not isinstance(hd, int) or isinstance(hd, bool) or hd < 1:
            raise ValueError(f'{where}.args.hidden_dim: the render width must be a positive integer, got '
                             f'{excerpt(hd, 40)}')
        return hd

    def __init__(self, encoder_spec, cmsr_spec=None, mixed_le=None):
        super().__init__(encoder_spec)
        # cmsr_spec / mixed_le: present in published configs and checkpoints (docs/deviations.md, B2, B3); CMSR tables
        # are an argument of the engine's CMSR strategy, never model state.
        self.render_dtype = torch.float32
        self.render_kernel = 'auto'
        self._compiled_query = None

    def preferred_chunk(self):
        """Chunk from the machine's cache sizes (``machine_chunk``) and the render working set per query
        (``render_row_floats`` values: ``render_band`` renders one neighbour at a time)."""
        per_query = self.render_row_floats() * torch.finfo(self.render_dtype).bits // 8
        device = next(self.parameters()).device.type
        return machine_chunk(per_query, device)

    def render_row_floats(self):
        """Values live per query while ``render_band`` renders one neighbour: its two activation buffers."""
        return 2 * self.imnet.hidden_dim

    def latent_state(self, inp, feat, grid, cell):
        """Per-image state from the encoder features ``feat`` (B, C, h, w) on ``grid`` and the queries'
        ``cell`` (B, Q, 2; the first one is used): ``mod`` (B*h*w, M [+ latent]) and whatever the render
        MLP reads per pixel (``traced_prepare`` runs it on a ``TracedGrid``)."""
        raise NotImplementedError

    def modulation_intensity(self, state):
        """Mean |shift modulation| per LR pixel, (B*h*w,): what CMSR compares with its thresholds."""
        M = self.mod_dim
        return state.mod[:, M // 2:M].abs().mean(dim=1)

    # ---- layer 0 of the render MLP ----
    # Default (LM-LIIF, LM-CiaoSR): layer 0 is linear in [latent(p) (d) | rel_y, rel_x | rel cell (2, with
    # ``render_cell``)], so its per-pixel part is tabulated once per image and the rest is a few products per
    # query. Models whose layer 0 is not linear in the relative coordinate (LM-LTE) set ``linear_layer0``
    # False and override ``render_layer0`` and ``layer0_grid``.
    linear_layer0 = True
    render_cell = False

    def render_input(self, state, idx, rel, rel_cell):
        """Render-MLP input (N, in_dim) for gathered pixels ``idx`` (N,), rel coords (N, 2) and
        relative cells per query (B*q, 2), shared by the K neighbours (rows are neighbour-major,
        N = K*B*q). Explicit form, used by the training path."""
        parts = [gather(state.latent, idx), rel]
        if self.render_cell:
            parts.append(rel_cell.repeat(rel.shape[0] // rel_cell.shape[0], 1))
        return torch.cat(parts, dim=-1)

    def layer0_table(self, state):
        """Per-LR-pixel part of the render MLP's first layer, ``latent @ W0[:, :d]^T + b0`` (P, hd),
        computed once per image at LR resolution (float32, then cast to the render precision)."""
        key = f'layer0:{self.render_dtype}'
        if key not in state:
            layer = self.imnet.layers[0]
            d = state.latent.shape[1]
            state[key] = torch.addmm(layer.bias, state.latent, layer.weight[:, :d].t()).to(self.render_dtype)
        return state[key]

    def layer0_rel_weights(self, state, dtype):
        """Columns of W0 that multiply rel_y, rel_x and (with ``render_cell``) the relative cell:
        (hd,), (hd,), (hd, 2) or None."""
        W = self.imnet.layers[0].weight.to(dtype)
        d = state.latent.shape[1]
        return W[:, d], W[:, d + 1], (W[:, d + 2:d + 4] if self.render_cell else None)

    def render_layer0(self, state, idx, rel, rel_cell):
        """Pre-activation of the render MLP's first layer (N, hd) for the fast path. ``rel_cell``
        is per query (B*q, 2), shared by the K neighbours (rows are neighbour-major: N = K*B*q)."""
        wy, wx, wc = self.layer0_rel_weights(state, rel.dtype)
        x = gather(self.layer0_table(state), idx)
        x.addmm_(rel, torch.stack([wy, wx], dim=1).t())
        if wc is not None:
            x.view(-1, rel_cell.shape[0], x.shape[1]).add_(torch.mm(rel_cell, wc.t()))
        return x

    def layer0_grid(self, state, pix, rel_y, rel_x, rel_cell):
        """Models without ``linear_layer0``: pre-activation of the render MLP's first layer for a band of
        a query grid, (K, G, r, W, hd). (With ``linear_layer0``, ``render_band`` fuses layer 0 with its
        modulation instead.)

        ``pix`` (K, G, W): flat pixel index (batch offset included) of neighbour k for the g-th group
        of r query rows sharing their pixel rows, at each of the W query columns; ``rel_y`` (K, G, r),
        ``rel_x`` (K, W): relative coordinates; ``rel_cell`` (2,): the grid's relative cell.
        """
        raise NotImplementedError

    def skip(self, state, coord):
        return None

    #: subclasses that can answer whole query grids (``query_grid``) set this
    grid_queries = False

    # ---- shared ----
    @staticmethod
    def hidden_cell(cell, grid):
        """Relative cell fed to the latent MLP: the first query's cell (B, 2) in LR pixels."""
        if cell is None:
            raise ValueError('LM models need the query cell to compute modulations')
        return grid.relative_cell(cell[:, 0, :])

    #: ``set_render_mode`` precision names (``'bf16'`` is the command-line spelling of ``'bfloat16'``)
    RENDER_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16,
                     'float16': torch.float16}

    def set_render_mode(self, precision='float32', compile=False, kernel='auto'):
        """Options of the eval render (the fast path); they do not affect training.

        precision: 'float32' (default, reproduces the published outputs), or 'bfloat16' (= 'bf16') /
            'float16': modulation tables, latents and the render MLP run in that type (geometry is computed
            in float32 first; the blend and the output are float32); errors of bf16 on the golden cases are
            about 1e-3 in the normalised output (README, Efficiency). On CPUs without native bf16
            (``engine.profiling.native_bf16``) it works, emulated, and is slower than float32.
        compile: run the per-chunk render through ``torch.compile`` (inductor fuses the gathers and
            element-wise work; compiling takes several seconds once, outputs change by ~1e-7).
        kernel: how the grid path renders: 'auto' (default: 'fused' where it applies, else 'mm'), 'fused'
            (the whole render MLP and the blend per query in one C kernel, ``fused_render``: CPU, float32;
            refused with the reason where it does not apply or does not build), or the unfused path with one of
            the hidden-layer products of ``render_kernels``: 'mm', 'linear', 'onednn', 'conv1x1'. They differ by
            float rounding, ~1e-7 relative (``tests/test_render_kernels.py``); each is deterministic on a given
            machine (the same kernel, the same summation order in every process).
        """
        if precision not in self.RENDER_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(self.RENDER_DTYPES)}, got {precision!r}")
        if kernel not in ('auto', 'fused'):
            render_kernels.check(kernel)
        dtype = self.RENDER_DTYPES[precision]
        if kernel == 'fused':
            why = self.fused_unsupported(dtype)
            if why is None:
                why = fused_render.status()[1]
            if why is not None:
                raise ValueError(f"render kernel 'fused' cannot render this {type(self).__name__}: {why}")
        self.render_kernel = kernel
        self.render_dtype = dtype
        self._compiled_query = torch.compile(self.query_fast, dynamic=True) if compile else None
        return self

    def render_options(self):
        """The current ``set_render_mode`` arguments (to restore them after a temporary change)."""
        precision = {v: k for k, v in self.RENDER_DTYPES.items() if k != 'bf16'}[self.render_dtype]
        return dict(precision=precision, compile=self._compiled_query is not None, kernel=self.render_kernel)

    def render_product(self, device, dtype):
        """The grid path's hidden-layer product kernel ``(x, wt, out) -> x @ wt`` (``render_kernels``)."""
        name = self.render_kernel
        if name == 'fused':         # grids never reach the product (``uses_fused``)
            return None
        if name == 'auto':          # where the fused kernel does not apply
            name = 'mm'
        if not render_kernels.runs_on(name, torch.device(device).type, dtype, self.imnet.hidden_dim):
            raise ValueError(f'render kernel {name!r} does not run on {torch.device(device).type} in {dtype}')
        return render_kernels.KERNELS[name]

    def table(self, state, name):
        """A per-pixel table of the state in the render precision (cast once per image)."""
        dt = self.render_dtype
        if dt == torch.float32:
            return state[name]
        key = f'{name}:{dt}'
        if key not in state:
            state[key] = state[name].to(dt)
        return state[key]

    def mod_tables(self, state):
        key = f'tables:{self.render_dtype}'
        if key not in state:
            state[key] = [t.to(self.render_dtype) for t in self.imnet.modulation_tables(state.mod)]
        return state[key]

    def query(self, state, coord, cell):
        if self.training:
            return self.query_explicit(state, coord, cell)
        if self._compiled_query is not None:
            return self._compiled_query(state, coord, cell)
        return self.query_fast(state, coord, cell)

    def _geometry(self, state, coord, cell):
        grid = state.grid
        nb = grid.neighbours(coord, self.local_ensemble)
        idx = flat_index(nb.index, grid.size[0] * grid.size[1])
        return nb, idx, nb.rel_coord.reshape(-1, 2), grid.relative_cell(cell).reshape(-1, 2)

    def _finish(self, state, coord, preds, nb):
        out = blend(preds.view(*nb.index.shape, -1), nb.weight)
        skip = self.skip(state, coord)
        return out if skip is None else out + skip

    def traced_query(self, state, coord, cell):
        """The explicit path in traceable form: every neighbour's full modulation row is gathered and the
        relative cell has one row per neighbour and query (no in-place updates of views)."""
        nb = state.grid.neighbours(coord, self.local_ensemble)
        K = nb.index.shape[0]
        h, w = state.grid.size
        idx = flat_index(nb.index, h * w)
        rel_cell = state.grid.relative_cell(cell).unsqueeze(0).expand(K, -1, -1, -1).reshape(-1, 2)
        x = self.traced_render_input(state, idx, nb.rel_coord.reshape(-1, 2), rel_cell)
        return self._finish(state, coord, self.imnet(x, gather(state.mod, idx)), nb)

    def traced_render_input(self, state, idx, rel, rel_cell):
        """``render_input`` for ``traced_query`` (``rel_cell`` with one row per neighbour and query)."""
        return self.render_input(state, idx, rel, rel_cell)

    def query_explicit(self, state, coord, cell):
        """Training path: gather each neighbour's full modulation vector and run the MLP on it."""
        nb, idx, rel, rel_cell = self._geometry(state, coord, cell)
        preds = self.imnet(self.render_input(state, idx, rel, rel_cell), gather(state.mod, idx))
        return self._finish(state, coord, preds, nb)

    @property
    def capabilities(self):
        caps = super().capabilities
        # torch.compile applies to the general fast path, which the engine then uses for grids too
        return caps.replace(grid_queries=True) if self.grid_queries and self._compiled_query is None else caps

    def query_grid(self, state, ys, xs, cell):
        """Eval path for a grid of queries: ``ys`` (n,), ``xs`` (m,) coordinates (row, col), ``cell``
        (B, 2) the same for every query -> (B, n, m, 3) (a channels-last view of a channels-first
        tensor), equal (to float rounding) to ``query`` on the meshgrid.

        Query rows are grouped by the LR pixel rows their ensemble neighbours read; groups of equal
        length r form bands in which every per-pixel quantity (layer-0 term, modulations) is gathered
        once per (group, column) and broadcast over the r rows (``render_band``).
        """
        grid = state.grid
        if grid.feat_coord is not None:       # irregular LR grid: not separable, use the general path
            coord = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).view(1, -1, 2)
            B = cell.shape[0]
            c = cell.view(B, 1, 2).expand(B, coord.shape[1], 2)
            return self.query(state, coord.expand(B, -1, 2), c).view(B, ys.numel(), xs.numel(), 3)
        h, w = grid.size
        B, n, m = cell.shape[0], ys.numel(), xs.numel()
        rows = grid.axis_neighbours(ys, 0, self.local_ensemble)
        cols = grid.axis_neighbours(xs, 1, self.local_ensemble)
        combos = [(a, b) for a in range(len(rows)) for b in range(len(cols))]   # (row shift, col shift), row outer
        K = len(combos)
        rel_cells = grid.relative_cell(cell).to(self.render_dtype)
        rel_x = torch.stack([cols[b][1] for _, b in combos])                                 # (K, W)
        col_pix = torch.stack([cols[b][0] for _, b in combos])                               # (K, W)
        c_out = self.imnet.out_dim
        out = ys.new_empty(B, c_out, n, m)
        fused = self.uses_fused(ys.device)
        for bi in range(B):
            for r, first, row_idx in row_bands(rows, h):
                G = first.numel()
                row_pix = torch.stack([rows[a][0][first] for a, _ in combos])                # (K, G)
                pix = (row_pix * w + bi * h * w).unsqueeze(-1) + col_pix.unsqueeze(1)         # (K, G, W)
                ry = torch.stack([rows[a][1][row_idx] for a, _ in combos]).view(K, G, r)     # (K, G, r)
                if fused:
                    self.render_band_fused(state, pix, ry, rel_x, rel_cells[bi], out[bi], row_idx)
                    continue
                preds = self.render_band(state, pix, ry, rel_x, rel_cells[bi])               # (K, c, G r, W)
                # local-ensemble blend: each neighbour weighted by the area of the diagonally opposite one
                area = (ry.view(K, G * r, 1) * rel_x.view(K, 1, m)).abs_().add_(1e-9)          # (K, G r, W)
                wgt = area.flip(0).div_(area.sum(0)) if K > 1 else area.div_(area)
                res = preds[0] * wgt[0]
                for k in range(1, K):
                    res.addcmul_(preds[k], wgt[k])
                out[bi].index_copy_(1, row_idx, res)
            skip = self.skip_grid(state, bi, ys, xs)        # every band's blend + the LR skip, once per image
            if skip is not None:
                out[bi].add_(skip.permute(2, 0, 1))
        return out.permute(0, 2, 3, 1)

    def uses_fused(self, device):
        """Whether ``query_grid`` renders on ``device`` with the fused kernel: kernel 'fused' (refused on other
        devices), or 'auto' where the kernel applies (CPU, float32, a supported model, and it builds here; else
        'auto' is 'mm')."""
        if self.render_kernel == 'fused':
            if torch.device(device).type != 'cpu':
                raise ValueError(f"render kernel 'fused' runs on the CPU only; the model is on {device}")
            return True
        return (self.render_kernel == 'auto' and torch.device(device).type == 'cpu'
                and self.fused_unsupported() is None and fused_render.status()[0])

    def layer0_band(self, state, pix, rel_x, rel_cell):
        """With ``linear_layer0``: layer 0 of a band with its modulation folded in, ``(base, wy)`` (K, G, 1, W, hd)
        each (``wy`` possibly a broadcast view), such that the pre-activation of the query in row ``rel_y`` is
        ``base + rel_y wy``: ``(b + y w_y) s + t = (b s + t) + y (w_y s)``, with ``b`` the per-pixel table plus the
        column and cell terms (``pix``, ``rel_x``, ``rel_cell`` as in ``layer0_grid``)."""
        p = self.grid_params(state)
        K, G, m = pix.shape
        dt = p['dtype']
        small = (K, G, 1, m, self.imnet.hidden_dim)
        s0, t0 = (None if tab is None else tab.index_select(0, pix.reshape(-1)).view(small)
                  for tab in (p['scale'][0], p['shift'][0]))
        wy, wx, wc = p['layer0']
        base = self.layer0_table(state).index_select(0, pix.reshape(-1)).view(small)
        base.addcmul_(rel_x.to(dt).view(K, 1, 1, m, 1), wx)
        if wc is not None:
            base.add_(torch.mv(wc, rel_cell))
        if s0 is not None:
            base = torch.addcmul(t0, base, s0) if t0 is not None else base.mul_(s0)
            wy = s0 * wy
        elif t0 is not None:
            base.add_(t0)
        return base, wy.expand(small)

    def render_band(self, state, pix, rel_y, rel_x, rel_cell):
        """The render MLP on a band of K x G x r x W queries -> predictions (K, c_out, G r, W), float32.

        One neighbour at a time (its activations, G r W x hd, stay in cache through all layers), one
        dense product per hidden layer (``render_product``: the kernel chosen for the device); the
        modulations of each (group, column) pixel are gathered once and broadcast over the group's r rows;
        modulation and ReLU run in place on two buffers. With ``linear_layer0``, layer 0 and its modulation
        are one broadcast product (``layer0_band``).
        """
        p = self.grid_params(state)
        K, G, r = rel_y.shape
        m = rel_x.shape[1]
        hd, dt = self.imnet.hidden_dim, p['dtype']
        full, small = (G, r, m, hd), (G, 1, m, hd)
        ry = rel_y.to(dt)
        if self.linear_layer0:
            base, wy = self.layer0_band(state, pix, rel_x, rel_cell)
        else:
            s0, t0 = (None if tab is None else tab.index_select(0, pix.reshape(-1)).view(K, *small)
                      for tab in (p['scale'][0], p['shift'][0]))
        N = G * r * m
        c4 = p['out_weight'].shape[0]
        out = ry.new_empty(K, c4, N)
        x, y = ry.new_empty(N, hd), ry.new_empty(N, hd)
        product = p['product']
        for k in range(K):
            if self.linear_layer0:
                torch.addcmul(base[k], ry[k].view(G, r, 1, 1), wy[k], out=x.view(full))
            else:
                x = self.layer0_grid(state, pix[k:k + 1], ry[k:k + 1], rel_x[k:k + 1].to(dt), rel_cell).view(N, hd)
                _modulate(x.view(full), None if s0 is None else s0[k], None if t0 is None else t0[k])
            x.clamp_min_(0)
            idx = pix[k].reshape(-1)
            for layer in range(1, self.imnet.hidden_depth):
                y = product(x, p['weight'][layer], y)      # y itself, or a new tensor: x becomes the spare
                x, y = y, x
                s, t = (None if tab is None else tab.index_select(0, idx).view(small)
                        for tab in (p['scale'][layer], p['shift'][layer]))
                _modulate(x.view(full), s, t)
                x.clamp_min_(0)
            torch.mm(p['out_weight'], x.t(), out=out[k])        # (c_out rounded up to 4, N): a fast narrow product
        c = self.imnet.out_dim
        preds = out[:, :c].add_(p['out_bias'].view(1, c, 1))
        return preds.float().view(K, c, G * r, m)

    # ---- the fused kernel (``fused_render``) ----
    def fused_unsupported(self, dtype=None):
        """Why the fused render kernel cannot render this model in ``dtype`` (default: its render precision), as a
        phrase, or None when it can."""
        imnet = self.imnet
        dtype = self.render_dtype if dtype is None else dtype
        if dtype != torch.float32:
            return f'the kernel renders in float32 only, not {str(dtype).replace("torch.", "")}'
        if not fused_render.supports(imnet.hidden_dim, imnet.out_dim):
            return (f'the kernel is written for render width {fused_render.WIDTH} and at most 4 outputs (this '
                    f'model: width {imnet.hidden_dim}, {imnet.out_dim} outputs)')
        return None

    def fused_layer0(self, state, pix, rel_x, rel_cell):
        """Layer-0 arguments of ``fused_render.render`` for a band, mode 0 (``linear_layer0``): the per-pixel table
        (``layer0_table``), W0's columns for rel_x and rel_y, the cell term and layer 0's modulation tables (the
        kernel forms ``layer0_band`` per unit itself)."""
        p = self.grid_params(state)
        wy, wx, wc = p['layer0']
        return dict(l0tab=self.layer0_table(state), wx=wx.contiguous(), wy=wy.contiguous(),
                    cterm=None if wc is None else torch.mv(wc, rel_cell), s0=p['scale'][0], t0=p['shift'][0])

    def render_band_fused(self, state, pix, rel_y, rel_x, rel_cell, out, rows):
        """``render_band``, the blend and the output in one call of the fused kernel: the blended predictions of
        the band's rows ``rows`` (G r,) are written into ``out`` (c_out, n, m), a contiguous float32 image."""
        p = self.grid_params(state)
        if 'fused_weight' not in p:
            hidden = p['weight'][1:]
            p['fused_weight'] = torch.stack(hidden) if hidden else p['weight'][0].new_empty(0)
        # out_weight: (4, hd) with its rows past out_dim zero, as the kernel reads it
        fused_render.render(out, out.shape[1] * out.shape[2], rows.contiguous(), pix.contiguous(),
                            rel_y.contiguous(), rel_x.contiguous(), self.imnet.hidden_depth, p['scale'], p['shift'],
                            p['fused_weight'], p['out_weight'], p['out_bias'],
                            **self.fused_layer0(state, pix, rel_x, rel_cell))

    def grid_params(self, state):
        """Per-image constants of ``render_band`` in the render precision, computed once: per layer k the
        per-pixel modulation tables ``scale`` (1 + s_k, or None without scale modulation) and ``shift`` (t_k,
        or None without shift modulation; for k >= 1 the layer bias is folded in: b_k (1 + s_k) + t_k, or
        b_k (1 + s_k), or b_k + t_k), (P, hd) each and contiguous; the transposed
        hidden weights; the output layer (rows zero-padded to a multiple of 4) and its bias; with ``linear_layer0``
        the columns of W0 for rel_y, rel_x and the cell (``layer0_rel_weights``)."""
        dt = self.render_dtype
        key = f'grid:{dt}'
        if key in state:
            return state[key]
        imnet, hd = self.imnet, self.imnet.hidden_dim
        mod = state.mod
        scales, shifts, weights = [], [], []
        for k in range(imnet.hidden_depth):
            s = 1 + mod[:, imnet.scale_slice(k)] if imnet.mod_scale else None
            t = mod[:, imnet.shift_slice(k)] if imnet.mod_shift else None
            layer = imnet.hidden(k)
            if k > 0:       # fold the bias: (W x + b) s + t = (W x) s + (b s + t)
                b = layer.bias
                if s is not None:
                    t = torch.addcmul(t, s, b) if t is not None else s * b
                else:
                    t = t + b
            scales.append(None if s is None else s.to(dt).contiguous())
            shifts.append(None if t is None else t.to(dt).contiguous())
            weights.append(layer.weight.t().to(dt).contiguous())
        last = imnet.layers[-1]
        c4 = -(-last.out_features // 4) * 4
        out_weight = last.weight.new_zeros(c4, hd)
        out_weight[:last.out_features] = last.weight
        params = dict(dtype=dt, scale=scales, shift=shifts, weight=weights, out_weight=out_weight.to(dt),
                      out_bias=last.bias.to(dt), product=self.render_product(mod.device, dt))
        if self.linear_layer0:
            params['layer0'] = self.layer0_rel_weights(state, dt)
        state[key] = params
        return state[key]

    def skip_grid(self, state, b, ys, xs):
        """The LR skip (if any) of image ``b`` on a query grid, (len(ys), len(xs), 3) or None."""
        return None

    def query_fast(self, state, coord, cell):
        """Eval path: modulations gathered one layer at a time (the (queries x M) tensor is never built),
        and per-query terms computed once for the K neighbours."""
        nb, idx, rel, rel_cell = self._geometry(state, coord, cell)
        dt = self.render_dtype
        x0 = self.render_layer0(state, idx, rel.to(dt), rel_cell.to(dt))
        preds = self.imnet.forward_gathered(x0, self.mod_tables(state), idx, skip_layer0=True)
        return self._finish(state, coord, preds.float(), nb)


@register('lmliif')
class LMLIIF(LMDecoder):
    """LM-LIIF. Latent MLP input per LR pixel: [unfold3x3(feat) (9C), rel cell (2)]; output M modulations
    (+ hd latent channels with ``mod_input``). Render input: [latent (hd, or C without ``mod_input``),
    rel_coord (2), rel_cell (2)]. No LR skip."""

    traceable = True

    def __init__(self, encoder_spec, imnet_spec=None, hypernet_spec=None, local_ensemble=True, feat_unfold=True,
                 cell_decode=True, mod_input=False, cmsr_spec=None, mixed_le=None):
        super().__init__(encoder_spec, cmsr_spec, mixed_le)
        self.local_ensemble, self.feat_unfold, self.cell_decode, self.mod_input = \
            local_ensemble, feat_unfold, cell_decode, mod_input
        c = self.encoder.out_dim
        hd = self.render_width(imnet_spec)
        render_in = (hd if mod_input else c) + 2 + (2 if cell_decode else 0)
        self.imnet = registry.make(imnet_spec, args={'in_dim': render_in, 'mod_up_merge': False})
        self.mod_dim = self.imnet.mod_dim
        hyper_in = c * (9 if feat_unfold else 1) + (2 if cell_decode else 0)
        hyper_out = self.mod_dim + (hd if mod_input else 0)
        self.hypernet = registry.make(hypernet_spec, args={'in_dim': hyper_in, 'out_dim': hyper_out})
        if not isinstance(self.hypernet, MLP):
            raise ValueError(f"lmliif: hypernet_spec must build an 'mlp', got {hypernet_spec.get('name')!r}")

    def decoder_macs(self):
        K = 4 if self.local_ensemble else 1
        return linear_macs(self.hypernet.layers), K * linear_macs(self.imnet.layers)

    def latent_state(self, inp, feat, grid, cell):
        B, C, h, w = feat.shape
        rc = self.hidden_cell(cell, grid) if self.cell_decode else None       # (B, 2)
        if self.feat_unfold:      # the latent MLP's first layer over the 3x3 unfold is a 3x3 convolution
            mod = self.hypernet.forward_unfold3x3(feat, rc)
        else:
            z = feat.permute(0, 2, 3, 1)
            if rc is not None:
                z = torch.cat([z, rc.view(B, 1, 1, 2).expand(B, h, w, 2).to(z.dtype)], dim=-1)
            mod = self.hypernet(z)
        mod = mod.reshape(B * h * w, -1)
        if self.mod_input:
            latent = mod[:, self.mod_dim:].contiguous()
        else:
            latent = pixel_table(feat)
        return State(inp=inp, mod=mod, latent=latent, grid=grid)

    grid_queries = True

    @property
    def render_cell(self):
        """The render input ends with the relative cell (``cell_decode``)."""
        return self.cell_decode
