"""The published IGConv CNN architectures SMFANetIG, SMFANetIGPlus and PLKSRIGPlus (models/zoo/smfanet.py, plksr.py).

Golden cases ``igconv_full_<arch>.pt`` (../shared/golden/README.md, "IGConv, the other published architectures"):
outputs of the published code at x2/x3/x4 for closed-form 'fill' weights, test forward ``MSRModel.test`` =
``net(inp, s)``. Outputs within 1e-4; the encoder feature, the IGConv branch and IGSample's offset half within
1e-4 relative to their max; the instantiated (folded) model within 1e-5 of the published instantiated output.
These models are small: the whole golden sweep runs by default.
"""
import functools

import pytest
import torch
import yaml

import models
from models.upsamplers.igconv import IGConv
from models.zoo import PUBLISHED_ARCHS, PUBLISHED_OPTIONS

from .conftest import SHARED, closed_form_fill, load_golden, need

ARCHS = ['SMFANetIG', 'SMFANetIGPlus', 'PLKSRIGPlus']
N_PARAMS = {'SMFANetIG': 960_483, 'SMFANetIGPlus': 1_249_507, 'PLKSRIGPlus': 8_280_259}
UPSAMPLER_ATTR = {'SMFANetIG': 'to_img', 'SMFANetIGPlus': 'to_img', 'PLKSRIGPlus': 'to_rgb'}
C_INTO_IGCONV = {'SMFANetIG': 48, 'SMFANetIGPlus': 48, 'PLKSRIGPlus': 64}
# SMFANet pools over the whole image; PLKSR: 3x3 stem + 28 x (DCCM 3x3 + 3x3, 17x17 large kernel, EA 3x3)
RADIUS = {'SMFANetIG': None, 'SMFANetIGPlus': None, 'PLKSRIGPlus': 1 + 28 * (1 + 1 + 8 + 1)}
OPTIONS = SHARED / 'published' / 'igconv-options'
TOL, REL, FOLD_TOL = 1e-4, 1e-4, 1e-5

TINY = {
    'SMFANetIG': {'dim': 8, 'n_blocks': 2, 'ffn_scale': 2, 'implicit_dim': 16, 'latent_layers': 2},
    'SMFANetIGPlus': {'dim': 8, 'n_blocks': 2, 'ffn_scale': 2, 'implicit_dim': 16, 'latent_layers': 2},
    'PLKSRIGPlus': {'dim': 8, 'n_blocks': 2, 'ccm_type': 'DCCM', 'kernel_size': 5, 'split_ratio': 0.25,
                    'implicit_dim': 16, 'latent_layers': 2},
}


def tiny(arch, **over):
    model = models.make({'name': arch, 'args': {**TINY[arch], **over}})
    closed_form_fill(model)
    return model.eval()


def rel_diff(a, b):
    return (a - b).abs().max().item() / b.abs().max().item()


@functools.lru_cache(maxsize=None)
def golden(arch):
    """(case, model built from the golden ``opt`` with the closed-form weights), once per session."""
    case = load_golden(f'igconv_full_{arch}')
    opt = dict(case['opt'])
    assert opt.pop('type') == arch
    model = models.make({'name': arch, 'args': opt})
    closed_form_fill(model)
    return case, model.eval()


# ---------------------------------------------------------------- structure and published options

@pytest.mark.parametrize('arch', ARCHS)
def test_structure_matches_golden(arch):
    case, model = golden(arch)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v) for k, v in case['param_shapes'].items()}
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS[arch] == case['n_params']
    assert model.UPSAMPLER == UPSAMPLER_ATTR[arch] == case['upsampler_attr']
    assert isinstance(getattr(model, UPSAMPLER_ATTR[arch]), IGConv) and model.upsampler.dim == C_INTO_IGCONV[arch]
    assert (model.skip is None) == (arch == 'SMFANetIG')
    assert model.upsampler.geo_ensemble == (arch != 'SMFANetIG')
    caps = model.capabilities
    assert (caps.kind, caps.integer_scales_only, caps.input_range, caps.window) == ('grid', True, 'unit', 0)
    assert caps.receptive_radius == RADIUS[arch] and caps.max_train_scale == 4
    assert caps.decoder_reach == (1 if arch == 'SMFANetIG' else 2)      # 3x3 kernel (+ IGSample's bilinear tap)
    # what load_model(arch=...) builds without an option file is the published option's network_g
    assert PUBLISHED_OPTIONS[arch] == {k: v for k, v in case['opt'].items() if k != 'type'}


