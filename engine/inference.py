"""Upscaling with a model: the inference session every entry point uses, over the rendering engine.

* :class:`Session` is built once per run from a checkpoint path (or ``'bicubic'``, or a model object), the
  device and the user's overrides. It owns the model (in eval mode on the device), its largest training
  scale (``capabilities.max_train_scale``, which ``models.load_model`` takes from the checkpoint's training
  config; ``--scale-max`` overrides it), the CMSR tables, the window padding, the tile policy and the
  memory check of the actual query plan. ``demo.py``, ``test.py``, ``init_cmsr.py``, ``api.py``,
  ``hubconf.py`` and ``scripts/export_onnx.py`` parse their flags, open a session and report.
* :class:`Upscaler` binds a model to explicit render options (no policy, no defaults taken from a
  checkpoint): the engine's building block for library code and benchmarks.

Both return ``(B, 3, H, W)`` predictions in [0, 1] for LR images ``(B, 3, h, w)`` in [0, 1]; the rendering
engine (``engine/render.py``) owns the query plan (window padding, coordinates, cell clipping, chunking)
and the strategies (Dense, Tiled, CMSR).
"""
import os

import torch

from . import render as _render
from .errors import CLIError, note
from .render import denormalise, normalise, window_pad  # noqa: F401  (public helpers)

#: The repository root. Paths of bundled files (``save/pretrained_models/...``, ``configs/...``) that do not
#: exist relative to the working directory are looked up here, so commands work from any directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where a bare checkpoint name (no folder) is also looked up: relative to the working directory, then to
#: ``REPO_ROOT`` (the published README runs ``--model edsr-b_lm-liif.pth`` from the repository root).
MODEL_SEARCH_DIRS = (os.path.join('save', 'pretrained_models'), 'save')
#: The bundled models and their CMSR tables (``REPO_ROOT/save/pretrained_models``).
BUNDLED_DIR = os.path.join(REPO_ROOT, 'save', 'pretrained_models')
#: The model ``demo.py`` and the API use when none is given (relative to ``REPO_ROOT``).
DEFAULT_MODEL = os.path.join('save', 'pretrained_models', 'edsr-b_lm-liif.safetensors')
#: ``tile='auto'``: inputs above this many LR pixels are encoded in tiles of ``AUTO_TILE`` (exact tiling only).
AUTO_TILE_ABOVE = 512 * 512
AUTO_TILE = 256
#: Tile context when no overlap makes tiling exact (attention encoders).
APPROXIMATE_OVERLAP = 16


def exact_overlap(model):
    """Tile overlap (LR pixels) that makes tiling exact, or None if no overlap can (attention encoders)."""
    return model.capabilities.exact_tile_overlap


def repo_relative(path):
    """``path`` if it exists (or is absolute, or is not in the repository either), else ``REPO_ROOT/path``:
    data folders of bundled configs (``load/...``) from any working directory (``resolve_path`` without the
    error). Never raises."""
    try:
        return resolve_path(path)
    except CLIError:
        return os.fspath(path)


def resolve_path(path, what='file', search_dirs=()):
    """The file a user path names, from any working directory (the one path policy of every entry point).

    In order: ``path`` as given, if it exists (relative to the working directory: a user's own file always
    wins); for a relative path, ``REPO_ROOT/path`` (bundled files and configs); for a bare file name, each
    of ``search_dirs`` relative to the working directory, then to ``REPO_ROOT``. Otherwise ``CLIError``
    "<what> not found: <path>" naming where it looked. Returns the path as given, or the found path.
    """
    path = os.fspath(path)
    if os.path.exists(path):
        return path
    looked = ['the working directory']
    if not os.path.isabs(path) and path:
        bare = os.path.dirname(path) == ''
        candidates = [os.path.join(folder, path) for folder in search_dirs if bare]
        candidates += [os.path.join(REPO_ROOT, path)]
        candidates += [os.path.join(REPO_ROOT, folder, path) for folder in search_dirs if bare]
        looked += [f'{d}/' for d in search_dirs if bare]
        for candidate in candidates:
            if os.path.exists(candidate):
                return candidate
        looked.append(f'the repository ({REPO_ROOT})')
    raise CLIError(f'{what} not found: {path} (looked in {", ".join(looked)})')


