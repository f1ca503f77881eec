"""scripts/train_benchmark.py (training speed) and the fast training-data path it measures.

* The script times two iterations of train.py's step on a tiny config; its phases (data, forward, backward,
  optimizer) add up to the separately measured step time.
* The training wrappers crop from the decoded uint8 array and compute only the sampled queries' coordinates;
  their items equal, for the same (seed, epoch, index), those of a straightforward reference that converts
  the whole image, builds the full HR coordinate grid (``to_pixel_samples``) and indexes it: the same draws in
  the same order, so the same crop and query distribution as the published wrapper.
"""
import time

import numpy as np
import pytest
import torch

import datasets
from datasets.wrappers import apply_flips, draw_flips, item_rng, query_samples
from utils.coords import make_cell, to_pixel_samples
from utils.image import array_to_tensor
from utils.imresize import pil_bicubic_resize

from .conftest import make_images, smooth_uint8, write_config


def test_script_two_iterations_split_adds_up(tmp_path, capsys):
    from engine.train_benchmark import PHASES, run_benchmark
    from scripts import train_benchmark
    data = make_images(tmp_path / 'data', n=4, size=64)
    cfg = write_config(tmp_path / 'tiny.yaml', data, batch=4)
    results, what = run_benchmark([str(cfg)], iters=2, warmup=0, threads=1, images=4, block=1,
                                  report=lambda m: None)
    assert 'config' in what and len(results) == 1
    r = results[0]
    assert r.loop == 'ours' and len(r.splits) == 2 and r.memory_mb > 0 and r.batch == 4
    for s in r.splits:
        assert all(s[k] > 0 for k in PHASES)
        assert sum(s[k] for k in PHASES) == pytest.approx(s['total'], rel=0.05, abs=2e-3)
    assert all(np.isfinite(r.losses))
    assert r.samples == pytest.approx(4 * r.its)
    # the command line: a table row for our loop; bad values are one-line errors
    report = tmp_path / 'new' / 'folder' / 'speed.md'             # a missing folder is created when written
    assert train_benchmark.main(['--config', str(cfg), '--iters', '1', '--warmup', '0', '--threads', '1',
                                 '--images', '2', '--out', str(report)]) == 0
    out = capsys.readouterr().out
    assert '| ours |' in out and 'samples/s' in out
    assert "machine's best float32 rate, measured right after the loops" in out and '| conv3x3' in out
    assert report.read_text().strip() == out.strip()
    # --out is checked before any timing: a folder, or a file under a file, is refused at once
    t = time.perf_counter()
    assert train_benchmark.main(['--config', str(cfg), '--out', str(tmp_path)]) == 1
    assert train_benchmark.main(['--config', str(cfg), '--out', str(cfg / 'x.md')]) == 1
    assert time.perf_counter() - t < 5
    assert 'is a directory' in capsys.readouterr().err
    assert train_benchmark.main(['--config', str(cfg), '--iters', '0']) == 1
    assert train_benchmark.main(['--config', str(cfg), '--published', str(tmp_path / 'nope')]) == 1
    assert train_benchmark.main(['--config', str(cfg), '--published', str(data)]) == 1      # refused before any run
    err = capsys.readouterr().err
    assert 'error: --iters must be >= 1' in err and 'nope: no such folder' in err
    assert 'not a checkout of the LMF repository' in err and 'Traceback' not in err


FAKE_PUBLISHED = {
    'train.py': '',
    'datasets/__init__.py': """
import torch
class Folder:
    def __init__(self, root_path, repeat=1, cache='none'):
        self.n = 4 * repeat
    def __len__(self):
        return self.n
class Wrapper:
    def __init__(self, dataset, inp_size, sample_q, **kw):
        self.dataset, self.s, self.q = dataset, inp_size, sample_q
    def __len__(self):
        return len(self.dataset)
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {'inp': torch.rand(3, self.s, self.s, generator=g), 'coord': torch.rand(self.q, 2, generator=g),
                'cell': torch.rand(self.q, 2, generator=g), 'gt': torch.rand(self.q, 3, generator=g)}
def make(spec, args=None):
    cls = {'image-folder': Folder, 'sr-implicit-downsampled': Wrapper}[spec['name']]
    return cls(**spec['args'], **(args or {}))
""",
    'models/__init__.py': """
import torch
class Tiny(torch.nn.Module):          # 7 parameters: the driver must have built this one, not ours
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.extra = torch.nn.Parameter(torch.zeros(4))
    def forward(self, inp, coord, cell):
        mark = torch.zeros(1).cuda()         # the published models call .cuda(): made to work on the CPU
        return (self.lin(coord) + inp.mean() + self.extra.sum() + mark).expand(-1, -1, 3)
def make(spec, args=None, load_sd=False):
    return Tiny()
""",
    'utils.py': """
import torch
def make_optimizer(params, spec, load_sd=False):
    return torch.optim.Adam(params, **spec['args'])
def calc_psnr(sr, hr):
    return -10 * torch.log10((sr - hr).pow(2).mean())
""",
}


