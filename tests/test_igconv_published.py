"""The published IGConv architectures (models/zoo/) and their BasicSR checkpoints.

Golden cases ``igconv_full_<arch>.pt`` (../shared/golden/README.md): outputs of the published code at x2/x3/x4
(RCAN also x8) for closed-form 'fill' weights. Outputs within 1e-4; the encoder feature, the IGConv branch and
IGSample's offset half within 1e-4 relative to their max (the IGConv branch is small with these weights);
the folded (instantiated) form within 1e-5 of the unfolded one. The full sweep is @slow (the full EDSR has
40M parameters); one complete case (RCAN x2, loaded from a BasicSR checkpoint dict) runs by default.
"""
import json

import pytest
import torch
import yaml

import models
from models.checkpoint import CheckpointError
from models.zoo import PUBLISHED_ARCHS, PUBLISHED_OPTIONS

from .conftest import SHARED, closed_form_fill, load_golden, need

ARCHS = ['EDSRIG', 'EDSRIGPlus', 'RDNIGPlus', 'RCANIGPlus', 'SwinIRMS']
# parameter counts of the published models (golden README table; the upsampler parts from the published module)
N_PARAMS = {'EDSRIG': 39_806_211, 'EDSRIGPlus': 41_053_699, 'RDNIGPlus': 22_895_811, 'RCANIGPlus': 16_217_083,
            'SwinIRMS': 13_490_215, 'SMFANetIG': 960_483, 'SMFANetIGPlus': 1_249_507, 'PLKSRIGPlus': 8_280_259}
C_INTO_IGCONV = {'EDSRIG': 256, 'EDSRIGPlus': 256, 'RDNIGPlus': 64, 'RCANIGPlus': 64, 'SwinIRMS': 180}
OPTIONS = SHARED / 'published' / 'igconv-options'
TOL, REL, FOLD_TOL = 1e-4, 1e-4, 1e-5

# small versions of each architecture (same code paths, fast on a CPU)
TINY = {
    'EDSRIG': {'num_feat': 8, 'num_block': 2, 'res_scale': 0.1, 'img_range': 1.0, 'implicit_dim': 16,
               'latent_layers': 2},
    'EDSRIGPlus': {'num_feat': 8, 'num_block': 2, 'res_scale': 0.1, 'img_range': 1.0, 'implicit_dim': 16,
                   'latent_layers': 2, 'geo_ensemble': True},
    'RDNIGPlus': {'G0': 8, 'RDNconfig': [2, 3, 8], 'implicit_dim': 16, 'latent_layers': 2, 'geo_ensemble': True},
    'RCANIGPlus': {'n_resgroups': 1, 'n_resblocks': 1, 'n_feats': 16, 'implicit_dim': 16, 'n_layers': 2,
                   'max_s': 8},
    'SwinIRMS': {'img_size': 16, 'window_size': 8, 'embed_dim': 12, 'depths': [2], 'num_heads': [2], 'mlp_ratio': 2,
                 'implicit_dim': 16, 'latent_layers': 2, 'upsampler': 'igconv+igsample'},
}