def resolve_model_path(path):
    """A checkpoint path (``resolve_path`` with bare names also looked up in ``save/pretrained_models`` and
    ``save``); ``None`` -> the default model ``DEFAULT_MODEL`` (its ``.pth`` twin where only that exists)."""
    if path is None:
        for candidate in (DEFAULT_MODEL, os.path.splitext(DEFAULT_MODEL)[0] + '.pth'):
            if os.path.isfile(os.path.join(REPO_ROOT, candidate)):
                return os.path.join(REPO_ROOT, candidate)
        raise CLIError(f'the default model {DEFAULT_MODEL} is not in the repository ({REPO_ROOT}); pass a model '
                       f'path (README, "Pretrained models")')
    return resolve_path(path, 'model file', MODEL_SEARCH_DIRS)


def load_model(path, device='cpu', script=None):
    """A model in eval mode on ``device`` from a checkpoint path (a bare name is looked up as
    ``resolve_model_path`` says) or ``'bicubic'``. The checkpoint's largest training scale is in the model's
    ``capabilities`` (``models.load_model``). A non-null ``cmsr_spec`` in the checkpoint's args (the
    published scripts stored it) is dropped with one note: CMSR is switched on by ``--cmsr`` only."""
    import models
    if path == 'bicubic':
        return models.make({'name': 'bicubic'}).to(device).eval()
    path = resolve_model_path(path)
    ckpt = models.load_checkpoint(path, map_location='cpu')
    args = ckpt['model'].get('args') or {}
    if isinstance(args, dict) and args.get('cmsr_spec') is not None:
        note(f'{path}: ignoring the cmsr_spec stored in the checkpoint; CMSR is used only with --cmsr', script)
        ckpt = dict(ckpt, model=dict(ckpt['model'], args=dict(args, cmsr_spec=None)))
    model = models.load_model(ckpt, map_location='cpu', where=path)
    check_sr_model(model, path)
    return model.to(device).eval()


def check_sr_model(model, where):
    """Refuse a model that cannot upscale (an encoder, an MLP: a building block saved on its own), in one
    line naming what it is, before anything asks it for its ``capabilities``."""
    from models.capabilities import SRModel
    if not isinstance(model, SRModel):
        import models
        name = getattr(model, 'spec', {}).get('name', type(model).__name__)
        raise models.CheckpointError(f'{where} holds a {name!r} model, a building block (encoder or MLP), not a '
                                     f'super-resolution model; use the checkpoint of a whole model (e.g. lmliif, '
                                     f'liif, igconv) that contains it')


def non_finite_error(model, label, what, scale=None):
    """The one-line ``ValueError`` for a prediction holding NaN/inf, saying what is known: the loaded weights
    are finite (checked on loading), so values overflow inside the model for this input; the largest weight
    magnitude tells weights of an implausible size (an exploded run) from an input or scale outside what
    the model handles. ``label``: how the model is named (its path); ``what``: the input (and scale)."""
    with torch.no_grad():
        largest = max((float(p.detach().abs().max()) for p in model.parameters()
                       if p.is_floating_point() and p.numel()), default=0.0)
    at = f' at scale {scale}' if scale is not None else ''
    cause = (f'weights as large as {largest:.3g} (an exploded training run?)' if largest > 1e6 else
             f'finite weights (largest magnitude {largest:.3g}): the values overflow for this input')
    return ValueError(f'{label}: non-finite output (NaN/inf) for {what}{at}; {cause}; nothing written')


def _non_negative_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{what} must be a non-negative integer, got {value!r}')
    return value


