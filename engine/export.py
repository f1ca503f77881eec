"""ONNX export of the SR models (``scripts/export_onnx.py``), its checks in ONNX Runtime, and tiled rendering
with an exported graph.

A plain ``torch.onnx.export`` of a model bakes the LR feature size into the graph (the pixel grid of
``LRGrid`` is built from Python numbers), so other input sizes give wrong results. Every exportable model
owns a traceable form instead (``capabilities.traceable``): implicit models ``traced_prepare`` /
``traced_query`` (their own state on a ``TracedGrid`` whose sizes are read from the tensors, ``Shape`` ops in
the graph; equal to ``prepare`` / ``query`` up to float rounding), IGConv models ``traced_upsample`` (kernels
generated in the graph for a run-time scale) and ``instantiate`` (folded at one scale). This module only
wraps them in the graph forms:

* :class:`FixedScaleGraph` (``form='fixed'``): ``image (B, 3, h, w) -> (B, 3, H, W)``, both in [0, 1],
  for one scale ``(sy, sx)`` fixed at export time and any input size, ``H = floor(h * sy + 1e-9)``,
  ``W = floor(w * sx + 1e-9)`` (what ``demo.py --scale`` computes). This is the form ONNX image upscalers
  (chaiNNer, ...) expect. Inside the graph: the target grid of pixel centres (``utils.coords`` convention:
  (row, col), pixel k of n at ``-1 + (2k + 1) / n``), the cell ``(2 / H, 2 / W)`` clipped per axis by
  ``max(scale / max_train_scale, 1)`` (the engine's test-time cell clipping), the model's traced
  prepare/query. IGConv models (integer scales only) are folded at their scale (``IGConvSR.instantiate``).
* :class:`ArbitraryScaleGraph` (``form='arbitrary'``, implicit models): ``image (B, 3, h, w)`` in
  [0, 1], ``coord (B, Q, 2)`` and ``cell (B, Q, 2)`` (row, col, in the (-1, 1) frame of the input; cells
  as the engine passes them, i.e. already clipped) ``-> rgb (B, Q, 3)`` in [0, 1]. Any size, scale and
  query set; :func:`grid_inputs` builds the inputs of a full target grid.
* :class:`IGConvScaleGraph` (``form='arbitrary'`` for IGConv SR models): ``image``, ``scale`` (int64
  scalar, an integer >= 1) ``-> (B, 3, r h, r w)``; the kernels are generated in the graph.

All forms normalise the input as ``(x - 0.5) / 0.5``, denormalise the output and clamp it to [0, 1].
The fixed form of implicit models is exported with its queries in an ONNX ``Loop`` of ``chunk`` queries per
iteration (:func:`export_onnx`, :func:`chunked_fixed_graph`), so its memory is bounded whatever the output size;
the arbitrary form answers the queries it is given, so large outputs are rendered in tiles or query batches:
:class:`OnnxRuntimeModel` runs an arbitrary-form graph behind the engine's implicit-model protocol, so that the
engine's own ``Tiled`` strategy renders with it (:func:`run_tiled`). The channel dimension of images is fixed
to 3 in the graphs' signatures, batch and sizes are symbolic. CMSR is a rendering strategy of the engine and is not part of the graphs.
"""
import math

import numpy as np
import torch
from torch import nn

from models.capabilities import Capabilities
from models.upsamplers.igconv import check_integer_scale
from utils.coords import spatial_size, traced_coord_axis

FORMS = ('fixed', 'arbitrary')
NORM_MEAN, NORM_STD = 0.5, 0.5


class ExportError(ValueError):
    """A model, form or scale that cannot be exported (one-line message naming the input)."""