# the published constructors' arguments and defaults (igconv/archs/*.py of dslisleedh/IGConv); 'REQUIRED' has no
# default there. Differences kept on purpose: return_skip (the training-only DualStreamLoss hook; only False is
# supported here), norm_layer (a class, not a config value), EDSR's geo_ensemble None (= the published False /
# True of EDSRIG / EDSRIGPlus), RCAN's conv None (= the published default_conv), EDSR's RGB-only num_in_ch/num_out_ch.
PUBLISHED_SIGNATURES = {
    'RDNIGPlus': {'G0': 64, 'RDNkSize': 3, 'RDNconfig': 'B', 'n_colors': 3, 'sk_kernel_size': 3, 'implicit_dim': 256,
                  'latent_layers': 4, 'geo_ensemble': False, 'max_s': 4, 'return_skip': False},
    'RCANIGPlus': {'conv': 'default_conv', 'sk_kernel_size': 3, 'implicit_dim': 256, 'n_layers': 4,
                   'geo_ensemble': True, 'return_skip': False, 'dysample_kernel_size': 3, 'max_s': 4},
    'SwinIRMS': {'img_size': 64, 'patch_size': 1, 'in_chans': 3, 'embed_dim': 96, 'depths': (6, 6, 6, 6),
                 'num_heads': (6, 6, 6, 6), 'window_size': 7, 'mlp_ratio': 4.0, 'qkv_bias': True, 'qk_scale': None,
                 'drop_rate': 0.0, 'attn_drop_rate': 0.0, 'drop_path_rate': 0.1, 'norm_layer': 'LayerNorm',
                 'ape': False, 'patch_norm': True, 'use_checkpoint': False, 'upscale': 2, 'img_range': 1.0,
                 'upsampler': 'igconv', 'resi_connection': '1conv', 'sk_kernel_size': 3, 'implicit_dim': 256,
                 'latent_layers': 4, 'geo_ensemble': True, 'return_skip': True},
    'EDSRIG': {'num_in_ch': 'REQUIRED', 'num_out_ch': 'REQUIRED', 'num_feat': 64, 'num_block': 16, 'upscale': 4,
               'res_scale': 1, 'img_range': 255.0, 'rgb_mean': (0.4488, 0.4371, 0.4040), 'sk_kernel_size': 3,
               'implicit_dim': 256, 'latent_layers': 4, 'geo_ensemble': False},
}
KEPT_DIFFERENCES = {('RCANIGPlus', 'conv'), ('SwinIRMS', 'norm_layer'), ('SwinIRMS', 'return_skip'),
                    ('EDSRIG', 'num_in_ch'), ('EDSRIG', 'num_out_ch'), ('EDSRIG', 'geo_ensemble')}


_BUILT = {}


def built(arch, args):
    """A full-size model per distinct (arch, args), built once per session (building one takes seconds)."""
    key = (arch, json.dumps(args, sort_keys=True))
    if key not in _BUILT:
        _BUILT[key] = models.make({'name': arch, 'args': args})
    return _BUILT[key]


def tiny(arch, **over):
    torch.manual_seed(0)
    model = models.make({'name': arch, 'args': {**TINY[arch], **over}})
    closed_form_fill(model)          # deterministic weights large enough for visible outputs
    return model.eval()


def rel_diff(a, b):
    return (a - b).abs().max().item() / b.abs().max().item()


# ---------------------------------------------------------------- structure: keys, shapes, counts

@pytest.mark.parametrize('arch', ARCHS)
def test_state_dict_matches_published_layout(arch):
    case = load_golden(f'igconv_full_{arch}')
    opt = dict(case['opt'])
    assert opt.pop('type') == arch
    model = built(arch, opt)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v) for k, v in case['param_shapes'].items()}
    n = sum(p.numel() for p in model.parameters())
    assert n == N_PARAMS[arch] == case['n_params']
    assert model.upsampler.dim == C_INTO_IGCONV[arch]
    caps = model.capabilities
    assert (caps.kind, caps.integer_scales_only, caps.input_range) == ('grid', True, 'unit')
    assert caps.window == (8 if arch == 'SwinIRMS' else 0)
    assert caps.max_train_scale == (8 if arch == 'RCANIGPlus' else 4)
    if arch in ('SwinIRMS', 'RCANIGPlus'):
        assert caps.receptive_radius is None          # attention / global channel pooling
    else:
        assert caps.receptive_radius == {'EDSRIG': 66, 'EDSRIGPlus': 66, 'RDNIGPlus': 131}[arch]
    # the published defaults used by load_model(arch=...) are the option file's network_g
    assert PUBLISHED_OPTIONS[arch] == {k: v for k, v in case['opt'].items() if k != 'type'}


# ---------------------------------------------------------------- golden outputs

def golden_model(case):
    opt = dict(case['opt'])
    model = models.make({'name': opt.pop('type'), 'args': opt})
    closed_form_fill(model)
    return model.eval()


