"""Upscaling an image to any size with any model, in bounded memory.

``Upscaler(model)(img, (H, W))`` returns the (B, 3, H, W) prediction in [0, 1] for an LR image
(B, 3, h, w) in [0, 1]. How it gets there:

* Implicit models (LIIF, LTE, MetaSR, LM-*): the encoder runs once (per tile), then the target grid is
  queried in bands of output rows (``bsize`` queries at a time), so neither coordinates nor decoder
  activations for the whole output are ever held at once. Cells are clipped per axis by
  ``max(scale / max_train_scale, 1)`` (test-time cell clipping of LIIF/LTE/LMF). LM models with a CMSR
  table and a scale beyond the training range render through CMSR (whole image, no tiling).
* Grid models (IGConv): integer scales through their own ``forward(inp, scale)``; models with an
  ``upscale_to(inp, size)`` method (the bicubic baseline) produce the whole image directly.
* ``window`` (SwinIR): the LR input is reflect-padded to a multiple of the window and the target pixels
  are queried at their positions inside the padded frame (identical points to the published protocol
  of querying the padded HR grid and cropping it).
* ``tile`` / ``tile_overlap`` (LR pixels): the encoder sees overlapping tiles and each tile answers the
  queries whose LR position lies in its core. With an overlap of at least the encoder's receptive
  radius plus the decoder's reach (``exact_overlap(model)``), the result equals the untiled one up to
  float rounding for CNN encoders; for SwinIR (shifted-window attention) tiling is an approximation.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from utils.coords import coord_axis

NORM_MEAN, NORM_STD = 0.5, 0.5


def normalise(img):
    return (img - NORM_MEAN) / NORM_STD


def denormalise(x):
    return x * NORM_STD + NORM_MEAN


def is_grid_model(model):
    """Models that produce whole integer-scale images instead of answering coordinate queries."""
    return bool(getattr(model, 'integer_scales_only', False))


def receptive_radius(encoder):
    """How many LR pixels beyond a pixel its encoder feature depends on (None: unbounded/unknown)."""
    radius = getattr(encoder, 'receptive_radius', None)
    return radius() if callable(radius) else radius


def decoder_reach(model):
    """LR pixels a query reads beyond the pixel containing it: 1 for the ensemble neighbour, +1 for a
    3x3 unfold or 3x3 coef/freq convs, +1 for a generated 3x3 conv."""
    return 3


def exact_overlap(model):
    """Tile overlap (LR pixels) that makes tiling exact, or None if no overlap can (attention encoders)."""
    r = receptive_radius(model.encoder) if hasattr(model, 'encoder') else 0
    return None if r is None else r + decoder_reach(model)


def window_pad(x, window, published=False):
    """Reflect-pad bottom/right to a multiple of ``window``.

    ``published=True`` reproduces the LIIF/LTE test script: it always adds 1..window pixels (never 0),
    by mirroring with edge repetition.
    """
    h, w = x.shape[-2:]
    if published:
        ph, pw = (h // window + 1) * window - h, (w // window + 1) * window - w
        x = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :h + ph, :]
        return torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, :w + pw]
    ph, pw = (-h) % window, (-w) % window
    return F.pad(x, (0, pw, 0, ph), mode='reflect') if (ph or pw) else x


def target_axis(n_out, n_lr, n_frame):
    """Row (or column) centres of an ``n_out``-pixel target grid over ``n_lr`` LR pixels, expressed in
    a frame of ``n_frame`` >= n_lr LR pixels (padding at the end). Float32, like ``make_coord``.

    When the padded target grid has an integer size it is ``make_coord`` of that grid, cropped.
    """
    full = n_out * n_frame / n_lr
    if abs(full - round(full)) < 1e-9:
        return coord_axis(int(round(full)))[:n_out]
    u = (np.arange(n_out, dtype=np.float64) + 0.5) * n_lr / n_out          # LR pixel units
    return torch.from_numpy(2 * u / n_frame - 1).float()


def tiles(n, tile):
    """Core intervals [a, b) covering 0..n in steps of ``tile``."""
    return [(a, min(a + tile, n)) for a in range(0, n, tile)]


def rows_in(lo, hi, n_out, n_lr):
    """Target indices whose centre lies in LR interval [lo, hi): a contiguous range."""
    u = (np.arange(n_out, dtype=np.float64) + 0.5) * n_lr / n_out
    return int(np.searchsorted(u, lo, 'left')), int(np.searchsorted(u, hi, 'left'))


class Upscaler:
    """Callable that upscales (B, 3, h, w) images in [0, 1] to a requested size; see module docstring.

    Args:
        model: a registered model in eval mode.
        bsize: queries per decoder call (memory bound), default 65536.
        tile: LR tile size (None: whole image).
        tile_overlap: LR pixels of context around each tile (default ``exact_overlap(model)``).
        window: pad the LR input to a multiple of this (SwinIR: 8); ``published_window`` pads like the
            LIIF/LTE test script (always 1..window pixels).
        clip_cells: apply test-time cell clipping (max training scale = ``model.max_train_scale``).
        progress: a callable ``progress(n_done_rows)`` or None.
    """

    def __init__(self, model, bsize=None, tile=None, tile_overlap=None, window=0, published_window=False,
                 clip_cells=True, progress=None):
        self.model = model
        self.bsize = bsize or 65536
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.window = window
        self.published_window = published_window
        self.clip_cells = clip_cells
        self.progress = progress
        if tile is not None and tile_overlap is None:
            ov = exact_overlap(model)
            self.tile_overlap = ov if ov is not None else 16

    # ------------------------------------------------------------------------------------------
    def __call__(self, img, size):
        H, W = size
        h, w = img.shape[-2:]
        if H < 1 or W < 1:
            raise ValueError(f'output size must be positive, got {H}x{W}')
        with torch.no_grad():
            x = normalise(img)
            if hasattr(self.model, 'upscale_to'):
                out = self.model.upscale_to(x, (H, W))
            elif is_grid_model(self.model):
                out = self._grid_model(x, (H, W))
            elif self._uses_cmsr(x, H, W):
                out = self._cmsr(x, (H, W))
            elif self.tile is None:
                out = self._implicit(x, (H, W), (0, h), (0, w), x.new_empty(x.shape[0], 3, H, W))
            else:
                out = x.new_empty(x.shape[0], 3, H, W)
                for a, b in tiles(h, self.tile):
                    for c, d in tiles(w, self.tile):
                        self._implicit(x, (H, W), (a, b), (c, d), out)
            return out.mul_(NORM_STD).add_(NORM_MEAN).clamp_(0, 1)   # in place: outputs can be large

    # ------------------------------------------------------------------------------------------
    def _cells(self, H, W, h, w, hf, wf):
        """Cell of the target grid in a frame of hf x wf LR pixels (clipped per axis)."""
        sy, sx = H / h, W / w
        cy, cx = 2 / H * h / hf, 2 / W * w / wf
        if self.clip_cells:
            m = getattr(self.model, 'max_train_scale', 4)
            cy, cx = cy * max(sy / m, 1), cx * max(sx / m, 1)
        return cy, cx

    def _frame(self, x):
        if self.window:
            return window_pad(x, self.window, self.published_window)
        return x

    def _implicit(self, x, size, rows, cols, out):
        """Answer the target pixels whose LR position lies in core [rows) x [cols) into ``out``."""
        H, W = size
        h, w = x.shape[-2:]
        ov = self.tile_overlap if self.tile is not None else 0
        r0, r1 = max(rows[0] - ov, 0), min(rows[1] + ov, h)
        c0, c1 = max(cols[0] - ov, 0), min(cols[1] + ov, w)
        xt = self._frame(x[:, :, r0:r1, c0:c1])
        hf, wf = xt.shape[-2:]
        i0, i1 = rows_in(rows[0], rows[1], H, h)
        j0, j1 = rows_in(cols[0], cols[1], W, w)
        if i1 <= i0 or j1 <= j0:
            return out
        if (r0, r1, c0, c1) == (0, h, 0, w):
            ys, xs = target_axis(H, h, hf)[i0:i1], target_axis(W, w, wf)[j0:j1]
        else:   # tile frame: LR pixel units shifted by the tile origin
            uy = (np.arange(i0, i1, dtype=np.float64) + 0.5) * h / H - r0
            ux = (np.arange(j0, j1, dtype=np.float64) + 0.5) * w / W - c0
            ys, xs = torch.from_numpy(2 * uy / hf - 1).float(), torch.from_numpy(2 * ux / wf - 1).float()
        ys, xs = ys.to(x.device), xs.to(x.device)
        B = x.shape[0]
        cy, cx = self._cells(H, W, h, w, hf, wf)
        cell1 = x.new_tensor([cy, cx]).view(1, 1, 2).expand(B, 1, 2)
        state = self.model.prepare(xt, cell1)
        band = max(1, self.bsize // xs.numel())
        for a in range(0, ys.numel(), band):
            yb = ys[a:a + band]
            coord = torch.stack(torch.meshgrid(yb, xs, indexing='ij'), -1).view(1, -1, 2).expand(B, -1, 2)
            cell = cell1.expand(B, coord.shape[1], 2)
            pred = self.model.query(state, coord, cell)
            out[:, :, i0 + a:i0 + a + yb.numel(), j0:j1] = pred.view(B, yb.numel(), xs.numel(), 3).permute(0, 3, 1, 2)
            if self.progress is not None:
                self.progress(yb.numel() * xs.numel())
        return out

    def _uses_cmsr(self, x, H, W):
        return (getattr(self.model, 'cmsr_tables', None) is not None
                and H * W > self.model.max_train_scale ** 2 * x.shape[-2] * x.shape[-1])

    def _cmsr(self, x, size):
        if self.tile is not None:
            raise ValueError('CMSR renders the whole image at once; it cannot be combined with tiling')
        H, W = size
        h, w = x.shape[-2:]
        xt = self._frame(x)
        hf, wf = xt.shape[-2:]
        ys, xs = target_axis(H, h, hf).to(x.device), target_axis(W, w, wf).to(x.device)
        B = x.shape[0]
        coord = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).view(1, -1, 2).expand(B, -1, 2)
        cy, cx = self._cells(H, W, h, w, hf, wf)
        cell = x.new_tensor([cy, cx]).view(1, 1, 2).expand(B, H * W, 2)
        pred = self.model(xt, coord, cell, bsize=self.bsize)
        if self.progress is not None:
            self.progress(H * W)
        return pred.view(B, H, W, 3).permute(0, 3, 1, 2)

    def _grid_model(self, x, size):
        H, W = size
        h, w = x.shape[-2:]
        check = getattr(self.model, 'check_scale', None)
        scale = check(H / h, W / w) if check is not None else H // h
        if H != scale * h or W != scale * w:
            raise ValueError(f'{type(self.model).__name__} produces integer multiples of the input size; '
                             f'{H}x{W} is not {scale} x {h}x{w}')
        if self.tile is None:
            out = self.model(self._frame(x), scale)[:, :, :H, :W]
        else:
            out = x.new_empty(x.shape[0], 3, H, W)
            ov = self.tile_overlap
            for a, b in tiles(h, self.tile):
                for c, d in tiles(w, self.tile):
                    r0, c0 = max(a - ov, 0), max(c - ov, 0)
                    xt = x[:, :, r0:min(b + ov, h), c0:min(d + ov, w)]
                    y = self.model(self._frame(xt), scale)
                    out[:, :, a * scale:b * scale, c * scale:d * scale] = \
                        y[:, :, (a - r0) * scale:(b - r0) * scale, (c - c0) * scale:(d - c0) * scale]
        if self.progress is not None:
            self.progress(H * W)
        return out