class Session:
    """One model, ready to upscale images the way every entry point does.

    Args:
        model: a registered SR model (moved to ``device``, eval mode); ``api.session_for`` unwraps a hub
            model's ``sr_model``.
        device: where it runs (default: where the model's parameters are, else the CPU).
        window: pad inputs to a multiple of this; None or 'auto': the encoder's own window
            (``capabilities.window``: 8 for SwinIR, else 0). ``published_window`` pads like the published
            LIIF/LTE/LMF test script (always 1..window pixels) instead of the minimal reflect padding.
        tile: LR tile size, None/0 (whole image) or 'auto' (``AUTO_TILE`` for inputs above
            ``AUTO_TILE_ABOVE`` LR pixels when tiling is exact for the model and CMSR is off).
        tile_overlap: LR pixels of context around tiles (default: exact for the encoder, else 16).
        chunk: queries per decoder call (default: the model's ``capabilities.chunk``).
        clip_cells: test-time cell clipping by ``max(scale / max_train_scale, 1)``.
        max_train_scale: overrides the model's largest training scale (``--scale-max``).
        cmsr: a Scale2Mod table file (path) or a validated table set: LM models render scales beyond the
            training range with CMSR; ``cmsr_exact_grid`` (default True) renders its levels on exact pixel
            grids, False on the published grid (border artefacts; reproduces the published numbers).
        render_mode: 'float32' (default) or 'bf16': the LM render MLP's precision (``set_render_mode``); bf16
            on a model without a modulated render MLP is refused; on a device without native bf16
            (``engine.profiling.native_bf16``) it runs emulated, with one note line.
        render_kernel: the LM render kernel (``set_render_mode``'s ``kernel``): 'auto' (default: the fused C
            kernel where it applies, else 'mm'), 'fused', 'mm', 'linear', 'onednn' or 'conv1x1'; ignored for
            models without a modulated render MLP.
        script: the entry point's name for note lines.

    ``stats`` (``engine.render.RenderStats``) accumulates over calls.
    """

    def __init__(self, model, device=None, *, window=None, published_window=False, tile=None, tile_overlap=None,
                 chunk=None, clip_cells=True, max_train_scale=None, cmsr=None, cmsr_exact_grid=True,
                 render_mode='float32', render_kernel='auto', script=None):
        if device is None:
            device = str(next(iter(model.parameters()), torch.empty(0)).device)
        self.device = device
        check_sr_model(model, 'the model')
        self.model = model.to(device).eval()
        caps = self.model.capabilities
        self.window = caps.window if window in (None, 'auto') else _non_negative_int(window, 'window')
        self.published_window = bool(published_window)
        self.tile = None if tile in (None, 0) else tile
        if self.tile not in (None, 'auto'):
            _render._positive_int(self.tile, 'tile')
        self.tile_overlap = None if tile_overlap is None else _non_negative_int(tile_overlap, 'tile overlap')
        self.chunk = chunk
        self.clip_cells = bool(clip_cells)
        self.max_train_scale = caps.max_train_scale if max_train_scale is None else max_train_scale
        if not (isinstance(self.max_train_scale, (int, float)) and self.max_train_scale > 0):
            raise ValueError(f'the largest training scale must be positive, got {self.max_train_scale!r}')
        self.tables = self._tables(cmsr)
        self.cmsr_exact_grid = bool(cmsr_exact_grid)
        self.render_mode = self._render_mode(render_mode, render_kernel, script)
        self.stats = _render.RenderStats()

    def _render_mode(self, mode, kernel, script):
        if mode not in ('float32', 'bf16'):
            raise ValueError(f"render mode must be 'float32' or 'bf16', got {mode!r}")
        caps = self.model.capabilities
        if kernel != 'auto' and not caps.modulated:
            raise ValueError(f'--render-kernel {kernel} applies to LM models (lmliif, lmlte, lmciaosr) only; this is a '
                             f'{caps.name or type(self.model).__name__} model')
        if kernel == 'fused' and torch.device(self.device).type != 'cpu':
            raise ValueError(f"--render-kernel fused runs on the CPU only, not on {self.device} (use 'auto')")
        if mode == 'bf16' and not caps.modulated:
            raise ValueError(f'--render-mode bf16 applies to LM models (lmliif, lmlte, lmciaosr) only; this is a '
                             f'{caps.name or type(self.model).__name__} model')
        if caps.modulated:          # validates the pair (e.g. 'fused' renders float32 only) before any note
            self.model.set_render_mode('bfloat16' if mode == 'bf16' else 'float32', kernel=kernel)
            if kernel == 'auto' and torch.device(self.device).type == 'cpu' and self.model.fused_unsupported() is None:
                from models.decoders import fused_render
                built, why = fused_render.status()
                if not built:
                    note(f'the fused render kernel is unavailable ({why}); rendering with the unfused path, '
                         f'several times slower', script)
        if mode == 'bf16':
            from .profiling import native_bf16
            native, why = native_bf16(self.device)
            if not native:
                note(f'--render-mode bf16 on {self.device}: {why}, slower than float32', script)
        return mode

    @classmethod
    def open(cls, source, device='cpu', script=None, **overrides):
        """A session for ``source``: a checkpoint path (bare names looked up, see ``resolve_model_path``),
        ``'bicubic'`` or a model object; ``overrides`` as the constructor's."""
        if isinstance(source, torch.nn.Module):
            return cls(source, device, script=script, **overrides)
        return cls(load_model(source, device, script), device, script=script, **overrides)

    def _tables(self, cmsr):
        if cmsr is None:
            return None
        from . import cmsr as cmsr_lib
        caps = self.model.capabilities
        if not caps.modulated:
            raise ValueError(f'--cmsr needs an LM model (lmliif, lmlte, lmciaosr); this is a '
                             f'{caps.name or type(self.model).__name__} model')
        if isinstance(cmsr, dict):
            return cmsr_lib.validate_tables(cmsr, 'CMSR tables', caps)
        return cmsr_lib.load_tables(resolve_path(cmsr, 'CMSR table'), caps)

    # ---- the plan of one request ----
    def tile_for(self, lr_size):
        """The tile size used for an input of ``lr_size`` (h, w), or None (whole image)."""
        if self.tile != 'auto':
            return self.tile
        h, w = lr_size
        exact = self.model.capabilities.kind != 'image' and exact_overlap(self.model) is not None
        return AUTO_TILE if (h * w > AUTO_TILE_ABOVE and exact and self.tables is None) else None

    def overlap_for(self, tile):
        """Tile context of ``tile`` (None without tiling)."""
        if tile is None:
            return None
        if self.tile_overlap is not None:
            return self.tile_overlap
        exact = exact_overlap(self.model)
        return exact if exact is not None else APPROXIMATE_OVERLAP

    def plan(self, lr_size, out_size):
        """The engine's query plan of an upscaling (h, w) -> (H, W) (``engine.render.QueryPlan``)."""
        return _render.QueryPlan.build(self.model.capabilities, lr_size, out_size, window=self.window,
                                       published_window=self.published_window,
                                       max_train_scale=self.max_train_scale, clip=self.clip_cells, chunk=self.chunk)

    def check(self, lr_size, out_size, batch=1, bit_depth=8, available=None):
        """Before any compute: refuse a target the model cannot produce, or one whose plan (its chunk, its
        tiles) cannot fit in the device's memory (one line naming the option that helps; ``available``: bytes,
        default what the device has free). Returns the memory estimate (``engine.memory.Estimate``)."""
        from .memory import check as check_memory
        _render.check_target(self.model.capabilities, lr_size, out_size)
        plan = self.plan(lr_size, out_size)
        tile = self.tile_for(lr_size)
        return check_memory(self.model, lr_size, out_size, device=self.device, chunk=plan.chunk, tile=tile,
                            tile_overlap=self.overlap_for(tile), batch=batch, bit_depth=bit_depth,
                            available=available)

    def __call__(self, img, size, progress=None):
        """Upscale ``img`` (B, 3, h, w) in [0, 1] to ``size`` (H, W): (B, 3, H, W) in [0, 1] on the session's
        device. ``progress``: a callable ``progress(n_done_queries)`` or None."""
        H, W = size
        if H < 1 or W < 1:
            raise ValueError(f'output size must be positive, got {W}x{H}')
        tile = self.tile_for(tuple(img.shape[-2:]))
        out, _ = _render.render(self.model, img.to(self.device), (H, W), window=self.window,
                                published_window=self.published_window, max_train_scale=self.max_train_scale,
                                clip=self.clip_cells, chunk=self.chunk, tile=tile,
                                tile_overlap=self.overlap_for(tile), cmsr_tables=self.tables,
                                cmsr_exact_grid=self.cmsr_exact_grid, progress=progress, stats=self.stats)
        return out

    def pad(self, x):
        """An LR batch padded as the plan pads it (``window``, ``published_window``)."""
        return window_pad(x, self.window, self.published_window)

    def describe(self):
        """What the session resolved, for summaries: window, cell clipping scale (None: off), device."""
        return {'window': self.window, 'cell_clip': self.max_train_scale if self.clip_cells else None,
                'device': str(self.device)}


