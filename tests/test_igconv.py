"""IGConv / IGConv+ (models/upsamplers): golden outputs of the official code, folding, FGRep, IGSample,
the FFT loss, the integer-scale guard and the registered SR models."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models.upsamplers import igconv as igconv_mod
from models.upsamplers.igconv import (IGConv, IntegerScaleError, check_integer_scale, d4_average, d4_transforms,
                                      phase_input)
from models.upsamplers.igsample import IGSample, position_prior
from models.upsamplers.losses import FFTL1Loss, fft_l1_loss
from models.upsamplers.sr import IGConvSR, scale_from_cell
from utils.coords import make_cell, make_coord

from .conftest import load_golden

TOL = 1e-4
SCALES = (2, 3, 4)


def small_igconv(geo=False, dim=6, k=3, max_s=4):
    torch.manual_seed(0)
    m = IGConv(dim, kernel_size=k, implicit_dim=32, latent_layers=2, geo_ensemble=geo, max_s=max_s)
    with torch.no_grad():  # larger frequencies/amplitudes than the init, so kernels vary visibly
        m.freq.normal_(0, 1.0)
        m.amplitude.normal_(0, 1.0)
    return m


def small_igsample(geo=True, dim=6):
    torch.manual_seed(1)
    m = IGSample(dim, kernel_size=3, implicit_dim=16, latent_layers=2, geo_ensemble=geo)
    with torch.no_grad():
        m.convs.freq.normal_(0, 1.0)
        m.convs.amplitude.normal_(0, 1.0)
        m.convs.query_kernel[-1].weight.normal_(0, 0.5)
    return m


def tiny_sr(plus=False):
    args = {'encoder_args': {'n_resblocks': 1, 'n_feats': 16},
            'upsampler_spec': {'name': 'igconv', 'args': {'implicit_dim': 32, 'latent_layers': 1}}}
    if plus:
        args['skip_spec'] = {'name': 'igsample', 'args': {'implicit_dim': 16, 'latent_layers': 1}}
    return models.make({'name': 'igconv-plus-edsr-baseline' if plus else 'igconv-edsr-baseline', 'args': args})


# ---------------------------------------------------------------- golden outputs of the official code

@pytest.mark.parametrize('name', ['igconv', 'igconv_geo', 'igsample_geo'])
def test_golden_igconv(name):
    case = load_golden('igconv')
    m = case['modules'][name]
    cls = IGSample if name.startswith('igsample') else IGConv
    module = models.make({'name': cls.registry_name, 'args': m['args']})
    module.load_state_dict(m['sd'])  # strict: official key names
    module.eval()
    for scale in SCALES:
        with torch.no_grad():
            if cls is IGSample:
                out = module(case['img'], case['feat'], scale)
            else:
                out = module(case['feat'], scale)
        ref = m['outs'][scale]
        assert out.shape == ref.shape
        diff = (out - ref).abs().max().item()
        assert diff <= TOL, f'{name} x{scale}: max |diff| {diff:.3g}'
        # the training-mode path (no cache, with autograd) gives the same numbers
        module.train()
        out_train = module(case['img'], case['feat'], scale) if cls is IGSample else module(case['feat'], scale)
        module.eval()
        assert (out_train.detach() - ref).abs().max().item() <= TOL


# ---------------------------------------------------------------- parameter counts

@pytest.mark.parametrize('dim, n_igconv, n_igsample', [(64, 559_107, 362_752), (180, 1_093_635, 897_280)])
def test_parameter_counts(dim, n_igconv, n_igsample):
    assert sum(p.numel() for p in IGConv(dim).parameters()) == n_igconv
    assert sum(p.numel() for p in IGSample(dim).parameters()) == n_igsample


# ---------------------------------------------------------------- folding / instantiation

@pytest.mark.parametrize('geo', [False, True])
def test_instantiated_equals_unfolded(geo):
    m = small_igconv(geo).eval()
    feat = torch.randn(2, m.dim, 7, 5)
    for r in SCALES:
        folded = m.instantiate(r)
        with torch.no_grad():
            ref = m(feat, r)
            out = folded(feat)
        assert out.shape == (2, 3, 7 * r, 5 * r)
        assert (out - ref).abs().max().item() <= 1e-5
        # a plain bias-free SPConv: 3 r^2 C k^2 weights, nothing else
        assert sum(p.numel() for p in folded.parameters()) == 3 * r * r * m.dim * m.kernel_size ** 2
        assert folded.conv.bias is None and isinstance(folded.shuffle, torch.nn.PixelShuffle)
        with pytest.raises(ValueError):
            folded(feat, r + 1)


def test_instantiated_igsample_and_sr_model_equal_unfolded():
    s = small_igsample().eval()
    img, feat = torch.randn(1, 3, 6, 5), torch.randn(1, s.dim, 6, 5)
    for r in SCALES:
        with torch.no_grad():
            assert (s.instantiate(r)(img, feat) - s(img, feat, r)).abs().max().item() <= 1e-5
    model = tiny_sr(plus=True).eval()
    inp = torch.randn(1, 3, 6, 5)
    with torch.no_grad():
        ref = model(inp, 3)
        out = model.instantiate(3)(inp)
    assert (out - ref).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- kernel generation conventions

def test_kernel_shapes():
    m = small_igconv()
    for r in (1, 2, 3, 4, 8):
        assert m.kernel(r).shape == (3 * r * r, m.dim, 3, 3)
    assert m(torch.randn(1, m.dim, 4, 3), 8).shape == (1, 3, 32, 24)


def test_max_s_clamps_the_phase():
    """The phase input at r=8 with max_s=4 is r=4's (2/4); with max_s=8 it is 2/8."""
    assert phase_input(8, 4) == phase_input(4, 4) == 0.5
    assert phase_input(8, 8) == 0.25 and phase_input(2, 4) == 1.0
    m4, m8 = small_igconv(max_s=4), small_igconv(max_s=8)
    m8.load_state_dict(m4.state_dict())
    assert torch.allclose(m8.generate(4), m4.generate(4))
    assert not torch.allclose(m8.generate(8), m4.generate(8), atol=1e-3)
    # phi = a * cell + b: shifting m8's bias by a * (2/4 - 2/8) makes its r=8 phase equal m4's
    with torch.no_grad():
        m8.phase.bias.add_(m8.phase.weight.view(-1) * (0.5 - 0.25))
    assert torch.allclose(m8.generate(8), m4.generate(8), atol=1e-5)


