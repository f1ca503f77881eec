"""The inference session (engine/inference.py ``Session``) every entry point opens: the same checkpoint gives
the same image through demo.py, api.upscale and torch.hub (SwinIR included); the training scale comes from the
checkpoint; grid models (lte-fast) get the plan's cells, so the clipping flags act on them as on the query
path; the memory check uses the plan's chunk; published command lines keep the published window default; the
published 8-bit quantisation is available byte for byte."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import api
import demo
import hubconf
import models
import test as test_script
from engine import memory
from engine.inference import Session, load_model
from utils.coords import make_cell, make_coord

from .conftest import ROOT, closed_form_fill, load_golden

SCALE_CONFIG = {'train_dataset': {'wrapper': {'name': 'sr-implicit-downsampled', 'args': {'scale_max': 3}}}}


def checkpoint(tmp_path, golden, **extra):
    """A golden case's model as a checkpoint file ('fill' cases get their closed-form weights)."""
    spec = dict(load_golden(golden)['model'])
    if 'sd' not in spec:
        model = models.make(spec)
        closed_form_fill(model)
        spec['sd'] = model.state_dict()
    path = tmp_path / f'{golden}.pth'
    torch.save({'model': spec, **extra}, path)
    return path


def image(tmp_path, size=(13, 11), seed=0):
    rng = np.random.default_rng(seed)
    path = tmp_path / f'in_{size[0]}x{size[1]}.png'
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(low).resize((size[1], size[0]), Image.BICUBIC).save(path)
    return path


def demo_png(src, dst, model, *flags):
    assert demo.main(['--input', str(src), '--output', str(dst), '--model', str(model), '--device', 'cpu',
                      '--quiet', *flags]) == 0
    return dst.read_bytes()


# ------------------------------------------------------------------------------------------------
# one session for every entry point
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('golden, scale', [('lmliif_edsr', '6'), ('lmlte_swinir', '3')])
def test_demo_api_and_hub_give_the_same_image(tmp_path, golden, scale):
    """Same checkpoint, same scale: byte-identical files from demo.py, api.upscale and the torch.hub model.
    The LM-LIIF checkpoint records a training scale of 3, so x6 clips cells by 2 (the default 4 would not
    clip): a hub model that lost the checkpoint would differ. The SwinIR input (13x11) needs window padding."""
    ckpt = checkpoint(tmp_path, golden, config=SCALE_CONFIG)
    src = image(tmp_path)
    ref = demo_png(src, tmp_path / 'demo.png', ckpt, '--scale', scale)
    assert api.upscale(str(src), scale=float(scale), model=str(ckpt), output=str(tmp_path / 'api.png'),
                       device='cpu') == str(tmp_path / 'api.png')
    assert (tmp_path / 'api.png').read_bytes() == ref
    hub_model = hubconf.from_checkpoint(ckpt)
    assert hub_model.capabilities.max_train_scale == 3
    hubconf.upscale(str(src), scale=float(scale), model=hub_model, output=str(tmp_path / 'hub.png'))
    assert (tmp_path / 'hub.png').read_bytes() == ref
    session = Session.open(str(ckpt), 'cpu')
    assert session.window == load_model(str(ckpt)).capabilities.window == (8 if 'swinir' in golden else 0)


def test_the_training_scale_is_the_checkpoints(tmp_path):
    """x6 with a checkpoint trained to x3: cells clipped by 2 (not by 1.5, the default training scale 4)."""
    model = load_model(str(checkpoint(tmp_path, 'lmliif_edsr', config=SCALE_CONFIG)))
    assert model.capabilities.max_train_scale == 3
    img = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        out = Session(model)(img, (60, 54))
        ref = model((img - 0.5) / 0.5, make_coord((60, 54)).unsqueeze(0), make_cell((60, 54)).unsqueeze(0) * 2)
    ref = (ref * 0.5 + 0.5).clamp(0, 1).view(1, 60, 54, 3).permute(0, 3, 1, 2)
    assert (out - ref).abs().max() <= 1e-6


# ------------------------------------------------------------------------------------------------
# grid models get the plan's cells
# ------------------------------------------------------------------------------------------------
def test_lte_fast_honours_the_cell_clipping_flags(tmp_path):
    """lte-fast at x8: the default clips cells by 8 / 4 = 2, --no-cell-clip does not clip, --scale-max 2 clips by
    4; each equals the model's published forward with exactly that cell (as for query models), and they differ."""
    model = models.make(load_golden('ltefast_edsr')['model'], load_sd=True).eval()
    img = torch.rand(1, 3, 9, 7)
    H, W = 72, 56
    coord = make_coord((H, W), flatten=False).unsqueeze(0)
    outs = {}
    for name, options, factor in (('clip', {}, 2.0), ('no-clip', {'clip_cells': False}, 1.0),
                                  ('scale-max 2', {'max_train_scale': 2}, 4.0)):
        with torch.no_grad():
            outs[name] = Session(model, **options)(img, (H, W))
            ref = model((img - 0.5) / 0.5, coord, torch.tensor([[2 / H, 2 / W]]) * factor)
        assert (outs[name] - (ref * 0.5 + 0.5).clamp(0, 1)).abs().max() <= 1e-6, name
    assert (outs['clip'] - outs['no-clip']).abs().max() > 1e-4
    assert (outs['clip'] - outs['scale-max 2']).abs().max() > 1e-4
    # the same through demo.py's flags
    path = tmp_path / 'ltefast.pth'
    torch.save({'model': load_golden('ltefast_edsr')['model']}, path)
    src = image(tmp_path, (9, 7))
    files = {flags: demo_png(src, tmp_path / f'{i}.png', path, '--scale', '8', *flags)
             for i, flags in enumerate([(), ('--no-cell-clip',), ('--scale-max', '2'), ('--scale_max', '4')])}
    assert len({files[()], files[('--no-cell-clip',)], files[('--scale-max', '2')]}) == 3
    assert files[('--scale_max', '4')] == files[()]


