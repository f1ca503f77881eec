"""The BasicSR evaluation protocol (IGConv paper) selected by a test config: ``protocol: basicsr``.

uint8-quantised prediction, BT.601 Y with the +16 offset, crop = scale, PSNR peak 255, Gaussian SSIM
(engine/evaluation.py ``score``). Checked against (a) the classic bicubic Set5 numbers 33.66 / 30.39 / 28.42 dB
(MATLAB-bicubic upsampling of the published LR files) and (b) an independent NumPy implementation written here.
"""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from engine.evaluation import DEFAULT_METRICS, PROTOCOLS, check_protocol, score
from utils.imresize import imresize

from .conftest import DATA, ROOT, need

CLASSIC_BICUBIC_SET5 = {2: 33.66, 3: 30.39, 4: 28.42}      # Y, +16, crop = scale (e.g. the EDSR/RCAN papers)
SET5 = ['baby', 'bird', 'butterfly', 'head', 'woman']


def read_u8(path):
    return np.array(Image.open(path).convert("RGB"))


def set5_pair(scale):
    root = need(DATA / 'benchmark' / 'Set5', 'Set5 (HR and the published LR_bicubic files)')
    for name in SET5:
        lr = read_u8(root / 'LR_bicubic' / f'X{scale}' / f'{name}x{scale}.png')
        hr = read_u8(root / 'HR' / f'{name}.png')
        h, w = lr.shape[:2]
        yield name, lr, hr[:h * scale, :w * scale]


def to_tensor(u8):
    return torch.from_numpy(u8).permute(2, 0, 1).unsqueeze(0).float() / 255


def bicubic_up(lr_u8, scale):
    """MATLAB imresize(LR, scale, 'bicubic') on uint8, as the classic baseline numbers were made."""
    t = torch.from_numpy(lr_u8).permute(2, 0, 1).contiguous()
    return imresize(t, scale=scale).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- independent reference (NumPy, float64)

def y_plus16(u8):
    x = u8.astype(np.float64) / 255
    return 16 + x[..., 0] * 65.481 + x[..., 1] * 128.553 + x[..., 2] * 24.966


def ref_psnr(sr_u8, hr_u8, crop):
    a, b = y_plus16(sr_u8)[crop:-crop, crop:-crop], y_plus16(hr_u8)[crop:-crop, crop:-crop]
    return 10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2))


