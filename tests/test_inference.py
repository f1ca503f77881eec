"""engine.inference.Upscaler against direct model calls: window padding, cell clipping, chunking, tiling."""
import torch

import models
from engine.inference import Upscaler, exact_overlap, target_axis, window_pad
from utils.coords import make_cell, make_coord

from .conftest import load_golden


def golden_model(name):
    return models.make(load_golden(name)['model'], load_sd=True).eval()


def direct(model, img, size, clip=1.0):
    H, W = size
    with torch.no_grad():
        out = model((img - 0.5) / 0.5, make_coord((H, W)).unsqueeze(0), make_cell((H, W)).unsqueeze(0) * clip)
    return (out * 0.5 + 0.5).clamp(0, 1).view(1, H, W, 3).permute(0, 3, 1, 2)


def test_upscaler_equals_model_forward_with_published_clipping():
    model = golden_model('lmlte_edsr')
    img = torch.rand(1, 3, 24, 20)
    assert torch.equal(Upscaler(model)(img, (48, 40)), direct(model, img, (48, 40)))
    # x8: cells clipped by 8 / 4 = 2, as test.py / demo.py of the published code
    assert (Upscaler(model, bsize=997)(img, (192, 160)) - direct(model, img, (192, 160), 2.0)).abs().max() < 1e-6


def test_asymmetric_scales_clip_each_axis():
    model = golden_model('lmliif_edsr')
    img = torch.rand(1, 3, 12, 10)
    out = Upscaler(model)(img, (96, 20))              # x8 rows (clipped by 2), x2 columns (not clipped)
    with torch.no_grad():
        coord = make_coord((96, 20)).unsqueeze(0)
        cell = make_cell((96, 20)).unsqueeze(0) * torch.tensor([2.0, 1.0])
        ref = (model((img - 0.5) / 0.5, coord, cell) * 0.5 + 0.5).clamp(0, 1)
    assert torch.equal(out, ref.view(1, 96, 20, 3).permute(0, 3, 1, 2))


def test_window_padding_reproduces_the_published_swinir_protocol():
    """Pad 1..8 px by mirroring, query make_coord of the padded HR grid, crop: the published test.py."""
    model = golden_model('liif_edsr')                 # any model: the protocol is about coordinates
    img = torch.rand(1, 3, 21, 18)
    s = 3
    padded = window_pad((img - 0.5) / 0.5, 8, published=True)
    assert padded.shape[-2:] == (24, 24)
    Hp, Wp = s * 24, s * 24
    with torch.no_grad():
        ref = model(padded, make_coord((Hp, Wp)).unsqueeze(0), make_cell((Hp, Wp)).unsqueeze(0))
    ref = (ref * 0.5 + 0.5).clamp(0, 1).view(1, Hp, Wp, 3).permute(0, 3, 1, 2)[:, :, :21 * s, :18 * s]
    out = Upscaler(model, window=8, published_window=True)(img, (21 * s, 18 * s))
    assert torch.equal(out, ref)
    assert torch.equal(target_axis(63, 21, 24), make_coord((72,))[:63, 0])


def test_minimal_window_padding_for_multiples_of_the_window():
    x = torch.rand(1, 3, 16, 24)
    assert window_pad(x, 8) is x
    assert window_pad(x, 8, published=True).shape[-2:] == (24, 32)   # the published rule always pads


def test_tiling_overlap_covers_the_receptive_field():
    model = golden_model('lmliif_edsr')               # EDSR-baseline with 2 blocks: radius 6
    assert model.encoder.receptive_radius == 6 and exact_overlap(model) == 9
    assert exact_overlap(models.make(load_golden('lmlte_swinir')['model'])) is None    # attention: no exact overlap
    img = torch.rand(1, 3, 30, 27)
    full = Upscaler(model)(img, (97, 83))
    for tile in (5, 8, 13):
        assert (Upscaler(model, tile=tile)(img, (97, 83)) - full).abs().max() <= 1e-6


def test_bicubic_model_any_size():
    out = Upscaler(models.make({'name': 'bicubic'}))(torch.rand(1, 3, 10, 12), (25, 31))
    assert out.shape == (1, 3, 25, 31)