def check_case(model, case, scales, check_folded=True):
    taps = {}

    def tap_igconv(m, i, o):
        taps['feat'], taps['igconv'] = i[0], o

    hooks = [model.upsampler.register_forward_hook(tap_igconv)]
    if model.skip is not None:
        hooks.append(model.skip.register_forward_hook(lambda m, i, o: taps.__setitem__('igsample', o)))
    inp = case['inp']
    for s in scales:
        with torch.no_grad():
            out = model(inp, s)
        feat = taps['feat']
        assert rel_diff(feat, case['taps']['feat']) <= REL
        ref = case['outs'][s]
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= TOL, f'x{s} output'
        assert rel_diff(taps['igconv'], case['taps']['igconv'][s]) <= REL, f'x{s} IGConv branch'
        if model.skip is not None:
            assert (taps['igsample'] - case['taps']['igsample'][s]).abs().max().item() <= TOL
            with torch.no_grad():
                q = torch.nn.functional.conv2d(feat, model.skip.kernel(s), padding=model.skip.kernel_size // 2)
            offset, scope = q.chunk(2, dim=1)
            assert rel_diff(offset, case['taps']['igsample_offset'][s]) <= REL
            assert (scope - case['taps']['igsample_scope'][s]).abs().max().item() <= TOL
        if check_folded:
            folded = model.instantiate(s)
            ref_w = case['instantiated'][s]['weight']
            assert rel_diff(folded.upsampler.conv.weight, ref_w) <= REL
            with torch.no_grad():
                y = folded(inp)
            assert (y - out).abs().max().item() <= FOLD_TOL, f'x{s} folded vs unfolded'
            assert (y - case['instantiated'][s]['out']).abs().max().item() <= TOL
    for h in hooks:
        h.remove()


HEAD_NAME = {'EDSRIG': 'upsample', 'EDSRIGPlus': 'upsample', 'RDNIGPlus': 'UPNet', 'RCANIGPlus': 'tail',
             'SwinIRMS': 'upsample'}


def fill_named(module, prefix):
    """closed_form_fill with the parameter names the whole model gives them (the fill phase depends on it)."""
    wrapper = torch.nn.Module()
    wrapper.add_module(prefix, module)
    closed_form_fill(wrapper)
    return module.eval()


@pytest.mark.parametrize('arch', ARCHS)
def test_golden_heads_x2(arch):
    """Fast golden check of the upsampling head and the output composition: the published encoder feature
    (tap) through IGConv (+ IGSample) and the wrapper's back-shift gives the published x2 output. Written
    independently of the model classes (the encoders are checked by the @slow test_golden_full)."""
    from models.upsamplers.igconv import IGConv
    from models.upsamplers.igsample import IGSample
    case = load_golden(f'igconv_full_{arch}')
    C, plus = C_INTO_IGCONV[arch], arch != 'EDSRIG'
    max_s = case['opt'].get('max_s', 4)
    up = fill_named(IGConv(C, 3, 256, 4, geo_ensemble=plus, max_s=max_s), HEAD_NAME[arch])
    feat, s = case['taps']['feat'], 2
    with torch.no_grad():
        y = up(feat, s)
        assert rel_diff(y, case['taps']['igconv'][s]) <= REL
        if arch == 'RCANIGPlus':
            add_mean = fill_named(torch.nn.Conv2d(3, 3, 1), 'add_mean')
            y = add_mean(y)
        elif arch != 'RDNIGPlus':
            y = y + torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)   # / img_range (1) + DIV2K mean
        if plus:
            skip = fill_named(IGSample(C, 3, 128, 2, geo_ensemble=True, max_s=max_s), 'skip')
            img = case['inp']
            if arch == 'SwinIRMS':      # the published test pads to the window (reflect) and crops
                ph, pw = case['pad']
                img = torch.nn.functional.pad(img, (0, pw, 0, ph), mode='reflect')
            z = skip(img, feat, s)
            assert (z - case['taps']['igsample'][s]).abs().max().item() <= TOL
            y = y + z
    h, w = case['inp'].shape[-2:]
    assert (y[..., :s * h, :s * w] - case['outs'][s]).abs().max().item() <= TOL


@pytest.mark.slow
def test_golden_rcan_x2_from_basicsr_checkpoint():
    """One complete golden case by default: RCAN-IGConv+ (max_s 8) loaded from a BasicSR checkpoint dict
    by architecture name (the published option's arguments), params_ema absent -> params."""
    case = load_golden('igconv_full_RCANIGPlus')
    assert set(case['checkpoint']) == {'params'}
    filled = golden_model(case)
    model = models.load_model({'params': filled.state_dict()}, arch='RCANIGPlus')
    assert model.max_s == 8 and not model.training
    check_case(model, case, [2], check_folded=False)     # folding: test_instantiate_matches_unfolded, @slow


