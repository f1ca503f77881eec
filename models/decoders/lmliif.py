"""LM-LIIF and the machinery common to Latent Modulated Functions (He & Jin, CVPR 2024).

An LM model moves the expensive part of the decoder to LR resolution: a *latent MLP* (``hypernet``)
maps each LR pixel's rich feature to the modulations of a tiny *render MLP* (``imnet``, an ``lmmlp``),
which is the only network evaluated per HR query.

Per-image state (``prepare``):
    ``mod`` table (B*h*w, M [+ latent]): hypernet output for every LR pixel, computed with the cell of
    the first query (docs/deviations.md, B13: all cells of a query set are equal in every published path).
Per query (``query``):
    training mode -> explicit modulations gathered as full rows (autograd-friendly);
    eval mode     -> ``query_fast`` (chunked by the caller, ``capabilities.chunk`` queries per call).

CMSR (multi-scale rendering driven by ``modulation_intensity``) is a rendering strategy of the engine
(``engine/cmsr.py``); the model only exposes the intensity. ``cmsr_spec`` / ``mixed_le`` constructor
arguments are accepted (published checkpoints carry them) and ignored.
"""
import functools

import torch

from .. import registry
from ..complexity import linear_macs
from ..registry import register
from .implicit import ImplicitDecoder, LRGrid, State, blend, feat_coord_table, flat_index, gather, pixel_table
from .liif import unfold3x3


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

    CPU: the largest power of two whose per-layer activation (``bytes_per_query`` each) fits in an
    eighth of the last-level cache (L3; 8 x L2 when there is no L3; 4 MiB assumed when sysfs says
    nothing), clamped to [4096, 65536]. Measured on a 2-core machine (512 KiB L2, 32 MiB L3): 16384
    for LM-LIIF/LM-LTE, within noise of the best of 4096..65536. Accelerators: 2**20 (throughput grows
    with the batch).
    """
    if device_type != 'cpu':
        return 1 << 20
    l3, l2 = _cache_bytes(3), _cache_bytes(2)
    budget = l3 // 8 if l3 else (8 * l2 if l2 else 4 << 20)
    n = 4096
    while n * 2 * bytes_per_query <= budget and n < 65536:
        n *= 2
    return n


class LMDecoder(ImplicitDecoder):
    """Common parts of LM-LIIF and LM-LTE: hypernet, render MLP, training and fast query paths."""

    modulated = True
    intensity_range = (0.0, 1.0)

    def __init__(self, encoder_spec, cmsr_spec=None, mixed_le=None):
        super().__init__(encoder_spec)
        # cmsr_spec / mixed_le: present in published configs and checkpoints (docs/deviations.md, B2, B3); CMSR tables
        # are an argument of the engine's CMSR strategy, never model state.
        self.render_dtype = torch.float32
        self._compiled_query = None

    def preferred_chunk(self):
        """Chunk from the machine's cache sizes (``machine_chunk``): the activation that passes through
        every render layer is 4 neighbours x hd values per query."""
        hd = self.imnet.hidden_dim
        per_query = 4 * hd * torch.finfo(self.render_dtype).bits // 8
        device = next(self.parameters()).device.type
        return machine_chunk(per_query, device)

    def modulation_intensity(self, state):
        """Mean |shift modulation| per LR pixel, (B*h*w,): what CMSR compares with its thresholds."""
        M = self.mod_dim
        return state.mod[:, M // 2:M].abs().mean(dim=1)

    # ---- subclasses provide ----
    def render_input(self, state, idx, rel, rel_cell):
        """Render-MLP input (N, in_dim) for gathered pixels ``idx`` (N,), rel coords (N, 2) and
        relative cells per query (B*q, 2), shared by the K neighbours (rows are neighbour-major,
        N = K*B*q). Explicit form, used by the training path."""
        raise NotImplementedError

    def render_layer0(self, state, idx, rel, rel_cell):
        """Pre-activation of the render MLP's first layer (N, hd) for the fast path. ``rel_cell``
        is per query (B*q, 2), shared by the K neighbours (rows are neighbour-major: N = K*B*q)."""
        raise NotImplementedError

    def skip(self, state, coord):
        return None

    #: subclasses implementing ``layer0_grid`` answer whole query grids with ``query_grid``
    grid_queries = False

    def layer0_grid(self, state, pix, rel_y, rel_x, rel_cell):
        """Pre-activation of the render MLP's first layer for a band of a query grid, (K, G, r, W, hd).

        ``pix`` (K, G, W): flat pixel index (batch offset included) of neighbour k for the g-th group
        of r query rows sharing their pixel rows, at each of the W query columns; ``rel_y`` (K, G, r),
        ``rel_x`` (K, W): relative coordinates; ``rel_cell`` (2,): the grid's relative cell.
        Per-pixel terms are read once per group and broadcast over its r rows.
        """
        raise NotImplementedError

    # ---- shared ----
    @staticmethod
    def hidden_cell(cell, grid):
        """Relative cell fed to the latent MLP: the first query's cell (B, 2) in LR pixels."""
        if cell is None:
            raise ValueError('LM models need the query cell to compute modulations')
        return grid.relative_cell(cell[:, 0, :])

    def set_render_mode(self, precision='float32', compile=False):
        """Options of the eval render (the fast path); they do not affect training.

        precision: 'float32' (default, reproduces the published outputs), or 'bfloat16' / 'float16':
            modulation tables, latents and the render MLP run in that type (geometry is computed in
            float32 first); errors are about 1e-2 in the normalised output (see README benchmarks).
        compile: run the per-chunk render through ``torch.compile`` (inductor fuses the gathers and
            element-wise work; compiling takes several seconds once, outputs change by ~1e-7).
        """
        dtypes = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
        if precision not in dtypes:
            raise ValueError(f"precision must be one of {', '.join(dtypes)}, got {precision!r}")
        self.render_dtype = dtypes[precision]
        self._compiled_query = torch.compile(self.query_fast, dynamic=True) if compile else None
        return self

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
        (B, 2) the same for every query -> (B, n, m, 3), equal (to float rounding) to ``query`` on the
        meshgrid.

        Query rows are grouped by the LR pixel rows their ensemble neighbours read; groups of equal
        length r form bands in which every per-pixel quantity (layer-0 term, modulations) is gathered
        once per (group, column) and broadcast over the r rows, so each layer is one dense product
        over all K x rows x columns queries followed by in-place broadcast modulation and ReLU.
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
        dt = self.render_dtype
        tables = self.grid_tables(state)
        hd = self.imnet.hidden_dim
        rel_cells = grid.relative_cell(cell).to(dt)
        rel_x = torch.stack([cols[b][1] for _, b in combos]).to(dt)                          # (K, W)
        col_pix = torch.stack([cols[b][0] for _, b in combos])                               # (K, W)
        # groups: runs of consecutive query rows whose neighbours read the same pixel rows; runs of
        # equal length r are processed together (rows need not be adjacent), one band per length
        key = rows[0][0] * (h + 1) + rows[-1][0]
        counts = torch.unique_consecutive(key, return_counts=True)[1]
        starts = torch.cumsum(counts, 0) - counts
        bands = []
        for r in torch.unique(counts).tolist():
            first = starts[counts == r]
            bands.append((r, first, (first.unsqueeze(1) + torch.arange(r, device=first.device)).reshape(-1)))
        out = ys.new_empty(B, n, m, 3)
        layers = [self.imnet.hidden(k) for k in range(self.imnet.hidden_depth)]
        weights = [(layer.weight.to(dt).t(), layer.bias.to(dt)) for layer in layers]
        last = self.imnet.layers[-1]
        w_out, b_out = last.weight.to(dt).t(), last.bias.to(dt)
        for bi in range(B):
            for r, first, row_idx in bands:
                G = first.numel()
                row_pix = torch.stack([rows[a][0][first] for a, _ in combos])                # (K, G)
                pix = (row_pix * w).unsqueeze(-1) + col_pix.unsqueeze(1) + bi * h * w          # (K, G, W)
                ry = torch.stack([rows[a][1][row_idx] for a, _ in combos])                   # (K, G r)
                rel_y = ry.view(K, G, r).to(dt)
                x = self.layer0_grid(state, pix, rel_y, rel_x, rel_cells[bi])                 # (K, G, r, W, hd)
                flat = pix.reshape(-1)
                for k in range(len(layers)):
                    if k > 0:     # the bias is folded into the shift table (``grid_tables``)
                        x = torch.mm(x.view(-1, hd), weights[k][0]).view(K, G, r, m, hd)
                    mk = tables[k].index_select(0, flat).view(K, G, 1, m, -1)
                    if self.imnet.mod_scale:
                        torch.addcmul(mk[..., hd:], x, mk[..., :hd], out=x)
                    else:
                        x.add_(mk)
                    x.clamp_min_(0)
                preds = torch.addmm(b_out, x.view(-1, hd), w_out).view(K, G, r, m, -1).float()
                area = (ry.view(K, G * r, 1) * rel_x.float().view(K, 1, m)).abs_().add_(1e-9)  # (K, G r, W)
                wgt = area.flip(0) / area.sum(0) if K > 1 else area / area
                preds = preds.view(K, G * r, m, -1)
                res = preds[0] * wgt[0].unsqueeze(-1)
                for k in range(1, K):
                    res = res + preds[k] * wgt[k].unsqueeze(-1)
                skip = self.skip_grid(state, bi, ys[row_idx], xs)
                out[bi, row_idx] = res if skip is None else res + skip
        return out

    def grid_tables(self, state):
        """Per-layer per-pixel modulation tables for ``query_grid``, in the render precision, once per
        image: ``[1 + s_k | b_k (1 + s_k) + t_k]`` (the layer bias folded into the shift, k >= 1; layer 0's
        bias is part of ``layer0_grid``), or the single kind present. (P, 2hd) or (P, hd) each."""
        key = f'grid_tables:{self.render_dtype}'
        if key not in state:
            imnet, tables = self.imnet, []
            for k, t in enumerate(imnet.modulation_tables(state.mod)):
                b = imnet.hidden(k).bias
                if k > 0:
                    if imnet.mod_scale and imnet.mod_shift:
                        hd = imnet.hidden_dim
                        t = torch.cat([t[:, :hd], torch.addcmul(t[:, hd:], t[:, :hd], b)], dim=1)
                    elif imnet.mod_scale:
                        t = torch.cat([t, t * b], dim=1)
                    else:
                        t = t + b
                elif imnet.mod_scale and not imnet.mod_shift:
                    t = torch.cat([t, torch.zeros_like(t)], dim=1)
                tables.append(t.to(self.render_dtype).contiguous())
            state[key] = tables
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

    def __init__(self, encoder_spec, imnet_spec=None, hypernet_spec=None, local_ensemble=True, feat_unfold=True,
                 cell_decode=True, mod_input=False, cmsr_spec=None, mixed_le=None):
        super().__init__(encoder_spec, cmsr_spec, mixed_le)
        self.local_ensemble, self.feat_unfold, self.cell_decode, self.mod_input = \
            local_ensemble, feat_unfold, cell_decode, mod_input
        c = self.encoder.out_dim
        imnet_args = dict(imnet_spec['args'])
        hd = imnet_args['hidden_dim']
        render_in = (hd if mod_input else c) + 2 + (2 if cell_decode else 0)
        self.imnet = registry.make(imnet_spec, args={'in_dim': render_in, 'mod_up_merge': False})
        self.mod_dim = self.imnet.mod_dim
        hyper_in = c * (9 if feat_unfold else 1) + (2 if cell_decode else 0)
        hyper_out = self.mod_dim + (hd if mod_input else 0)
        self.hypernet = registry.make(hypernet_spec, args={'in_dim': hyper_in, 'out_dim': hyper_out})

    def decoder_macs(self):
        K = 4 if self.local_ensemble else 1
        return linear_macs(self.hypernet.layers), K * linear_macs(self.imnet.layers)

    def prepare(self, inp, cell=None, inp_coord=None):
        feat = self.encoder(inp)
        B, C, h, w = feat.shape
        grid = LRGrid((h, w), feat, feat_coord_table(inp_coord, feat))
        rich = unfold3x3(feat) if self.feat_unfold else feat
        z = rich.permute(0, 2, 3, 1)
        if self.cell_decode:
            rc = self.hidden_cell(cell, grid).view(B, 1, 1, 2).expand(B, h, w, 2)
            z = torch.cat([z, rc.to(z.dtype)], dim=-1)
        mod = self.hypernet(z).reshape(B * h * w, -1)
        if self.mod_input:
            latent = mod[:, self.mod_dim:].contiguous()
        else:
            latent = pixel_table(feat)
        return State(inp=inp, mod=mod, latent=latent, grid=grid)

    def render_input(self, state, idx, rel, rel_cell):
        parts = [gather(state.latent, idx), rel]
        if self.cell_decode:
            parts.append(rel_cell.repeat(rel.shape[0] // rel_cell.shape[0], 1))
        return torch.cat(parts, dim=-1)

    grid_queries = True

    def layer0_table(self, state):
        """Per-LR-pixel part of the render MLP's first layer, ``latent @ W0[:, :d]^T + b0`` (P, hd),
        computed once per image at LR resolution (float32, then cast to the render precision)."""
        key = f'layer0:{self.render_dtype}'
        if key not in state:
            layer = self.imnet.layers[0]
            d = state.latent.shape[1]
            state[key] = torch.addmm(layer.bias, state.latent, layer.weight[:, :d].t()).to(self.render_dtype)
        return state[key]

    def render_layer0(self, state, idx, rel, rel_cell):
        # [latent | rel | cell] @ W0^T + b0: the per-pixel part read from ``layer0_table``, the rel term
        # per query and neighbour, the cell term once per query
        W = self.imnet.layers[0].weight.to(rel.dtype)
        d = state.latent.shape[1]
        x = gather(self.layer0_table(state), idx)
        x.addmm_(rel, W[:, d:d + 2].t())
        if self.cell_decode:
            x.view(-1, rel_cell.shape[0], x.shape[1]).add_(torch.mm(rel_cell, W[:, d + 2:d + 4].t()))
        return x

    def layer0_grid(self, state, pix, rel_y, rel_x, rel_cell):
        K, G, r = rel_y.shape
        m = rel_x.shape[1]
        W = self.imnet.layers[0].weight.to(rel_y.dtype)
        d = state.latent.shape[1]
        base = self.layer0_table(state).index_select(0, pix.reshape(-1)).view(K, G, 1, m, -1)
        base = base + rel_x.view(K, 1, 1, m, 1) * W[:, d + 1]
        if self.cell_decode:
            base.add_(torch.mv(W[:, d + 2:d + 4], rel_cell))
        return base + rel_y.view(K, G, r, 1, 1) * W[:, d]
