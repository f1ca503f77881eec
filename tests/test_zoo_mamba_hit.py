"""HiT_SRF and MambaIR (+ MambaIR-Light) of the IGConv model zoo, the selective scan and the tiled test forward.

Golden cases ``igconv_full_<record>.pt`` (../shared/golden/README.md, "IGConv, the other published
architectures"): outputs of the published code for closed-form 'fill' weights. Outputs within 1e-4; the
encoder feature, the IGConv branch and IGSample's offset half within 1e-4 relative to their max; the folded
(instantiated) model within 1e-5 of the published folded output. By default: every record's structure and
option file, every record's heads at every scale from the published feature, and one complete forward per
architecture (HiT_SRF-IGConv+, MambaIR-Light-IGConv+ at x2); the complete sweep is @slow.
"""
import pytest
import torch
import torch.nn.functional as F
import yaml

import models
from models.zoo import PUBLISHED_ARCHS, PUBLISHED_OPTIONS, hit_srf, mambair, selective_scan as ss, tiling

from .conftest import SHARED, closed_form_fill, load_golden

#: record -> (network_g type, parameter count of the published model)
RECORDS = {
    'HiT_SRF_IGConv': ('HiT_SRF', 1_381_127),
    'HiT_SRF_IGConvPlus': ('HiT_SRF', 1_725_447),
    'MambaIR_IGConv': ('MambaIR', 21_262_311),
    'MambaIR_IGConvPlus': ('MambaIR', 22_159_591),
    'MambaIR_IGConvPlus_DFL_S8': ('MambaIR', 22_159_591),
    'MambaIR_Light_IGConv': ('MambaIR', 2_156_943),
    'MambaIR_Light_IGConvPlus': ('MambaIR', 2_501_263),
}
OPTION_FILES = {**hit_srf.PUBLISHED_OPTION_FILES, **mambair.PUBLISHED_OPTION_FILES}
OPTION_DIRS = {'HiT_SRF': ['test/HiT_SRF', 'train/HiT_SR'],
               'MambaIR': ['test/MambaIR', 'train/MambaIR', 'test/MambaIR_Light', 'train/MambaIR_Light']}
TOL, REL, FOLD_TOL = 1e-4, 1e-4, 1e-5

_BUILT = {}


def golden_model(record):
    """(case, model with the fill weights, eval) per record, built once per session."""
    if record not in _BUILT:
        case = load_golden(f'igconv_full_{record}')
        opt = dict(case['opt'])
        model = models.make({'name': opt.pop('type'), 'args': opt})
        closed_form_fill(model)
        _BUILT[record] = case, model.eval()
    return _BUILT[record]


def rel_diff(a, b):
    return (a - b).abs().max().item() / b.abs().max().item()


def option_stem(case):
    return case['option_file'].rsplit('/', 1)[-1].removesuffix('.yaml')


# ---------------------------------------------------------------- structure and options

@pytest.mark.parametrize('record', RECORDS)
def test_structure_matches_published(record):
    case, model = golden_model(record)
    arch, n_params = RECORDS[record]
    assert case['arch'] == arch and type(model) is PUBLISHED_ARCHS[arch]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v) for k, v in case['param_shapes'].items()}
    assert sum(p.numel() for p in model.parameters()) == n_params == case['n_params']
    assert model.upsampler.dim == case['taps']['feat'].shape[1]
    caps = model.capabilities
    assert (caps.kind, caps.integer_scales_only, caps.input_range, caps.window) == ('grid', True, 'unit', 0)
    assert caps.receptive_radius is None
    assert caps.max_train_scale == case['opt'].get('max_s', 4) == model.max_s
    assert model.TEST_FORWARD == 'tiles' and case['model_type'] == 'MambaMSModel'
    assert OPTION_FILES[option_stem(case)] == {k: v for k, v in case['opt'].items() if k != 'type'}