@pytest.mark.slow
@pytest.mark.parametrize('arch', ARCHS)
def test_golden_full(arch):
    case = load_golden(f'igconv_full_{arch}')
    check_case(golden_model(case), case, sorted(case['outs']))


# ---------------------------------------------------------------- folding, protocol, validation (tiny models)

@pytest.mark.parametrize('arch', ARCHS)
def test_instantiate_matches_unfolded(arch):
    model = tiny(arch)
    inp = torch.rand(1, 3, 9, 11)
    n_hyper = sum(p.numel() for p in model.upsampler.parameters())
    for s in (2, 3):
        with torch.no_grad():
            ref = model(inp, s)
            folded = model.instantiate(s)
            out = folded(inp)
        assert out.shape == (1, 3, 9 * s, 11 * s)
        assert (out - ref).abs().max().item() <= FOLD_TOL
        assert ref.abs().max().item() > 0.05            # not a trivially small output
        assert folded.capabilities.scales == (s,)
        assert torch.equal(folded(inp, s), out)
        with pytest.raises(ValueError, match=f'instantiated for x{s}'):
            folded(inp, s + 1)
        # the deployed upsampler is just the generated kernel; the encoder is shared, not copied
        assert sum(p.numel() for p in folded.upsampler.parameters()) == 3 * s * s * model.upsampler.dim * 9
        assert sum(p.numel() for p in model.upsampler.parameters()) == n_hyper
        first = next(iter(model.state_dict()))
        assert folded.state_dict()[first].data_ptr() == model.state_dict()[first].data_ptr()


def test_mean_shift_and_img_range():
    """EDSR: x' = (x - mean) * img_range, IGConv output / img_range + mean; a zero network returns the mean."""
    model = tiny('EDSRIG', img_range=255.0, rgb_mean=[0.1, 0.2, 0.3])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        out = model(torch.rand(1, 3, 5, 4), 2)
    assert torch.allclose(out, torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand_as(out))
    # img_range scales what the encoder sees: conv_first of a 255-range model on x == conv_first of 1-range * 255
    a, b = tiny('EDSRIG', img_range=255.0), tiny('EDSRIG', img_range=1.0)
    x = torch.rand(1, 3, 5, 4)
    assert torch.allclose(a.pre(x), b.pre(x) * 255, atol=1e-4)


def test_swinirms_pads_to_window_like_the_published_test():
    model = tiny('SwinIRMS')
    inp = torch.rand(1, 3, 10, 13)
    with torch.no_grad():
        out = model(inp, 2)
        padded = torch.nn.functional.pad(inp, (0, 3, 0, 6), mode='reflect')
        ref, _ = model.run(padded, 2)
    assert out.shape == (1, 3, 20, 26)
    assert torch.equal(out, ref[..., :20, :26])