def _check_exportable(model):
    caps = model.capabilities
    name = caps.name or type(model).__name__
    if caps.window:
        raise ExportError(f'model {name!r}: its encoder pads inputs to a window of {caps.window} (SwinIR); window '
                          f'padding is not part of the exported graphs yet')
    if caps.input_range != 'normalised':
        raise ExportError(f"model {name!r}: input_range {caps.input_range!r} is not supported by the export "
                          f"(only 'normalised')")
    if not caps.traceable:
        raise ExportError(f'model {name!r}: no ONNX export form (exportable: liif, lte, metasr, lmliif, lmlte, and '
                          f'IGConv SR models)')
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
        self.model = None
        if caps.kind == 'grid':
            try:
                r = check_integer_scale(*self.scale)
            except ValueError as e:
                raise ExportError(f'scale {scale!r}: {e}') from None
            self.scale = (float(r), float(r))
            self.grid_model = model.instantiate(r)
        else:
            self.model = model
            m = caps.max_train_scale if max_train_scale is None else max_train_scale
            if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
                raise ExportError(f'max_train_scale must be a positive number, got {m!r}')
            self.max_train_scale = float(m)

    def forward(self, image):
        x = (image - NORM_MEAN) / NORM_STD
        if self.model is None:
            out = self.grid_model(x)
            return (out * NORM_STD + NORM_MEAN).clamp(0, 1)
        B = x.shape[0]
        coord, cell, H, W = self.target_grid(x)
        state = self.model.traced_prepare(x, cell)
        pred = self.model.traced_query(state, coord, cell.expand(B, coord.shape[1], 2))
        out = pred.reshape(B, H, W, 3).permute(0, 3, 1, 2)
        return (out * NORM_STD + NORM_MEAN).clamp(0, 1)

    def target_grid(self, x):
        """Of the normalised input ``x`` (B, 3, h, w): the target pixel centres ``coord`` (B, H*W, 2), the
        clipped ``cell`` (B, 1, 2) (the same for every query; ``prepare`` reads the first) and H, W (0-d
        int64), computed in the graph from the input's shape."""
        B = x.shape[0]
        h, w = spatial_size(x)
        hd, wd = h.to(torch.float64), w.to(torch.float64)
        sy, sx = self.scale
        H = torch.floor(hd * sy + 1e-9).long()
        W = torch.floor(wd * sx + 1e-9).long()
        ys, xs = traced_coord_axis(H, x), traced_coord_axis(W, x)
        coord = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).reshape(1, -1, 2).expand(B, -1, 2)
        Hd, Wd = H.to(torch.float64), W.to(torch.float64)
        # the engine's cell: (2 / H * h / h_frame) * max((H / h) / max_train_scale, 1), per axis, in float64
        m = self.max_train_scale
        cy = 2 / Hd * hd / hd * torch.clamp(Hd / hd / m, min=1.0)
        cx = 2 / Wd * wd / wd * torch.clamp(Wd / wd / m, min=1.0)
        cell = torch.stack([cy, cx]).to(device=x.device, dtype=x.dtype).view(1, 1, 2).expand(B, 1, 2)
        return coord, cell, H, W


class _ChunkStep(nn.Module):
    """What :func:`export_onnx` traces to build the chunked fixed-form graph: ``image``, ``it`` (int64
    0-d, the chunk index) -> ``rgb`` (B, c, 3) of queries ``it*c .. it*c + c - 1`` (indices past the last
    query repeat it), ``n`` (chunks), ``hw`` (H, W) and ``q1`` ([H*W]), with ``c = min(chunk, H*W)``.
    Only the nodes that depend on ``it`` go into the ONNX ``Loop`` body."""

    def __init__(self, graph, chunk):
        super().__init__()
        self.graph, self.chunk = graph, int(chunk)

    def forward(self, image, it):
        x = (image - NORM_MEAN) / NORM_STD
        B = x.shape[0]
        coord, cell, H, W = self.graph.target_grid(x)
        state = self.graph.model.traced_prepare(x, cell)
        q = H * W
        c = torch.clamp(q, max=self.chunk)
        n = torch.div(q + c - 1, c, rounding_mode='floor')
        idx = torch.minimum(torch.arange(c) + it * c, q - 1)
        pred = self.graph.model.traced_query(state, coord.index_select(1, idx), cell.expand(B, idx.shape[0], 2))
        rgb = (pred * NORM_STD + NORM_MEAN).clamp(0, 1)
        return rgb, n, torch.stack([H, W]), q.reshape(1)


class ArbitraryScaleGraph(nn.Module):
    """``image (B, 3, h, w) in [0, 1], coord (B, Q, 2), cell (B, Q, 2) -> (B, Q, 3) in [0, 1]``."""

    io_key = 'arbitrary'

    def __init__(self, model):
        super().__init__()
        caps = _check_exportable(model)
        if caps.kind != 'implicit':
            raise ExportError(f"model {caps.name or type(model).__name__!r}: the coordinate form needs an "
                              f"implicit model (kind {caps.kind!r})")
        self.model = model

    def forward(self, image, coord, cell):
        x = (image - NORM_MEAN) / NORM_STD
        state = self.model.traced_prepare(x, cell)
        pred = self.model.traced_query(state, coord, cell)
        return (pred * NORM_STD + NORM_MEAN).clamp(0, 1)


