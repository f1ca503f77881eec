"""ONNX export (engine/export.py, scripts/export_onnx.py): graph forms equal the models, ONNX Runtime equals
PyTorch within 1e-4 at three input sizes and three scales for both forms (IGConv: integer scales, the
arbitrary form taking the scale at run time), sizes are dynamic (the exports trace 10x12), tiling."""
import copy

import pytest
import torch

onnx = pytest.importorskip('onnx', reason='onnx is not installed (pip install -r requirements.txt)')
ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (pip install -r requirements.txt)')

import models  # noqa: E402
from engine import export as ex  # noqa: E402
from models.decoders.implicit import LRGrid, TracedGrid  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.coords import coord_axis, traced_coord_axis  # noqa: E402

from .conftest import ROOT  # noqa: E402

TOL = 1e-4
TRACE_SIZE = (10, 12)                           # the export traces this LR size ...
SIZES = [(10, 12), (7, 13), (12, 5)]            # ... and runs on these (two it was not exported with)
SCALES = [2.0, 3.5, 6.0]                        # 3.5 non-integer; 6 beyond the training range (clipped cells)
IGCONV_SCALES = [2, 3, 4]


def tiny(config, imnet_hidden=None, **encoder_args):
    spec = copy.deepcopy(load_config(ROOT / config)['model'])
    spec['args']['encoder_spec']['args'].update({'n_resblocks': 1, 'n_feats': 8, **encoder_args})
    if imnet_hidden is not None:
        spec['args']['imnet_spec']['args']['hidden_list'] = imnet_hidden
    torch.manual_seed(1)
    return models.make(spec).eval()


def tiny_igconv(plus=False):
    torch.manual_seed(1)
    name = 'igconv-plus-edsr-baseline' if plus else 'igconv-edsr-baseline'
    args = {'encoder_args': {'n_resblocks': 1, 'n_feats': 8},
            'upsampler_spec': {'name': 'igconv', 'args': {'implicit_dim': 16, 'latent_layers': 1}}}
    if plus:
        args['skip_spec'] = {'name': 'igsample', 'args': {'implicit_dim': 8, 'latent_layers': 1}}
    return models.make({'name': name, 'args': args}).eval()


MODELS = {
    'lmliif': lambda: tiny('configs/train-lmf/train_edsr-baseline-lmliif.yaml'),
    'liif': lambda: tiny('configs/train-original/train_edsr-baseline-liif.yaml', [32, 32]),
    'lte': lambda: tiny('configs/train-original/train_edsr-baseline-lte.yaml', [32, 32]),
    'metasr': lambda: tiny('configs/train-original/train_edsr-baseline-metasr.yaml'),
    'lmlte': lambda: tiny('configs/train-lmf/train_edsr-baseline-lmlte.yaml'),
    'igconv': tiny_igconv,
    'igconv+': lambda: tiny_igconv(plus=True),
}


@pytest.fixture(scope='module')
def built():
    return {name: make() for name, make in MODELS.items()}


def onnx_of(model, form, scale=None):
    graph = ex.make_graph(model, form, scale)
    return ex.export_onnx(graph, form, 17, ex.example_inputs(form, TRACE_SIZE, scale or 2.0))


# ---- export-friendly equivalents equal the models (eager, no ONNX) ----------------------------------
def test_traced_grid_is_bit_identical_to_lrgrid():
    feat = torch.zeros(2, 4, 7, 9)
    coord = torch.rand(2, 50, 2) * 2 - 1
    coord[0, :5] = torch.tensor([-1.0, 1.0])          # corners and the clamp
    a, b = LRGrid((7, 9), feat), TracedGrid(feat)
    na, nb = a.neighbours(coord), b.neighbours(coord)
    assert torch.equal(na.index, nb.index)
    assert torch.equal(na.rel_coord, nb.rel_coord)
    assert torch.equal(na.weight, nb.weight)
    for shift in ((0.0, 0.0), (1e-6, 1e-6)):
        ia, ca = a.lookup(coord, shift)
        ib, cb = b.lookup(coord, shift)
        assert torch.equal(ia, ib) and torch.equal(ca, cb)
    assert torch.equal(traced_coord_axis(torch.tensor(13), feat), coord_axis(13))
    assert torch.equal(a.inv, b.inv) and torch.equal(a.half, b.half) and torch.equal(a.scale, b.scale)


