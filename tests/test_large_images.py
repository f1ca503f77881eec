"""Large images in bounded memory (slow: run with `make test-all`)."""
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import ROOT, load_golden


@pytest.mark.slow
def test_2000x2000_x4_on_cpu_within_a_few_gb(tmp_path):
    """demo.py upscales a 2000x2000 image x4 (8000x8000 output) with an EDSR-baseline LM-LIIF on the CPU
    (auto tiling); the child's peak resident memory stays under 3 GB."""
    spec = {'name': 'lmliif', 'args': dict(load_golden('lmliif_edsr')['model']['args'],
                                           encoder_spec={'name': 'edsr-baseline', 'args': {'no_upsampling': True}})}
    import models
    model = models.make(spec)
    ckpt = tmp_path / 'm.pth'
    torch.save({'model': dict(model.spec, sd=model.state_dict())}, ckpt)
    rng = np.random.default_rng(0)
    low = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(low).resize((2000, 2000), Image.BICUBIC).save(tmp_path / 'big.png')
    out = tmp_path / 'big_x4.png'
    proc = subprocess.run([sys.executable, str(ROOT / 'demo.py'), '--input', str(tmp_path / 'big.png'), '--output',
                           str(out), '--scale', '4', '--model', str(ckpt), '--device', 'cpu', '--quiet'],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    print(f'peak resident memory of demo.py: {peak_gb:.2f} GB')
    assert Image.open(out).size == (8000, 8000)
    assert peak_gb < 3.0
