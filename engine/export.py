"""Export-friendly graph forms of the SR models, for ONNX (``scripts/export_onnx.py``) and ONNX Runtime.

A plain ``torch.onnx.export`` of a model bakes the LR feature size into the graph (the pixel grid of
``LRGrid`` is built from Python numbers), so other input sizes give wrong results. The wrappers here read
every size from the tensors themselves (``Shape`` ops in the graph) and compute the geometry with the same
floating-point operations as the models and the engine, so that one exported graph serves any input size.

Two forms:

* :class:`FixedScaleGraph` (``form='fixed'``): ``image (B, 3, h, w) -> (B, 3, H, W)``, both in [0, 1],
  for one scale ``(sy, sx)`` fixed at export time and any input size, ``H = floor(h * sy + 1e-9)``,
  ``W = floor(w * sx + 1e-9)`` (what ``demo.py --scale`` computes). This is the form ONNX image upscalers
  (chaiNNer, ...) expect. Inside the graph: the target grid of pixel centres (``utils.coords`` convention:
  (row, col), pixel k of n at ``-1 + (2k + 1) / n``), the cell ``(2 / H, 2 / W)`` clipped per axis by
  ``max(scale / max_train_scale, 1)`` (the engine's test-time cell clipping), the model's prepare/query.
  IGConv models (integer scales only) are folded at their scale (``IGConvSR.instantiate``).
* :class:`ArbitraryScaleGraph` (``form='arbitrary'``, implicit models): ``image (B, 3, h, w)`` in
  [0, 1], ``coord (B, Q, 2)`` and ``cell (B, Q, 2)`` (row, col, in the (-1, 1) frame of the input; cells
  as the engine passes them, i.e. already clipped) ``-> rgb (B, Q, 3)`` in [0, 1]. Any size, scale and
  query set; :func:`grid_inputs` builds the inputs of a full target grid, :func:`run_tiled` renders large
  outputs in tiles with the engine's exact tiling.
* :class:`IGConvScaleGraph` (``form='arbitrary'`` for IGConv SR models): ``image``, ``scale`` (int64
  scalar, an integer >= 1) ``-> (B, 3, r h, r w)``; the kernels are generated in the graph.

Both forms normalise the input as ``(x - 0.5) / 0.5``, denormalise the output and clamp it to [0, 1].
The models' queries run unchunked in the graph (all H x W queries at once): memory grows with the output,
so large outputs should be rendered in tiles (:func:`run_tiled`, README "ONNX export").

Export-friendly equivalents (each tested equal to the model in ``tests/test_onnx.py``): :class:`DynGrid`
replaces ``LRGrid`` (same arithmetic, sizes from ``Shape``); LM models run their own ``latent_state`` on a
``DynGrid`` and their explicit query path (the training path: one gathered modulation row per query, no
in-place updates of views) instead of the per-layer fast path (equal up to float rounding, ~1e-7);
MetaSR's query is rewritten without ``new_tensor`` of sizes. CMSR is a rendering strategy of the engine and
is not part of the graphs.
"""
import math

import numpy as np
import torch
from torch import nn

from models.decoders.implicit import ENSEMBLE_OFFSETS, EPS_SHIFT, ImplicitDecoder, LRGrid, State, blend, \
    flat_index, gather, pixel_table
from models.decoders.liif import LIIF, unfold3x3
from models.decoders.lmliif import LMLIIF
from models.decoders.lmlte import LMLTE
from models.decoders.lte import LTE
from models.decoders.metasr import MetaSR
from models.upsamplers.igconv import check_integer_scale
from models.upsamplers.sr import IGConvSR

FORMS = ('fixed', 'arbitrary')
NORM_MEAN, NORM_STD = 0.5, 0.5


class ExportError(ValueError):
    """A model, form or scale that cannot be exported (one-line message naming the input)."""


# ------------------------------------------------------------------------------------------------------
# sizes and geometry read from tensors
# ------------------------------------------------------------------------------------------------------
def spatial_size(x):
    """(h, w) of a (..., h, w) tensor as 0-d int64 tensors (``Shape`` + ``Gather`` in an exported graph)."""
    shape = torch._shape_as_tensor(x)
    return shape[-2], shape[-1]