def test_kernel_layout_and_coordinate_convention():
    """W[c r^2 + i r + j, c', u, v] = MLP(A * [cos, sin](pi (Zx x_j + Zy y_i + phi)))[c]."""
    m = small_igconv(dim=2)
    r, k, half = 3, m.kernel_size, m.width // 2
    W = m.generate(r).detach()
    t = -1 + (2 * torch.arange(r, dtype=torch.float32) + 1) / r
    phi = m.phase.weight.view(half) * (2 / r) + m.phase.bias
    with torch.no_grad():
        for c_in, u, v in [(0, 0, 0), (1, 2, 1), (1, 0, 2)]:
            e = (c_in * k + u) * k + v
            zx, zy = m.freq[e, :half, 0, 0], m.freq[e, half:, 0, 0]
            for i in range(r):
                for j in range(r):
                    theta = math.pi * (zx * t[j] + zy * t[i] + phi)
                    x = torch.cat([torch.cos(theta), torch.sin(theta)]) * m.amplitude[e, :, 0, 0]
                    for layer in m.query_kernel:
                        x = F.conv2d(x.view(1, -1, 1, 1), layer.weight, layer.bias).view(-1) \
                            if isinstance(layer, torch.nn.Conv2d) else torch.relu(x)
                    for c in range(3):
                        assert abs(W[c * r * r + i * r + j, c_in, u, v] - x[c]) < 1e-5


def test_pixelshuffle_ordering_with_hand_made_kernel():
    m = small_igconv(dim=2).eval()
    r, h, w = 3, 4, 5
    feat = torch.rand(1, 2, h, w) + 1  # strictly positive
    for c, i, j in [(0, 0, 0), (1, 2, 1), (2, 1, 2)]:
        weight = torch.zeros(3 * r * r, 2, 3, 3)
        weight[c * r * r + i * r + j, :, 1, 1] = 1.0  # centre tap: output = sum of input channels
        m.kernel = lambda scale, wt=weight: wt  # instance attribute shadows the method
        out = m(feat, r)
        expected = torch.zeros(1, 3, h * r, w * r)
        expected[0, c, i::r, j::r] = feat.sum(1)[0]
        assert torch.equal(out, expected)
        del m.kernel


