"""IGConv multi-scale training with train.py: one scale per batch, the loss falls at every scale."""
import re
import textwrap

import torch

import models
import train as train_script

from .test_training import make_images


def test_short_multiscale_igconv_training_lowers_loss_at_every_scale(tmp_path):
    data = make_images(tmp_path / 'images', n=12, size=96)
    cfg = tmp_path / 'ig.yaml'
    cfg.write_text(textwrap.dedent(f"""\
        train_dataset:
          dataset: {{name: image-folder, args: {{root_path: {data}, repeat: 4, cache: in_memory}}}}
          wrapper: {{name: sr-integer-downsampled, args: {{inp_size: 16, scales: [2, 3, 4], augment: true}}}}
          batch_sampler: {{name: per-batch-random-scale}}
          batch_size: 4
        model:
          name: igconv-plus-edsr-baseline
          args:
            encoder_args: {{n_resblocks: 1, n_feats: 16}}
            upsampler_spec: {{name: igconv, args: {{implicit_dim: 32, latent_layers: 2}}}}
            skip_spec: {{name: igsample, args: {{implicit_dim: 16, latent_layers: 1}}}}
        loss: {{l1: 1.0, fft: 0.05}}
        optimizer: {{name: adam, args: {{lr: 2.e-3, betas: [0.9, 0.99]}}}}
        epoch_max: 8
        """))
    assert train_script.main(['--config', str(cfg), '--save-root', str(tmp_path), '--workers', '0',
                              '--no-progress', '--device', 'cpu']) == 0
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