def option_files():
    """Every published option file (test and train) whose network_g type is one of ours."""
    if not OPTIONS.exists():
        return ['(none)']
    out = []
    for path in sorted(OPTIONS.rglob('*.yaml')):
        with open(path) as f:
            if yaml.safe_load(f)['network_g']['type'] in ARCHS:
                out.append(str(path.relative_to(OPTIONS)))
    return out


@pytest.mark.parametrize('rel', option_files())
def test_published_option_files_build(rel):
    root = need(OPTIONS, 'published IGConv option files')
    if rel == '(none)':
        pytest.skip(f'no option files under {root}')
    with open(root / rel) as f:
        opt = yaml.safe_load(f)
    net = dict(opt['network_g'])
    arch = net.pop('type')
    assert net == PUBLISHED_OPTIONS[arch]
    model = models.make({'name': arch, 'args': net})
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS[arch]
    if 'train' in opt:
        assert model.fft_loss_weight == opt['train']['fft_opt']['loss_weight']


# ---------------------------------------------------------------- golden outputs, taps, instantiation

@pytest.mark.parametrize('arch', ARCHS)
def test_golden_outputs_taps_and_instantiation(arch):
    """Through a BasicSR checkpoint dict (``params_ema`` preferred, built by architecture name)."""
    case, filled = golden(arch)
    sd = filled.state_dict()
    model = models.load_model({'params': {k: torch.zeros_like(v) for k, v in sd.items()}, 'params_ema': sd},
                              arch=arch)
    taps = {}
    model.upsampler.register_forward_hook(lambda m, i, o: taps.update(feat=i[0], igconv=o))
    if model.skip is not None:
        model.skip.register_forward_hook(lambda m, i, o: taps.update(igsample=o))
    inp = case['inp']
    for s in case['scales']:
        with torch.no_grad():
            out = model(inp, s)
        assert (out - case['outs'][s]).abs().max().item() <= TOL, f'x{s} output'
        assert rel_diff(taps['feat'], case['taps']['feat']) <= REL
        assert rel_diff(taps['igconv'], case['taps']['igconv'][s]) <= REL, f'x{s} IGConv branch'
        if model.skip is not None:
            assert (taps['igsample'] - case['taps']['igsample'][s]).abs().max().item() <= TOL
            with torch.no_grad():
                q = torch.nn.functional.conv2d(taps['feat'], model.skip.kernel(s), padding=1)
            offset, scope = q.chunk(2, dim=1)
            assert rel_diff(offset, case['taps']['igsample_offset'][s]) <= REL
            assert (scope - case['taps']['igsample_scope'][s]).abs().max().item() <= TOL
        folded = model.instantiate(s)
        assert rel_diff(folded.upsampler.conv.weight, case['instantiated'][s]['weight']) <= REL
        with torch.no_grad():
            y = folded(inp)
        assert (y - case['instantiated'][s]['out']).abs().max().item() <= FOLD_TOL, f'x{s} instantiated'
        assert (y - out).abs().max().item() <= FOLD_TOL


# ---------------------------------------------------------------- any size, scale and batch (tiny models)

@pytest.mark.parametrize('arch', ARCHS)
def test_batch_sizes_and_scales(arch):
    model = tiny(arch)
    inp = torch.rand(2, 3, 11, 9)
    with torch.no_grad():
        for s in (2, 5):
            out = model(inp, s)
            assert out.shape == (2, 3, 11 * s, 9 * s)
            assert 0.05 < out.abs().max().item() < 100
            for b in range(2):
                assert (model(inp[b:b + 1], s) - out[b:b + 1]).abs().max().item() <= 1e-5
        assert torch.equal(model.upscale_grid(inp, (33, 27)), model(inp, 3))
        assert (model.instantiate(5)(inp) - model(inp, 5)).abs().max().item() <= FOLD_TOL


