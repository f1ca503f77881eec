"""CPU inference of EDSR / RDN in channels-last layout (``models.encoders.common.channels_last_call``): equal
to the NCHW path to 1e-5, used only at inference, weights cached outside the state dict and renewed when they
change."""
import pytest
import torch

import models
from models.encoders.common import cpu_inference

SPECS = {
    'edsr-baseline': {'n_resblocks': 2, 'n_feats': 16, 'no_upsampling': True},
    'edsr-baseline-x2': {'n_resblocks': 2, 'n_feats': 16, 'scale': 2},
    'rdn': {'G0': 16, 'RDNconfig': 'A', 'no_upsampling': True},
}


def make(key):
    torch.manual_seed(0)
    return models.make({'name': key.split('-x')[0], 'args': SPECS[key]}).eval()


def nchw(enc, x):
    enc.channels_last = False
    try:
        return enc(x)
    finally:
        enc.channels_last = True


@pytest.mark.parametrize('key', list(SPECS))
def test_channels_last_equals_nchw(key):
    enc = make(key)
    x = torch.randn(2, 3, 13, 21)
    with torch.no_grad():
        ref = nchw(enc, x)
        out = enc(x)
    assert cpu_inference(enc, x) is False          # grad enabled outside no_grad: the NCHW path
    assert out.is_contiguous() and out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5
    assert enc.__dict__.get('_channels_last_params') is not None
    assert not any('channels_last' in k for k in enc.state_dict())
    assert all(p.is_contiguous() for p in enc.parameters())      # the module's own weights are untouched


def test_channels_last_is_not_used_in_training_or_with_grad():
    enc = make('edsr-baseline')
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert cpu_inference(enc, x)
        assert not cpu_inference(enc, x.double())
        enc.train()
        assert not cpu_inference(enc, x)
    enc.eval()
    assert not cpu_inference(enc, x)


def test_cached_weights_follow_weight_changes():
    enc = make('edsr-baseline')
    x = torch.randn(1, 3, 9, 10)
    with torch.no_grad():
        before = enc(x)
        enc.head[0].weight.mul_(2)
        after = enc(x)
        ref = nchw(enc, x)
    assert (after - before).abs().max().item() > 1e-3
    assert (after - ref).abs().max().item() <= 1e-5


def test_golden_edsr_lm_model_end_to_end():
    """The LM-LIIF golden case with the channels-last encoder: within 1e-5 of the NCHW encoder's output."""
    from .conftest import load_golden
    from utils.coords import make_cell, make_coord
    case = load_golden('lmliif_edsr')
    model = models.make(case['model'], load_sd=True).eval()
    q = case['queries'][0]
    H, W = q['size']
    coord, cell = make_coord((H, W)).unsqueeze(0), make_cell((H, W)).unsqueeze(0) * q['cell_clip']
    with torch.no_grad():
        out = model(case['inp'], coord, cell)
        model.encoder.channels_last = False
        ref = model(case['inp'], coord, cell)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (out - q['pred']).abs().max().item() <= 1e-4