def axis_centres(n, like):
    """``utils.coords.coord_axis(n)`` for a 0-d tensor ``n``, bit-identical: ``fl32(-1 + r) + fl32(2r) * k``
    with ``r = 1 / n`` in float64, k = 0..n-1. Shape (n,), dtype/device of ``like``."""
    r = 2.0 / (2 * n.to(torch.float64))
    k = torch.arange(n, device=like.device).to(like.dtype)
    return (-1.0 + r).to(like.dtype) + (2 * r).to(like.dtype) * k


class DynGrid(LRGrid):
    """``models.decoders.implicit.LRGrid`` (regular grid, no ``inp_coord``) with the size read from the
    feature map, so that it follows the input size in an exported graph: ``size`` holds 0-d int64 tensors
    and the pixel-centre axes are built from them (:func:`axis_centres`); every lookup is ``LRGrid``'s own
    code, so results are bit-identical to ``LRGrid``. Also ``inv`` = (1 / h, 1 / w) for MetaSR."""

    def __init__(self, feat):       # LRGrid.__init__ builds the same constants from Python numbers
        h, w = spatial_size(feat)
        self.size = (h, w)
        self.feat_coord = None
        self.axis_y, self.axis_x = axis_centres(h, feat), axis_centres(w, feat)
        hw = torch.stack([h, w]).to(feat.device)
        self.scale = hw.to(feat.dtype)                   # (h, w)
        self.half = self.scale / 2                       # (h / 2, w / 2), exact in float32
        hwd = hw.to(torch.float64)
        self.inv = (1.0 / hwd).to(feat.dtype)            # 1 / h, 1 / w (MetaSR's top-left corner)
        offsets = torch.tensor(ENSEMBLE_OFFSETS, dtype=torch.float64, device=feat.device)
        self.ensemble_shifts = (offsets / hwd + EPS_SHIFT).to(feat.dtype).view(-1, 1, 1, 2)


# ------------------------------------------------------------------------------------------------------
# per-model export forms of prepare / query
# ------------------------------------------------------------------------------------------------------
class ImplicitGraph(nn.Module):
    """prepare/query of an implicit model in export-friendly form (shares the model's modules)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def prepare(self, inp, cell):
        raise NotImplementedError

    def query(self, state, coord, cell):
        return self.model.query(state, coord, cell)


class LIIFGraph(ImplicitGraph):
    def prepare(self, inp, cell):
        m = self.model
        feat = m.encoder(inp)
        if m.imnet is not None and m.feat_unfold:
            feat = unfold3x3(feat)
        return State(table=pixel_table(feat), grid=DynGrid(feat))


class LTEGraph(ImplicitGraph):
    def prepare(self, inp, cell):
        m = self.model
        feat = m.encoder(inp)
        return State(inp=inp, coef=pixel_table(m.coef(feat)), freq=pixel_table(m.freq(feat)), grid=DynGrid(feat))


class MetaSRGraph(ImplicitGraph):
    def prepare(self, inp, cell):
        feat = unfold3x3(self.model.encoder(inp))
        return State(table=pixel_table(feat), grid=DynGrid(feat))

    def query(self, state, coord, cell):
        """``MetaSR.query`` with the LR size taken from the grid tensors."""
        grid = state.grid
        h, w = grid.size
        B, Q = coord.shape[:2]
        shifted = coord - cell / 2
        index, centre = grid.lookup(shifted, shift=(1e-6, 1e-6))
        top_left = torch.stack([centre[..., 0] - grid.inv[0], centre[..., 1] - grid.inv[1]], -1)
        rel = (shifted - top_left) * grid.half
        r = cell[..., :1] * grid.half[0]
        weights = self.model.imnet(torch.cat([rel, r], -1)).view(B * Q, -1, 3)
        feat = gather(state.table, flat_index(index, h * w)).view(B * Q, 1, -1)
        return torch.bmm(feat, weights).view(B, Q, 3)


class LMGraph(ImplicitGraph):
    """LM models: ``prepare`` is the model's own per-pixel work (``latent_state``) on a :class:`DynGrid`;
    ``query`` the explicit path (what training runs), which exports without in-place view ops."""

    def prepare(self, inp, cell):
        m = self.model
        feat = m.encoder(inp)
        return m.latent_state(inp, feat, DynGrid(feat), cell)

    def render_input(self, state, idx, rel, rel_cell):
        """The model's ``render_input`` (``rel_cell`` here already has one row per neighbour and query)."""
        return self.model.render_input(state, idx, rel, rel_cell)

    def query(self, state, coord, cell):
        m = self.model
        grid = state.grid
        nb = grid.neighbours(coord, m.local_ensemble)
        K = nb.index.shape[0]
        h, w = grid.size
        idx = flat_index(nb.index, h * w)
        rel = nb.rel_coord.reshape(-1, 2)
        rel_cell = grid.relative_cell(cell).unsqueeze(0).expand(K, -1, -1, -1).reshape(-1, 2)
        x = self.render_input(state, idx, rel, rel_cell)
        preds = m.imnet(x, gather(state.mod, idx))
        out = blend(preds.view(*nb.index.shape, -1), nb.weight)
        skip = m.skip(state, coord)
        return out if skip is None else out + skip


