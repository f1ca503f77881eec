"""Every model case in ../shared/golden reproduces the published code's outputs to 1e-4."""

import pytest
import torch

import models
from utils.coords import make_cell, make_coord

from .conftest import closed_form_fill, load_golden

MODEL_CASES = ['liif_edsr', 'liif_edsr_plain', 'lte_edsr', 'metasr_edsr', 'lmliif_edsr', 'lmliif_edsr_nomodin',
               'lmlte_edsr', 'lmliif_rdn', 'lmlte_swinir', 'liif_swinir']
TOL = 1e-4


def build(case):
    spec = case['model']
    if case['weights'] == 'sd':
        return models.make(spec, load_sd=True)
    model = models.make(spec)
    closed_form_fill(model)
    return model


def query_inputs(q):
    H, W = q['size']
    coord = make_coord((H, W)).unsqueeze(0)
    cell = make_cell((H, W)).unsqueeze(0) * q['cell_clip']
    return coord, cell


@pytest.mark.parametrize('name', MODEL_CASES)
def test_golden_case(name):
    case = load_golden(name)
    model = build(case).eval()
    if case['weights'] == 'fill':
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert shapes == {k: tuple(v) for k, v in case['param_shapes'].items()}
    for q in case['queries']:
        coord, cell = query_inputs(q)
        with torch.no_grad():
            pred = model(case['inp'], coord, cell)
        assert pred.shape == q['pred'].shape
        assert (pred - q['pred']).abs().max().item() <= TOL, f"{name} eval {q['size']}"
        if 'train_pred' in q:
            # training-mode forward (explicit modulations), encoder in eval mode (no stochastic depth)
            model.train()
            model.encoder.eval()
            idx = q['train_idx']
            with torch.no_grad():
                train_pred = model(case['inp'], coord[:, idx], cell[:, idx])
            model.eval()
            assert (train_pred - q['train_pred']).abs().max().item() <= TOL, f"{name} train {q['size']}"
            # the fast path on the same queries agrees with the training path
            with torch.no_grad():
                fast = model(case['inp'], coord[:, idx], cell[:, idx])
            assert (fast - q['train_pred']).abs().max().item() <= 1e-5


@pytest.mark.parametrize('name', ['lmliif_edsr', 'lmlte_edsr', 'liif_edsr'])
@pytest.mark.parametrize('bsize', [1, 997, 4096])
def test_chunking_does_not_change_output(name, bsize):
    case = load_golden(name)
    model = build(case).eval()
    q = case['queries'][1]
    coord, cell = query_inputs(q)
    with torch.no_grad():
        full = model(case['inp'], coord, cell, bsize=10 ** 9)
        chunked = model(case['inp'], coord[:, :5000], cell[:, :5000], bsize=bsize)
    assert torch.equal(chunked, full[:, :5000]) or (chunked - full[:, :5000]).abs().max() < 1e-6


def test_batch_of_two_equals_single_images():
    """Batch > 1 (official fast path caches by size only, docs/deviations.md, B12) gives per-image results."""
    case = load_golden('lmliif_edsr')
    model = build(case).eval()
    inp = torch.cat([case['inp'], case['inp'].flip(-1)])
    q = case['queries'][0]
    coord, cell = query_inputs(q)
    with torch.no_grad():
        both = model(inp, coord.expand(2, -1, -1), cell.expand(2, -1, -1))
        second = model(inp[1:], coord, cell)
    assert (both[:1] - q['pred']).abs().max() <= TOL
    assert (both[1:] - second).abs().max() <= 1e-6