def test_generation_in_chunks_is_identical(monkeypatch):
    m = small_igconv()
    ref = m.generate(5)
    monkeypatch.setattr(igconv_mod, 'GENERATION_CHUNK', 5 * 5 * m.width * 7)  # 7 elements per chunk
    assert torch.allclose(m.generate(5), ref, atol=1e-6)


# ---------------------------------------------------------------- FGRep

D4_FEATURE_OPS = [  # (transform, inverse) on the last two axes of a feature map
    (lambda x: x, lambda x: x),
    (lambda x: x.flip(-1), lambda x: x.flip(-1)),
    (lambda x: x.flip(-2), lambda x: x.flip(-2)),
    (lambda x: x.flip(-2, -1), lambda x: x.flip(-2, -1)),
    (lambda x: x.transpose(-1, -2), lambda x: x.transpose(-1, -2)),
    (lambda x: torch.rot90(x, 1, (-2, -1)), lambda x: torch.rot90(x, -1, (-2, -1))),
    (lambda x: torch.rot90(x, -1, (-2, -1)), lambda x: torch.rot90(x, 1, (-2, -1))),
    (lambda x: torch.rot90(x, 2, (-2, -1)).transpose(-1, -2), lambda x: torch.rot90(x.transpose(-1, -2), -2, (-2, -1))),
]


def test_fgrep_average_is_d4_invariant():
    w = torch.randn(5, 4, 3, 3)
    avg = d4_average(w)
    for g in d4_transforms(avg):
        assert torch.allclose(g, avg, atol=1e-6)
    # 3 free values per 3x3 filter: centre, edges, corners
    assert torch.allclose(avg[..., 0, 1], avg[..., 1, 0]) and torch.allclose(avg[..., 0, 0], avg[..., 2, 2])
    assert len({tuple(t.flatten().tolist()) for t in d4_transforms(torch.arange(9.).view(3, 3))}) == 8


def test_fgrep_equals_feature_ensemble_outputs_and_gradients():
    torch.manual_seed(0)
    w = torch.randn(12, 4, 3, 3, requires_grad=True)
    feat = torch.randn(2, 4, 6, 5, requires_grad=True)
    ens = sum(inv(F.conv2d(fwd(feat), w, padding=1)) for fwd, inv in D4_FEATURE_OPS) / 8
    rep = F.conv2d(feat, d4_average(w), padding=1)
    assert torch.allclose(ens, rep, atol=1e-5)
    g = torch.randn_like(rep)
    g_ens = torch.autograd.grad(ens, (w, feat), g)
    g_rep = torch.autograd.grad(rep, (w, feat), g)
    for a, b in zip(g_ens, g_rep):
        assert torch.allclose(a, b, atol=1e-4)


def test_geo_ensemble_module_uses_the_averaged_kernel():
    plain, geo = small_igconv(False), small_igconv(True)
    geo.load_state_dict(plain.state_dict())
    assert torch.allclose(geo.kernel(2), d4_average(plain.kernel(2)), atol=1e-6)


# ---------------------------------------------------------------- cache

def test_kernel_cache_in_eval_mode():
    m = small_igconv().eval()
    with torch.no_grad():
        k1 = m.kernel(3)
        assert m.kernel(3) is k1  # cached
        m.query_kernel[-1].bias.add_(1.0)  # in-place parameter change invalidates it
        k2 = m.kernel(3)
        assert k2 is not k1 and not torch.allclose(k1, k2)
        m.load_state_dict(small_igconv().state_dict())
        assert torch.allclose(m.kernel(3), k1, atol=1e-6)
    m.train()
    assert m._cache == {}
    k3 = m.kernel(3)
    assert k3.requires_grad and k3 is not m.kernel(3)  # training mode: never cached
    m.eval()
    assert m.kernel(3).requires_grad  # eval with autograd on: regenerated, differentiable


def test_training_gradients_reach_the_hypernetwork():
    m = small_igconv(True).train()
    m(torch.randn(1, m.dim, 4, 4), 2).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- IGSample

@pytest.mark.parametrize('r', SCALES)
def test_igsample_zero_offsets_is_bilinear(r):
    s = small_igsample().eval()
    with torch.no_grad():
        s.convs.query_kernel[-1].weight.zero_()  # offsets and scope logits exactly 0
    img, feat = torch.randn(2, 3, 5, 7), torch.randn(2, s.dim, 5, 7)
    with torch.no_grad():
        out = s(img, feat, r)
    ref = F.interpolate(img, scale_factor=r, mode='bilinear', align_corners=False)
    assert (out - ref).abs().max().item() <= 1e-5