@pytest.mark.parametrize('arch', ['HiT_SRF', 'MambaIR'])
def test_published_option_files_are_declared(arch):
    """Every published test and train option file of the arch has a network_g declared here (IGConv+ is the
    default of a bare arch name)."""
    plus = {'HiT_SRF': 'HiT_SRF_IGConvPlus_DIV2K', 'MambaIR': 'MambaIR_IGConvPlus_DF2K'}[arch]
    assert PUBLISHED_OPTIONS[arch] == OPTION_FILES[plus]
    root = SHARED / 'published' / 'igconv-options'
    files = [f for d in OPTION_DIRS[arch] for f in sorted((root / d).glob('*.yaml'))]
    if not files:
        pytest.skip(f'published option files not found under {root}')
    declared = list(OPTION_FILES.values())
    for f in files:
        net = dict(yaml.safe_load(f.read_text())['network_g'])
        assert net.pop('type') == arch and net in declared, f.name


def test_basicsr_checkpoint_loads_by_option_file_and_name():
    """A BasicSR checkpoint ({'params': sd}) of HiT_SRF-IGConv loads through its published test option file
    (and the IGConv+ one by the bare name) and reproduces the published x2 output."""
    case, filled = golden_model('HiT_SRF_IGConv')
    option = SHARED / 'published' / 'igconv-options' / case['option_file'].removeprefix('options/')
    if not option.exists():
        pytest.skip(f'published option file not found: {option}')
    assert set(case['checkpoint']) == {'params'}
    model = models.load_model({'params': filled.state_dict()}, options=option)
    assert model.upsampler_name == 'igconv' and model.skip is None and not model.training
    with torch.no_grad():
        assert (model(case['inp'], 2) - case['outs'][2]).abs().max().item() <= TOL
    _, plus = golden_model('HiT_SRF_IGConvPlus')
    assert models.load_model({'params': plus.state_dict()}, arch='hit-srf').skip is not None


# ---------------------------------------------------------------- golden outputs