@pytest.mark.parametrize('name', ['lmliif', 'liif', 'lte', 'metasr', 'lmlte'])
def test_graph_forms_equal_the_model(built, name):
    """Arbitrary form == model.prepare/query; fixed form == the engine (Upscaler), eager PyTorch."""
    model = built[name]
    for size, scale in ((SIZES[1], 3.5),):
        inputs = ex.example_inputs('arbitrary', size, scale)
        with torch.no_grad():
            got = ex.make_graph(model, 'arbitrary')(*inputs)
        ref = ex.reference_output(model, 'arbitrary', inputs)
        assert (got - ref).abs().max() <= 1e-6
        img = inputs[0]
        with torch.no_grad():
            got = ex.make_graph(model, 'fixed', scale)(img)
        ref = ex.reference_output(model, 'fixed', (img,), scale)
        assert got.shape == ref.shape == (1, 3, *ex.output_size(size, scale))
        assert (got - ref).abs().max() <= 1e-6


# ---- ONNX Runtime == PyTorch: three sizes x three scales, both forms -------------------------------
@pytest.mark.parametrize('name', ['lmliif', 'liif'])
def test_onnx_arbitrary_form_matches_pytorch(built, name):
    model = built[name]
    results = ex.verify(model, onnx_of(model, 'arbitrary'), 'arbitrary', sizes=SIZES, scales=SCALES, tol=TOL)
    assert len(results) == 9
    for r in results:
        h, w = r['size']
        H, W = ex.output_size((h, w), r['scale'])
        assert r['out'] == (1, H * W, 3)
        assert r['ok'], r


@pytest.mark.parametrize('name', ['lmliif', 'liif'])
@pytest.mark.parametrize('scale', SCALES)
def test_onnx_fixed_form_matches_pytorch_on_other_sizes(built, name, scale):
    model = built[name]
    results = ex.verify(model, onnx_of(model, 'fixed', scale), 'fixed', scale, sizes=SIZES, tol=TOL)
    for r in results:
        assert r['out'] == (1, 3, *ex.output_size(r['size'], scale))
        assert r['ok'], r


@pytest.mark.parametrize('name, scale', [('igconv', s) for s in IGCONV_SCALES]
                         + [pytest.param('igconv+', s, marks=pytest.mark.slow) for s in IGCONV_SCALES])
def test_onnx_igconv_fixed_form_matches_pytorch(built, name, scale):
    model = built[name]
    results = ex.verify(model, onnx_of(model, 'fixed', scale), 'fixed', scale, sizes=SIZES, tol=TOL)
    for r in results:
        h, w = r['size']
        assert r['out'] == (1, 3, scale * h, scale * w)
        assert r['ok'], r


@pytest.mark.parametrize('name', ['igconv', 'igconv+'])
def test_onnx_igconv_runtime_scale_form_matches_pytorch(built, name):
    """The arbitrary form of IGConv: kernels generated in the graph for a scale given at run time."""
    model = built[name]
    graph = ex.make_graph(model, 'arbitrary')
    data = ex.export_onnx(graph, 'arbitrary', 17, ex.example_inputs('arbitrary', TRACE_SIZE, 3, kind='grid'))
    scales = IGCONV_SCALES if name == 'igconv' else [2, 5]       # 5 > max_s: the phase input is clamped
    results = ex.verify(model, data, 'arbitrary', sizes=SIZES, scales=scales, tol=TOL)
    assert len(results) == 3 * len(scales)
    for r in results:
        h, w = r['size']
        s = int(r['scale'][0])
        assert r['out'] == (1, 3, s * h, s * w)
        assert r['ok'], r


@pytest.mark.slow
@pytest.mark.parametrize('name', ['lte', 'metasr', 'lmlte'])
def test_onnx_other_implicit_models(built, name):
    model = built[name]
    res = ex.verify(model, onnx_of(model, 'arbitrary'), 'arbitrary', sizes=SIZES[1:2], scales=[3.5], tol=TOL)
    res += ex.verify(model, onnx_of(model, 'fixed', 2.5), 'fixed', 2.5, sizes=SIZES[2:], tol=TOL)
    assert all(r['ok'] for r in res), res


def test_onnx_batch_and_asymmetric_scale(built):
    model = built['lmliif']
    data = onnx_of(model, 'fixed', (3, 2))
    session = ex.ort_session(data)
    img = torch.rand(2, 3, 7, 13)
    got = ex.run_session(session, img)
    ref = ex.reference_output(model, 'fixed', (img,), (3, 2))
    assert got.shape == (2, 3, 21, 26)
    assert (got - ref).abs().max() <= TOL


