"""IGConv multi-scale training with train.py: one scale per batch, the loss falls at every scale, and
validation on fixed per-scale sets picks the best checkpoint by the mean over scales."""
import math
import re
import textwrap

import pytest
import torch

import datasets
import models
from models.checkpoint import load_checkpoint

from .conftest import make_images, run_train


def igconv_config(path, data, crop, repeat, model, epochs, extra=''):
    """A multi-scale (x2, x3, x4) IGConv training config on the images in ``data``."""
    path.write_text(textwrap.dedent(f"""\
        train_dataset:
          dataset: {{name: image-folder, args: {{root_path: {data}, repeat: {repeat}, cache: in_memory}}}}
          wrapper: {{name: sr-integer-downsampled, args: {{inp_size: {crop}, scales: [2, 3, 4], augment: true}}}}
          batch_sampler: {{name: per-batch-random-scale}}
          batch_size: 4
        epoch_max: {epochs}
        """) + textwrap.dedent(model) + textwrap.dedent(extra))
    return path


@pytest.mark.slow
def test_short_multiscale_igconv_training_lowers_loss_at_every_scale(tmp_path):
    cfg = igconv_config(tmp_path / 'ig.yaml', make_images(tmp_path / 'images', n=12, size=96), 16, 4, """\
        model:
          name: igconv-plus-edsr-baseline
          args:
            encoder_args: {n_resblocks: 1, n_feats: 16}
            upsampler_spec: {name: igconv, args: {implicit_dim: 32, latent_layers: 2}}
            skip_spec: {name: igsample, args: {implicit_dim: 16, latent_layers: 1}}
        loss: {l1: 1.0, fft: 0.05}
        optimizer: {name: adam, args: {lr: 2.e-3, betas: [0.9, 0.99]}}
        """, epochs=8)
    assert run_train(cfg, tmp_path) == 0
    log = (tmp_path / '_ig/log.txt').read_text()
    per_epoch = [dict((int(k), float(v)) for k, v in re.findall(r'x(\d): ([0-9.]+)', line))
                 for line in log.splitlines() if line.startswith('epoch ')]
    first = {s: next(e[s] for e in per_epoch if s in e) for s in (2, 3, 4)}
    last = {s: next(e[s] for e in reversed(per_epoch) if s in e) for s in (2, 3, 4)}
    for s in (2, 3, 4):
        assert last[s] < 0.7 * first[s], (s, first[s], last[s])
    # the trained checkpoint is self-describing and serves every integer scale
    model = models.load_model(tmp_path / '_ig/epoch-last.pth')
    with torch.no_grad():
        for s in (2, 3, 4):
            assert model(torch.zeros(1, 3, 8, 8), s).shape == (1, 3, 8 * s, 8 * s)


def test_per_scale_validation_logs_each_scale_and_picks_the_best_by_their_mean(tmp_path):
    """val_scales: one fixed validation set per scale, each logged; epoch-best.pth is the epoch with the
    best mean, and a logged value equals an independent PSNR on the fixed (epoch-0) set."""
    data = make_images(tmp_path / 'images', n=6, size=48)
    cfg = igconv_config(tmp_path / 'igv.yaml', data, 8, 2, """\
        model:
          name: igconv-edsr-baseline
          args:
            encoder_args: {n_resblocks: 1, n_feats: 8}
            upsampler_spec: {name: igconv, args: {implicit_dim: 16, latent_layers: 1}}
        optimizer: {name: adam, args: {lr: 5.e-3}}
        """, epochs=3, extra=f"""\
        val_dataset:
          dataset: {{name: image-folder, args: {{root_path: {data}, first_k: 3, cache: in_memory}}}}
          wrapper: {{name: sr-integer-downsampled, args: {{inp_size: 8, scales: [2, 3, 4]}}}}
          batch_sampler: {{name: per-batch-random-scale}}
          batch_size: 2
        val_scales: [2, 3, 4]
        epoch_val: 1
        """)
    assert run_train(cfg, tmp_path) == 0
    log = (tmp_path / '_igv/log.txt').read_text()
    rows = [re.search(r'val: psnr x2=([0-9.]+), x3=([0-9.]+), x4=([0-9.]+), mean=([0-9.]+)', line)
            for line in log.splitlines() if line.startswith('epoch ')]
    assert len(rows) == 3 and all(rows), log
    values = [[float(v) for v in r.groups()] for r in rows]
    for x2, x3, x4, mean in values:
        assert mean == pytest.approx((x2 + x3 + x4) / 3, abs=2e-4)
    best_epoch = max(range(3), key=lambda e: values[e][3]) + 1
    best = load_checkpoint(tmp_path / '_igv/epoch-best.pth')
    assert best['epoch'] == best_epoch and best['best_val'] == pytest.approx(values[best_epoch - 1][3], abs=1e-4)
    # independent recomputation of the last epoch's x3 value on the fixed set (items of epoch 0)
    model = models.load_model(tmp_path / '_igv/epoch-last.pth')
    hr = datasets.make({'name': 'image-folder', 'args': {'root_path': str(data), 'first_k': 3}})
    val = datasets.make({'name': 'sr-integer-downsampled', 'args': {'inp_size': 8, 'scales': [3]}},
                        args={'dataset': hr, 'seed': 0})
    val.set_epoch(0)
    total = 0.0
    with torch.no_grad():
        for batch in ([0, 1], [2]):
            items = [val[i] for i in batch]
            inp = torch.stack([it['inp'] for it in items])
            gt = torch.stack([it['gt'] for it in items])
            pred = (model((inp - 0.5) / 0.5, 3) * 0.5 + 0.5).clamp(0, 1)
            total += -10 * math.log10((pred - gt).pow(2).mean().item()) * len(items)
    assert total / 3 == pytest.approx(values[-1][1], abs=1e-3)