def test_upscale_grid_and_input_validation():
    model = tiny('EDSRIGPlus')
    inp = torch.rand(2, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(model.upscale_grid(inp, (18, 15)), model(inp, 3))
    for size in [(18, 10), (13, 10), (9, 7.5)]:
        with pytest.raises(ValueError):
            model.upscale_grid(inp, size)
    for bad in [torch.rand(3, 6, 5), torch.rand(1, 1, 6, 5), torch.zeros(1, 3, 6, 5, dtype=torch.uint8)]:
        with pytest.raises(ValueError, match='input'):
            model(bad, 2)
    with pytest.raises(ValueError, match='integer'):
        model(inp, 2.5)
    with pytest.raises(ValueError, match='implicit_dim'):
        models.make({'name': 'EDSRIG', 'args': {**TINY['EDSRIG'], 'implicit_dim': 0}})
    with pytest.raises(ValueError, match='upsampler'):
        models.make({'name': 'SwinIRMS', 'args': {**TINY['SwinIRMS'], 'upsampler': 'pixelshuffle'}})


@pytest.mark.parametrize('arch', sorted(PUBLISHED_SIGNATURES))
def test_constructor_arguments_and_defaults_are_the_published_ones(arch):
    import inspect
    params = inspect.signature(PUBLISHED_ARCHS[arch]).parameters
    for name, default in PUBLISHED_SIGNATURES[arch].items():
        if (arch, name) == ('SwinIRMS', 'norm_layer'):
            assert name not in params
            continue
        assert name in params, f'{arch} lacks the published argument {name}'
        if (arch, name) not in KEPT_DIFFERENCES:
            ours = params[name].default
            assert (tuple(ours) if isinstance(ours, (list, tuple)) else ours) == default, f'{arch}.{name}'


def test_published_defaults_build_the_published_model():
    """SwinIRMS(upsampler='igconv') without geo_ensemble is the published default (FGRep on); RDNIGPlus without
    geo_ensemble has it off; RCANIGPlus takes n_layers and dysample_kernel_size (IGSample's kernel)."""
    swin = models.make({'name': 'SwinIRMS', 'args': {**TINY['SwinIRMS'], 'upsampler': 'igconv'}})
    assert swin.skip is None and swin.upsampler.geo_ensemble
    rdn = models.make({'name': 'RDNIGPlus', 'args': {k: v for k, v in TINY['RDNIGPlus'].items() if k != 'geo_ensemble'}})
    assert not rdn.upsampler.geo_ensemble and not rdn.skip.geo_ensemble
    rcan = models.make({'name': 'RCANIGPlus', 'args': {**TINY['RCANIGPlus'], 'n_layers': 3, 'dysample_kernel_size': 5}})
    assert rcan.tail.latent_layers == 3 and rcan.tail.kernel_size == 3 and rcan.skip.kernel_size == 5
    assert rcan.capabilities.decoder_reach == 3           # IGSample's 5x5 kernel + its bilinear neighbour
    with pytest.raises(ValueError, match='conv'):
        models.make({'name': 'RCANIGPlus', 'args': {**TINY['RCANIGPlus'], 'conv': 'my_conv'}})


def test_aliases_build_the_same_class():
    assert type(models.make({'name': 'edsr-ig-plus', 'args': TINY['EDSRIGPlus']})) is PUBLISHED_ARCHS['EDSRIGPlus']
    assert type(models.make({'name': 'swinir-ms', 'args': TINY['SwinIRMS']})) is PUBLISHED_ARCHS['SwinIRMS']


def test_training_step_reaches_every_part():
    model = tiny('RDNIGPlus').train()
    inp, gt = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 12, 12)
    loss = (model(inp, 2) - gt).abs().mean()
    loss.backward()
    assert model.UPNet.freq.grad is not None and model.skip.convs.freq.grad is not None
    assert model.SFENet1.weight.grad is not None and model.fft_loss_weight == 0.05
    rcan = tiny('RCANIGPlus').train()
    (rcan(inp, 2) - gt).abs().mean().backward()
    assert rcan.sub_mean.weight.grad is not None       # trainable MeanShift, as published (docs/deviations.md, I8)


# ---------------------------------------------------------------- BasicSR checkpoints

def write_options(path, arch, args, param_key=None):
    opt = {'name': 'x', 'network_g': {'type': arch, **args}, 'path': {'pretrain_network_g': None}}
    if param_key:
        opt['path']['param_key_g'] = param_key
    path.write_text(yaml.safe_dump(opt))
    return path


def test_load_basicsr_prefers_params_ema(tmp_path):
    model = tiny('EDSRIGPlus')
    ema = model.state_dict()
    raw = {k: v + 0.01 if v.is_floating_point() else v for k, v in ema.items()}
    path = tmp_path / 'net_g.pth'
    torch.save({'params': raw, 'params_ema': ema}, path)
    opt = write_options(tmp_path / 'opt.yml', 'EDSRIGPlus', TINY['EDSRIGPlus'])
    inp = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        ref = model(inp, 2)
        by_opt = models.load_model(path, options=opt)
        by_arch = models.load_model(path, arch='EDSRIGPlus', args=TINY['EDSRIGPlus'])
        assert torch.equal(by_opt(inp, 2), ref) and torch.equal(by_arch(inp, 2), ref)
        assert by_opt.basicsr_param_key == 'params_ema'
        # the option file's param_key_g wins
        raw_model = models.load_model(path, options=write_options(tmp_path / 'o2.yml', 'EDSRIGPlus',
                                                                   TINY['EDSRIGPlus'], 'params'))
        assert raw_model.basicsr_param_key == 'params' and not torch.equal(raw_model(inp, 2), ref)
    # {'params': sd} only, with a DataParallel prefix
    torch.save({'params': {'module.' + k: v for k, v in ema.items()}}, path)
    assert models.load_model(path, arch='edsr-ig-plus', args=TINY['EDSRIGPlus']).basicsr_param_key == 'params'
    # the model's spec makes our own checkpoint format round-trip
    m = models.load_model(path, arch='EDSRIGPlus', args=TINY['EDSRIGPlus'])
    assert m.spec == {'name': 'EDSRIGPlus', 'args': TINY['EDSRIGPlus']}