# ---- the chunked fixed graph: fixed channels, bounded queries per loop iteration ------------------
@pytest.mark.parametrize('chunk', [37, 1 << 14])
def test_chunked_fixed_graph_equals_pytorch_and_has_fixed_channels(built, chunk):
    """37 queries per Loop iteration: several iterations and a last, clamped chunk; 16384: one iteration."""
    model = built['lmliif']
    graph = ex.make_graph(model, 'fixed', 2.5)
    data = ex.export_onnx(graph, 'fixed', 17, ex.example_inputs('fixed', TRACE_SIZE, 2.5), chunk=chunk)
    proto = onnx.load_from_string(data)
    assert [n.op_type for n in proto.graph.node].count('Loop') == 1
    for v in list(proto.graph.input) + list(proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        assert dims[1].dim_value == 3 and not dims[1].dim_param, v       # channels fixed ...
        assert all(d.dim_param and not d.dim_value for i, d in enumerate(dims) if i != 1), v   # ... the rest symbolic
    results = ex.verify(model, data, 'fixed', 2.5, sizes=SIZES, tol=TOL)
    assert all(r['ok'] for r in results), results
    assert [r['out'] for r in results] == [(1, 3, *ex.output_size(s, 2.5)) for s in SIZES]


def test_unchunked_fixed_graph_has_fixed_channels_too(built):
    data = ex.export_onnx(ex.make_graph(built['liif'], 'fixed', 2), 'fixed', 17,
                          ex.example_inputs('fixed', TRACE_SIZE, 2), chunk=None)
    proto = onnx.load_from_string(data)
    assert 'Loop' not in [n.op_type for n in proto.graph.node]
    assert proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3


def test_parity_tolerance_passes_a_correct_export_and_fails_a_perturbed_one(built):
    """The default tolerance (half an 8-bit level) accepts float rounding and refuses a wrong graph: the
    graph of a model whose last render layer's bias is off by 0.02 is checked against the intact model."""
    model = built['lmliif']
    good = ex.verify(model, onnx_of(model, 'fixed', 3), 'fixed', 3, sizes=SIZES)
    assert all(r['ok'] and r['max_diff'] < 1e-4 for r in good), good
    bad_model = copy.deepcopy(model)
    with torch.no_grad():
        last = [m for m in bad_model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias += 0.02
    bad = ex.verify(model, onnx_of(bad_model, 'fixed', 3), 'fixed', 3, sizes=SIZES)
    assert not any(r['ok'] for r in bad) and min(r['max_diff'] for r in bad) > ex.DEFAULT_TOL, bad
    assert ex.DEFAULT_TOL == pytest.approx(0.5 / 255)


def test_absurd_script_values_are_refused_up_front(tmp_path, capsys):
    """``--scale 1e9``, ``--opset 1000``, ... : one line each, before the model is read (the model path does
    not exist), nothing written."""
    from engine.errors import run
    from scripts import export_onnx
    out = tmp_path / 'a.onnx'
    cases = [(['--scale', '1e9'], '--scale'), (['--scale', '4', '--opset', '1000'], '--opset'),
             (['--scale', 'inf'], 'scale'), (['--scale', '4', '--tol', '5'], '--tol'),
             (['--scale', '4', '--chunk', '-3'], '--chunk'), (['--scale', '4', '--check-sizes', '9999x2'], '512'),
             (['--form', 'arbitrary', '--chunk', '100'], '--chunk'),
             (['--form', 'arbitrary', '--check-scales', '2,900'], '--check-scales'),
             (['--scale', '100', '--chunk', '0'], '--chunk 0')]
    for argv, word in cases:
        rc = run(export_onnx.main, ['--model', str(tmp_path / 'missing.pth'), '--output', str(out)] + argv,
                 'export_onnx.py')
        err = capsys.readouterr().err.strip()
        assert rc == 1 and err.startswith('export_onnx.py: error:') and '\n' not in err and word in err, (argv, err)
        assert 'missing.pth' not in err
    assert not out.exists()


@pytest.mark.slow
def test_chunked_graph_memory_is_bounded(tmp_path):
    """The bundled LM-LIIF's x4 graph renders 512x600 in ONNX Runtime under 600 MB of peak resident memory
    (measured 234 MB; the unchunked graph: 2.3 GB), in a fresh process."""
    import subprocess
    import sys
    from engine.inference import Session
    s = Session.open(str(ROOT / 'save/pretrained_models/edsr-b_lm-liif.pth'), 'cpu', 'test')
    path = tmp_path / 'x4.onnx'
    path.write_bytes(ex.export_onnx(ex.make_graph(s.model, 'fixed', 4, max_train_scale=s.max_train_scale),
                                    'fixed', 17, ex.example_inputs('fixed', (24, 20), 4)))
    code = ('import resource, sys, numpy as np, onnxruntime as ort\n'
            'o = ort.SessionOptions(); o.intra_op_num_threads = 1\n'
            's = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])\n'
            'y = s.run(None, {"image": np.random.rand(1, 3, 128, 150).astype(np.float32)})[0]\n'
            'print(y.shape[2], y.shape[3], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n')
    out = subprocess.run([sys.executable, '-c', code, str(path)], capture_output=True, text=True, check=True)
    H, W, peak_mb = map(int, out.stdout.split())
    assert (H, W) == (512, 600) and peak_mb < 600, out.stdout


# ---- tiling of large outputs ------------------------------------------------------------------------
def test_run_tiled_equals_untiled(built):
    model = built['lmliif']
    session = ex.ort_session(onnx_of(model, 'arbitrary'))

    def run(*a):
        return ex.run_session(session, *a)
    img = torch.rand(1, 3, 16, 14)
    size = (40, 35)                                   # x2.5
    whole = run(img, *ex.grid_inputs((16, 14), size)).view(1, 40, 35, 3).permute(0, 3, 1, 2)
    overlap = model.capabilities.exact_tile_overlap
    tiled = ex.run_tiled(run, img, size, tile=6, overlap=overlap, bsize=100)
    assert (tiled - whole).abs().max() <= 1e-5
    # an overlap below the receptive field is visibly wrong: the test can fail
    assert (ex.run_tiled(run, img, size, tile=6, overlap=0) - whole).abs().max() > 1e-3


# ---- refusals ---------------------------------------------------------------------------------------
def test_refusals(built):
    with pytest.raises(ex.ExportError, match='integer'):
        ex.make_graph(built['igconv'], 'fixed', 2.5)
    with pytest.raises(ex.ExportError, match='integer'):
        ex.example_inputs('arbitrary', (4, 4), 2.5, kind='grid')
    with pytest.raises(ex.ExportError, match='scale'):
        ex.make_graph(built['liif'], 'fixed')
    with pytest.raises(ex.ExportError, match='>= 1'):
        ex.make_graph(built['liif'], 'fixed', 0.5)
    with pytest.raises(ex.ExportError, match='form'):
        ex.make_graph(built['liif'], 'tiles', 2)
    with pytest.raises(ex.ExportError, match='opset'):
        ex.export_onnx(ex.make_graph(built['liif'], 'arbitrary'), 'arbitrary', opset=13)


# ---- the script -------------------------------------------------------------------------------------
def test_export_script_verifies_and_writes(built, tmp_path, capsys):
    from scripts import export_onnx
    ckpt = tmp_path / 'tiny.safetensors'
    models.save_checkpoint(ckpt, {'model': models.model_spec(built['liif'], built['liif'].state_dict())})
    out = tmp_path / 'tiny_x3.5.onnx'
    assert export_onnx.main(['--model', str(ckpt), '--output', str(out), '--form', 'fixed', '--scale', '3.5',
                             '--check-sizes', '11x9,7x6']) == 0
    text = capsys.readouterr().out
    assert 'verified with ONNX Runtime' in text
    assert 'input 11x9, x3.5 -> 38x31' in text and 'input 7x6, x3.5 -> 24x21' in text     # WIDTHxHEIGHT
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta['assr.form'] == 'fixed' and meta['assr.scale'] == '3.5,3.5'
    assert proto.opset_import[0].version >= 17
    session = ex.ort_session(str(out))
    img = torch.rand(1, 3, 5, 8)
    ref = ex.reference_output(built['liif'], 'fixed', (img,), 3.5)
    assert (ex.run_session(session, img) - ref).abs().max() <= TOL


def test_export_script_errors_are_one_line(built, tmp_path, capsys):
    from engine.errors import run
    from scripts import export_onnx
    ckpt = tmp_path / 'ig.pth'
    models.save_checkpoint(ckpt, {'model': models.model_spec(built['igconv'], built['igconv'].state_dict())})
    cases = [
        (['--form', 'fixed', '--scale', '2.5', '--output', str(tmp_path / 'a.onnx')], 'integer'),
        (['--form', 'arbitrary', '--check-scales', '2,2.5', '--output', str(tmp_path / 'a.onnx')], 'integer'),
        (['--form', 'fixed', '--output', str(tmp_path / 'a.onnx')], '--scale'),
        (['--form', 'fixed', '--scale', '2', '--output', str(tmp_path / 'a.txt')], 'extension'),
        (['--form', 'fixed', '--scale', '2', '--opset', '13', '--output', str(tmp_path / 'a.onnx')], 'opset'),
    ]
    for argv, word in cases:
        assert run(export_onnx.main, ['--model', str(ckpt)] + argv, 'export_onnx.py') == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('export_onnx.py: error:') and '\n' not in err and word in err, err
    assert not (tmp_path / 'a.onnx').exists()


def test_benchmark_onnx_rows(built):
    """What ``scripts/benchmark.py --onnx`` adds per model and scale."""
    row = ex.benchmark_row('igconv', built['igconv'], 2, (8, 9), repeats=1, warmup=0)
    assert row['model'] == 'igconv (onnx)' and row['output'] == '18x16'
    assert row['total_s'] > 0 and row['torch_s'] > 0 and row['max_diff'] <= TOL
    assert 'ONNX Runtime' in row['note']
    big = ex.benchmark_row('liif', built['liif'], 4, (8, 9), max_queries=100)
    assert 'total_s' not in big and 'not run' in big['note']
