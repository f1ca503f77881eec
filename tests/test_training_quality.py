"""A short CPU training run of a small LM-LIIF on ../shared/data/train learns: the L1 loss falls and the
model beats bicubic on held-aside crops (the last 10 BSD images, never seen in training)."""
import re
import textwrap

import pytest
import torch

import models
import train as train_script
from engine.inference import Upscaler
from utils.image import load_image
from utils.imresize import pil_bicubic_resize
from utils.metrics import psnr

from .conftest import DATA, need

TRAIN_FOLDERS = ['kodak24', 'mcmaster', 'bsd200']


def config(path, epochs, milestones):
    roots = ', '.join(str(DATA / 'train' / f) for f in TRAIN_FOLDERS)
    path.write_text(textwrap.dedent(f"""\
        train_dataset:
          dataset: {{name: image-folder, args: {{root_path: [{roots}], first_k: 132, repeat: 2, cache: in_memory}}}}
          wrapper: {{name: sr-implicit-downsampled, args: {{inp_size: 32, scale_max: 4, augment: true, sample_q: 1024}}}}
          batch_size: 8
        model:
          name: lmliif
          args:
            encoder_spec: {{name: edsr-baseline, args: {{no_upsampling: true, n_resblocks: 2, n_feats: 32}}}}
            imnet_spec: {{name: lmmlp, args: {{out_dim: 3, hidden_dim: 16, hidden_depth: 4}}}}
            hypernet_spec: {{name: mlp, args: {{out_dim: 1, hidden_list: [64]}}}}
            mod_input: true
        optimizer: {{name: adam, args: {{lr: 2.e-3}}}}
        epoch_max: {epochs}
        multi_step_lr: {{milestones: {milestones}, gamma: 0.2}}
        """))
    return path


def held_aside_psnr(model, scale, n=10, lr_size=48):
    """Mean RGB PSNR on fixed crops of the 10 held-aside images (LR by PIL bicubic, as in training)."""
    files = sorted((DATA / 'train' / 'bsd200').iterdir())[-n:]
    values = []
    for f in files:
        img, _ = load_image(f)
        hr = img[:, 60:60 + lr_size * scale, 100:100 + lr_size * scale]
        lr = pil_bicubic_resize(hr, lr_size)
        values.append(psnr(Upscaler(model)(lr[None], hr.shape[-2:]), hr[None]).item())
    return sum(values) / len(values)


def train_and_compare(tmp_path, epochs, milestones):
    need(DATA / 'train', 'training images')
    cfg = config(tmp_path / 'small.yaml', epochs, milestones)
    assert train_script.main(['--config', str(cfg), '--save-root', str(tmp_path), '--workers', '0',
                              '--no-progress', '--device', 'cpu']) == 0
    losses = [float(x) for x in re.findall(r'train: loss=([0-9.]+)', (tmp_path / '_small/log.txt').read_text())]
    model = models.load_model(tmp_path / '_small/epoch-last.pth')
    bicubic = models.make({'name': 'bicubic'})
    scores = {s: (held_aside_psnr(model, s), held_aside_psnr(bicubic, s)) for s in (2, 3, 4)}
    print('loss per epoch', losses, 'held-aside PSNR (model, bicubic)', scores)
    return losses, scores


def test_short_training_run_learns_and_beats_bicubic_at_x4(tmp_path):
    torch.set_num_threads(2)
    losses, scores = train_and_compare(tmp_path, 18, [12])       # 18 x 33 = 594 iterations, ~1 minute
    assert losses[-1] < 0.3 * losses[0]
    model4, bicubic4 = scores[4]
    assert model4 > bicubic4 + 0.05


@pytest.mark.slow
def test_longer_training_run_beats_bicubic_at_every_scale(tmp_path):
    losses, scores = train_and_compare(tmp_path, 80, [60])       # ~2,600 iterations, ~4 minutes
    assert losses[-1] < 0.25 * losses[0]
    for s, (model, bicubic) in scores.items():
        assert model > bicubic + 0.1, s
