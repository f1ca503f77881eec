"""Every training config (ours, and the published LMF ones in ../shared/published) builds the optimizer
and learning-rate schedule it describes, compared with an independent reading of the YAML."""
from pathlib import Path

import pytest
import torch

from engine.components import WeightedLoss, build_optimizer, build_scheduler
from engine.run_setup import read_settings
from utils.config import load_config

from .conftest import SHARED, need

ROOT = Path(__file__).resolve().parents[1]
OURS = sorted((ROOT / 'configs').glob('train-*/*.yaml'))
PUBLISHED = SHARED / 'published' / 'lmf-configs'
OPTIMIZERS = {'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW}


def expected_lrs(cfg):
    """The learning rate of each epoch 1..epoch_max, computed from the YAML by hand: MultiStepLR steps
    after each epoch, so epoch e runs at lr * gamma ** #{milestones m <= e - 1}."""
    lr = float(cfg['optimizer']['args']['lr'])
    sched = cfg.get('multi_step_lr')
    if sched is None:
        return [lr] * cfg['epoch_max']
    gamma = float(sched.get('gamma', 0.1))
    return [lr * gamma ** sum(m <= e - 1 for m in sched['milestones']) for e in range(1, cfg['epoch_max'] + 1)]


def check_config(path):
    cfg = load_config(path)
    settings = read_settings(cfg)
    WeightedLoss(cfg.get('loss'))
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(cfg['optimizer'], p)
    assert type(opt) is OPTIMIZERS[cfg['optimizer']['name']], path
    for key, value in (cfg['optimizer'].get('args') or {}).items():
        got = opt.param_groups[0][key]
        assert (tuple(got) == tuple(value)) if isinstance(value, list) else got == float(value), (path, key)
    sched = build_scheduler(cfg, opt, settings.epoch_max)
    seen = []
    for _ in range(settings.epoch_max):
        seen.append(opt.param_groups[0]['lr'])
        opt.step()
        if sched is not None:
            sched.step()
    assert seen == pytest.approx(expected_lrs(cfg), rel=1e-12), path


@pytest.mark.parametrize('path', OURS, ids=lambda p: f'{p.parent.name}/{p.name}')
def test_our_training_configs_build_their_optimizer_and_schedule(path):
    check_config(path)


def test_published_lmf_training_configs_build_the_same_optimizer_and_schedule():
    files = sorted(need(PUBLISHED, 'published LMF configs').glob('train-*/*.yaml'))
    assert len(files) >= 20
    for path in files:
        check_config(path)
