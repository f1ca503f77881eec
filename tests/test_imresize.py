"""Resizers: MATLAB imresize reproduces the published Set5 LR files; PIL bicubic is the published resize_fn."""
import numpy as np
import pytest
import torch
from PIL import Image

from utils.image import load_array
from utils.imresize import contributions, imresize, matlab_downscale_uint8, pil_bicubic_resize, \
    torchvision_resize_size
from utils.metrics import psnr_y_uint8

from .conftest import need

SET5 = ['baby', 'bird', 'butterfly', 'head', 'woman']
# Classic Set5 bicubic figures (Y, BT.601, border = scale); the data README measures 33.68/30.41/28.43.
BICUBIC_SET5 = {2: 33.66, 3: 30.39, 4: 28.42}


def set5_pair(data_dir, name, scale):
    root = need(data_dir / 'benchmark' / 'Set5', 'Set5')
    hr, _ = load_array(root / 'HR' / f'{name}.png')
    lr, _ = load_array(need(root / 'LR_bicubic' / f'X{scale}' / f'{name}x{scale}.png', f'Set5 X{scale} LR'))
    return hr, lr


def chw(arr):
    return torch.from_numpy(arr).permute(2, 0, 1)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_matlab_downscale_reproduces_published_lr(data_dir, scale):
    for name in SET5:
        hr, lr = set5_pair(data_dir, name, scale)
        ours = matlab_downscale_uint8(hr, scale)
        assert ours.shape == lr.shape and ours.dtype == np.uint8
        assert int((ours != lr).sum()) == 0, f'{name} x{scale}: {(ours != lr).sum()} differing values'


def test_x8_lr_matches_single_final_rounding(data_dir):
    """The X8 files were made by rounding once at the end (rounding per pass differs by 1-2 levels)."""
    per_pass = 0
    for name in SET5:
        hr, lr = set5_pair(data_dir, name, 8)
        t = chw(hr)
        t = t[:, :t.shape[1] // 8 * 8, :t.shape[2] // 8 * 8]
        once = imresize(t, scale=1 / 8, round_each_pass=False).permute(1, 2, 0).numpy()
        assert int((once != lr).sum()) == 0, name
        per_pass += int((matlab_downscale_uint8(hr, 8) != lr).sum())
    assert per_pass > 0  # measured: 1902 values of 5 images differ (by 1, at most 2)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_bicubic_upsampling_baseline_psnr(data_dir, scale):
    values = []
    for name in SET5:
        hr, lr = set5_pair(data_dir, name, scale)
        lr_t = chw(lr)
        gt = chw(hr)[:, :lr_t.shape[1] * scale, :lr_t.shape[2] * scale]
        up = imresize(lr_t, scale=scale)               # uint8 in, MATLAB rounding per pass
        assert up.shape == gt.shape
        values.append(psnr_y_uint8(up, gt, crop_border=scale).item())
    mean = float(np.mean(values))
    assert abs(mean - BICUBIC_SET5[scale]) < 0.05, f'x{scale}: {mean:.4f} dB'   # measured 33.673/30.403/28.429


def test_contributions_match_matlab_rules():
    w, idx = contributions(8, 4, 0.5)               # x1/2: kernel widened to 8 taps
    assert w.shape == (4, 8) and np.allclose(w.sum(1), 1)
    # output pixel 1 sits at input coordinate 1.5 (1-based); symmetric padding mirrors -2, -1, 0 -> 3, 2, 1
    assert list(idx[0]) == [2, 1, 0, 0, 1, 2, 3, 4]
    assert np.allclose(w[0], w[0][::-1])
    w, idx = contributions(5, 5, 1.0)               # identity: the zero columns are removed
    assert w.shape == (5, 1) and np.all(w == 1) and list(idx[:, 0]) == [0, 1, 2, 3, 4]
    w, idx = contributions(4, 8, 2.0)               # x2 up: 4 + 2 taps, the two all-zero columns removed
    assert w.shape == (8, 4) and list(idx[0]) == [1, 0, 0, 1]
    assert np.array_equal(w[0], [-0.0234375, 0.2265625, 0.8671875, -0.0703125])   # the known x2 weights
    assert np.array_equal(w[1], w[0][::-1])


def test_imresize_shapes_dtypes_and_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 17, 23, generator=g)
    y = imresize(x, scale=0.37)
    assert y.shape == (2, 3, 7, 9) and y.dtype == torch.float32          # ceil(0.37 * size)
    assert torch.equal(y[1], imresize(x[1], scale=0.37))
    assert imresize(x, size=(40, 11)).shape == (2, 3, 40, 11)
    assert imresize(x, scale=(2, 0.5)).shape == (2, 3, 34, 12)
    const = torch.full((1, 9, 13), 0.3, dtype=torch.float64)
    for s in (0.31, 0.5, 1.7, 3):
        assert torch.allclose(imresize(const, scale=s), torch.tensor(0.3, dtype=torch.float64), atol=1e-12)
    u = (x * 255).round().to(torch.uint8)
    assert imresize(u, scale=1.5).dtype == torch.uint8
    assert torch.equal(imresize(u, scale=1), u)
    # float and uint8 paths agree up to the roundings
    diff = imresize(u, scale=0.5, round_each_pass=False).double() - imresize(u.double(), scale=0.5).round()
    assert diff.abs().max() <= 1
    with pytest.raises(ValueError):
        imresize(x, scale=2, size=(3, 3))
    with pytest.raises(ValueError):
        imresize(x)


