"""The models shipped in save/pretrained_models (trained on the CPU on the stand-in set, see README)."""
import pytest
import torch

import models
from models.checkpoint import load_checkpoint
from tests.conftest import ROOT
from tests.conftest import run_test, set5_opts

BUNDLED = ROOT / 'save' / 'pretrained_models'
# Set5 PSNR (Y, shave = scale) measured when the models were exported (README "Pretrained models");
# a broken load, a changed decoder or a changed evaluation protocol moves these by far more than 0.01 dB.
EXPECTED = {'edsr-b_lm-liif.pth': {'name': 'lmliif', 'scale': 4, 'psnr': 30.30, 'bicubic': 28.43},
            'edsr-b_lm-lte.pth': {'name': 'lmlte', 'scale': 2, 'psnr': 36.38, 'bicubic': 33.67}}


@pytest.mark.parametrize('filename', sorted(EXPECTED))
def test_bundled_checkpoint_is_self_describing(filename):
    ckpt = load_checkpoint(BUNDLED / filename)
    assert set(ckpt) >= {'model'} and 'optimizer' not in ckpt  # exported: no training state
    assert ckpt['model']['name'] == EXPECTED[filename]['name']
    model = models.load_model(ckpt)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize('filename', sorted(EXPECTED))
def test_bundled_model_scores_on_set5(tmp_path, capsys, filename):
    e = EXPECTED[filename]
    opts = set5_opts(e['scale'])  # skips without ../shared/data
    summary, _, _ = run_test(tmp_path, capsys, '--config', str(ROOT / f"configs/test/set5-x{e['scale']}.yaml"),
                             '--model', str(BUNDLED / filename), *opts)
    assert abs(summary['psnr'] - e['psnr']) < 0.01
    assert summary['psnr'] > e['bicubic'] + 0.5  # well above bicubic
