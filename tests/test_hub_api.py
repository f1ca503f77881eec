"""torch.hub entry points (hubconf.py) and the one-call API (api.py): the same images as demo.py."""
import numpy as np
import pytest
import torch
from PIL import Image

import api
import models

from .conftest import ROOT

BUNDLED = ROOT / 'save' / 'pretrained_models'


def need_bundled():
    if not ((BUNDLED / 'edsr-b_lm-liif.safetensors').exists() or (BUNDLED / 'edsr-b_lm-liif.pth').exists()):
        pytest.skip('bundled LM-LIIF not present')


@pytest.fixture(scope='module')
def small_png(tmp_path_factory):
    """A 20x26 crop of the demo image (fast to upscale)."""
    src = Image.open(ROOT / 'assets' / 'demo_lr.png').convert('RGB')
    path = tmp_path_factory.mktemp('img') / 'small.png'
    src.crop((40, 30, 66, 50)).save(path)
    return path


def demo_output(src, dst, *flags):
    import demo
    assert demo.main(['--input', str(src), '--output', str(dst), '--device', 'cpu', '--quiet', *flags]) == 0
    return np.asarray(Image.open(dst))


def test_hub_loads_the_bundled_lm_liif():
    need_bundled()
    model = torch.hub.load(str(ROOT), 'lm_liif', pretrained=True, source='local')
    ref = models.load_model(BUNDLED / 'edsr-b_lm-liif.pth') if (BUNDLED / 'edsr-b_lm-liif.pth').exists() \
        else models.load_model(BUNDLED / 'edsr-b_lm-liif.safetensors')
    assert type(model).__name__ == 'ImageUpscaler' and type(model.sr_model) is type(ref) and not model.training
    sd, rsd = model.sr_model.state_dict(), ref.state_dict()
    assert sd.keys() == rsd.keys() and all(torch.equal(sd[k], rsd[k]) for k in sd)
    import hubconf
    for entry in ('lm_liif', 'lm_lte', 'liif', 'lte', 'metasr', 'igconv', 'igconv_plus', 'from_checkpoint', 'upscale'):
        assert callable(getattr(hubconf, entry)), entry


def test_hub_upscale_equals_demo(small_png, tmp_path):
    need_bundled()
    ref = demo_output(small_png, tmp_path / 'demo.png', '--scale', '2.5')
    out = torch.hub.load(str(ROOT), 'upscale', str(small_png), scale=2.5, output=str(tmp_path / 'hub.png'),
                         device='cpu', source='local')
    assert out == str(tmp_path / 'hub.png')
    assert (tmp_path / 'hub.png').read_bytes() == (tmp_path / 'demo.png').read_bytes()
    # the model object from torch.hub gives the same image through the API
    model = torch.hub.load(str(ROOT), 'lm_liif', source='local')
    pil = api.upscale(Image.open(small_png), scale=2.5, model=model)
    assert pil.mode == 'RGB' and np.array_equal(np.asarray(pil), ref)


def test_api_kinds_match_demo(small_png, tmp_path):
    need_bundled()
    ref = demo_output(small_png, tmp_path / 'demo.png', '--size', '41x57')
    arr = np.array(Image.open(small_png))
    out = api.upscale(arr, size=(41, 57), device='cpu')
    assert out.dtype == np.uint8 and np.array_equal(out, ref)
    f = api.upscale(arr.astype(np.float32) / 255, size=(41, 57), device='cpu')
    assert f.dtype == np.float32 and f.shape == (57, 41, 3)          # size is (width, height)
    assert np.abs(f * 255 - ref).max() <= 0.5 + 1e-3          # unquantised, rounds to the demo image
    t = api.upscale(torch.from_numpy(arr).permute(2, 0, 1).float() / 255, size=(41, 57), device='cpu')
    assert t.shape == (3, 57, 41) and torch.allclose(t, torch.from_numpy(f).permute(2, 0, 1), atol=1e-6)
    # default output name beside the input
    copy = tmp_path / 'in.png'
    copy.write_bytes(small_png.read_bytes())
    written = api.upscale(str(copy), size=(41, 57), device='cpu')
    assert written == str(tmp_path / 'in_41x57.png')
    assert np.array_equal(np.asarray(Image.open(written)), ref)


def test_api_gray_and_alpha_like_demo(small_png, tmp_path):
    need_bundled()
    rgb = Image.open(small_png)
    gray = rgb.convert('L')
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient('L').resize(rgb.size))
    for name, im in (('gray', gray), ('rgba', rgba)):
        src = tmp_path / f'{name}.png'
        im.save(src)
        ref = demo_output(src, tmp_path / f'{name}_demo.png', '--scale', '2')
        out = api.upscale(im, scale=2, device='cpu')
        assert out.mode == im.mode and np.array_equal(np.asarray(out), ref), name
        arr = api.upscale(np.asarray(im), scale=2, device='cpu')
        assert arr.shape == ref.shape and np.array_equal(arr, ref), name


def test_api_and_hub_errors(small_png, tmp_path):
    with pytest.raises(ValueError, match='exactly one'):
        api.upscale(str(small_png), scale=2, size=(40, 52), device='cpu')
    with pytest.raises(ValueError, match='exactly one'):
        api.upscale(str(small_png), device='cpu')
    with pytest.raises(ValueError, match='image must be'):
        api.upscale([[1, 2]], scale=2, device='cpu')
    with pytest.raises(ValueError, match='dtype'):
        api.upscale(np.zeros((4, 4, 3), dtype=np.int32), scale=2, device='cpu')
    with pytest.raises(ValueError, match='>= 1'):
        api.upscale(np.zeros((4, 4, 3), dtype=np.uint8), scale=0.5, device='cpu')
    with pytest.raises(ValueError, match='not found'):
        api.upscale(str(tmp_path / 'missing.png'), scale=2, device='cpu')
    with pytest.raises(ValueError, match='no bundled weights'):
        torch.hub.load(str(ROOT), 'liif', pretrained=True, source='local')
    model = torch.hub.load(str(ROOT), 'igconv', source='local')      # random weights, integer scales
    assert model.capabilities.kind == 'grid'
    with pytest.raises(ValueError, match='integer'):
        api.upscale(np.zeros((6, 6, 3), dtype=np.uint8), scale=2.5, model=model)
