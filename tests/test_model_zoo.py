"""Registry, parameter counts, state-dict layout, configs of the published models."""
import pytest
import torch

import models
from models.registry import ModelSpecError

EDSR_B = {'name': 'edsr-baseline', 'args': {'no_upsampling': True}}
SWINIR = {'name': 'swinir', 'args': {'no_upsampling': True}}


def lmliif(encoder=EDSR_B, depth=6, hyper_out=208):
    return {'name': 'lmliif', 'args': {
        'encoder_spec': encoder,
        'imnet_spec': {'name': 'lmmlp', 'args': {'out_dim': 3, 'hidden_dim': 16, 'hidden_depth': depth,
                                                  'mod_scale': True, 'mod_shift': True}},
        'hypernet_spec': {'name': 'mlp', 'args': {'out_dim': hyper_out, 'hidden_list': [208]}},
        'local_ensemble': True, 'feat_unfold': True, 'cell_decode': True, 'mod_input': True}}


LMLTE = {'name': 'lmlte', 'args': {
    'encoder_spec': EDSR_B,
    'imnet_spec': {'name': 'lmmlp', 'args': {'out_dim': 3, 'hidden_dim': 16, 'hidden_depth': 8,
                                              'mod_scale': True, 'mod_shift': True}},
    'hypernet_spec': {'name': 'mlp', 'args': {'out_dim': 288, 'hidden_list': [288]}},
    'hidden_dim': 128, 'local_ensemble': True, 'cell_decode': True, 'mod_input': True}}
LIIF = {'name': 'liif', 'args': {'encoder_spec': EDSR_B,
                                 'imnet_spec': {'name': 'mlp', 'args': {'out_dim': 3, 'hidden_list': [256] * 4}}}}
LTE = {'name': 'lte', 'args': {'encoder_spec': EDSR_B, 'hidden_dim': 256,
                               'imnet_spec': {'name': 'mlp', 'args': {'out_dim': 3, 'hidden_list': [256] * 3}}}}
METASR = {'name': 'metasr', 'args': {'encoder_spec': EDSR_B}}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def decoder_params(model):
    return n_params(model) - n_params(model.encoder)


def test_registry_has_official_names():
    for name in ['edsr-baseline', 'edsr', 'rdn', 'rcan', 'swinir', 'mlp', 'lmmlp', 'liif', 'lte', 'metasr',
                 'lmliif', 'lmlte']:
        assert name in models.list_models()


def test_unknown_name_lists_registered_names():
    with pytest.raises(ModelSpecError) as e:
        models.make({'name': 'lmliff', 'args': {}})
    msg = str(e.value)
    assert "unknown model 'lmliff'" in msg and "did you mean 'lmliif'" in msg and 'edsr-baseline' in msg


def test_unknown_argument_is_named():
    with pytest.raises(ModelSpecError, match="'n_blocks'"):
        models.make({'name': 'edsr-baseline', 'args': {'n_blocks': 3}})


@pytest.mark.parametrize('spec,expected', [
    (LIIF, 346_883), (lmliif(), 165_651), (LTE, 493_827), (LMLTE, 270_467), (METASR, 445_120)])
def test_decoder_parameter_counts(spec, expected):
    assert decoder_params(models.make(spec)) == expected


def test_swinir_lmliif_decoder_is_179571_and_ignores_yaml_out_dim():
    # the SwinIR config says out_dim 208 for the hypernet; the real size is 16*8*2 + 16 = 272 (docs/deviations.md, B5)
    model = models.make(lmliif(SWINIR, depth=8, hyper_out=208))
    assert decoder_params(model) == 179_571
    assert model.hypernet.layers[2].weight.shape == (272, 208)


@pytest.mark.parametrize('spec,expected', [(EDSR_B, 1_220_440), (SWINIR, 11_603_044),
                                           ({'name': 'rdn', 'args': {'no_upsampling': True}}, 21_973_952)])
def test_encoder_parameter_counts(spec, expected):
    assert n_params(models.make(spec)) == expected


def test_state_dict_layouts():
    sd = models.make(lmliif()).state_dict()
    assert len(sd) == 90
    assert sd['hypernet.layers.0.weight'].shape == (208, 578)
    assert sd['imnet.layers.0.weight'].shape == (16, 20)
    assert sd['imnet.layers.12.weight'].shape == (3, 16)
    assert 'encoder.sub_mean.weight' in sd and 'encoder.add_mean.bias' in sd
    assert len(models.make(LMLTE).state_dict()) == 100
    swin = models.make(SWINIR).state_dict()
    assert len(swin) == 544
    masks = [k for k in swin if k.endswith('attn_mask')]
    assert len(masks) == 18 and all(swin[k].shape == (36, 64, 64) for k in masks)


@pytest.mark.parametrize('scale,keys', [(2, ['tail.0.0.weight', 'tail.1.weight']),
                                        (3, ['tail.0.0.weight', 'tail.1.weight']),
                                        (4, ['tail.0.0.weight', 'tail.0.2.weight', 'tail.1.weight'])])
def test_edsr_upsampling_variant(scale, keys):
    enc = models.make({'name': 'edsr-baseline', 'args': {'n_resblocks': 1, 'scale': scale}})
    assert enc.out_dim == 3 and all(k in enc.state_dict() for k in keys)
    assert enc(torch.zeros(1, 3, 5, 6)).shape == (1, 3, 5 * scale, 6 * scale)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_rdn_upsampling_variant(scale):
    enc = models.make({'name': 'rdn', 'args': {'RDNconfig': 'A', 'scale': scale}})
    assert enc(torch.zeros(1, 3, 4, 5)).shape == (1, 3, 4 * scale, 5 * scale)


def test_rcan_keys_and_shape():
    enc = models.make({'name': 'rcan', 'args': {'n_resgroups': 2, 'n_resblocks': 2, 'no_upsampling': True}})
    sd = enc.state_dict()
    for k in ['head.0.weight', 'body.0.body.0.body.0.weight', 'body.0.body.1.body.3.conv_du.2.weight',
              'body.0.body.2.weight', 'body.2.weight', 'sub_mean.bias']:
        assert k in sd
    assert enc(torch.zeros(1, 3, 7, 6)).shape == (1, 64, 7, 6)


def test_swinir_factory_ignores_arguments_and_rejects_others():
    assert models.make({'name': 'swinir', 'args': {'no_upsampling': False}}).out_dim == 64
    with pytest.raises(ModelSpecError):
        models.make({'name': 'swinir', 'args': {'embed_dim': 60}})


def test_liif_without_imnet_returns_nearest_encoder_pixel():
    model = models.make({'name': 'liif', 'args': {'encoder_spec': {'name': 'edsr-baseline', 'args': {
        'n_resblocks': 1, 'scale': 2}}}}).eval()
    inp = torch.randn(1, 3, 4, 5)
    from utils.coords import make_cell, make_coord
    coord, cell = make_coord((8, 10)).unsqueeze(0), make_cell((8, 10)).unsqueeze(0)
    with torch.no_grad():
        out = model(inp, coord, cell)
        ref = model.encoder(inp)
    assert torch.equal(out.view(1, 8, 10, 3).permute(0, 3, 1, 2), ref)