def ref_ssim(sr_u8, hr_u8, crop):
    a, b = y_plus16(sr_u8)[crop:-crop, crop:-crop], y_plus16(hr_u8)[crop:-crop, crop:-crop]
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()

    def filt(x):   # 'valid' 2-D correlation with the 11x11 window
        v = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
        return np.einsum('ijkl,kl->ij', v, win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = filt(a), filt(b)
    s11, s22, s12 = filt(a * a) - mu1 ** 2, filt(b * b) - mu2 ** 2, filt(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return m.mean()


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize('scale', [2, 3, 4])
def test_bicubic_set5_matches_classic_numbers(scale):
    values = []
    for _, lr, hr in set5_pair(scale):
        sr = bicubic_up(lr, scale)
        assert sr.shape == hr.shape
        values.append(score(to_tensor(sr), to_tensor(hr), 'basicsr', 'benchmark', scale, ('psnr',))['psnr'])
    mean = sum(values) / len(values)
    assert abs(mean - CLASSIC_BICUBIC_SET5[scale]) <= 0.03, f'x{scale}: {mean:.4f} dB'


def test_scores_equal_an_independent_computation():
    pairs = list(set5_pair(3))[:2] + list(set5_pair(4))[2:4]
    for i, (name, lr, hr) in enumerate(pairs):
        scale = 3 if i < 2 else 4
        lr, hr = lr[10:40, 5:33], hr[10 * scale:40 * scale, 5 * scale:33 * scale]     # a crop: fast, still real
        sr = bicubic_up(lr, scale)
        # a float prediction that is not on the uint8 grid: the protocol quantises it first
        pred = (to_tensor(sr) + torch.linspace(-0.004, 0.004, sr.shape[0]).view(1, 1, -1, 1)).clamp(0, 1)
        pred_u8 = (pred[0].permute(1, 2, 0).double().numpy() * 255).round().astype(np.uint8)
        got = score(pred, to_tensor(hr), 'basicsr', 'benchmark', scale)
        assert got['psnr'] == pytest.approx(ref_psnr(pred_u8, hr, scale), abs=1e-6), name
        assert got['ssim'] == pytest.approx(ref_ssim(pred_u8, hr, scale), abs=1e-7), name
        # the LIIF protocol is a different number (no quantisation, no +16, other coefficients)
        liif = score(pred, to_tensor(hr), 'test-original', 'benchmark', scale)['psnr']
        assert liif != pytest.approx(got['psnr'], abs=1e-3)


def test_metrics_selection_and_validation():
    x, y = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40)
    assert score(x, y, 'basicsr', 'benchmark', 2, ('ssim',))['psnr'] is None
    assert score(x, y, 'basicsr', 'benchmark', 2, ('psnr',))['ssim'] is None
    assert check_protocol(None) == (None, DEFAULT_METRICS)
    assert check_protocol('unspecified', ['psnr']) == (None, ('psnr',))
    assert check_protocol('basicsr', 'ssim') == ('basicsr', ('ssim',))
    for bad in [('matlab', None), ('basicsr', ['lpips']), ('basicsr', [])]:
        with pytest.raises(ValueError, match='protocol|metrics'):
            check_protocol(*bad)


def test_igconv_test_configs():
    """configs/test-igconv: every set x scale names the basicsr protocol, PSNR and SSIM, and the published LR."""
    folder = ROOT / 'configs' / 'test-igconv'
    files = sorted(folder.glob('*.yaml'))
    names = {p.stem for p in files}
    for ds in ['set5', 'set14', 'b100', 'urban100', 'manga109']:
        for s in [2, 3, 4, 8]:
            assert f'{ds}-x{s}' in names
    for p in files:
        cfg = yaml.safe_load(p.read_text())
        s = int(p.stem.rsplit('-x', 1)[1])
        assert cfg['protocol'] == 'basicsr' and cfg['protocol'] in PROTOCOLS
        assert check_protocol(cfg['protocol'], cfg['metrics']) == ('basicsr', ('psnr', 'ssim'))
        assert cfg['eval_type'] == f'benchmark-{s}'
        ds = cfg['test_dataset']['dataset']
        if s <= 4:       # MATLAB-bicubic LR files
            assert ds['name'] == 'paired-image-folders' and ds['args']['root_path_1'].endswith(f'LR_bicubic/X{s}')
        else:            # published: PIL bicubic from the GT cropped to a multiple of s
            assert cfg['test_dataset']['wrapper']['args'] == {'scale_min': s, 'scale_max': s}


def test_a_new_protocol_or_metric_is_one_registered_entry():
    """Protocols and metrics are registries: one class / one function registered, then named in a config."""
    from engine.evaluation import TEST_METRICS, LIIFProtocol
    x, y = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40)

    @PROTOCOLS.register('no-border')
    class NoBorder(LIIFProtocol):
        def border(self, dataset, scale):
            return 0

    @TEST_METRICS.register('mae')
    def mae(protocol, pred, gt, dataset, scale):
        b = protocol.border(dataset, scale)
        return float((pred - gt)[..., b:pred.shape[-2] - b, b:pred.shape[-1] - b].abs().mean())

    try:
        assert check_protocol('no-border', ['psnr', 'mae']) == ('no-border', ('psnr', 'mae'))
        got = score(x, y, 'no-border', 'benchmark', 4, ('psnr', 'mae'))
        assert got['mae'] == pytest.approx(float((x - y).abs().mean()))
        assert got['ssim'] is None and got['psnr'] == score(x, y, 'test-original', 'benchmark', 4)['psnr']
        assert score(x, y, 'test-original', 'benchmark', 4, ('mae',))['mae'] == pytest.approx(
            float((x - y)[..., 4:36, 4:36].abs().mean()))
    finally:
        del PROTOCOLS.entries['no-border'], TEST_METRICS.entries['mae']
