"""Checkpoint loading: official format, safety (weights_only), prefixes, legacy keys, atomic saving."""
import os
import pickle

import pytest
import torch

import models
from models.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from utils.coords import make_cell, make_coord

from .conftest import load_golden


class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null',))


@pytest.mark.parametrize('writer', ['torch', 'pickle'])
def test_pickle_that_would_run_code_is_refused(tmp_path, writer):
    path = tmp_path / 'evil.pth'
    payload = {'model': {'name': 'mlp', 'args': {}, 'sd': {}}, 'payload': Evil()}
    if writer == 'torch':
        torch.save(payload, path)
    else:
        with open(path, 'wb') as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(CheckpointError, match='refusing to load .*could run code') as e:
        load_checkpoint(path)
    assert '\n' not in str(e.value)
    if writer == 'torch':
        assert 'system' in str(e.value)


@pytest.mark.parametrize('content,match', [(b'', 'not a readable'), (b'garbage' * 10, 'not a plain tensor checkpoint')])
def test_corrupt_files_are_reported(tmp_path, content, match):
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_missing_file_and_wrong_structure(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'nope.pth')
    torch.save({'weights': torch.zeros(1)}, tmp_path / 'x.pth')
    with pytest.raises(CheckpointError, match="'model' entry"):
        load_checkpoint(tmp_path / 'x.pth')


def official_checkpoint(tmp_path, name, extra_args=None, prefix=''):
    """A golden case saved the way the published train.py saves (plus optional legacy keys)."""
    case = load_golden(name)
    spec = dict(case['model'])
    spec['args'] = dict(spec['args'], **(extra_args or {}))
    spec['sd'] = {prefix + k: v for k, v in spec['sd'].items()}
    path = tmp_path / f'{name}.pth'
    torch.save({'model': spec, 'optimizer': {'name': 'adam', 'args': {'lr': 1e-4}, 'sd': {}}, 'epoch': 7}, path)
    return path, case


@pytest.mark.parametrize('name,extra', [
    ('lmliif_edsr', {'mixed_le': True, 'cmsr_spec': None}),
    ('lmlte_edsr', {'mixed_le': False}),
    ('liif_edsr', {'cmsr_spec': None}),   # test.py injects cmsr_spec into every model (docs/deviations.md, B2)
    ('lte_edsr', {'cmsr_spec': None}),
    ('metasr_edsr', {'cmsr_spec': None})])
@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_official_checkpoints_load_unchanged(tmp_path, name, extra, prefix):
    path, case = official_checkpoint(tmp_path, name, extra, prefix)
    model = load_model(path)
    q = case['queries'][0]
    H, W = q['size']
    with torch.no_grad():
        pred = model(case['inp'], make_coord((H, W)).unsqueeze(0), make_cell((H, W)).unsqueeze(0))
    assert (pred - q['pred']).abs().max() <= 1e-4


def test_weights_that_do_not_fit_are_reported(tmp_path):
    path, _ = official_checkpoint(tmp_path, 'lmliif_edsr')
    ckpt = torch.load(path, weights_only=True)
    del ckpt['model']['sd']['imnet.layers.0.weight']
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match='weights do not fit'):
        load_model(path)


def test_save_roundtrip_is_self_describing(tmp_path):
    spec = {'name': 'lmliif', 'args': load_golden('lmliif_edsr')['model']['args']}
    model = models.make(spec)
    path = tmp_path / 'ours.pth'
    save_checkpoint(path, {'model': dict(model.spec, sd=model.state_dict()), 'epoch': 1})
    again = load_model(path)
    assert again.spec == spec
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert [p.name for p in tmp_path.iterdir()] == ['ours.pth']   # no temporary file left


def test_failed_save_leaves_previous_file(tmp_path):
    path = tmp_path / 'epoch-last.pth'
    save_checkpoint(path, {'model': {'name': 'mlp', 'args': {}, 'sd': {}}, 'epoch': 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError('disk full')
    with pytest.raises(RuntimeError):
        save_checkpoint(path, {'model': {'name': 'mlp'}, 'x': Boom()})
    assert load_checkpoint(path)['epoch'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['epoch-last.pth']


def test_export_keeps_only_what_inference_needs(tmp_path):
    from scripts import export_model
    spec = {'name': 'lmliif', 'args': load_golden('lmliif_edsr')['model']['args']}
    model = models.make(spec)
    src = tmp_path / 'epoch-last.pth'
    save_checkpoint(src, {'model': dict(model.spec, sd=model.state_dict()), 'epoch': 3, 'best_val': 30.5,
                          'optimizer': {'name': 'adam', 'args': {}, 'sd': {'state': {}}}, 'config': {'a': 1}})
    assert export_model.main([str(src), str(tmp_path / 'm.pth')]) == 0
    out = load_checkpoint(tmp_path / 'm.pth')
    assert set(out) == {'model', 'epoch', 'trained_with'} and out['trained_with']['best_val_psnr'] == 30.5
    assert load_model(tmp_path / 'm.pth').spec == spec
    assert export_model.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'x.pth')]) == 1


def test_disk_full_while_saving_keeps_the_previous_file(tmp_path, monkeypatch):
    """A failed write (ENOSPC) during torch.save: one OSError naming the file and the cause, the previous
    checkpoint intact, no temporary file left."""
    import errno
    import io
    import os
    from models.checkpoint import save_checkpoint
    path = tmp_path / 'epoch-last.pth'
    save_checkpoint(path, {'model': {'name': 'x', 'args': {}, 'sd': {'w': torch.ones(3)}}, 'epoch': 1})
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            self.n += len(b)
            if self.n > 2000:
                raise OSError(errno.ENOSPC, 'No space left on device')
            return self.f.write(b)

        def flush(self):
            self.f.flush()

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()

    monkeypatch.setattr(os, 'fdopen', lambda fd, mode='r', *a, **k: Full(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(OSError) as info:
        save_checkpoint(path, {'model': {'name': 'x', 'args': {}, 'sd': {'w': torch.zeros(100000)}}, 'epoch': 2})
    assert info.value.errno == errno.ENOSPC
    assert 'No space left on device' in str(info.value) and 'previous file is unchanged' in str(info.value)
    assert '\n' not in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['epoch-last.pth']