@pytest.mark.slow
def test_published_loop_runs_interleaved_from_a_checkout(tmp_path):
    """--published: the second worker imports the checkout's own modules (not this project's packages of
    the same names), runs its loop on the same config, and the ratio line is printed."""
    from engine.train_benchmark import PHASES, format_table, run_benchmark
    fake = tmp_path / 'LMF'
    for name, text in FAKE_PUBLISHED.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(text)
    data = make_images(tmp_path / 'data', n=4, size=64)
    cfg = write_config(tmp_path / 'tiny.yaml', data, batch=4)
    results, what = run_benchmark([str(cfg)], iters=2, warmup=1, threads=1, images=4, block=1,
                                  published=str(fake), report=lambda m: None)
    ours, published = results
    assert (ours.loop, published.loop) == ('ours', 'published')
    assert published.params == 7 and ours.params > 7
    for s in published.splits:
        assert sum(s[k] for k in PHASES) == pytest.approx(s['total'], rel=0.05, abs=2e-3)
    table = format_table(results, 'cpu', 1, 0, what, 2, 1)
    assert '| published |' in table and 'ours / published samples/s = ' in table


# ------------------------------------------------------------------------------------------------
# the optimised sampler against a straightforward reference
# ------------------------------------------------------------------------------------------------
def reference_query_samples(hr, sample_q, rng):
    coord, gt = to_pixel_samples(hr.contiguous())
    sel = torch.from_numpy(rng.choice(len(coord), sample_q, replace=False))
    return coord[sel], make_cell(hr.shape[-2:], n=sample_q), gt[sel]


def reference_downsampled(arr, seed, epoch, idx, inp_size, scale_max, augment, sample_q):
    """Published ``sr-implicit-downsampled`` training item from the whole float image, with our draws."""
    rng = item_rng(seed, epoch, idx)
    img = array_to_tensor(arr)
    s = rng.uniform(1, scale_max)
    w_hr = round(inp_size * s)
    y0 = int(rng.integers(0, img.shape[-2] - w_hr + 1))
    x0 = int(rng.integers(0, img.shape[-1] - w_hr + 1))
    crop_hr = img[:, y0:y0 + w_hr, x0:x0 + w_hr]
    crop_lr = pil_bicubic_resize(crop_hr, (inp_size, inp_size))
    flips = draw_flips(rng, augment)
    crop_lr, crop_hr = apply_flips(crop_lr, flips), apply_flips(crop_hr, flips)
    coord, cell, gt = reference_query_samples(crop_hr, sample_q, rng)
    return {'inp': crop_lr, 'coord': coord, 'cell': cell, 'gt': gt}


@pytest.mark.parametrize('H,W', [(37, 53), (64, 64), (13, 97)])
def test_query_samples_equal_full_grid_reference(H, W):
    hr = torch.rand(3, H, W)
    for seed in range(5):
        q = min(H * W, 7 + 31 * seed)
        got = query_samples(hr, q, np.random.default_rng(seed))
        want = reference_query_samples(hr, q, np.random.default_rng(seed))
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    coord, cell, gt = query_samples(hr, None, None)          # test mode: the whole grid
    assert torch.equal(coord, to_pixel_samples(hr)[0]) and torch.equal(gt, to_pixel_samples(hr)[1])


@pytest.mark.parametrize('gray', [False, True])
def test_downsampled_items_equal_reference(tmp_path, gray):
    from PIL import Image
    folder = tmp_path / 'hr'
    folder.mkdir()
    arrays = []
    for i, (h, w) in enumerate([(150, 201), (97, 130), (240, 180)]):
        a = smooth_uint8(h, w, seed=i)
        a = a[..., 0] if gray else a
        Image.fromarray(a).save(folder / f'{i}.png')
        arrays.append(a)
    for cache in ('in_memory', 'none'):
        ds = datasets.make({'name': 'image-folder', 'args': {'root_path': str(folder), 'repeat': 3, 'cache': cache}})
        wrapped = datasets.make({'name': 'sr-implicit-downsampled', 'args': {
            'inp_size': 24, 'scale_max': 4, 'augment': True, 'sample_q': 300}}, args={'dataset': ds})
        wrapped.seed, wrapped.epoch = 7, 3
        for idx in range(len(wrapped)):
            got = wrapped[idx]
            want = reference_downsampled(arrays[idx % 3], 7, 3, idx, 24, 4, True, 300)
            for k in want:
                assert torch.equal(got[k], want[k]), (cache, idx, k)