# ------------------------------------------------------------------------------------------------
# the memory check of the actual plan
# ------------------------------------------------------------------------------------------------
def test_the_memory_check_uses_the_plans_chunk(monkeypatch):
    """LM models on accelerators query 2^20 points per call: the estimate counts that chunk, not 65,536."""
    model = models.make(load_golden('lmliif_edsr')['model'], load_sd=True).eval()
    monkeypatch.setattr(type(model), 'preferred_chunk', lambda self: 1 << 20)
    session = Session(model)
    lr, out = (200, 150), (1600, 1200)
    assert session.plan(lr, out).chunk == 1 << 20
    est = session.check(lr, out, available=1 << 50)
    assert est.decoder == memory.estimate(model, lr, out, chunk=1 << 20).decoder
    assert est.decoder > 10 * memory.estimate(model, lr, out, chunk=65536).decoder
    small = Session(model, chunk=4096).check(lr, out, available=1 << 50)
    assert small.decoder == memory.estimate(model, lr, out, chunk=4096).decoder
    # what fits with a 65,536-query chunk is refused with the plan's 2^20, naming the option that helps
    with pytest.raises(memory.MemoryEstimateError, match=r'decoding 1048576 queries .* --bsize'):
        session.check(lr, out, available=int(memory.estimate(model, lr, out, chunk=65536).total * 1.5))


# ------------------------------------------------------------------------------------------------
# published command lines, published quantisation
# ------------------------------------------------------------------------------------------------
def test_published_test_command_keeps_the_published_window_default(tmp_path, capsys):
    """test.py --config/--model without --window pads nothing (the published default 0), also for SwinIR;
    --window 8 (the published SwinIR protocol) equals --window auto (the encoder's window)."""
    ckpt = checkpoint(tmp_path, 'lmlte_swinir')
    hr = tmp_path / 'HR'
    hr.mkdir()
    Image.open(image(tmp_path, (60, 52))).save(hr / 'a.png')
    base = ['--config', str(ROOT / 'configs/test-lmf/set5-x4.yaml'), '--model', str(ckpt), '--quiet',
            '--device', 'cpu', '--opt', f'test_dataset.dataset.args.root_path={hr}']
    summaries = {}
    for flags in ((), ('--window', '8'), ('--window', 'auto')):
        folder = tmp_path / f'r{len(summaries)}'
        assert test_script.main([*base, '--results-dir', str(folder), *flags]) == 0, capsys.readouterr().err
        summaries[flags] = __import__('json').loads((folder / 'summary.json').read_text())
    assert summaries[()]['window'] == 0 and summaries[('--window', 'auto')]['window'] == 8
    assert summaries[('--window', '8')]['psnr'] == summaries[('--window', 'auto')]['psnr']
    assert summaries[()]['psnr'] != summaries[('--window', '8')]['psnr']


def test_published_quantization_truncates_like_the_published_scripts(tmp_path):
    """demo.py --published-quantization writes the file the published demo.py writes: torchvision's
    ToPILImage (``mul(255).byte()``, a truncation) saved by PIL; the default rounds."""
    ckpt = checkpoint(tmp_path, 'lmliif_edsr')
    src = image(tmp_path, (12, 10))
    published = demo_png(src, tmp_path / 'pub.png', ckpt, '--scale', '3', '--published-quantization')
    rounded = demo_png(src, tmp_path / 'ours.png', ckpt, '--scale', '3')
    x = np.asarray(Image.open(src).convert('RGB'))
    img = torch.from_numpy(x.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    with torch.no_grad():
        pred = Session.open(str(ckpt), 'cpu')(img, (36, 30))[0]
    buf = io.BytesIO()
    Image.fromarray(pred.mul(255).byte().permute(1, 2, 0).numpy(), 'RGB').save(buf, format='PNG')
    assert published == buf.getvalue()
    a, b = np.asarray(Image.open(io.BytesIO(published))), np.asarray(Image.open(io.BytesIO(rounded)))
    assert np.array_equal(b, np.round(pred.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    differ = (a != b).mean()
    assert 0.2 < differ < 0.8 and (b.astype(int) - a).min() == 0 and (b.astype(int) - a).max() == 1