class LMLTEGraph(LMGraph):
    def render_input(self, state, idx, rel, rel_cell):
        """``LMLTE.render_input`` without in-place updates of views."""
        m = self.model
        t = gather(state.basis, idx)
        n = m.phase.out_features if not m.mod_input else m.imphase.out_features
        amp, fy, fx = t[:, :2 * n], t[:, 2 * n:3 * n], t[:, 3 * n:4 * n]
        g = fy * rel[:, :1] + fx * rel[:, 1:]
        if m.cell_decode:
            layer = m.imphase if m.mod_input else m.phase
            g = g + torch.nn.functional.linear(rel_cell, layer.weight)
        g = g * math.pi
        return torch.cat([torch.cos(g), torch.sin(g)], dim=1) * amp


#: Implicit model classes with an export form (subclasses first: LM models are ImplicitDecoders too).
GRAPHS = ((LMLIIF, LMGraph), (LMLTE, LMLTEGraph), (LIIF, LIIFGraph), (LTE, LTEGraph), (MetaSR, MetaSRGraph))


def implicit_graph(model):
    """The export form of an implicit model's prepare/query; ExportError for models without one."""
    for cls, graph in GRAPHS:
        if type(model) is cls:
            return graph(model)
    name = getattr(model, 'registry_name', None) or type(model).__name__
    supported = ', '.join(c.__name__ for c, _ in GRAPHS)
    raise ExportError(f'model {name!r}: no ONNX export form (supported implicit models: {supported}; '
                      f'IGConv SR models in the fixed form)')


def _check_exportable(model):
    caps = model.capabilities
    if caps.window:
        raise ExportError(f'model {caps.name or type(model).__name__!r}: its encoder pads inputs to a window of '
                          f'{caps.window} (SwinIR); window padding is not part of the exported graphs yet')
    if caps.input_range != 'normalised':
        raise ExportError(f"model {caps.name!r}: input_range {caps.input_range!r} is not supported by the export "
                          f"(only 'normalised')")
    return caps


def parse_export_scale(scale):
    """A scale for the fixed form: a number, a (rows, cols) pair or a string ('3.5', '3,2') -> (sy, sx)."""
    from utils.coords import parse_scale
    try:
        if isinstance(scale, str):
            sy, sx = parse_scale(scale)
        elif isinstance(scale, (tuple, list)):
            if len(scale) != 2:
                raise ValueError('a pair (rows, cols) is needed')
            sy, sx = float(scale[0]), float(scale[1])
        else:
            sy = sx = float(scale)
    except (TypeError, ValueError) as e:
        raise ExportError(f'scale {scale!r} is not a number or a (rows, cols) pair ({e})') from None
    for s in (sy, sx):
        if not math.isfinite(s) or s < 1:
            raise ExportError(f'scale {scale!r} must be finite and >= 1 (this upscales)')
    return sy, sx