class IGConvScaleGraph(nn.Module):
    """IGConv SR models at a scale given at run time (the arbitrary form of grid models):
    ``image (B, 3, h, w) in [0, 1], scale int64 () -> (B, 3, r h, r w) in [0, 1]`` through the model's
    ``traced_upsample``. ``scale`` must be an integer >= 1 (the graph cannot check it:
    ``scripts/export_onnx.py`` documents it in the model's metadata).
    """

    io_key = 'integer'

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image, scale):
        x = (image - NORM_MEAN) / NORM_STD
        out = self.model.traced_upsample(x, scale.reshape(()).to(torch.int64))
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
    if _check_exportable(model).kind == 'grid':
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
    (``utils.coords.make_coord`` and per-axis clipped cells, ``utils.coords.clipped_cell``)."""
    from utils.coords import clipped_cell, make_coord
    (H, W) = out_size
    coord = make_coord((H, W)).unsqueeze(0).expand(batch, -1, 2).contiguous()
    cy, cx = clipped_cell(out_size, lr_size, max_train_scale=max_train_scale)
    cell = torch.tensor([cy, cx]).view(1, 1, 2).expand(batch, H * W, 2).contiguous()
    return coord, cell


#: the parity tolerance of ONNX Runtime against PyTorch, in [0, 1] image units: half an 8-bit level. Outputs
#: are saved as 8-bit images, so a difference below it moves a saved pixel by at most one level (only where
#: the value sits on a rounding boundary). A correct export differs by float32 rounding: about 1e-6 in
#: general and up to about 1.2e-4 in single border rows/columns (ONNX Runtime's kernels compute a few
#: coordinates one ulp apart from PyTorch's; the bundled LM-LIIF at x3 on a 31x9 input: 1.1e-4 in output row
#: 91 of 93), i.e. 0.03 of a level; a wrong weight, coordinate or cell shows as differences of many levels.
DEFAULT_TOL = 0.5 / 255

#: queries per ``Loop`` iteration of the fixed-form graph of implicit models (``--chunk``): the graph's working
#: set is about 7.5 KB per query for the bundled LM-LIIF, so 16384 queries keep it near 120 MB at any size
DEFAULT_CHUNK = 16384


def max_opset():
    """The highest opset the installed torch's TorchScript-based exporter writes (20 for torch 2.2-2.13)."""
    from torch.onnx import _constants
    return int(getattr(_constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', getattr(_constants, 'ONNX_MAX_OPSET', 17)))


def check_opset(opset):
    if isinstance(opset, bool) or not isinstance(opset, int) or not 17 <= opset <= max_opset():
        raise ExportError(f'opset must be an integer from 17 to {max_opset()} (what this torch exports), got {opset!r}')
    return opset


def _torch_export(module, example, inputs, outputs, axes, opset):
    import inspect
    import io
    import warnings
    buf = io.BytesIO()
    # torch >= 2.5 has a torch.export-based exporter (the default from 2.9, needs onnxscript); the TorchScript
    # one runs offline and deterministically, and is the only one before 2.5
    legacy = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')     # the legacy exporter's deprecation and tracer warnings
        with torch.no_grad():
            torch.onnx.export(module, tuple(example), buf, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, do_constant_folding=True, **legacy)
    return buf.getvalue()


def export_onnx(graph, form, opset=17, example=None, chunk=DEFAULT_CHUNK):
    """Export a graph form to ONNX bytes (TorchScript-based exporter: offline and deterministic).

    The channel dimension of ``image`` and of the output is fixed to 3; batch and spatial sizes (and the
    number of queries) are symbolic. The fixed form of implicit models queries the target grid in an ONNX
    ``Loop`` of ``chunk`` queries per iteration (:func:`chunked_fixed_graph`), so its memory is bounded by the
    chunk, not the output size; ``chunk=None`` queries every pixel at once (the plain traced graph).
    """
    check_opset(opset)
    inputs, outputs, axes = IO_NAMES[getattr(graph, 'io_key', form)]
    example = example if example is not None else example_inputs(form)
    if isinstance(graph, FixedScaleGraph) and graph.model is not None and chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ExportError(f'chunk must be a positive integer (queries per graph iteration), got {chunk!r}')
        step = _ChunkStep(graph, chunk).eval()
        data = _torch_export(step, (example[0], torch.tensor(0, dtype=torch.int64)), ['image', 'it'],
                             ['rgb', 'n', 'hw', 'q1'], {'image': axes['image'], 'rgb': {0: 'batch', 1: 'chunk'}},
                             opset)
        return chunked_fixed_graph(data)
    return _fix_channels(_torch_export(graph, example, inputs, outputs, axes, opset))


def _fix_channels(data):
    """Set the channel dimension (1) of 4-D image inputs and outputs to 3 (the exporter leaves the outputs'
    symbolic)."""
    import onnx
    proto = onnx.load_from_string(data)
    for v in list(proto.graph.input) + list(proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[1].Clear()
            dims[1].dim_value = 3
    return proto.SerializeToString()


def chunked_fixed_graph(step_bytes):
    """The fixed-form graph ``image -> output`` from the traced :class:`_ChunkStep` (``image``, ``it`` ->
    ``rgb``, ``n``, ``hw``, ``q1``): its nodes that depend on ``it`` become the body of a ``Loop`` over the
    ``n`` chunks (outer values, the encoder's state among them, are read from the enclosing scope); the
    stacked chunks (n, B, c, 3) are reordered to (B, n*c, 3), cut to the H*W queries and reshaped to
    (B, 3, H, W)."""
    import onnx
    from onnx import TensorProto, helper
    step = onnx.load_from_string(step_bytes)
    g = step.graph
    tainted, body_nodes, outer_nodes = {'it'}, [], []
    for node in g.node:
        if any(i in tainted for i in node.input):
            body_nodes.append(node)
            tainted.update(node.output)
        else:
            outer_nodes.append(node)
    outs = {o.name for o in g.output}
    if 'rgb' not in tainted or any(o in tainted for o in outs - {'rgb'}):
        raise ExportError('internal: the traced chunk step does not split into a per-chunk body')
    body = helper.make_graph(
        [helper.make_node('Identity', ['cond_in'], ['cond_out'])] + body_nodes, 'query_chunk',
        [helper.make_tensor_value_info('it', TensorProto.INT64, []),
         helper.make_tensor_value_info('cond_in', TensorProto.BOOL, [])],
        [helper.make_tensor_value_info('cond_out', TensorProto.BOOL, []),
         helper.make_tensor_value_info('rgb', TensorProto.FLOAT, None)],
        value_info=[v for v in g.value_info if v.name in tainted])

    def const(name, values):
        return helper.make_node('Constant', [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                                 [len(values)], values))
    post = [
        helper.make_node('Loop', ['n', ''], ['chunks'], body=body),
        helper.make_node('Transpose', ['chunks'], ['chunks_b'], perm=[1, 0, 2, 3]),
        const('flat_shape', [0, -1, 3]),
        helper.make_node('Reshape', ['chunks_b', 'flat_shape'], ['flat']),
        const('zero1', [0]), const('one1', [1]), const('three1', [3]),
        helper.make_node('Slice', ['flat', 'zero1', 'q1', 'one1'], ['queries']),
        helper.make_node('Shape', ['image'], ['image_shape']),
        helper.make_node('Slice', ['image_shape', 'zero1', 'one1', 'zero1'], ['batch1']),
        helper.make_node('Concat', ['batch1', 'hw', 'three1'], ['bhwc'], axis=0),
        helper.make_node('Reshape', ['queries', 'bhwc'], ['bhwc_out']),
        helper.make_node('Transpose', ['bhwc_out'], ['output'], perm=[0, 3, 1, 2]),
    ]
    image = [i for i in g.input if i.name == 'image']
    out = helper.make_tensor_value_info('output', TensorProto.FLOAT, ['batch', 3, 'out_height', 'out_width'])
    main = helper.make_graph(outer_nodes + post, g.name or 'fixed', image, [out], initializer=list(g.initializer),
                             value_info=[v for v in g.value_info if v.name not in tainted])
    model = helper.make_model(main, opset_imports=list(step.opset_import), producer_name=step.producer_name,
                              producer_version=step.producer_version, ir_version=step.ir_version)
    return _fix_channels(model.SerializeToString())


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


def verify(model, onnx_model, form, scale=None, sizes=((24, 20),), scales=(2.0,), tol=DEFAULT_TOL, threads=None,
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
# tiling for large outputs (arbitrary form): the engine's Tiled strategy over ONNX Runtime
# ------------------------------------------------------------------------------------------------------
class OnnxRuntimeModel:
    """An arbitrary-form graph (image, coord, cell -> rgb) behind the engine's implicit-model protocol
    (``models/capabilities.py``), so that the engine renders with it: ``prepare`` keeps the (tile) image,
    ``query`` runs the graph on it. Each call runs the whole graph, encoder included, so the queries of an
    image go in one call unless ``chunk`` is given.

    Args:
        run: ``run(image, coord, cell) -> (B, Q, 3)`` in [0, 1], e.g. ``lambda *a: run_session(session, *a)``.
        receptive_radius: LR pixels of context that make tiling exact (``capabilities.exact_tile_overlap`` of
            the exported model, e.g. 37 for EDSR-baseline models; None: unknown).
        max_train_scale: the exported model's largest training scale (cell clipping).
        chunk: queries per graph call (default: all of a tile at once).
    """

    ALL = 1 << 40

    def __init__(self, run, receptive_radius=None, max_train_scale=4, chunk=None):
        self.run = run
        self.capabilities = Capabilities(kind='implicit', receptive_radius=receptive_radius, decoder_reach=0,
                                         max_train_scale=max_train_scale, chunk=chunk or self.ALL, name='onnx')

    def prepare(self, inp, cell=None):
        return {'image': inp * NORM_STD + NORM_MEAN}

    def decoder_macs(self):
        return None          # not known for a graph

    def query(self, state, coord, cell):
        return (self.run(state['image'], coord.contiguous(), cell.contiguous()) - NORM_MEAN) / NORM_STD


def run_tiled(run, img, size, tile=128, overlap=None, max_train_scale=4, bsize=None):
    """Render ``img`` (B, 3, h, w) in [0, 1] to ``size`` (H, W) with an arbitrary-form runner
    (``run(image, coord, cell) -> (B, Q, 3)``, e.g. ``lambda *a: run_session(session, *a)``) in LR tiles:
    the engine's ``Tiled`` strategy over :class:`OnnxRuntimeModel`. Each tile of ``tile`` LR pixels is encoded
    with ``overlap`` LR pixels of context (the exported model's ``capabilities.exact_tile_overlap``, 37 for
    EDSR-baseline models, makes the result equal the untiled one up to float rounding for CNN encoders;
    default 16) and answers the target pixels whose centre lies in its core, in the tile's frame with the
    whole image's cell, in calls of at most ``bsize`` queries (default: one call per tile)."""
    from .inference import Upscaler
    model = OnnxRuntimeModel(run, max_train_scale=max_train_scale, chunk=bsize)
    return Upscaler(model, tile=tile, tile_overlap=16 if overlap is None else overlap)(img, size)


# ------------------------------------------------------------------------------------------------------
# ONNX Runtime rows for scripts/benchmark.py --onnx
# ------------------------------------------------------------------------------------------------------
def benchmark_row(name, model, scale, lr_size, repeats=3, warmup=1, max_queries=1 << 18, threads=None):
    """Time the fixed-scale ONNX export of ``model`` in ONNX Runtime (CPU) on a random ``lr_size`` (h, w)
    input, next to the same PyTorch graph, on this machine in this run.

    Returns a dict row for ``scripts/benchmark.py``: ``model`` = '<name> (onnx)', ``scale``, ``input``,
    ``output``, ``total_s`` (ONNX Runtime, median), ``torch_s`` (the same whole-image graph in PyTorch,
    median), ``max_diff`` (ONNX Runtime vs the engine) and ``note``. Outputs above ``max_queries`` pixels are
    not run (a bound on the benchmark's time: the untiled PyTorch graph it is compared with holds every query
    at once, about 7.5 KB per output pixel for LM-LIIF and several times that for LIIF).
    """
    from engine.profiling import time_fn
    h, w = lr_size
    H, W = output_size((h, w), scale)
    row = {'model': f'{name} (onnx)', 'scale': scale, 'input': f'{w}x{h}', 'output': f'{W}x{H}'}
    if H * W > max_queries:
        row['note'] = (f'ONNX not run: {H * W:,} output pixels exceed {max_queries:,} (the untiled PyTorch graph '
                       f'it is compared with holds every query at once)')
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
