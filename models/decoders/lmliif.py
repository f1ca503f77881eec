"""LM-LIIF and the machinery common to Latent Modulated Functions (He & Jin, CVPR 2024).

An LM model moves the expensive part of the decoder to LR resolution: a *latent MLP* (``hypernet``)
maps each LR pixel's rich feature to the modulations of a tiny *render MLP* (``imnet``, an ``lmmlp``),
which is the only network evaluated per HR query.

Per-image state (``prepare``):
    ``mod`` table (B*h*w, M [+ latent]): hypernet output for every LR pixel, computed with the cell of
    the first query (spec B13: all cells of a query set are equal in every published path).
Per query (``query``):
    training mode -> explicit modulations gathered as full rows (autograd-friendly);
    eval mode     -> ``query_fast``: modulations gathered one layer at a time, chunked by the caller.
"""
import torch

from .. import cmsr, registry
from ..registry import register
from .implicit import ImplicitDecoder, LRGrid, State, blend, feat_coord_table, flat_index, gather, pixel_table
from .liif import unfold3x3


class LMDecoder(ImplicitDecoder):
    """Common parts of LM-LIIF and LM-LTE: hypernet, render MLP, training and fast query paths, CMSR."""

    #: Queries per chunk for the fast path (results do not depend on it). Small enough for the per-layer
    #: working set (4 x 8192 rows x 32 floats) to stay in the CPU's L2/L3 caches: 3x faster than 65536.
    eval_bsize = 8192

    def __init__(self, encoder_spec, cmsr_spec=None, mixed_le=None):
        super().__init__(encoder_spec)
        # mixed_le: present in pre-release LMF configs and possibly in released checkpoints (spec B3).
        self.cmsr_tables = None
        self.cmsr_exact_grid = False
        self.cmsr_stats = cmsr.RenderStats()
        self.render_dtype = torch.float32
        self._compiled_query = None
        if cmsr_spec:   # the published scripts pass {'s2m_tables': ..., 'path': ..., ...}
            tables = cmsr_spec.get('s2m_tables') or cmsr_spec.get('path')
            if tables:
                self.set_cmsr(tables)

    def set_cmsr(self, tables, exact_grid=False):
        """Enable CMSR with a table set (dict or YAML path); ``None`` disables it.

        CMSR applies in eval mode to queries beyond the training range (Q > max_train_scale^2 * h * w).
        ``exact_grid``: see ``cmsr.render`` (default: the published level grid).
        """
        self.cmsr_exact_grid = exact_grid
        if tables is None:
            self.cmsr_tables = None
            return
        self.cmsr_tables = (cmsr.load_tables(tables) if isinstance(tables, (str, bytes)) or hasattr(tables, '__fspath__')
                            else cmsr.validate_tables(tables))

    def uses_cmsr(self, inp, coord):
        return (self.cmsr_tables is not None and not self.training and coord is not None
                and coord.shape[1] > self.max_train_scale ** 2 * inp.shape[-2] * inp.shape[-1])

    def forward(self, inp, coord=None, cell=None, bsize=None, inp_coord=None, progress=None):
        if not self.uses_cmsr(inp, coord):
            return super().forward(inp, coord, cell, bsize, inp_coord, progress)
        outs = []
        for b in range(inp.shape[0]):
            state = self.prepare(inp[b:b + 1], cell[b:b + 1], None if inp_coord is None else inp_coord[b:b + 1])
            outs.append(cmsr.render(self, state, coord[b:b + 1], self.cmsr_tables, bsize or self.eval_bsize,
                                    self.cmsr_stats, self.cmsr_exact_grid))
        return torch.cat(outs)

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

    def render_layer0(self, state, idx, rel, rel_cell):
        # [latent | rel | cell] @ W0^T + b0 as separate products: no concatenated copy, and the cell
        # term is computed once per query instead of once per neighbour
        layer = self.imnet.layers[0]
        latent = self.table(state, 'latent')
        d = latent.shape[1]
        W, b = layer.weight.to(rel.dtype), layer.bias.to(rel.dtype)
        x = torch.mm(gather(latent, idx), W[:, :d].t())
        x.addmm_(rel, W[:, d:d + 2].t())
        if self.cell_decode:
            per_query = torch.addmm(b, rel_cell, W[:, d + 2:d + 4].t())
        else:
            per_query = b
        x.view(-1, rel_cell.shape[0], x.shape[1]).add_(per_query)
        return x