# ------------------------------------------------------------------------------------------------------
# the two graph forms
# ------------------------------------------------------------------------------------------------------
class FixedScaleGraph(nn.Module):
    """``image (B, 3, h, w) in [0, 1] -> (B, 3, floor(h sy + 1e-9), floor(w sx + 1e-9)) in [0, 1]``.

    Implicit models: the full target grid is queried at once (see the module docstring). IGConv SR
    models: folded at their integer scale. Sizes follow the input (dynamic h, w, batch).
    """

    def __init__(self, model, scale, max_train_scale=None):
        super().__init__()
        self.scale = parse_export_scale(scale)
        caps = _check_exportable(model)
        self.kind = caps.kind
        if isinstance(model, IGConvSR):
            try:
                r = check_integer_scale(*self.scale)
            except ValueError as e:
                raise ExportError(f'scale {scale!r}: {e}') from None
            self.scale = (float(r), float(r))
            self.grid_model = model.instantiate(r)
            self.r = r
            self.graph = None
        elif isinstance(model, ImplicitDecoder):
            self.graph = implicit_graph(model)
            m = caps.max_train_scale if max_train_scale is None else max_train_scale
            if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
                raise ExportError(f'max_train_scale must be a positive number, got {m!r}')
            self.max_train_scale = float(m)
        else:
            raise ExportError(f'model {caps.name or type(model).__name__!r} (kind {caps.kind!r}) has no export form')

    def forward(self, image):
        x = (image - NORM_MEAN) / NORM_STD
        if self.graph is None:
            out = self.grid_model(x)
            return (out * NORM_STD + NORM_MEAN).clamp(0, 1)
        B = x.shape[0]
        h, w = spatial_size(x)
        hd, wd = h.to(torch.float64), w.to(torch.float64)
        sy, sx = self.scale
        H = torch.floor(hd * sy + 1e-9).long()
        W = torch.floor(wd * sx + 1e-9).long()
        ys, xs = axis_centres(H, x), axis_centres(W, x)
        coord = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).reshape(1, -1, 2).expand(B, -1, 2)
        Hd, Wd = H.to(torch.float64), W.to(torch.float64)
        # the engine's cell: (2 / H * h / h_frame) * max((H / h) / max_train_scale, 1), per axis, in float64
        m = self.max_train_scale
        cy = 2 / Hd * hd / hd * torch.clamp(Hd / hd / m, min=1.0)
        cx = 2 / Wd * wd / wd * torch.clamp(Wd / wd / m, min=1.0)
        cell = torch.stack([cy, cx]).to(device=x.device, dtype=x.dtype).view(1, 1, 2).expand(B, coord.shape[1], 2)
        state = self.graph.prepare(x, cell)
        pred = self.graph.query(state, coord, cell)
        out = pred.reshape(B, H, W, 3).permute(0, 3, 1, 2)
        return (out * NORM_STD + NORM_MEAN).clamp(0, 1)


class ArbitraryScaleGraph(nn.Module):
    """``image (B, 3, h, w) in [0, 1], coord (B, Q, 2), cell (B, Q, 2) -> (B, Q, 3) in [0, 1]``."""

    io_key = 'arbitrary'

    def __init__(self, model):
        super().__init__()
        caps = _check_exportable(model)
        if caps.kind != 'implicit':
            raise ExportError(f"model {caps.name or type(model).__name__!r}: the coordinate form needs an "
                              f"implicit model (kind {caps.kind!r})")
        self.graph = implicit_graph(model)

    def forward(self, image, coord, cell):
        x = (image - NORM_MEAN) / NORM_STD
        state = self.graph.prepare(x, cell)
        pred = self.graph.query(state, coord, cell)
        return (pred * NORM_STD + NORM_MEAN).clamp(0, 1)


def _shuffle(y, r):
    """``F.pixel_shuffle(y, r)`` for a run-time ``r`` (ONNX DepthToSpace needs a constant block size)."""
    B, C, h, w = y.shape
    c = C // (r * r)
    return y.reshape(B, c, r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, c, h * r, w * r)