def test_load_basicsr_errors(tmp_path):
    path = tmp_path / 'x.pth'
    torch.save({'params': tiny('EDSRIG').state_dict()}, path)
    with pytest.raises(CheckpointError, match="BasicSR checkpoint.*'params'.*arch="):
        models.load_model(path)                                        # no architecture given
    with pytest.raises(CheckpointError, match='do not fit EDSRIGPlus'):
        models.load_model(path, arch='EDSRIGPlus', args=TINY['EDSRIGPlus'])   # no IGSample weights in the file
    with pytest.raises(CheckpointError, match='unknown IGConv architecture'):
        models.load_model(path, arch='NoSuchArch')
    with pytest.raises(CheckpointError, match='disagrees'):
        models.load_model(path, arch='RDNIGPlus', options=write_options(tmp_path / 'o.yml', 'EDSRIG', TINY['EDSRIG']))
    bad_opt = tmp_path / 'bad.yml'
    bad_opt.write_text('name: x\nnetwork_d: {type: VGG}\n')
    with pytest.raises(CheckpointError, match='network_g'):
        models.load_model(path, options=bad_opt)
    with pytest.raises(CheckpointError, match='not found'):
        models.load_model(path, options=tmp_path / 'missing.yml')
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {}, 'epoch': 3}, other)
    with pytest.raises(CheckpointError, match="'state_dict', 'epoch'"):       # names what it found
        models.load_model(other, arch='EDSRIG')
    with pytest.raises(CheckpointError, match="'state_dict', 'epoch'"):
        models.load_model(other)
    torch.save({'params': {'w': [1, 2]}}, other)
    with pytest.raises(CheckpointError, match='not a named tensor'):
        models.load_model(other, arch='EDSRIG')


def test_convert_script_round_trip(tmp_path):
    from scripts import convert_basicsr
    model = tiny('RCANIGPlus')
    src, dst = tmp_path / 'rcan.pth', tmp_path / 'ours.pth'
    torch.save({'params': model.state_dict()}, src)
    assert convert_basicsr.main([str(src), str(dst), '--arch', 'NoSuchArch']) == 1      # unknown architecture
    opt = write_options(tmp_path / 'o.yml', 'RCANIGPlus', TINY['RCANIGPlus'])
    assert convert_basicsr.main([str(src), str(dst), '--options', str(opt)]) == 0
    again = models.load_model(dst)
    inp = torch.rand(1, 3, 4, 5)
    with torch.no_grad():
        assert torch.equal(again(inp, 8), model(inp, 8))
    assert convert_basicsr.main([str(src), str(tmp_path / 'y.pth')]) == 1                # no architecture


# ---------------------------------------------------------------- every published option file we implement

def option_files():
    if not OPTIONS.exists():
        return []
    return sorted(str(p.relative_to(OPTIONS)) for p in OPTIONS.rglob('*.yaml'))


def golden_records():
    """(option file path relative to options/, record) for every igconv_full_* golden case."""
    out = []
    for path in sorted((SHARED / 'golden').glob('igconv_full_*.pt')):
        case = torch.load(path, weights_only=True)
        out.append(case)
    return out


def expected_params(rel, net):
    """The published parameter count for an option file: the golden record made from that file (test or
    training option), else the record of the same architecture and arguments up to ``img_size`` (which only
    sizes attention-mask buffers)."""
    records = golden_records()
    for case in records:
        if f'options/{rel}' in (case.get('option_file'), case.get('training_option_file')):
            return case['n_params']
    strip = lambda opt: {k: v for k, v in opt.items() if k not in ('img_size', 'use_checkpoint')}    # noqa: E731
    for case in records:
        if strip(case['opt']) == strip({'type': net['type'], **net}):
            return case['n_params']
    raise AssertionError(f'{rel}: no golden record describes this network_g')


