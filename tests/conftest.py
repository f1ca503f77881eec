"""Shared fixtures: paths to ../shared (golden outputs and data), skipped when absent."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('ASSR_SHARED', ROOT.parent / 'shared'))
GOLDEN = SHARED / 'golden'
DATA = SHARED / 'data'

torch.set_num_threads(min(2, torch.get_num_threads()))


def need(path, what):
    if not path.exists():
        pytest.skip(f'{what} not found at {path} (set ASSR_SHARED to the folder holding golden/ and data/)')
    return path


@pytest.fixture
def golden_dir():
    return need(GOLDEN, 'golden reference outputs')


@pytest.fixture
def data_dir():
    return need(DATA, 'shared image data')


def load_golden(name):
    return torch.load(need(GOLDEN / f'{name}.pt', f'golden case {name}'), weights_only=True)


@pytest.fixture(autouse=True, scope='session')
def _private_thread_claims(tmp_path_factory):
    """The thread-claims registry (``utils.resources.claim_threads``) of the tests, theirs alone: runs of this
    project elsewhere on the machine (a training run) do not change the thread counts tests see."""
    import tempfile
    folder = str(tmp_path_factory.mktemp('tmp'))
    before, env = tempfile.tempdir, os.environ.get('TMPDIR')
    tempfile.tempdir, os.environ['TMPDIR'] = folder, folder
    yield
    tempfile.tempdir = before
    if env is None:
        os.environ.pop('TMPDIR', None)
    else:
        os.environ['TMPDIR'] = env


@pytest.fixture(autouse=True, scope='session')
def _private_kernel_cache(tmp_path_factory):
    """The fused render kernel (``models.decoders.fused_render``) is built once into the tests' own cache, so
    that every test run builds it from this checkout's source (and the user's cache is left alone)."""
    before = os.environ.get('ASSR_KERNEL_CACHE')
    os.environ['ASSR_KERNEL_CACHE'] = str(tmp_path_factory.mktemp('kernels'))
    yield
    if before is None:
        os.environ.pop('ASSR_KERNEL_CACHE', None)
    else:
        os.environ['ASSR_KERNEL_CACHE'] = before


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state, so a random input cannot make a test flaky."""
    torch.manual_seed(0)
    yield


# ------------------------------------------------------------------------------------------------
# training helpers shared by the training test modules (need no reference data)
# ------------------------------------------------------------------------------------------------
def make_images(folder, n=8, size=64, seed=0):
    """Smooth random colour images (bicubic-enlarged 8 x 8 noise), written as PNG fixtures."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.random((8, 8, 3)) * 255
        img = Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BICUBIC)
        img.save(folder / f'img{i:02d}.png')
    return folder


TINY_LMLIIF = """\
model:
  name: lmliif
  args:
    encoder_spec: {name: edsr-baseline, args: {no_upsampling: true, n_resblocks: 1, n_feats: 16}}
    imnet_spec: {name: lmmlp, args: {out_dim: 3, hidden_dim: 8, hidden_depth: 3}}
    hypernet_spec: {name: mlp, args: {out_dim: 1, hidden_list: [32]}}
    mod_input: true
"""


def write_config(path, data, epoch_max=3, lr='1.e-3', batch=4, extra='', repeat=2, n_val=2, sample_q=144):
    """A tiny LM-LIIF training config (EDSR 1 block x 16 features) on the images in ``data``."""
    import textwrap
    path.write_text(textwrap.dedent(f"""\
        train_dataset:
          dataset: {{name: image-folder, args: {{root_path: {data}, repeat: {repeat}, cache: in_memory}}}}
          wrapper:
            name: sr-implicit-downsampled
            args: {{inp_size: 12, scale_max: 4, augment: true, sample_q: {sample_q}}}
          batch_size: {batch}
        val_dataset:
          dataset: {{name: image-folder, args: {{root_path: {data}, first_k: {n_val}, repeat: 2}}}}
          wrapper: {{name: sr-implicit-downsampled, args: {{inp_size: 12, scale_max: 4, sample_q: 144}}}}
          batch_size: {batch}
        optimizer: {{name: adam, args: {{lr: {lr}}}}}
        epoch_max: {epoch_max}
        multi_step_lr: {{milestones: [2], gamma: 0.5}}
        epoch_val: 1
        epoch_save: 2
        """) + TINY_LMLIIF + extra)
    return path


def run_train(cfg, save_root, *extra):
    """``train.py`` in this process on CPU without workers or progress bar; returns the exit code."""
    import train as train_script
    return train_script.main(['--config', str(cfg), '--save-root', str(save_root), '--workers', '0',
                              '--no-progress', '--device', 'cpu', *extra])


# ------------------------------------------------------------------------------------------------
# helpers shared by several test modules
# ------------------------------------------------------------------------------------------------
def closed_form_fill(model):
    """Set every float parameter to a * sin(0.37 i + phase(name)) (golden README, 'fill' weights)."""
    import math
    import zlib
    for name, p in model.named_parameters():
        if not p.is_floating_point():
            continue
        n = p.numel()
        phase = 2 * math.pi * (zlib.crc32(name.encode('utf-8')) % 1000) / 1000
        a = 1 / math.sqrt(n / p.shape[0]) if p.dim() >= 2 else 0.02
        values = a * torch.sin(0.37 * torch.arange(n, dtype=torch.float64) + phase)
        with torch.no_grad():
            p.copy_(values.view(p.shape).to(p.dtype))


def smooth_uint8(h, w, seed=0):
    """A smooth random RGB uint8 image (H, W, 3): bicubic-upsampled noise, so resizes are not trivial."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g), size=(h, w),
                                        mode='bicubic', align_corners=False)[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def set5_opts(scale):
    """``--opt`` entries pointing a test config at ../shared's Set5 (published LR files)."""
    base = need(DATA / 'benchmark' / 'Set5', 'Set5')
    return ['--opt', f'test_dataset.dataset.args.root_path_1={base}/LR_bicubic/X{scale}',
            f'test_dataset.dataset.args.root_path_2={base}/HR']


def run_test(tmp_path, capsys, *argv):
    """``test.py`` in this process; returns (summary.json contents, results folder, stdout)."""
    import json

    import test as test_script
    results = tmp_path / f'results_{len(list(tmp_path.glob("results_*")))}'   # earlier results are never replaced
    code = test_script.main([*argv, '--results-dir', str(results), '--quiet'])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads((results / 'summary.json').read_text()), results, out.out
