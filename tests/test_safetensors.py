"""safetensors checkpoints (models/weights.py): bit-exact round trips, self-describing metadata, loading
never unpickles, one-line errors, bundled models in both formats."""
import json
import pickle
import struct

import pytest
import torch

pytest.importorskip('safetensors', reason='safetensors is not installed (pip install -r requirements.txt)')

import models  # noqa: E402
from models import CheckpointError  # noqa: E402
from models.weights import is_safetensors  # noqa: E402

from .conftest import ROOT  # noqa: E402

BUNDLED = ROOT / 'save' / 'pretrained_models'
TINY = {'name': 'lmliif', 'args': {
    'encoder_spec': {'name': 'edsr-baseline', 'args': {'no_upsampling': True, 'n_resblocks': 1, 'n_feats': 8}},
    'imnet_spec': {'name': 'lmmlp', 'args': {'out_dim': 3, 'hidden_dim': 8, 'hidden_depth': 2}},
    'hypernet_spec': {'name': 'mlp', 'args': {'out_dim': 40, 'hidden_list': [16]}}, 'mod_input': True}}


def tiny_ckpt():
    model = models.make(TINY)
    return model, {'model': models.model_spec(model, model.state_dict()), 'epoch': 7,
                   'trained_with': {'config': {'lr': 1e-4, 'scales': [2, 3.5]}, 'best_val_psnr': 31.25}}


@pytest.fixture
def no_pickle(monkeypatch):
    """Any unpickling (pickle or torch.load) fails the test."""
    def forbidden(*a, **k):
        raise AssertionError('something was unpickled')
    monkeypatch.setattr(pickle, 'load', forbidden)
    monkeypatch.setattr(pickle, 'loads', forbidden)
    monkeypatch.setattr(pickle, 'Unpickler', forbidden)
    monkeypatch.setattr(torch, 'load', forbidden)


def test_round_trip_is_bit_exact_with_metadata(tmp_path):
    model, ckpt = tiny_ckpt()
    sd = dict(ckpt['model']['sd'])
    # dtypes beyond float32, a NaN-free but awkward value pattern, tied (shared) tensors
    sd['extra.half'] = torch.randn(5, 3).half()
    sd['extra.bf16'] = torch.randn(4).bfloat16()
    sd['extra.long'] = torch.arange(-3, 9)
    sd['extra.tied'] = sd['encoder.head.0.weight']
    sd['extra.scalar'] = torch.tensor(1.0 / 3)
    ckpt['model']['sd'] = sd
    path = tmp_path / 'm.safetensors'
    models.save_checkpoint(path, ckpt)
    back = models.load_checkpoint(path)
    assert back['model']['name'] == 'lmliif' and back['model']['args'] == TINY['args']
    assert back['epoch'] == 7 and back['trained_with'] == ckpt['trained_with']
    assert set(back['model']['sd']) == set(sd)
    for k, v in sd.items():
        w = back['model']['sd'][k]
        assert w.dtype == v.dtype and w.shape == v.shape
        assert torch.equal(w.view(torch.uint8) if w.dim() else w, v.view(torch.uint8) if v.dim() else v), k
    # the raw header carries the spec as JSON strings
    raw = path.read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    meta = json.loads(raw[8:8 + n])['__metadata__']
    assert meta['assr.model.name'] == 'lmliif' and json.loads(meta['assr.model.args']) == TINY['args']


def test_loading_never_unpickles(tmp_path, no_pickle):
    model, ckpt = tiny_ckpt()
    path = tmp_path / 'm.safetensors'
    models.save_checkpoint(path, ckpt)
    loaded = models.load_model(path)
    x, coord = torch.rand(1, 3, 6, 5) * 2 - 1, torch.rand(1, 20, 2) * 2 - 1
    cell = torch.full((1, 20, 2), 2 / 12)
    with torch.no_grad():
        assert torch.equal(loaded(x, coord, cell), model.eval()(x, coord, cell))
    # a .pth would need torch.load: the guard works
    pth = tmp_path / 'm.pth'
    torch.save(ckpt, pth)
    with pytest.raises(AssertionError, match='unpickled'):
        models.load_checkpoint(pth)


def test_detected_by_content_under_another_name(tmp_path, no_pickle):
    _, ckpt = tiny_ckpt()
    path = tmp_path / 'm.safetensors'
    models.save_checkpoint(path, ckpt)
    other = tmp_path / 'renamed.pth'
    other.write_bytes(path.read_bytes())
    assert is_safetensors(other)
    assert models.load_checkpoint(other)['model']['name'] == 'lmliif'


def test_errors_are_one_line(tmp_path):
    from safetensors.torch import save_file
    plain = tmp_path / 'plain.safetensors'
    save_file({'w': torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match='metadata') as e:
        models.load_checkpoint(plain)
    assert '\n' not in str(e.value)
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": garbage}')
    with pytest.raises(CheckpointError, match='not a readable safetensors'):
        models.load_checkpoint(bad)
    truncated = tmp_path / 'cut.safetensors'
    _, ckpt = tiny_ckpt()
    models.save_checkpoint(truncated, ckpt)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        models.load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match='JSON'):
        models.save_checkpoint(tmp_path / 'x.safetensors', {**ckpt, 'optimizer': {'state': torch.zeros(1)}})
    assert not (tmp_path / 'x.safetensors').exists()


def test_export_model_script_writes_safetensors(tmp_path, no_pickle):
    from scripts import export_model
    _, ckpt = tiny_ckpt()
    src = tmp_path / 'epoch-last.safetensors'
    models.save_checkpoint(src, ckpt)
    dst = tmp_path / 'out.safetensors'
    assert export_model.main([str(src), str(dst)]) == 0
    back = models.load_checkpoint(dst)
    assert back['trained_with'] == ckpt['trained_with'] and back['epoch'] == 7


@pytest.mark.parametrize('stem', ['edsr-b_lm-liif', 'edsr-b_lm-lte'])
def test_bundled_models_in_both_formats(stem):
    st, pth = BUNDLED / f'{stem}.safetensors', BUNDLED / f'{stem}.pth'
    if not (st.exists() and pth.exists()):
        pytest.skip(f'bundled {stem} not present')
    a, b = models.load_checkpoint(pth), models.load_checkpoint(st)
    assert a['model']['name'] == b['model']['name'] and a['model']['args'] == b['model']['args']
    assert a['model']['sd'].keys() == b['model']['sd'].keys()
    assert all(torch.equal(a['model']['sd'][k], b['model']['sd'][k]) for k in a['model']['sd'])
    assert a.get('trained_with') == b.get('trained_with')