def test_igsample_init_and_channel_layout():
    s = IGSample(8, implicit_dim=16)
    last = s.convs.query_kernel[-1].weight
    assert s.convs.query_kernel[-1].bias is None
    assert torch.equal(last[6:], torch.zeros_like(last[6:]))  # scope head starts at 0
    assert torch.equal(last[0:2], last[2:4]) and torch.equal(last[0:2], last[4:6])  # [m0, m1] tiled 3 times
    p = position_prior(2).view(2, 3, 2, 2)
    assert torch.equal(p[0, 1], torch.tensor([[-0.25, 0.25], [-0.25, 0.25]]))  # x varies along j
    assert torch.equal(p[1, 2], torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))  # y varies along i


def test_igsample_offsets_move_one_colour():
    """A constant x-offset on the red channel shifts only red (here by exactly one LR pixel)."""
    s = small_igsample().eval()
    r, h, w = 2, 4, 6
    img = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).repeat(1, 3, 1, 1)
    feat = torch.ones(1, s.dim, h, w)
    weight = torch.zeros(12 * r * r, s.dim, 3, 3)
    # offset channel (a=x, c=R) = 2.0 everywhere (centre tap reads a channel of ones); scope logit huge -> 0.5 * 1 * 2
    for i in range(r):
        for j in range(r):
            weight[0 * r * r + i * r + j, 0, 1, 1] = 2.0
            weight[(6 + 0) * r * r + i * r + j, 0, 1, 1] = 50.0
    s.kernel = lambda scale: weight
    out = s(img, feat, r)
    base = F.interpolate(img, scale_factor=r, mode='bilinear', align_corners=False)
    shifted = F.interpolate(torch.cat([img[..., 1:], img[..., -1:]], -1), scale_factor=r, mode='bilinear',
                            align_corners=False)
    assert torch.allclose(out[:, 1:], base[:, 1:])
    assert torch.allclose(out[0, 0, :, r:-2 * r], shifted[0, 0, :, r:-2 * r], atol=1e-4)  # away from borders


# ---------------------------------------------------------------- FFT loss

def test_fft_loss_matches_numpy():
    torch.manual_seed(0)
    sr, hr = torch.randn(2, 3, 9, 10), torch.randn(2, 3, 9, 10)
    ref_sr, ref_hr = np.fft.fft2(sr.double().numpy()), np.fft.fft2(hr.double().numpy())
    half = 10 // 2 + 1  # rfft2 keeps the non-negative frequencies of the last axis
    d = ref_sr[..., :half] - ref_hr[..., :half]
    expected = np.concatenate([np.abs(d.real), np.abs(d.imag)]).mean()
    assert abs(fft_l1_loss(sr, hr).item() - expected) / expected < 1e-5
    assert abs(FFTL1Loss(0.05)(sr, hr).item() - 0.05 * expected) / expected < 1e-5
    assert fft_l1_loss(sr, sr).item() == 0
    with pytest.raises(ValueError):
        fft_l1_loss(sr, hr[..., :5])


# ---------------------------------------------------------------- integer-scale guard

def test_check_integer_scale():
    assert check_integer_scale(3) == 3 and check_integer_scale(4.0) == 4 and check_integer_scale(2, 2) == 2
    assert check_integer_scale(torch.tensor([3, 3])) == 3 and check_integer_scale((2, 2)) == 2
    assert check_integer_scale(2.0004) == 2
    for bad in [(2.5,), (2, 3), (0,), (-2,), (float('nan'),), (torch.tensor([2, 3]),)]:
        with pytest.raises(IntegerScaleError, match='integer scales only'):
            check_integer_scale(*bad)
    with pytest.raises(ValueError, match='lmliif'):
        check_integer_scale(2.5)