class Upscaler:
    """Callable that upscales (B, 3, h, w) images in [0, 1] to a requested size with explicit options.

    Args:
        model: a registered model in eval mode (anything exposing ``capabilities``).
        bsize: queries per ``query`` call (default: the model's preferred chunk, ``capabilities.chunk``).
        tile: LR tile size (None: whole image); tile_overlap: LR pixels of context around each tile
            (default ``capabilities.exact_tile_overlap``, 16 when no overlap is exact).
        window: pad the LR input to a multiple of this (default 0: none); ``published_window`` pads like
            the LIIF/LTE/LMF test script (always 1..window pixels).
        clip_cells: test-time cell clipping by ``max(scale / max_train_scale, 1)``; ``max_train_scale``
            overrides the model's.
        cmsr_tables: a validated Scale2Mod table set (``engine.cmsr.load_tables``): LM models render
            scales beyond the training range with CMSR; ``cmsr_exact_grid`` (default True) renders levels on
            exact pixel grids, False on the published grid.
        progress: a callable ``progress(n_done_queries)`` or None.

    ``stats`` (``engine.render.RenderStats``) accumulates over calls: queries, ``query`` calls and their
    largest size, decoder MACs and, with CMSR, the rendered fraction.
    """

    def __init__(self, model, bsize=None, tile=None, tile_overlap=None, window=0, published_window=False,
                 clip_cells=True, progress=None, cmsr_tables=None, cmsr_exact_grid=True, max_train_scale=None):
        self.model = model
        self.options = dict(chunk=bsize, tile=tile, tile_overlap=tile_overlap, window=window or 0,
                            published_window=published_window, clip=clip_cells, max_train_scale=max_train_scale,
                            cmsr_tables=cmsr_tables, cmsr_exact_grid=cmsr_exact_grid, progress=progress)
        self.stats = _render.RenderStats()
        if tile is not None and tile_overlap is None:
            self.options['tile_overlap'] = exact_overlap(model) if exact_overlap(model) is not None \
                else APPROXIMATE_OVERLAP
        caps = model.capabilities
        if cmsr_tables is not None and not caps.modulated:
            raise ValueError(f'CMSR needs an LM model (lmliif, lmlte, ...); this is {caps.name or type(model).__name__}')

    @property
    def tile(self):
        return self.options['tile']

    def __call__(self, img, size):
        H, W = size
        if H < 1 or W < 1:
            raise ValueError(f'output size must be positive, got {W}x{H}')
        out, _ = _render.render(self.model, img, (H, W), stats=self.stats, **self.options)
        return out