def test_matlab_downscale_crops_to_multiple_and_accepts_tensors():
    g = torch.Generator().manual_seed(1)
    hr = torch.randint(0, 256, (3, 50, 47), dtype=torch.uint8, generator=g)
    lr = matlab_downscale_uint8(hr, 4)
    assert lr.shape == (3, 12, 11) and lr.dtype == torch.uint8
    lr_np = matlab_downscale_uint8(hr.permute(1, 2, 0).numpy(), 4)
    assert np.array_equal(lr_np, lr.permute(1, 2, 0).numpy())
    assert matlab_downscale_uint8(hr[0].numpy(), 3).shape == (16, 15)
    with pytest.raises(ValueError):
        matlab_downscale_uint8(hr, 2.5)


def test_float_to_uint8_truncation_is_exact_for_k_over_255():
    k = torch.arange(256, dtype=torch.float32)
    assert torch.equal((k / 255).mul(255).to(torch.uint8), k.to(torch.uint8))


@pytest.mark.parametrize('size', [(31, 31), 20, (45, 12), (64, 80)])
def test_pil_bicubic_resize_matches_pil(size):
    g = torch.Generator().manual_seed(2)
    u8 = torch.randint(0, 256, (48, 48, 3), dtype=torch.uint8, generator=g)
    img = u8.permute(2, 0, 1).float() / 255
    out = pil_bicubic_resize(img, size)
    h, w = (size, size) if isinstance(size, int) else size
    ref = np.asarray(Image.fromarray(u8.numpy()).resize((w, h), Image.BICUBIC))
    assert out.shape == (3, h, w) and out.dtype == torch.float32
    assert torch.equal(out, torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255)


def test_pil_bicubic_resize_int_size_sets_shorter_side():
    assert torchvision_resize_size(48, 48, 20) == (20, 20)
    assert torchvision_resize_size(40, 100, 20) == (20, 50)      # torchvision Resize(int): shorter side
    assert torchvision_resize_size(100, 30, 15) == (50, 15)
    img = torch.rand(1, 40, 100)
    assert pil_bicubic_resize(img, 20).shape == (1, 20, 50)
    assert pil_bicubic_resize(torch.rand(2, 3, 16, 16), 8).shape == (2, 3, 8, 8)