def test_sr_refuses_non_integer_and_asymmetric_scales():
    model = tiny_sr().eval()
    inp = torch.randn(1, 3, 8, 6)
    with pytest.raises(ValueError, match='integer scales only.*lmliif'):
        model(inp, 2.5)
    for H, W in [(20, 15), (16, 18)]:  # x2.5, and x2 rows / x3 cols
        coord, cell = make_coord((H, W)).unsqueeze(0), make_cell((H, W)).unsqueeze(0)
        with pytest.raises(ValueError, match='integer scales only'):
            model(inp, coord, cell)
    assert IGConvSR.integer_scales_only and model.integer_scales_only
    assert model.check_scale(3.0) == 3


def test_sr_liif_compatible_query():
    model = tiny_sr(plus=True).eval()
    inp = torch.randn(2, 3, 5, 4)
    with torch.no_grad():
        for r in (2, 3, 6):
            full = model(inp, r)
            H, W = 5 * r, 4 * r
            coord, cell = make_coord((H, W)).unsqueeze(0).expand(2, -1, -1), make_cell((H, W), batch=2)
            ref = full.permute(0, 2, 3, 1).reshape(2, H * W, 3)
            assert torch.equal(model(inp, coord, cell), ref)
            assert torch.equal(model(inp, coord=coord, cell=cell, bsize=100), ref)
            # a clipped test-time cell (x max(r/4, 1)) on a full grid still gives scale r
            assert torch.equal(model(inp, coord, cell * max(r / 4, 1)), ref)
            # a random subset: nearest lookup
            idx = torch.randperm(H * W)[:37]
            assert torch.equal(model(inp, coord[:, idx], cell[:, idx]), ref[:, idx])
    assert scale_from_cell(make_cell((15, 12)).unsqueeze(0), (5, 4)) == 3


def test_sr_training_step_with_fft_loss():
    model = tiny_sr(plus=True).train()
    assert model.fft_loss_weight == 0.05 and tiny_sr().fft_loss_weight == 0.0
    assert model.upsampler.geo_ensemble and model.skip.geo_ensemble and not tiny_sr().upsampler.geo_ensemble
    inp, gt = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 18, 18)
    pred = model(inp, 3)
    loss = F.l1_loss(pred, gt) + model.fft_loss_weight * fft_l1_loss(pred, gt)
    loss.backward()
    assert model.upsampler.freq.grad is not None and model.skip.convs.freq.grad is not None
    assert model.encoder.head[0].weight.grad is not None


# ---------------------------------------------------------------- registered SR models

SR_CASES = [
    ('igconv-edsr-baseline', {'encoder_args': {'n_resblocks': 1}}, 64, False),
    ('igconv-plus-edsr-baseline', {'encoder_args': {'n_resblocks': 1}}, 64, True),
    ('igconv-rdn', {'encoder_args': {'RDNconfig': 'A'}}, 64, False),
    ('igconv-plus-rdn', {}, 64, True),
    ('igconv-swinir', {}, 180, False),        # as published: the 180-ch body output feeds IGConv
    ('igconv-plus-swinir', {}, 180, True),
    ('igconv-sr', {'encoder_spec': {'name': 'edsr-baseline', 'args': {'no_upsampling': True, 'n_resblocks': 1}},
                   'upsampler_spec': {'name': 'igconv', 'args': {'implicit_dim': 64, 'latent_layers': 2}},
                   'plus': True, 'skip_spec': {'name': 'igsample', 'args': {'implicit_dim': 32}}}, 64, True),
]


@pytest.mark.parametrize('name, args, dim, plus', SR_CASES, ids=[c[0] for c in SR_CASES])
def test_registered_sr_models(name, args, dim, plus):
    model = models.make({'name': name, 'args': args}).eval()
    assert model.spec == {'name': name, 'args': args}
    assert model.upsampler.dim == dim and model.plus == plus and (model.skip is not None) == plus
    inp = torch.randn(1, 3, 6, 5)  # not a multiple of SwinIR's window: the wrapper crops
    with torch.no_grad():
        for r in (2, 3):
            assert model(inp, r).shape == (1, 3, 6 * r, 5 * r)


def test_sr_spec_round_trip():
    model = tiny_sr(plus=True)
    spec = dict(model.spec, sd=model.state_dict())
    again = models.make(spec, load_sd=True).eval()
    inp = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(again(inp, 2), model.eval()(inp, 2))
    with pytest.raises(ValueError):
        models.make({'name': 'igconv-sr', 'args': {'encoder_spec': {'name': 'edsr-baseline',
                                                                     'args': {'no_upsampling': True}},
                                                    'skip_spec': {'name': 'igsample', 'args': {}}}})