def test_training_step_reaches_every_parameter():
    inp, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    for arch in ARCHS:
        model = tiny(arch).train()
        (model(inp, 2) - gt).abs().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert not missing, f'{arch}: no gradient for {missing}'
        # the published training options' FFTLoss weights (SMFANet-IG keeps the original SMFANet's)
        assert model.fft_loss_weight == {'SMFANetIG': 0.05, 'SMFANetIGPlus': 0.05, 'PLKSRIGPlus': 0.02}[arch]


def reference_smfa(m, f):
    """SMFA from its definition: explicit adaptive max-pool cells (rows floor(a h / ph) .. ceil((a + 1) h / ph)),
    unbiased per-channel variance, nearest upsampling (source row floor(i ph / h))."""
    B, C, h, w = f.shape
    y, x = m.linear_0(f).chunk(2, dim=1)
    ph, pw = h // 8, w // 8
    pooled = torch.empty(B, C, ph, pw, dtype=f.dtype)
    for a in range(ph):
        for b in range(pw):
            cell = x[:, :, a * h // ph:-(-(a + 1) * h // ph), b * w // pw:-(-(b + 1) * w // pw)]
            pooled[:, :, a, b] = cell.amax(dim=(-2, -1))
    var = ((x - x.mean(dim=(-2, -1), keepdim=True)) ** 2).sum(dim=(-2, -1), keepdim=True) / (h * w - 1)
    gate = torch.nn.functional.gelu(m.linear_1(m.dw_conv(pooled) * m.alpha + var * m.belt))
    gate = gate[:, :, [i * ph // h for i in range(h)]][:, :, :, [j * pw // w for j in range(w)]]
    return m.linear_2(x * gate + m.lde(y))


def test_smfa_modulation_matches_its_definition():
    """The golden weights leave SMFA's gate nearly constant over the image (its pooling and variance move the
    golden outputs by < 1e-5), so the modulation branch is checked here against an independent computation,
    with weights that make the gate vary (irregular pooling cells: 19 x 27 -> 2 x 3, overlapping bins)."""
    m = tiny('SMFANetIG').double().feats[0].smfa
    with torch.no_grad():
        m.linear_1.weight.mul_(10)
        m.belt.mul_(50)
        f = torch.randn(2, 8, 19, 27, dtype=torch.float64)
        out, ref = m(f), reference_smfa(m, f)
    assert rel_diff(out, ref) <= 1e-12


# ---------------------------------------------------------------- receptive radius

def feature_support(model, size, centre):
    """(rows, cols) ranges of the input pixels the encoder feature at ``centre`` depends on: the nonzero
    entries of d F[centre] / d input (float64; a perturbation of any pixel outside has no effect)."""
    model = model.double()
    x = torch.rand(1, 3, *size, dtype=torch.float64, requires_grad=True)
    feat = model.encode(model.pre(x))
    feat[0, :, centre[0], centre[1]].sum().backward()
    nz = (x.grad.abs().sum(dim=(0, 1)) != 0).nonzero()
    return (nz[:, 0].min().item(), nz[:, 0].max().item()), (nz[:, 1].min().item(), nz[:, 1].max().item())


@pytest.mark.parametrize('ccm_type,use_ea,kernel_size', [('DCCM', True, 5), ('CCM', True, 7), ('ICCM', False, 3)])
def test_plksr_receptive_radius_is_exact(ccm_type, use_ea, kernel_size):
    model = tiny('PLKSRIGPlus', ccm_type=ccm_type, use_ea=use_ea, kernel_size=kernel_size)
    R = model.capabilities.receptive_radius
    assert R == 1 + 2 * ({'DCCM': 2, 'CCM': 1, 'ICCM': 1}[ccm_type] + kernel_size // 2 + use_ea)
    c = R + 3
    assert feature_support(model, (2 * c + 1, 2 * c + 1), (c, c)) == ((c - R, c + R), (c - R, c + R))


@pytest.mark.slow
def test_plksr_published_receptive_radius_is_exact():
    """The published PLKSR (R = 309) on a one-row image: the feature depends on exactly 2R + 1 columns."""
    model = models.make({'name': 'PLKSRIGPlus', 'args': PUBLISHED_OPTIONS['PLKSRIGPlus']})
    closed_form_fill(model)
    R = model.eval().capabilities.receptive_radius
    assert R == 309
    c = R + 2
    assert feature_support(model, (1, 2 * c + 1), (0, c)) == ((0, 0), (c - R, c + R))


def test_plksr_tiles_exactly():
    from engine.inference import Upscaler
    model = tiny('PLKSRIGPlus')
    with torch.no_grad():      # a smaller IGConv branch: outputs mostly inside [0, 1], where the engine clamps
        model.to_rgb.query_kernel[-1].weight.mul_(0.1)
        model.to_rgb.query_kernel[-1].bias.mul_(0.1)
    assert model.capabilities.exact_tile_overlap == 11 + 2
    img = torch.rand(1, 3, 30, 37)
    with torch.no_grad():
        ref = model(img, 3)
        whole = Upscaler(model)(img, (90, 111))
        tiled = Upscaler(model, tile=12)(img, (90, 111))
    assert ((ref > 0) & (ref < 1)).float().mean().item() > 0.5          # mostly not clamped away
    assert (whole - ref.clamp(0, 1)).abs().max().item() <= 1e-6
    assert (tiled - whole).abs().max().item() <= 1e-5
    with torch.no_grad():      # and the context matters: too little of it is visibly wrong
        short = Upscaler(model, tile=12, tile_overlap=5)(img, (90, 111))
    assert (short - whole).abs().max().item() > 1e-3


def test_smfanet_feature_depends_on_the_whole_image():
    """SMFA's max-pool cells and per-channel variance: a pixel far beyond any conv's reach changes the feature,
    hence ``receptive_radius`` None."""
    model = tiny('SMFANetIG').double()
    assert model.capabilities.receptive_radius is None
    x = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    y = x.clone()
    y[..., 23, 23] += 0.5
    with torch.no_grad():
        diff = (model.encode(x) - model.encode(y)).abs()
    # 23 px away (the convs reach 1 + 2 px per block); small (the variance weights `belt` are small here)
    # but far above float64 noise
    assert diff[..., 0, 0].max().item() > 1e-12


# ---------------------------------------------------------------- validation

def test_invalid_arguments_and_inputs_are_refused():
    bad = [('PLKSRIGPlus', {'lk_type': 'SparsePLK'}, 'lk_type'), ('PLKSRIGPlus', {'with_idt': True}, 'with_idt'),
           ('PLKSRIGPlus', {'sparse_dilations': [1, 2]}, 'sparse'), ('PLKSRIGPlus', {'ccm_type': 'XCCM'}, 'ccm_type'),
           ('PLKSRIGPlus', {'kernel_size': 4}, 'odd'), ('PLKSRIGPlus', {'split_ratio': 0.1}, 'split_ratio'),
           ('PLKSRIGPlus', {'dim': 0}, 'dim'), ('SMFANetIG', {'n_blocks': -1}, 'n_blocks'),
           ('SMFANetIGPlus', {'return_skip': True}, 'return_skip'), ('SMFANetIG', {'ffn_scale': 0.2}, 'ffn_scale')]
    for arch, over, match in bad:
        with pytest.raises(ValueError, match=match):
            models.make({'name': arch, 'args': {**TINY[arch], **over}})
    with pytest.raises(ValueError, match='too small'):
        tiny('SMFANetIGPlus')(torch.rand(1, 3, 7, 20), 2)
    assert type(models.make({'name': 'plksr-ig-plus', 'args': TINY['PLKSRIGPlus']})) is PUBLISHED_ARCHS['PLKSRIGPlus']
    assert type(models.make({'name': 'smfanet-ig', 'args': TINY['SMFANetIG']})) is PUBLISHED_ARCHS['SMFANetIG']
