"""The published IGConv transformers HAT, SRFormer and ATD (models/zoo/hat.py, srformer.py, atd.py).

Golden cases ``igconv_full_{HAT,SRFormer_IGConv,SRFormer_IGConvPlus,ATD}.pt`` (../shared/golden/README.md): the
published test forward (reflect pad to the window, run, crop) at x2/x3/x4 for closed-form 'fill' weights. Outputs
within 1e-4; the encoder feature, the IGConv branch and IGSample's offset half within 1e-4 of their max (taps
on the padded grid); the folded (instantiated) model within 1e-5 of the unfolded one and 1e-4 of the record.
By default one scale per case (the folded head on the tapped feature); @slow: every scale, full instantiated
forwards. Tiny configurations check what the goldens cannot reach (window padding, batches, several windows,
padded category groups, activation checkpointing) against independent computations.
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import models
from models.zoo import PUBLISHED_ARCHS, PUBLISHED_OPTIONS

from .conftest import closed_form_fill, load_golden

CASES = {'HAT': 'HAT', 'SRFormer_IGConv': 'SRFormer', 'SRFormer_IGConvPlus': 'SRFormer', 'ATD': 'ATD'}
N_PARAMS = {'HAT': 22_362_523, 'SRFormer_IGConv': 11_217_231, 'SRFormer_IGConvPlus': 12_114_511, 'ATD': 22_110_145}
C_INTO_IGCONV = {'HAT': 180, 'SRFormer': 180, 'ATD': 210}
WINDOW = {'HAT': 16, 'SRFormer': 22, 'ATD': 16}
DEFAULT_SCALE = {'HAT': 2, 'SRFormer_IGConv': 3, 'SRFormer_IGConvPlus': 4, 'ATD': 2}
TOL, REL, FOLD_TOL = 1e-4, 1e-4, 1e-5

TINY = {
    'HAT': {'img_size': 16, 'window_size': 8, 'embed_dim': 12, 'depths': [2], 'num_heads': [2], 'squeeze_factor': 4,
            'implicit_dim': 16, 'latent_layers': 2},
    'SRFormer': {'img_size': 16, 'window_size': 8, 'embed_dim': 16, 'depths': [2], 'num_heads': [2],
                 'implicit_dim': 16, 'latent_layers': 2},
    'ATD': {'img_size': 16, 'window_size': 8, 'embed_dim': 12, 'depths': [2, 2], 'num_heads': [2, 2],
            'category_size': 40, 'num_tokens': 8, 'reducted_dim': 4, 'convffn_kernel_size': 3, 'use_checkpoint': False,
            'implicit_dim': 16, 'latent_layers': 2},
}

_FILLED = {}


def golden_model(case_name):
    """The published model of a golden case with the closed-form weights, built once per session."""
    if case_name not in _FILLED:
        case = load_golden(f'igconv_full_{case_name}')
        opt = dict(case['opt'])
        model = models.make({'name': opt.pop('type'), 'args': opt})
        closed_form_fill(model)
        _FILLED[case_name] = model.eval()
    return _FILLED[case_name]


def tiny(arch, **over):
    torch.manual_seed(0)
    model = models.make({'name': arch, 'args': {**TINY[arch], **over}})
    closed_form_fill(model)
    return model.eval()


def rel_diff(a, b):
    return (a - b).abs().max().item() / b.abs().max().item()


# ---------------------------------------------------------------- structure

@pytest.mark.parametrize('case_name', CASES)
def test_state_dict_matches_published_layout(case_name):
    case = load_golden(f'igconv_full_{case_name}')
    arch = CASES[case_name]
    assert case['opt']['type'] == arch
    model = golden_model(case_name)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v) for k, v in case['param_shapes'].items()}
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS[case_name] == case['n_params']
    assert model.upsampler.dim == C_INTO_IGCONV[arch]
    assert (model.skip is not None) == (case['opt']['upsampler'] == 'igconv+igsample')
    caps = model.capabilities
    assert (caps.kind, caps.integer_scales_only, caps.input_range) == ('grid', True, 'unit')
    assert (caps.window, caps.receptive_radius, caps.max_train_scale) == (WINDOW[arch], None, 4)
    # a released BasicSR checkpoint loads by architecture name
    loaded = models.load_model({'params': model.state_dict()}, arch=arch, args={k: v for k, v in case['opt'].items()
                                                                               if k != 'type'})
    assert torch.equal(loaded.state_dict()['conv_first.weight'], model.state_dict()['conv_first.weight'])


@pytest.mark.parametrize('case_name', CASES)
def test_published_options(case_name):
    """PUBLISHED_OPTIONS[arch] is the option file's network_g; SRFormer's is the IGConv+ file (the IGConv file
    differs only in the upsampler and FGRep)."""
    opt = dict(load_golden(f'igconv_full_{case_name}')['opt'])
    arch = opt.pop('type')
    assert PUBLISHED_ARCHS[arch].registry_name == arch
    if case_name == 'SRFormer_IGConv':
        published = dict(PUBLISHED_OPTIONS[arch])
        assert published.pop('return_skip') is False and published.pop('upsampler') == 'igconv+igsample'
        assert {**published, 'upsampler': 'igconv', 'geo_ensemble': False} == opt
    else:
        assert PUBLISHED_OPTIONS[arch] == opt


def test_relative_position_indices_are_one_to_one():
    """HAT's OCAB index has negative entries (published offset); each (query, key) offset still has one entry."""
    from models.zoo.hat import overlapping_relative_position_index
    index = overlapping_relative_position_index(16, 24)
    assert index.shape == (256, 576) and index.min() < 0
    table_size = (16 + 24 - 1) ** 2
    assert (index % table_size).unique().numel() == table_size
    q = torch.tensor([[i, j] for i in range(16) for j in range(16)])
    k = torch.tensor([[i, j] for i in range(24) for j in range(24)])
    offsets = (k[None] - q[:, None]).reshape(-1, 2) + 15                       # key - query offsets, >= 0
    pairs = (offsets[:, 0] * 39 + offsets[:, 1]) * table_size + index.reshape(-1) % table_size
    assert pairs.unique().numel() == table_size            # one entry per offset


