"""train.py: bit-exact resume, multi-process (gloo) equivalence, crash safety, divergence handling."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train as train_script
from models.checkpoint import load_checkpoint

from .conftest import make_images, run_train, write_config

ROOT = Path(__file__).resolve().parents[1]


def weights(path):
    return load_checkpoint(path)['model']['sd']


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / 'images', n=4, size=48)


def test_resume_continues_bit_exactly(tmp_path, data):
    cfg = write_config(tmp_path / 'tiny.yaml', data, epoch_max=4)
    assert run_train(cfg, tmp_path / 'straight') == 0
    assert run_train(cfg, tmp_path / 'resumed', '--stop-after', '1') == 0
    assert load_checkpoint(tmp_path / 'resumed/_tiny/epoch-last.pth')['epoch'] == 1
    assert run_train(cfg, tmp_path / 'resumed', '--stop-after', '2') == 0
    assert run_train(cfg, tmp_path / 'resumed') == 0
    a = load_checkpoint(tmp_path / 'straight/_tiny/epoch-last.pth')
    b = load_checkpoint(tmp_path / 'resumed/_tiny/epoch-last.pth')
    assert a['epoch'] == b['epoch'] == 4
    for k in a['model']['sd']:
        assert torch.equal(a['model']['sd'][k], b['model']['sd'][k]), k
    for sa, sb in zip(a['optimizer']['sd']['state'].values(), b['optimizer']['sd']['state'].values()):
        assert torch.equal(sa['exp_avg'], sb['exp_avg'])
    assert a['best_val'] == b['best_val']
    run = tmp_path / 'straight/_tiny'
    assert {'config.yaml', 'log.txt', 'epoch-last.pth', 'epoch-best.pth', 'epoch-2.pth', 'epoch-4.pth',
            'tensorboard'} <= {p.name for p in run.iterdir()}
    assert any((run / 'tensorboard').iterdir())


def test_data_workers_do_not_change_the_result(tmp_path, data):
    cfg = write_config(tmp_path / 'tiny.yaml', data, epoch_max=1)
    assert run_train(cfg, tmp_path / 'w0') == 0
    assert train_script.main(['--config', str(cfg), '--save-root', str(tmp_path / 'w2'), '--workers', '2',
                              '--no-progress', '--device', 'cpu']) == 0
    a, b = weights(tmp_path / 'w0/_tiny/epoch-last.pth'), weights(tmp_path / 'w2/_tiny/epoch-last.pth')
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_processes_match_one_process(tmp_path, data):
    cfg = write_config(tmp_path / 'tiny.yaml', data, epoch_max=2)
    assert run_train(cfg, tmp_path / 'single') == 0
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29517',
           str(ROOT / 'train.py'), '--config', str(cfg), '--save-root', str(tmp_path / 'ddp'), '--workers', '0',
           '--no-progress', '--device', 'cpu']
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(tmp_path / 'single/_tiny/epoch-last.pth'), weights(tmp_path / 'ddp/_tiny/epoch-last.pth')
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


KILLER = """
import sys, torch
sys.path.insert(0, {root!r})
from models.checkpoint import save_checkpoint
path = sys.argv[1]
save_checkpoint(path, {{'model': {{'name': 'mlp', 'args': {{}}, 'sd': {{}}}}, 'epoch': 1}})
big = torch.randn(60_000_000)
for epoch in range(2, 1000):
    print('writing', flush=True)
    save_checkpoint(path, {{'model': {{'name': 'mlp', 'args': {{}}, 'sd': {{'w': big}}}}, 'epoch': epoch}})
"""


def test_sigkill_while_writing_leaves_last_checkpoint_loadable(tmp_path):
    path = tmp_path / 'epoch-last.pth'
    script = tmp_path / 'killer.py'
    script.write_text(KILLER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'writing'      # the first big save is under way
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(path)                            # still a complete checkpoint
    assert ckpt['epoch'] >= 1
    assert ckpt['epoch'] == 1 or ckpt['model']['sd']['w'].numel() == 60_000_000


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data, capsys):
    cfg = write_config(tmp_path / 'tiny.yaml', data, epoch_max=3)
    assert run_train(cfg, tmp_path / 'runs', '--stop-after', '1') == 0
    last = tmp_path / 'runs/_tiny/epoch-last.pth'
    # an absurd learning rate (in the saved optimizer state, which resuming restores) makes the
    # weights overflow within a few steps of epoch 2
    ckpt = torch.load(last, weights_only=True)
    ckpt['optimizer']['sd']['param_groups'][0]['lr'] = 1e38
    torch.save(ckpt, last)
    before = last.read_bytes()
    assert run_train(cfg, tmp_path / 'runs') == 1
    err = capsys.readouterr().err
    assert ('loss is' in err or 'overflowed' in err) and 'epoch 2' in err and 'still holds epoch 1' in err
    assert last.read_bytes() == before


def test_config_errors_are_one_line(tmp_path, data, capsys):
    cfg = write_config(tmp_path / 'tiny.yaml', data)
    assert run_train(cfg, tmp_path / 'r', '--opt', 'model.name=lmliff') == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and "unknown model 'lmliff'" in err
    assert run_train(tmp_path / 'missing.yaml', tmp_path / 'r') == 1
    err = capsys.readouterr().err
    assert 'missing.yaml' in err and 'not found' in err and err.count('\n') == 1


def test_published_configs_build(tmp_path):
    """Every shipped training config names registered datasets and builds its model."""
    import datasets
    import models
    from utils.config import load_config
    for path in sorted((ROOT / 'configs').glob('train-*/*.yaml')):
        cfg = load_config(path)
        if cfg['model']['name'].startswith('igconv') or 'rdn' in path.name or 'swinir' in path.name:
            models.get_model_class(cfg['model']['name'])        # large encoders: name check only
        else:
            models.make(cfg['model'])
        for part in ('train_dataset', 'val_dataset'):
            spec = cfg.get(part)
            if spec:
                datasets.get_dataset_class(spec['dataset']['name'])
                datasets.get_dataset_class(spec['wrapper']['name'])
