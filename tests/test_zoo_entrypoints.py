"""Every IGConv zoo architecture through the entry points (issue 21): ``api.upscale`` renders the published
test-time forward, the session's tiles are exact where the architecture declares an exact overlap (CNNs
with a bounded receptive field) and declared approximate elsewhere, ``demo.py`` upscales with a zoo
checkpoint, and the zoo benchmark counts what the published option files build."""
import os
import subprocess
import sys

import pytest
import torch

import api
import models
from engine.inference import Session, exact_overlap

from .test_igconv_published import TINY as TINY_BASE
from .test_zoo_cnn import TINY as TINY_CNN
from .test_zoo_mamba_hit import TINY as TINY_SCAN
from .test_zoo_transformers import TINY as TINY_ATTN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {**TINY_BASE, **TINY_CNN, **TINY_ATTN, **TINY_SCAN}
#: Architectures whose output depends on pixels arbitrarily far away (attention, scans, global pooling).
UNBOUNDED = {'SwinIRMS', 'HAT', 'SRFormer', 'ATD', 'HiT_SRF', 'MambaIR', 'RCANIGPlus', 'SMFANetIG', 'SMFANetIGPlus'}


def tiny(arch):
    torch.manual_seed(0)
    model = models.make({'name': arch, 'args': TINY[arch]}).eval()
    with torch.no_grad():          # random but non-trivial weights everywhere (some inits are zero)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_every_architecture_is_covered():
    from models.zoo import PUBLISHED_ARCHS
    assert set(TINY) == set(PUBLISHED_ARCHS)


@pytest.mark.parametrize('arch', sorted(TINY))
def test_api_upscale_is_the_published_forward(arch):
    model = tiny(arch)
    torch.manual_seed(1)
    x = torch.rand(1, 3, 13, 18)            # no window multiple: the published padding and cropping run
    with torch.no_grad():
        ref = model(x, 2).clamp(0, 1)
    out = api.upscale(x, scale=2, model=model, tile=None)
    assert out.shape == ref.shape == (1, 3, 26, 36)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize('arch', sorted(TINY))
def test_tiling_is_exact_or_declared_approximate(arch):
    model = tiny(arch)
    overlap = exact_overlap(model)
    assert (overlap is None) == (arch in UNBOUNDED)
    torch.manual_seed(2)
    x = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        whole = Session(model, 'cpu', tile=None)(x, (80, 72))
        tiled = Session(model, 'cpu', tile=16, tile_overlap=overlap if overlap is not None else 4)(x, (80, 72))
    diff = (tiled - whole).abs().max().item()
    if overlap is not None:
        assert diff <= 1e-5, f'{arch}: tiles with the exact overlap {overlap} differ by {diff}'
    else:           # approximate (the README says so): the tiles do change the output
        assert diff > 1e-4, f'{arch}: declared approximate, yet tiling changed nothing ({diff})'


def test_demo_upscales_with_a_zoo_checkpoint(tmp_path):
    from PIL import Image
    model = tiny('PLKSRIGPlus')
    ckpt = tmp_path / 'plksr_tiny.pth'
    torch.save({'model': {'name': model.spec['name'], 'args': model.spec['args'], 'sd': model.state_dict()}}, ckpt)
    torch.manual_seed(3)
    lr = (torch.rand(3, 10, 12) * 255).round().to(torch.uint8)
    Image.fromarray(lr.permute(1, 2, 0).numpy()).save(tmp_path / 'lr.png')
    out = tmp_path / 'sr.png'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'demo.py'), '--input', str(tmp_path / 'lr.png'),
                        '--model', str(ckpt), '--scale', '3', '--output', str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import numpy as np
    got = torch.from_numpy(np.asarray(Image.open(out))).permute(2, 0, 1).float()
    with torch.no_grad():
        ref = model(lr.float().unsqueeze(0) / 255, 3)[0].clamp(0, 1) * 255
    # demo.py writes 8-bit images as the published code does (truncation or rounding: one level at most)
    assert got.shape == ref.shape and (got - ref).abs().max().item() <= 1.0 + 1e-3


def test_zoo_benchmark_counts_the_published_models(tmp_path):
    import csv
    from scripts import zoo_benchmark
    from .test_igconv_published import N_PARAMS
    gmacs = {}
    for size in ('32x24', '64x48'):
        out = tmp_path / size
        assert not zoo_benchmark.main(['--archs', 'EDSRIG,SMFANetIG', '--no-time', '--input', size, '--out', str(out)])
        text = (out / 'zoo_benchmark.md').read_text()
        assert f'| EDSRIG | plain | {N_PARAMS["EDSRIG"] / 1e6:.2f} |' in text
        gmacs[size] = {r['row']: float(r['gmacs']) for r in csv.DictReader(open(out / 'zoo_benchmark.csv'))}
    # per LR pixel, EDSR's body (32 blocks x two 3x3 convs at 256 channels) dominates the published model:
    # the head, tail and IGConv add ~2%; the kernel generation is a fixed cost that the difference removes
    per_pixel = (gmacs['64x48']['EDSRIG'] - gmacs['32x24']['EDSRIG']) * 1e9 / (64 * 48 - 32 * 24)
    body = 32 * 2 * 256 * 256 * 9
    assert body < per_pixel < 1.05 * body
    light = (gmacs['64x48']['SMFANetIG'] - gmacs['32x24']['SMFANetIG']) * 1e9 / (64 * 48 - 32 * 24)
    assert 0 < light < per_pixel / 20                      # the lightweight model is ~80x cheaper per pixel


def test_zoo_benchmark_rates_are_counted_macs_over_seconds(tmp_path, monkeypatch):
    """The timed columns: GMAC/s is the counted MACs over the measured seconds and its share is of the best
    reference rate measured in the same run (named in the header)."""
    import csv

    from engine.profiling import ReferenceRates
    from scripts import zoo_benchmark
    monkeypatch.setattr(zoo_benchmark, 'reference_rates',
                        lambda device, bf16: ReferenceRates({'gemm': 40.0, 'conv3x3': 80.0}, {}, False, 'n/a'))
    monkeypatch.setattr(zoo_benchmark, 'time_fn', lambda fn, device, repeats, warmup: 0.25)
    out = tmp_path / 'zoo'
    assert not zoo_benchmark.main(['--archs', 'SMFANetIG', '--input', '16x12', '--out', str(out), '--threads', '1'])
    row = next(csv.DictReader(open(out / 'zoo_benchmark.csv')))
    assert float(row['seconds']) == 0.25
    assert abs(float(row['gmac_per_s']) - float(row['gmacs']) / 0.25) < 1e-9
    assert abs(float(row['share_of_best']) - float(row['gmac_per_s']) / 80.0) < 1e-9
    text = (out / 'zoo_benchmark.md').read_text()
    assert "machine's best float32 rate measured now: 80.0 GMAC/s (conv3x3" in text