# ---------------------------------------------------------------- golden outputs

def check_case(case_name, scales, full_fold):
    case = load_golden(f'igconv_full_{case_name}')
    model = golden_model(case_name)
    taps = {}
    hooks = [model.upsampler.register_forward_hook(lambda m, i, o: taps.update(feat=i[0], igconv=o))]
    try:
        for s in scales:
            with torch.no_grad():
                out = model(case['inp'], s)
            assert out.shape == case['outs'][s].shape
            assert (out - case['outs'][s]).abs().max().item() <= TOL, f'{case_name} x{s} output'
            feat = taps['feat']
            assert feat.shape[-2:] == tuple(d + p for d, p in zip(case['inp'].shape[-2:], case['pad']))
            assert rel_diff(feat, case['taps']['feat']) <= REL
            assert rel_diff(taps['igconv'], case['taps']['igconv'][s]) <= REL, f'{case_name} x{s} IGConv branch'
            if model.skip is not None:
                with torch.no_grad():
                    q = F.conv2d(feat, model.skip.kernel(s), padding=model.skip.kernel_size // 2)
                offset, scope = q.chunk(2, dim=1)
                assert rel_diff(offset, case['taps']['igsample_offset'][s]) <= REL
                assert (scope - case['taps']['igsample_scope'][s]).abs().max().item() <= TOL
            check_folded(model, case, s, out, feat, full_fold)
    finally:
        for h in hooks:
            h.remove()


def check_folded(model, case, s, out, feat, full_forward):
    """The instantiated model: its folded kernel, and its output (the whole forward, or the folded head on the
    tapped feature, which the instantiated model shares the encoder of)."""
    folded = model.instantiate(s)
    assert rel_diff(folded.upsampler.conv.weight, case['instantiated'][s]['weight']) <= REL
    with torch.no_grad():
        if full_forward:
            y = folded(case['inp'])
        else:
            h, w = case['inp'].shape[-2:]
            ph, pw = case['pad']
            padded = F.pad(case['inp'], (0, pw, 0, ph), mode='reflect')
            y = folded.post(folded.upsampler(feat))
            if folded.skip is not None:
                y = y + folded.skip(padded, feat)
            y = y[..., :s * h, :s * w]
    assert (y - out).abs().max().item() <= FOLD_TOL, f'x{s} folded vs unfolded'
    assert (y - case['instantiated'][s]['out']).abs().max().item() <= TOL


@pytest.mark.parametrize('case_name', CASES)
def test_golden_one_scale(case_name):
    check_case(case_name, [DEFAULT_SCALE[case_name]], full_fold=False)


@pytest.mark.slow
@pytest.mark.parametrize('case_name', CASES)
def test_golden_all_scales(case_name):
    case = load_golden(f'igconv_full_{case_name}')
    check_case(case_name, sorted(case['outs']), full_fold=True)


# ---------------------------------------------------------------- tiny configurations: padding, batches, sizes

@pytest.mark.parametrize('arch', TINY)
def test_window_padding_and_batches(arch):
    model = tiny(arch)
    inp = torch.rand(2, 3, 13, 10)                  # pads to 16 x 16 (window 8)
    with torch.no_grad():
        out = model(inp, 3)
        ref, _ = model.run(F.pad(inp, (0, 6, 0, 3), mode='reflect'), 3)
        singles = torch.cat([model(inp[i:i + 1], 3) for i in range(2)])
        plain = torch.rand(1, 3, 16, 24)            # a multiple of the window: no padding
        plain_out = model(plain, 2)
        plain_ref, _ = model.run(plain, 2)
    assert out.shape == (2, 3, 39, 30) and ref.abs().max().item() > 0.05
    assert torch.equal(out, ref[..., :39, :30])
    assert (out - singles).abs().max().item() <= 1e-5
    assert torch.equal(plain_out, plain_ref) and plain_out.shape == (1, 3, 32, 48)


@pytest.mark.parametrize('arch', TINY)
def test_instantiate_tiny(arch):
    model = tiny(arch)
    inp = torch.rand(1, 3, 11, 17)
    for s in (2, 5):
        with torch.no_grad():
            ref = model(inp, s)
            out = model.instantiate(s)(inp)
        assert out.shape == (1, 3, 11 * s, 17 * s)
        assert (out - ref).abs().max().item() <= FOLD_TOL


def test_hat_needs_window_multiples_in_run():
    model = tiny('HAT')
    with pytest.raises(ValueError, match='multiples of the window 8'):
        model.run(torch.rand(1, 3, 12, 16), 2)


def test_srformer_and_atd_pad_themselves_as_published():
    """``run`` is the published network, which pads by itself: SRFormer reflects, ATD mirrors the edge too."""
    inp = torch.rand(1, 3, 13, 10)
    srformer, atd = tiny('SRFormer'), tiny('ATD')
    reflect = F.pad(inp, (0, 6, 0, 3), mode='reflect')
    mirror = torch.cat([inp, inp.flip(2)], 2)[:, :, :16]
    mirror = torch.cat([mirror, mirror.flip(3)], 3)[..., :16]
    assert torch.equal(mirror[..., 13, :10], inp[..., 12, :]) and torch.equal(mirror[..., :13, 10], inp[..., 9])
    with torch.no_grad():
        for model, padded in ((srformer, reflect), (atd, mirror)):
            out, skip = model.run(inp, 2)
            ref, ref_skip = model.run(padded, 2)
            assert out.shape == (1, 3, 26, 20)
            assert torch.equal(out, ref[..., :26, :20]) and torch.equal(skip, ref_skip[..., :26, :20])


def test_srformer_stored_mask_equals_recomputed():
    """The attn_mask buffers (img_size rounded up to the window) are the masks computed for other sizes."""
    from models.zoo.srformer import permuted_window_mask
    model = tiny('SRFormer', img_size=12)            # stored for 16 x 16
    block = model.layers[0].residual_group.blocks[1]
    assert block.input_resolution == (16, 16) and block.attn_mask.shape == (4, 64, 16)
    assert torch.equal(block.attn_mask, permuted_window_mask(16, 16, 8, 4))
    # window 6, shift 3: query regions cut at pixel -3, key regions at patch -(3 // 2) = -1, i.e. pixel -2
    mask = permuted_window_mask(6, 6, 6, 3)[0]
    assert mask[3 * 6 + 3, 2 * 3 + 2] == 0 and mask[2 * 6 + 2, 1 * 3 + 1] == 0
    assert mask[3 * 6 + 3, 1 * 3 + 1] == -100       # pixel (3, 3) lies in patch (1, 1), a region of its own
    inp = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref, _ = model.run(inp, 2)
        block_masks = [b.attn_mask for b in model.layers[0].residual_group.blocks]
        model.layers[0].residual_group.blocks[1].input_resolution = (0, 0)    # force recomputation
        out, _ = model.run(inp, 2)
    assert torch.equal(out, ref) and block_masks[0] is None


def ocab_reference(ocab, x, x_size, index):
    """OCAB by explicit loops over query windows: each attends to the zero-padded ows x ows square around it."""
    (H, W), (B, L, C) = x_size, x.shape
    ws, ows, heads = ocab.window_size, ocab.overlap_win_size, ocab.num_heads
    p, d = (ows - ws) // 2, C // heads
    qkv = ocab.qkv(ocab.norm1(x)).view(B, H, W, 3, C)
    kv = F.pad(qkv[..., 1:, :].permute(0, 3, 4, 1, 2), (p, p, p, p))         # (B, 2, C, H + 2p, W + 2p)
    table = ocab.relative_position_bias_table
    bias = table[index.reshape(-1)].view(ws * ws, ows * ows, heads).permute(2, 0, 1)
    out = torch.zeros(B, H, W, C)
    for b, i, j in itertools.product(range(B), range(H // ws), range(W // ws)):
        q = qkv[b, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws, 0].reshape(ws * ws, heads, d).transpose(0, 1)
        k, v = kv[b, :, :, i * ws:i * ws + ows, j * ws:j * ws + ows].reshape(2, heads, d, ows * ows).transpose(2, 3)
        a = (q @ k.transpose(1, 2) * d ** -0.5 + bias).softmax(-1) @ v            # (heads, ws*ws, d)
        out[b, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws] = a.transpose(0, 1).reshape(ws, ws, C)
    y = ocab.proj(out.view(B, L, C)) + x
    return y + ocab.mlp(ocab.norm2(y))


def test_hat_ocab_matches_a_loop_over_windows():
    model = tiny('HAT')
    ocab = model.layers[0].residual_group.overlap_attn
    x = torch.randn(2, 24 * 16, 12)
    with torch.no_grad():
        out = ocab(x, (24, 16), model.relative_position_index_OCA)
        ref = ocab_reference(ocab, x, (24, 16), model.relative_position_index_OCA)
    assert (out - ref).abs().max().item() <= 1e-5


def category_attention_reference(aca, qkv, sim):
    """AC-MSA by loops: per image, tokens sorted (stably) by their argmax entry, groups of category_size (the last
    completed with the preceding tokens mirrored), attention per group and head, results put back."""
    B, N, C3 = qkv.shape
    C, heads = C3 // 3, aca.num_heads
    gs = min(N, aca.category_size)
    out = torch.zeros(B, N, C)
    scale = aca.logit_scale.clamp(max=math.log(100)).exp()
    for b in range(B):
        order = torch.argsort(sim[b].argmax(-1), stable=True)
        pad = -N % gs
        order = torch.cat([order, order[N - pad:].flip(0)])
        for g in range(len(order) // gs):
            idx = order[g * gs:(g + 1) * gs]
            q, k, v = qkv[b, idx].view(gs, 3, heads, C // heads).permute(1, 2, 0, 3)
            y = ((q @ k.transpose(1, 2)) * scale).softmax(-1) @ v
            keep = (torch.arange(gs) + g * gs) < N                               # the padding rows are dropped
            out[b, idx[keep]] = y.transpose(0, 1).reshape(gs, C)[keep]
    return aca.proj(out)


def test_atd_category_attention_matches_a_loop_over_groups():
    model = tiny('ATD')
    aca = model.layers[0].residual_group.layers[0].attn_aca
    qkv, sim = torch.randn(2, 100, 36), torch.rand(2, 100, 8)       # 100 tokens, groups of 40: the last padded
    with torch.no_grad():
        assert (aca(qkv, sim) - category_attention_reference(aca, qkv, sim)).abs().max().item() <= 1e-5


def test_atd_checkpointing_changes_memory_only():
    plain, ckpt = tiny('ATD').train(), tiny('ATD', use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    inp, gt = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32)
    grads = []
    for model in (plain, ckpt):
        (model(inp, 2) - gt).abs().mean().backward()
        grads.append(model.layers[0].residual_group.td.grad)
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
    assert ckpt.layers[0].residual_group.checkpointed and not plain.layers[0].residual_group.checkpointed


@pytest.mark.parametrize('arch, bad, match', [
    ('HAT', {'overlap_ratio': 0.375}, 'overlap_ratio'),              # int(8 * 0.375) = 3: windows not centred
    ('HAT', {'img_size': 8}, 'img_size'),
    ('HAT', {'resi_connection': 'identity'}, 'resi_connection'),
    ('SRFormer', {'window_size': 7}, 'even window_size'),
    ('SRFormer', {'use_checkpoint': True}, 'use_checkpoint'),
    ('SRFormer', {'upsampler': 'pixelshuffle'}, 'upsampler'),
    ('ATD', {'upsampler': 'igconv'}, 'upsampler'),
    ('ATD', {'num_heads': [5, 2]}, 'num_heads'),
    ('ATD', {'return_skip': True}, 'return_skip'),
])
def test_invalid_arguments(arch, bad, match):
    with pytest.raises(ValueError, match=match):
        models.make({'name': arch, 'args': {**TINY[arch], **bad}})


def test_aliases():
    for alias, arch in (('hat', 'HAT'), ('srformer', 'SRFormer'), ('atd', 'ATD')):
        assert type(models.make({'name': alias, 'args': TINY[arch]})) is PUBLISHED_ARCHS[arch]