@pytest.mark.parametrize('rel', option_files() or ['(none)'])
def test_published_option_files_build(rel):
    """Every published option file (test and training) builds its network with the published parameter
    count; none is left out."""
    root = need(OPTIONS, 'published IGConv option files')
    need(SHARED / 'golden', 'golden reference outputs')
    if rel == '(none)':
        pytest.skip(f'no option files under {root}')
    with open(root / rel) as f:
        net = dict(yaml.safe_load(f)['network_g'])
    arch = net.pop('type')
    assert arch in PUBLISHED_ARCHS, f'{rel}: network_g type {arch} is not registered'
    expected = expected_params(rel, {'type': arch, **net})
    model = built(arch, net)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.capabilities.max_train_scale == (8 if net.get('max_s') == 8 else 4)


# ---------------------------------------------------------------- the rendering engine drives them ([0, 1] in and out)

@pytest.mark.parametrize('arch', ['EDSRIGPlus', 'SwinIRMS'])
def test_engine_feeds_unit_range(arch):
    from engine.inference import Upscaler
    model = tiny(arch)
    img = torch.rand(1, 3, 10, 13)
    with torch.no_grad():
        ref = model(img, 3).clamp(0, 1)
    assert 0 < ref.mean().item() < 1
    for window in sorted({0, model.capabilities.window}):
        out = Upscaler(model, window=window)(img, (30, 39))
        assert (out - ref).abs().max().item() <= 1e-6, f'window {window}'
    with pytest.raises(ValueError, match='integer'):
        Upscaler(model)(img, (25, 39))


# ---------------------------------------------------------------- train.py trains a published architecture

@pytest.mark.slow
def test_train_py_trains_a_published_arch(tmp_path):
    """A config naming a published architecture trains through train.py ([0, 1] batches, no data_norm), and
    the checkpoint loads back and renders through the engine."""
    import train
    from engine.inference import Upscaler
    from .conftest import DATA
    data = need(DATA / 'train' / 't91', 'stand-in training images')
    cfg = {
        'train_dataset': {'dataset': {'name': 'image-folder', 'args': {'root_path': str(data), 'first_k': 4,
                                                                         'repeat': 1, 'cache': 'in_memory'}},
                          'wrapper': {'name': 'sr-integer-downsampled',
                                      'args': {'inp_size': 12, 'scales': [2, 3], 'augment': True}},
                          'batch_sampler': {'name': 'per-batch-random-scale'}, 'batch_size': 2},
        'val_dataset': {'dataset': {'name': 'image-folder', 'args': {'root_path': str(data), 'first_k': 2,
                                                                       'repeat': 1, 'cache': 'in_memory'}},
                        'wrapper': {'name': 'sr-integer-downsampled',
                                    'args': {'inp_size': 12, 'scales': [2, 3], 'augment': False}},
                        'batch_sampler': {'name': 'per-batch-random-scale'}, 'batch_size': 2},
        'model': {'name': 'EDSRIGPlus', 'args': TINY['EDSRIGPlus']},
        'loss': {'l1': 1.0, 'fft': 0.05},
        'optimizer': {'name': 'adam', 'args': {'lr': 1.e-3, 'betas': [0.9, 0.99]}},
        'epoch_max': 1, 'epoch_val': 1, 'epoch_save': 1, 'ema_decay': 0.999, 'val_scales': [2, 3],
    }
    path = tmp_path / 'cfg.yaml'
    path.write_text(yaml.safe_dump(cfg))
    assert train.main(['--config', str(path), '--save-root', str(tmp_path), '--name', 'run', '--workers', '0',
                       '--no-progress']) == 0
    model = models.load_model(tmp_path / 'run' / 'epoch-last.pth')
    assert type(model) is PUBLISHED_ARCHS['EDSRIGPlus']
    img = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.allclose(Upscaler(model)(img, (14, 18)), model(img, 2).clamp(0, 1), atol=1e-6)
