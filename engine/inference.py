"""Upscaling an image to any size with any model, in bounded memory: the public entry point.

``Upscaler(model, ...)(img, (H, W))`` returns the (B, 3, H, W) prediction in [0, 1] for an LR image
(B, 3, h, w) in [0, 1]. It is a thin façade over the rendering engine (``engine/render.py``), which
owns the query plan (window padding, coordinates, cell clipping, chunking) and the strategies (Dense,
Tiled, CMSR); ``test.py``, ``demo.py``, ``init_cmsr.py`` and the scripts all come through here.
"""
from models.capabilities import Capabilities  # noqa: F401  (re-exported for callers' type hints)

from . import render as _render
from .render import denormalise, normalise, window_pad  # noqa: F401  (public helpers)


def exact_overlap(model):
    """Tile overlap (LR pixels) that makes tiling exact, or None if no overlap can (attention encoders)."""
    return model.capabilities.exact_tile_overlap


class Upscaler:
    """Callable that upscales (B, 3, h, w) images in [0, 1] to a requested size.

    Args:
        model: a registered model in eval mode (anything exposing ``capabilities``).
        bsize: queries per ``query`` call (default: the model's preferred chunk, ``capabilities.chunk``).
        tile: LR tile size (None: whole image); tile_overlap: LR pixels of context around each tile
            (default ``capabilities.exact_tile_overlap``, 16 when no overlap is exact).
        window: pad the LR input to a multiple of this (SwinIR: 8); ``published_window`` pads like the
            LIIF/LTE/LMF test script (always 1..window pixels).
        clip_cells: test-time cell clipping by ``max(scale / max_train_scale, 1)``; ``max_train_scale``
            overrides the model's.
        cmsr_tables: a validated Scale2Mod table set (``engine.cmsr.load_tables``): LM models render
            scales beyond the training range with CMSR; ``cmsr_exact_grid`` renders levels on exact grids.
        progress: a callable ``progress(n_done_queries)`` or None.

    ``stats`` (``engine.render.RenderStats``) accumulates over calls: queries, ``query`` calls and their
    largest size, decoder MACs and, with CMSR, the rendered fraction.
    """

    def __init__(self, model, bsize=None, tile=None, tile_overlap=None, window=0, published_window=False,
                 clip_cells=True, progress=None, cmsr_tables=None, cmsr_exact_grid=False, max_train_scale=None):
        self.model = model
        self.bsize = bsize
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.window = window or 0
        self.published_window = published_window
        self.clip_cells = clip_cells
        self.max_train_scale = max_train_scale
        self.cmsr_tables = cmsr_tables
        self.cmsr_exact_grid = cmsr_exact_grid
        self.progress = progress
        self.stats = _render.RenderStats()
        caps = model.capabilities
        if tile is not None and tile_overlap is None:
            self.tile_overlap = caps.exact_tile_overlap if caps.exact_tile_overlap is not None else 16
        if cmsr_tables is not None and not caps.modulated:
            raise ValueError(f'CMSR needs an LM model (lmliif, lmlte, ...); this is {caps.name or type(model).__name__}')

    def __call__(self, img, size):
        H, W = size
        if H < 1 or W < 1:
            raise ValueError(f'output size must be positive, got {H}x{W}')
        out, _ = _render.render(self.model, img, (H, W), window=self.window, published_window=self.published_window,
                                max_train_scale=self.max_train_scale, clip=self.clip_cells, chunk=self.bsize,
                                tile=self.tile, tile_overlap=self.tile_overlap, cmsr_tables=self.cmsr_tables,
                                cmsr_exact_grid=self.cmsr_exact_grid, progress=self.progress, stats=self.stats)
        return out