def test_integer_downsampled_items_equal_reference(tmp_path):
    from PIL import Image
    folder = tmp_path / 'hr'
    folder.mkdir()
    a = smooth_uint8(120, 150, seed=3)
    Image.fromarray(a).save(folder / 'a.png')
    ds = datasets.make({'name': 'image-folder', 'args': {'root_path': str(folder), 'cache': 'in_memory'}})
    wrapped = datasets.make({'name': 'sr-integer-downsampled', 'args': {'inp_size': 16, 'scales': [2, 3, 4],
                                                                       'augment': True}}, args={'dataset': ds})
    img = array_to_tensor(a)
    for epoch in range(6):
        wrapped.set_epoch(epoch)
        for s in (2, 3, 4):
            got = wrapped[(0, s)]
            rng = item_rng(0, epoch, 0)
            y0, x0 = int(rng.integers(0, 120 - 16 * s + 1)), int(rng.integers(0, 150 - 16 * s + 1))
            hr = apply_flips(img[:, y0:y0 + 16 * s, x0:x0 + 16 * s], draw_flips(rng, True)).contiguous()
            assert torch.equal(got['gt'], hr)
            assert torch.equal(got['inp'], pil_bicubic_resize(hr, (16, 16)))


def test_region_equals_window_of_item(tmp_path):
    from PIL import Image
    folder = tmp_path / 'hr'
    folder.mkdir()
    Image.fromarray(smooth_uint8(40, 56, seed=1)).save(folder / 'a.png')
    for cache in ('in_memory', 'bin', 'none'):
        ds = datasets.make({'name': 'image-folder', 'args': {'root_path': str(folder), 'cache': cache}})
        size, crop = ds.region(0)
        assert tuple(size) == (40, 56)
        assert torch.equal(crop(3, 5, 20, 17), ds[0][:, 3:23, 5:22])


@pytest.mark.parametrize('mod_scale,mod_shift,extra', [(True, True, 0), (True, False, 0), (False, True, 5)])
def test_lmmlp_split_modulations_equal_sliced_reference(mod_scale, mod_shift, extra):
    """The training path splits the modulations once (one concatenation in backward); outputs and every
    gradient equal those of the straightforward per-layer slices, bit for bit."""
    from models.decoders.mlp import LMMLP
    m = LMMLP(10, 3, 16, 4, mod_scale, mod_shift)
    x = torch.randn(300, 10, requires_grad=True)
    mod = torch.randn(300, m.mod_dim + extra, requires_grad=True)
    y = m(x, mod)
    y.square().sum().backward()
    got = [y.detach(), x.grad, mod.grad] + [p.grad for p in m.parameters()]
    x.grad = mod.grad = None
    m.zero_grad()
    h = x
    for k in range(m.hidden_depth):
        h = m.hidden(k)(h)
        if mod_scale:
            h = h * (1 + mod[:, k * 16:(k + 1) * 16])
        if mod_shift:
            off = 16 * m.hidden_depth * int(mod_scale)
            h = h + mod[:, off + k * 16:off + (k + 1) * 16]
        h = torch.relu(h)
    ref = m.layers[-1](h)
    ref.square().sum().backward()
    want = [ref.detach(), x.grad, mod.grad] + [p.grad for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    if extra:
        assert torch.equal(mod.grad[:, m.mod_dim:], torch.zeros(300, extra))


@pytest.mark.parametrize('res_scale', [1, 0.1])
def test_edsr_resblock_equals_published_form(res_scale):
    """ResBlock skips the multiplication by res_scale = 1 (EDSR-baseline); values and gradients equal the
    published ``body(x).mul(res_scale) + x``."""
    from models.encoders.edsr import ResBlock
    block = ResBlock(8, res_scale=res_scale)
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    y = block(x)
    y.square().sum().backward()
    got = [y.detach(), x.grad] + [p.grad for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    ref = block.body(x).mul(res_scale) + x
    ref.square().sum().backward()
    want = [ref.detach(), x.grad] + [p.grad for p in block.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