def igsample_halves(model, feat, s):
    q = F.conv2d(feat, model.skip.kernel(s), padding=model.skip.kernel_size // 2)
    return q.chunk(2, dim=1)


def check_heads(model, case, feat, s):
    """The published x s output from ``feat`` through the model's heads, with the taps."""
    inp = case['inp']
    y = model.upsampler(feat, s)
    assert rel_diff(y, case['taps']['igconv'][s]) <= REL, f'x{s} IGConv branch'
    out = model.post(y)
    if model.skip is not None:
        offset, scope = igsample_halves(model, feat, s)
        assert rel_diff(offset, case['taps']['igsample_offset'][s]) <= REL, f'x{s} IGSample offsets'
        assert (scope - case['taps']['igsample_scope'][s]).abs().max().item() <= TOL
        z = model.skip(inp, feat, s)
        assert (z - case['taps']['igsample'][s]).abs().max().item() <= TOL
        out = out + z
    assert (out - case['outs'][s]).abs().max().item() <= TOL, f'x{s} output'


#: (record, scales) of the default heads check: every scale of the 60-channel records; the 180-channel ones are
#: covered by the @slow complete sweep, except the max_s 8 phase of DFL-S8 (x6)
HEAD_CASES = ([(r, None) for r in RECORDS if r.startswith(('HiT', 'MambaIR_Light'))]
              + [('MambaIR_IGConvPlus_DFL_S8', [6])])


@pytest.mark.parametrize('record,scales', HEAD_CASES)
def test_golden_heads(record, scales):
    """Recorded scales from the published feature (fast: no encoder run): IGConv (max_s phase, FGRep),
    IGSample, the back-shift and the sum."""
    case, model = golden_model(record)
    with torch.no_grad():
        for s in scales or case['scales']:
            check_heads(model, case, case['taps']['feat'], s)


def check_complete(model, case, s):
    """``model(inp, s)`` (the published test forward) and ``instantiate(s)`` against the record."""
    taps = {}
    hook = model.upsampler.register_forward_hook(lambda m, i, o: taps.update(feat=i[0], igconv=o))
    try:
        with torch.no_grad():
            out = model(case['inp'], s)
    finally:
        hook.remove()
    assert rel_diff(taps['feat'], case['taps']['feat']) <= REL
    assert rel_diff(taps['igconv'], case['taps']['igconv'][s]) <= REL
    assert (out - case['outs'][s]).abs().max().item() <= TOL, f'x{s} output'
    with torch.no_grad():
        check_heads(model, case, taps['feat'], s)
        folded = model.instantiate(s)(case['inp'])
    assert (folded - case['instantiated'][s]['out']).abs().max().item() <= FOLD_TOL, f'x{s} instantiated'


@pytest.mark.parametrize('record', ['HiT_SRF_IGConvPlus', 'MambaIR_Light_IGConvPlus'])
def test_golden_complete_x2(record):
    case, model = golden_model(record)
    check_complete(model, case, 2)


@pytest.mark.slow
@pytest.mark.parametrize('record', RECORDS)
def test_golden_complete_every_scale(record):
    case, model = golden_model(record)
    for s in case['scales']:
        check_complete(model, case, s)


# ---------------------------------------------------------------- other sizes, scales, batches

TINY = {
    'HiT_SRF': {'embed_dim': 32, 'depths': [3], 'num_heads': [2], 'base_win_size': [2, 2],
                'hier_win_ratios': [0.5, 1, 2], 'implicit_dim': 16, 'latent_layers': 2, 'upsampler': 'igconv+igsample'},
    'MambaIR': {'embed_dim': 30, 'depths': [2], 'd_state': 4, 'mlp_ratio': 1.5, 'implicit_dim': 16,
                'latent_layers': 2, 'upsampler': 'igconv+igsample', 'max_s': 6},
}


def tiny(arch, **over):
    model = models.make({'name': arch, 'args': {**TINY[arch], **over}})
    closed_form_fill(model)
    return model.eval()


@pytest.mark.parametrize('arch', ['HiT_SRF', 'MambaIR'])
def test_batch_and_size_independence(arch):
    """Batch 2, an odd size and x5: each item equals its own run, and the folded model equals the unfolded."""
    model = tiny(arch)
    x = torch.rand(2, 3, 11, 14)
    with torch.no_grad():
        y = model(x, 5)
        assert y.shape == (2, 3, 55, 70)
        for k in range(2):
            assert (y[k:k + 1] - model(x[k:k + 1], 5)).abs().max().item() <= 1e-5
        assert (model.instantiate(5)(x) - y).abs().max().item() <= FOLD_TOL


def test_full_hit_srf_other_size_batch_scale():
    """The published HiT_SRF-IGConv+ configuration on batch 2 of another size (both in-block padding paths at
    windows 48 and 64) at x6: items independent, and the windows really differ from the golden input's."""
    _, model = golden_model('HiT_SRF_IGConvPlus')
    x = torch.rand(2, 3, 17, 33)
    with torch.no_grad():
        y = model(x, 6)
        assert y.shape == (2, 3, 102, 198) and torch.isfinite(y).all()
        assert (y[1:] - model(x[1:], 6)).abs().max().item() <= 1e-5


def published_check_image_size(x, wh, ww):
    """The published ``check_image_size`` transcribed literally (negative reflect padding crops)."""
    h, w = x.shape[-2:]
    mh, mw = (wh - h % wh) % wh, (ww - w % ww) % ww
    ph, pw = (h - 1, w - 1) if (mh >= h or mw >= w) else (0, 0)
    x = F.pad(x, (0, pw, 0, ph), 'reflect')
    return F.pad(x, (0, mw - pw, 0, mh - ph), 'reflect')


@pytest.mark.parametrize('win', [(4, 4), (16, 16), (48, 48), (64, 64), (8, 24)])
def test_in_block_padding_matches_published(win):
    for h, w in [(19, 27), (17, 64), (40, 100), (64, 20), (33, 33)]:
        x = torch.randn(1, 2, h, w)
        try:
            ref = published_check_image_size(x, *win)
        except RuntimeError:
            with pytest.raises(ValueError, match='too small'):
                hit_srf.pad_to_window(x, *win)
            continue
        assert torch.equal(hit_srf.pad_to_window(x, *win), ref), (h, w)
    with pytest.raises(ValueError, match='too small'):
        hit_srf.pad_to_window(torch.randn(1, 2, 16, 16), 64, 64)


@pytest.mark.parametrize('window,base', [((4, 4), (8, 8)), ((16, 16), (8, 8)), ((12, 6), (4, 2))])
def test_position_bias_matches_published_gather(window, base):
    """The box-mean position bias equals the published (L x L gather, then mean over each sub-block)."""
    scc = hit_srf.SCC(32, base, window, 2)
    closed_form_fill(scc)
    wh, ww = window
    bh, bw = min(wh, base[0]), min(ww, base[1])
    dh, dw = torch.meshgrid(torch.arange(1 - wh, wh), torch.arange(1 - ww, ww), indexing='ij')
    pos = scc.pos(torch.stack([dh.flatten(), dw.flatten()], 1).float())
    ih, iw = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')
    ih, iw = ih.flatten(), iw.flatten()
    index = (ih[:, None] - ih[None] + wh - 1) * (2 * ww - 1) + (iw[:, None] - iw[None] + ww - 1)
    ref = pos[index.view(-1)].view(wh * ww, bh, wh // bh, bw, ww // bw, -1)
    ref = ref.permute(0, 1, 3, 5, 2, 4).reshape(wh * ww, bh * bw, 2, -1).mean(-1).permute(2, 0, 1)
    with torch.no_grad():
        assert (scc.position_bias() - ref).abs().max().item() <= 1e-6 * max(1.0, ref.abs().max().item())


def test_rejects_unsupported_arguments():
    base = dict(TINY['HiT_SRF'])
    with pytest.raises(ValueError, match='expansion_factor'):
        models.make({'name': 'HiT_SRF', 'args': {**base, 'expansion_factor': 4}})
    with pytest.raises(ValueError, match='geo_ensemble'):
        models.make({'name': 'HiT_SRF', 'args': {**base, 'upsampler': 'igconv', 'geo_ensemble': True}})
    with pytest.raises(ValueError, match='hier_win_ratios'):
        models.make({'name': 'HiT_SRF', 'args': {**base, 'depths': [4]}})
    with pytest.raises(ValueError, match='max_s'):
        models.make({'name': 'MambaIR', 'args': {**TINY['MambaIR'], 'upsampler': 'igconv', 'max_s': 8}})
    with pytest.raises(ValueError, match='resi_connection'):
        models.make({'name': 'MambaIR', 'args': {**TINY['MambaIR'], 'resi_connection': '3conv'}})
    with pytest.raises(ValueError, match='too small'):
        tiny('HiT_SRF', depths=[1], base_win_size=[8, 8], hier_win_ratios=[8])(torch.rand(1, 3, 16, 16), 2)


def test_mambair_gradients_match_sequential_scan(monkeypatch):
    """Training through the scan's hand-written backward gives the gradients of the plain recurrence."""
    model = tiny('MambaIR').train()
    x = torch.rand(1, 3, 6, 7)

    def grads():
        model.zero_grad()
        model(x, 2).square().mean().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    ours = grads()
    monkeypatch.setattr(mambair, 'selective_scan', ss.selective_scan_sequential)
    ref = grads()
    assert ours.keys() == ref.keys() and any('A_logs' in k for k in ours)
    for k in ours:
        assert (ours[k] - ref[k]).abs().max().item() <= 1e-4 * max(1e-3, ref[k].abs().max().item()), k


# ---------------------------------------------------------------- selective scan

def scan_inputs(b=2, d=8, L=37, n=4, form_B='grouped', form_C='grouped', groups=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(FORMS.index(form_B) * 10 + FORMS.index(form_C) + 100 * groups)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    def operand(form):
        return {'fixed': lambda: r(d, n), 'shared': lambda: r(b, n, L), 'grouped': lambda: r(b, groups, n, L)}[form]()

    return dict(u=r(b, d, L), delta=r(b, d, L) * 0.5, A=-torch.rand(d, n, generator=g, dtype=dtype) * 4,
                B=operand(form_B), C=operand(form_C), D=r(d), z=r(b, d, L), delta_bias=r(d) * 0.3)


FORMS = ['fixed', 'shared', 'grouped']


@pytest.mark.parametrize('form_B', FORMS)
@pytest.mark.parametrize('form_C', FORMS)
def test_scan_matches_sequential_reference(form_B, form_C):
    for groups in (1, 4):
        inp = scan_inputs(form_B=form_B, form_C=form_C, groups=groups)
        for extras in ({'D': None, 'z': None, 'delta_bias': None}, {'delta_softplus': True}):
            args = {**inp, **extras}
            ref, ref_state = ss.selective_scan_sequential(**args, return_last_state=True)
            for block in (ss.BLOCK_ELEMENTS, 100):       # one block / many blocks of 1-2 steps
                y, state = ss.selective_scan_torch(**args, return_last_state=True, block_elements=block)
                assert y.dtype == torch.float32 and state.shape == (2, 8, 4)
                assert rel_diff(y, ref) <= 1e-5 and rel_diff(state, ref_state) <= 1e-5


def test_scan_float64_is_exact_and_differentiable():
    inp = scan_inputs(b=1, d=2, L=6, n=2, form_B='grouped', form_C='shared', groups=2, dtype=torch.float64)
    args = {**inp, 'delta_softplus': True}
    assert rel_diff(ss.selective_scan_torch(**args), ss.selective_scan_sequential(**args)) <= 1e-12
    names = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']
    tensors = [inp[k].clone().requires_grad_() for k in names]

    def f(*ts):
        return ss.selective_scan_torch(**dict(zip(names, ts)), delta_softplus=True, block_elements=4)

    assert torch.autograd.gradcheck(f, tensors)


def test_scan_on_the_meta_device_forms_shapes_only():
    """MAC counting and shape inference (meta tensors): the output and last state have the CPU result's shapes
    and dtypes, and no step of the recurrence runs (the element-wise scan is not counted as MACs)."""
    b, d, L, n = 2, 6, 5, 4
    cpu = [torch.randn(b, d, L), torch.randn(b, d, L), -torch.rand(d, n), torch.randn(b, n, L), torch.randn(b, n, L)]
    want = ss.selective_scan_torch(*cpu, D=torch.randn(d), return_last_state=True)
    meta = [t.to('meta') for t in cpu]
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        got = ss.selective_scan_torch(*meta, D=torch.randn(d, device='meta'), return_last_state=True)
    assert [(g.shape, g.dtype, g.device.type) for g in got] == [(w.shape, w.dtype, 'meta') for w in want]
    assert counter.get_total_flops() == 0
    assert ss.selective_scan_torch(*meta).shape == (b, d, L)


def test_scan_rejects_bad_shapes():
    inp = scan_inputs()
    with pytest.raises(ValueError, match='B must be'):
        ss.selective_scan_torch(**{**inp, 'B': torch.randn(2, 3, 4, 37)})      # 3 groups do not divide 8
    with pytest.raises(ValueError, match='A must be'):
        ss.selective_scan_torch(**{**inp, 'A': torch.randn(8, 4, dtype=torch.complex64)})
    with pytest.raises(ValueError, match='z must be'):
        ss.selective_scan_torch(**{**inp, 'z': torch.randn(2, 8)})


def test_scan_matches_mamba_ssm_kernel():
    """Our scan against ``mamba_ssm``'s CUDA kernel (the path SS2D takes on CUDA when it is installed)."""
    if ss.mamba_ssm_scan is None:
        pytest.skip('mamba_ssm is not installed (optional CUDA kernel); the pure-PyTorch scan is used everywhere')
    if not torch.cuda.is_available():
        pytest.skip('mamba_ssm is installed but CUDA is not available')
    for form_B, form_C in [('grouped', 'grouped'), ('shared', 'shared'), ('fixed', 'fixed')]:
        args = {k: v.cuda() for k, v in scan_inputs(b=2, d=64, L=300, n=16, form_B=form_B, form_C=form_C).items()}
        ref = ss.mamba_ssm_scan(**args, delta_softplus=True)
        assert rel_diff(ss.selective_scan_torch(**args, delta_softplus=True), ref) <= 1e-4


# ---------------------------------------------------------------- tiled test forward

def published_stitching(run, lq, scale):
    """The published ``MambaMSModel.test``, written out loop by loop (batch 1 canvas generalised to B)."""
    _, C, h, w = lq.shape
    th, tw = h // 200 + 1, w // 200 + 1
    ph = th - h % th if h % th else 0
    pw = tw - w % tw if w % tw else 0
    img = F.pad(lq, (0, pw, 0, ph), 'reflect')
    H, W = img.shape[-2:]
    sh, sw = H // th, W // tw
    vh, vw = sh // 10, sw // 10
    canvas = torch.zeros(lq.shape[0], C, H * scale, W * scale)
    for i in range(H // sh):
        top = slice(i * sh - (vh if i > 0 else 0), (i + 1) * sh + (vh if i < th - 1 else 0))
        for j in range(W // sw):
            left = slice(j * sw - (vw if j > 0 else 0), (j + 1) * sw + (vw if j < tw - 1 else 0))
            out = run(img[..., top, left], scale)
            _top = slice(0, sh * scale) if i == 0 else slice(vh * scale, (vh + sh) * scale)
            _left = slice(0, sw * scale) if j == 0 else slice(vw * scale, (vw + sw) * scale)
            rows, cols = slice(i * sh * scale, (i + 1) * sh * scale), slice(j * sw * scale, (j + 1) * sw * scale)
            canvas[..., rows, cols] = out[..., _top, _left]
    return canvas[..., :h * scale, :w * scale]


class NonLocalNet(torch.nn.Module):
    """A stand-in network whose output depends on the whole tile (its mean) and on positions within it."""

    def run(self, x, r):
        h, w = x.shape[-2:]
        ramp = torch.arange(r * h).view(-1, 1) / 7.0 + torch.arange(r * w).view(1, -1) / 11.0
        return F.interpolate(x, scale_factor=r, mode='nearest') + x.mean((2, 3), keepdim=True) + ramp, None


def test_tile_layout():
    assert tiling.tile_layout(199) == (0, 199, [(0, 199, 0)])
    assert tiling.tile_layout(200) == (0, 100, [(0, 110, 0), (90, 200, 10)])
    assert tiling.tile_layout(401) == (1, 134, [(0, 147, 0), (121, 281, 13), (255, 402, 13)])


@pytest.mark.parametrize('size,scale', [((230, 410), 2), ((401, 199), 3), ((120, 90), 4)])
def test_tiled_forward_matches_published_stitching(size, scale):
    net = NonLocalNet()
    x = torch.rand(2, 3, *size)
    ref = published_stitching(lambda t, s: net.run(t, s)[0], x, scale)
    assert torch.equal(tiling.tiled_forward(net, x, scale), ref)


def test_tiled_forward_is_the_untiled_output_for_a_local_network():
    """A tiny EDSR-IGConv (bounded receptive field < shave): tiles change nothing where no padding enters,
    i.e. everywhere without padding and away from the bottom/right border with it. (IGSample is left out: its
    sampling grid is normalised by the tile size, which moves outputs by float noise ~1e-5.)"""
    model = models.make({'name': 'EDSRIG', 'args': {'num_feat': 8, 'num_block': 1, 'img_range': 1.0,
                                                    'implicit_dim': 16, 'latent_layers': 2}})
    closed_form_fill(model)
    model.eval()
    reach = model.receptive_radius + model._reach
    for h, w in [(402, 250), (401, 233)]:        # no padding / reflect padding (1 row, 1 column)
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            tiled, whole = tiling.tiled_forward(model, x, 2), model.run(x, 2)[0]
        border = 0 if (h % 3, w % 2) == (0, 0) else reach
        assert tiled.shape == whole.shape == (1, 3, 2 * h, 2 * w)
        d = (tiled - whole)[..., :2 * (h - border), :2 * (w - border)]
        assert d.abs().max().item() <= 1e-6 * whole.abs().max().item()
        if border:
            assert (tiled - whole).abs().max().item() > 1e-3      # the padded border does differ


def test_models_use_the_tiled_forward():
    """HiT_SRF / MambaIR ``forward`` is the published tiled test on inputs over 200 px."""
    model = tiny('HiT_SRF')
    x = torch.rand(1, 3, 205, 9)
    with torch.no_grad():
        ref = published_stitching(lambda t, s: model.run(t, s)[0], x, 2)
        assert (model(x, 2) - ref).abs().max().item() <= 1e-6
        assert (model(x, 2) - model.run(x, 2)[0]).abs().max().item() > 1e-4    # the tiles do matter here