def _conv_same(feat, weight, k):
    """``F.conv2d(feat, weight, padding=k // 2)`` as unfold + matmul: the ONNX exporter cannot export a
    convolution whose weight has a run-time shape. Channel order of ``unfold``: ``c * k * k + u * k + v``,
    the row-major flattening of a (C, k, k) kernel."""
    import torch.nn.functional as F
    B, C, h, w = feat.shape
    cols = F.unfold(feat, k, padding=k // 2)                        # (B, C k k, h w)
    out = torch.matmul(weight.reshape(weight.shape[0], -1), cols)   # (B, out, h w)
    return out.reshape(B, -1, h, w)


class IGConvScaleGraph(nn.Module):
    """IGConv SR models at a scale given at run time (the arbitrary form of grid models):
    ``image (B, 3, h, w) in [0, 1], scale int64 () -> (B, 3, r h, r w) in [0, 1]``.

    The kernels are generated inside the graph from ``r`` (``ImplicitKernelGenerator.generate`` with the
    sub-pixel grid, phase input ``2 / min(r, max_s)``, FGRep), followed by the generated convolution (as
    unfold + matmul), the pixel shuffle (as reshapes) and, for IGConv+, IGSample. ``scale`` must be an integer >= 1 (the graph cannot check it:
    ``scripts/export_onnx.py`` documents it in the model's metadata).
    """

    io_key = 'integer'

    def __init__(self, model):
        super().__init__()
        self.model = model

    @staticmethod
    def kernel(gen, r):
        """``gen._final_kernel(r)`` for a 0-d int64 tensor ``r`` (no chunking over kernel elements)."""
        half = gen.width // 2
        freq = gen.freq[:, :, 0, 0]
        t = axis_centres(r, freq)
        y, x = torch.meshgrid(t, t, indexing='ij')
        phase_in = (2.0 / torch.clamp(r.to(torch.float64), max=float(int(gen.max_s)))).to(freq.dtype)
        phi = gen.phase.weight.view(half) * phase_in + gen.phase.bias
        theta = (freq[:, None, None, :half] * x[..., None] + freq[:, None, None, half:] * y[..., None]) + phi
        theta = theta * math.pi
        feats = torch.cat([torch.cos(theta), torch.sin(theta)], dim=-1)
        E = feats.shape[0]
        if gen.groups > 1:
            feats = feats.reshape(E, r, r, gen.width // gen.groups, gen.groups).transpose(-1, -2)
            feats = feats.reshape(E, r, r, gen.width)
        feats = feats * gen.amplitude[:, None, None, :, 0, 0]
        out = gen.mlp(feats)
        k, O = gen.kernel_size, gen.out_per_pos
        out = out.reshape(gen.dim, k, k, r, r, O).permute(5, 3, 4, 0, 1, 2).reshape(O * r * r, gen.dim, k, k)
        if gen.geo_ensemble:
            from models.upsamplers.igconv import d4_average
            out = d4_average(out)
        return out

    def forward(self, image, scale):
        from models.upsamplers.igsample import sample_with_offsets
        from models.upsamplers.sr import match_feature_size
        m = self.model
        r = scale.reshape(()).to(torch.int64)
        x = (image - NORM_MEAN) / NORM_STD
        h, w = spatial_size(x)
        feat = m.encoder(x)
        up = m.upsampler
        out = _shuffle(_conv_same(feat, self.kernel(up, r), up.kernel_size), r)
        if m.skip is not None:
            q = _conv_same(feat, self.kernel(m.skip.convs, r), m.skip.kernel_size)
            n = 6 * r * r
            out = out + sample_with_offsets(match_feature_size(m.encoder, x, feat), q[:, :n], q[:, n:], r)
        out = out[..., :r * h, :r * w]
        return (out * NORM_STD + NORM_MEAN).clamp(0, 1)


def make_graph(model, form, scale=None, max_train_scale=None):
    """The export wrapper of ``model`` for ``form`` ('fixed' needs ``scale``; ``max_train_scale`` overrides
    the model's for cell clipping, as ``demo.py --scale-max`` does)."""
    if form not in FORMS:
        raise ExportError(f'form must be one of {", ".join(FORMS)}, got {form!r}')
    model = model.eval()
    if form == 'fixed':
        if scale is None:
            raise ExportError("form 'fixed' needs a scale")
        return FixedScaleGraph(model, scale, max_train_scale).eval()
    if isinstance(model, IGConvSR):
        _check_exportable(model)
        return IGConvScaleGraph(model).eval()
    return ArbitraryScaleGraph(model).eval()


def output_size(lr_size, scale):
    """Output size of the fixed form (and of ``demo.py --scale``): ``floor(h sy + 1e-9)``, ..."""
    (h, w), (sy, sx) = lr_size, parse_export_scale(scale)
    return int(math.floor(h * sy + 1e-9)), int(math.floor(w * sx + 1e-9))


# ------------------------------------------------------------------------------------------------------
# ONNX export and checks
# ------------------------------------------------------------------------------------------------------
IO_NAMES = {
    'fixed': (['image'], ['output'],
              {'image': {0: 'batch', 2: 'height', 3: 'width'},
               'output': {0: 'batch', 2: 'out_height', 3: 'out_width'}}),
    'arbitrary': (['image', 'coord', 'cell'], ['rgb'],
                  {'image': {0: 'batch', 2: 'height', 3: 'width'}, 'coord': {0: 'batch', 1: 'queries'},
                   'cell': {0: 'batch', 1: 'queries'}, 'rgb': {0: 'batch', 1: 'queries'}}),
    'integer': (['image', 'scale'], ['output'],
                {'image': {0: 'batch', 2: 'height', 3: 'width'},
                 'output': {0: 'batch', 2: 'out_height', 3: 'out_width'}}),
}


def io_key(form, kind):
    """Which input/output signature a form has for a model kind ('integer': grid models' arbitrary form)."""
    return 'integer' if (form == 'arbitrary' and kind == 'grid') else form


def example_inputs(form, lr_size=(24, 20), scale=2.0, batch=1, max_train_scale=4, seed=0, kind='implicit'):
    """Inputs of a form for an LR size: a random image and, for 'arbitrary', the full target grid
    (grid models: the integer scale as an int64 0-d tensor)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(batch, 3, *lr_size, generator=g)
    if form == 'fixed':
        return (img,)
    if kind == 'grid':
        try:
            r = check_integer_scale(*parse_export_scale(scale))
        except ValueError as e:
            raise ExportError(f'scale {scale!r}: {e}') from None
        return img, torch.tensor(r, dtype=torch.int64)
    coord, cell = grid_inputs(lr_size, output_size(lr_size, scale), batch, max_train_scale)
    return img, coord, cell


def grid_inputs(lr_size, out_size, batch=1, max_train_scale=4):
    """coord, cell (batch, H*W, 2) of a full target grid, exactly as the engine computes them
    (``utils.coords.make_coord`` and per-axis clipped cells)."""
    from utils.coords import make_coord
    (h, w), (H, W) = lr_size, out_size
    coord = make_coord((H, W)).unsqueeze(0).expand(batch, -1, 2).contiguous()
    cy, cx = 2 / H * h / h, 2 / W * w / w
    cy *= max(H / h / max_train_scale, 1.0)
    cx *= max(W / w / max_train_scale, 1.0)
    cell = torch.tensor([cy, cx]).view(1, 1, 2).expand(batch, H * W, 2).contiguous()
    return coord, cell


def export_onnx(graph, form, opset=17, example=None):
    """Export a graph form to ONNX bytes (TorchScript-based exporter: offline and deterministic)."""
    import inspect
    import io
    import warnings
    if opset < 17:
        raise ExportError(f'opset must be >= 17, got {opset}')
    inputs, outputs, axes = IO_NAMES[getattr(graph, 'io_key', form)]
    example = example if example is not None else example_inputs(form)
    buf = io.BytesIO()
    # torch >= 2.5 has a torch.export-based exporter (the default from 2.9, needs onnxscript); the TorchScript
    # one runs offline and deterministically, and is the only one before 2.5
    legacy = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')     # the legacy exporter's deprecation and tracer warnings
        with torch.no_grad():
            torch.onnx.export(graph, tuple(example), buf, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, do_constant_folding=True, **legacy)
    return buf.getvalue()


def ort_session(onnx_model, threads=None):
    """An ONNX Runtime CPU session for ONNX bytes or a path."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_model, opts, providers=['CPUExecutionProvider'])


def run_session(session, *inputs):
    names = [i.name for i in session.get_inputs()]
    feed = {n: np.ascontiguousarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t)
            for n, t in zip(names, inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


def reference_output(model, form, inputs, scale=None, max_train_scale=None):
    """What the PyTorch model gives through the public paths: the engine (``Upscaler``) for the fixed
    form, ``model.prepare`` / ``model.query`` for the arbitrary form; [0, 1], clamped."""
    with torch.no_grad():
        if form == 'fixed':
            from engine.inference import Upscaler
            img = inputs[0]
            size = output_size(img.shape[-2:], scale)
            return Upscaler(model, max_train_scale=max_train_scale)(img, size)
        if len(inputs) == 2:      # grid models at a run-time integer scale: the engine too
            from engine.inference import Upscaler
            img, r = inputs
            return Upscaler(model)(img, (int(r) * img.shape[-2], int(r) * img.shape[-1]))
        img, coord, cell = inputs
        x = (img - NORM_MEAN) / NORM_STD
        state = model.prepare(x, cell)
        pred = model.query(state, coord, cell)
        return (pred * NORM_STD + NORM_MEAN).clamp(0, 1)


def verify(model, onnx_model, form, scale=None, sizes=((24, 20),), scales=(2.0,), tol=1e-4, threads=None,
           max_train_scale=None):
    """Run the ONNX model in ONNX Runtime and the PyTorch model on the same inputs.

    ``sizes``: LR sizes (h, w); ``scales``: target scales for the arbitrary form (the fixed form uses its
    own ``scale``). Returns a list of dicts ``{'size', 'scale', 'out', 'max_diff', 'ok'}``.
    """
    session = ort_session(onnx_model, threads)
    caps = model.capabilities
    m = caps.max_train_scale if max_train_scale is None else max_train_scale
    results = []
    for size in sizes:
        for s in ([scale] if form == 'fixed' else scales):
            inputs = example_inputs(form, tuple(size), s, max_train_scale=m, kind=caps.kind)
            ref = reference_output(model, form, inputs, s, m)
            got = run_session(session, *inputs)
            diff = float((got - ref).abs().max()) if got.shape == ref.shape else float('inf')
            results.append({'size': tuple(size), 'scale': parse_export_scale(s), 'out': tuple(got.shape),
                            'max_diff': diff, 'ok': diff <= tol})
    return results


# ------------------------------------------------------------------------------------------------------
# tiling for large outputs (arbitrary form): the engine's exact tiling
# ------------------------------------------------------------------------------------------------------
def _tiles(n, tile):
    return [(a, min(a + tile, n)) for a in range(0, n, tile)]


def _rows_in(lo, hi, n_out, n_lr):
    u = (np.arange(n_out, dtype=np.float64) + 0.5) * n_lr / n_out
    return int(np.searchsorted(u, lo, 'left')), int(np.searchsorted(u, hi, 'left'))


def run_tiled(run, img, size, tile=128, overlap=None, max_train_scale=4, receptive_overlap=None, bsize=None):
    """Render ``img`` (B, 3, h, w) in [0, 1] to ``size`` (H, W) with an arbitrary-form runner in LR tiles.

    ``run(image, coord, cell) -> (B, Q, 3)`` is e.g. ``lambda *a: run_session(session, *a)``. Each tile
    of ``tile`` LR pixels is encoded with ``overlap`` LR pixels of context (default: the model's
    ``capabilities.exact_tile_overlap``, passed as ``receptive_overlap``; EDSR-baseline models: 37) and
    answers the target pixels whose centre lies in its core, queried in the tile's frame (in bands of about
    ``bsize`` queries; default one call per tile: each call re-runs the encoder on the tile), with the
    cell of the whole image. For CNN encoders this equals the untiled result up
    to float rounding (what ``engine.inference.Upscaler(tile=...)`` does).
    """
    H, W = size
    B, _, h, w = img.shape
    ov = overlap if overlap is not None else (receptive_overlap if receptive_overlap is not None else 16)
    if tile < 1 or ov < 0:
        raise ValueError(f'tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={ov}')
    cy = 2 / H * max(H / h / max_train_scale, 1.0)
    cx = 2 / W * max(W / w / max_train_scale, 1.0)
    out = torch.empty(B, 3, H, W)
    for a, b in _tiles(h, tile):
        for c, d in _tiles(w, tile):
            r0, r1, c0, c1 = max(a - ov, 0), min(b + ov, h), max(c - ov, 0), min(d + ov, w)
            hf, wf = r1 - r0, c1 - c0
            i0, i1 = _rows_in(a, b, H, h)
            j0, j1 = _rows_in(c, d, W, w)
            if i1 <= i0 or j1 <= j0:
                continue
            if (r0, r1, c0, c1) == (0, h, 0, w):
                from utils.coords import coord_axis
                ys, xs = coord_axis(H)[i0:i1], coord_axis(W)[j0:j1]
            else:
                uy = (np.arange(i0, i1, dtype=np.float64) + 0.5) * h / H - r0
                ux = (np.arange(j0, j1, dtype=np.float64) + 0.5) * w / W - c0
                ys, xs = torch.from_numpy(2 * uy / hf - 1).float(), torch.from_numpy(2 * ux / wf - 1).float()
            cell1 = torch.tensor([cy * h / hf, cx * w / wf]).view(1, 1, 2)
            xt = img[:, :, r0:r1, c0:c1]
            band = ys.numel() if bsize is None else max(1, bsize // xs.numel())
            for y0 in range(0, ys.numel(), band):
                yb = ys[y0:y0 + band]
                coord = torch.stack(torch.meshgrid(yb, xs, indexing='ij'), -1).view(1, -1, 2).expand(B, -1, 2)
                pred = run(xt, coord.contiguous(), cell1.expand(B, coord.shape[1], 2).contiguous())
                out[:, :, i0 + y0:i0 + y0 + yb.numel(), j0:j1] = \
                    pred.view(B, yb.numel(), xs.numel(), 3).permute(0, 3, 1, 2)
    return out


# ------------------------------------------------------------------------------------------------------
# ONNX Runtime rows for scripts/benchmark.py --onnx
# ------------------------------------------------------------------------------------------------------
def benchmark_row(name, model, scale, lr_size, repeats=3, warmup=1, max_queries=1 << 18, threads=None):
    """Time the fixed-scale ONNX export of ``model`` in ONNX Runtime (CPU) on a random ``lr_size`` (h, w)
    input, next to the same PyTorch graph, on this machine in this run.

    Returns a dict row for ``scripts/benchmark.py``: ``model`` = '<name> (onnx)', ``scale``, ``input``,
    ``output``, ``total_s`` (ONNX Runtime, median), ``torch_s`` (the same whole-image graph in PyTorch,
    median), ``max_diff`` (ONNX Runtime vs the engine) and ``note``. Outputs above ``max_queries`` pixels are
    not run (the graph answers every query at once: memory grows with the output, about 7.5 KB per output
    pixel for LM-LIIF and several times that for LIIF; see :func:`run_tiled`).
    """
    from engine.profiling import time_fn
    h, w = lr_size
    H, W = output_size((h, w), scale)
    row = {'model': f'{name} (onnx)', 'scale': scale, 'input': f'{w}x{h}', 'output': f'{W}x{H}'}
    if H * W > max_queries:
        row['note'] = (f'ONNX not run: {H * W:,} output pixels in one graph call exceed {max_queries:,} '
                       f'(render in tiles, engine.export.run_tiled)')
        return row
    model = model.to('cpu').eval()
    graph = make_graph(model, 'fixed', scale)
    data = export_onnx(graph, 'fixed', 17, example_inputs('fixed', (h, w), scale))
    session = ort_session(data, threads or torch.get_num_threads())
    img = torch.rand(1, 3, h, w)

    got = run_session(session, img)
    row['total_s'] = time_fn(lambda: run_session(session, img), repeats=repeats, warmup=warmup)
    row['torch_s'] = time_fn(lambda: graph(img), repeats=repeats, warmup=warmup)   # time_fn runs under no_grad
    row['max_diff'] = float((got - reference_output(model, 'fixed', (img,), scale)).abs().max())
    row['note'] = (f"ONNX Runtime {__import__('onnxruntime').__version__} CPU, fixed-scale graph, whole image "
                   f"{row['total_s']:.3g} s (same graph in PyTorch {row['torch_s']:.3g} s); max |diff| vs PyTorch "
                   f"{row['max_diff']:.1e}")
    return row
