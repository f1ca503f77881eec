"""Image files, dataset registry, folders, SR wrappers (reproducible randomness) and the scale sampler."""
import os
import random
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import datasets
from datasets import DatasetError, DatasetSpecError, ScaleBatchSampler
from datasets.samplers import make_batch_sampler
from utils.coords import make_coord
from utils.image import ImageError, load_image, save_image
from utils.imresize import pil_bicubic_resize

from .conftest import need, smooth_uint8


def as_tensor(u8_hwc):
    return torch.from_numpy(np.array(u8_hwc)).permute(2, 0, 1).float() / 255


@pytest.fixture
def hr_folder(tmp_path):
    """Three RGB PNGs of different sizes plus files that must be skipped."""
    root = tmp_path / 'hr'
    root.mkdir()
    for i, (h, w) in enumerate([(200, 210), (230, 200), (205, 240)]):
        Image.fromarray(smooth_uint8(h, w, seed=i)).save(root / f'img{i}.png')
    (root / 'notes.txt').write_text('not an image')
    (root / '.hidden.png').write_bytes(b'junk')
    (root / 'sub').mkdir()
    return root


def hr_dataset(root, **kwargs):
    return datasets.make({'name': 'image-folder', 'args': {'root_path': str(root), **kwargs}})


def items_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


# ----------------------------------------------------------------------------- image files

def test_every_mode_loads_as_rgb(tmp_path):
    rgb = smooth_uint8(12, 10)
    gray = rgb[..., 1]
    cases = {
        'rgb.png': (Image.fromarray(rgb), rgb, 8, False),
        'gray.png': (Image.fromarray(gray), np.repeat(gray[..., None], 3, -1), 8, False),
        'gray_alpha.png': (Image.fromarray(np.stack([gray, gray[::-1]], -1)), np.repeat(gray[..., None], 3, -1), 8,
                           True),
        'rgba.png': (Image.fromarray(np.concatenate([rgb, gray[..., None]], -1)), rgb, 8, True),
        'bilevel.png': (Image.fromarray(gray > 128), np.repeat((gray > 128)[..., None] * 255, 3, -1), 8, False),
        'cmyk.jpg': (Image.fromarray(rgb).convert('CMYK'), None, 8, False),
        'rgb.webp': (Image.fromarray(rgb), rgb, 8, False),
    }
    pal = Image.fromarray(rgb).quantize(16)
    cases['palette.png'] = (pal, np.asarray(pal.convert('RGB')), 8, False)
    pal_t = pal.copy()
    pal_t.info['transparency'] = 0
    cases['palette_t.png'] = (pal_t, np.asarray(pal.convert('RGB')), 8, True)
    for name, (im, expect, depth, has_alpha) in cases.items():
        kwargs = {'lossless': True} if name.endswith('webp') else {}
        im.save(tmp_path / name, **kwargs)
        img, info = load_image(tmp_path / name)
        assert img.shape == (3, 12, 10) and img.dtype == torch.float32, name
        assert info.bit_depth == depth and info.has_alpha == has_alpha, name
        assert (info.alpha is not None) == has_alpha and (not has_alpha or info.alpha.shape == (1, 12, 10)), name
        if expect is not None:
            assert torch.equal(img, as_tensor(expect.astype(np.uint8))), name
    assert load_image(tmp_path / 'gray.png')[1].is_gray and not load_image(tmp_path / 'rgb.png')[1].is_gray


def test_16bit_int_and_float_modes(tmp_path):
    v = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / 'g16.png')
    img, info = load_image(tmp_path / 'g16.png')
    assert info.mode == 'I;16' and info.bit_depth == 16 and info.is_gray
    assert torch.equal(img, torch.from_numpy(v.astype(np.float32)).div(65535).expand(3, -1, -1))
    Image.fromarray(v.astype(np.int32)).save(tmp_path / 'i32.tif')
    img, info = load_image(tmp_path / 'i32.tif')
    assert info.mode == 'I' and info.bit_depth == 16 and torch.allclose(img[0], torch.from_numpy(v / 65535.).float())
    f = np.linspace(-0.5, 1.5, 120, dtype=np.float32).reshape(12, 10)
    Image.fromarray(f).save(tmp_path / 'f.tif')
    img, info = load_image(tmp_path / 'f.tif')
    assert info.mode == 'F' and img.min() == 0 and img.max() == 1
    assert torch.allclose(img[0], torch.from_numpy(np.clip(f, 0, 1)), atol=1e-5)


def test_exif_orientation_is_applied(tmp_path):
    rgb = smooth_uint8(8, 14)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(rgb).save(tmp_path / 'rot.png', exif=exif)
    img, _ = load_image(tmp_path / 'rot.png')
    assert img.shape == (3, 14, 8)
    assert torch.equal(img, as_tensor(np.rot90(rgb, k=-1)))


@pytest.mark.parametrize('problem', ['missing', 'empty', 'garbage', 'truncated', 'directory'])
def test_bad_files_raise_one_line_error_with_path(tmp_path, problem):
    path = tmp_path / f'{problem}.png'
    if problem == 'empty':
        path.write_bytes(b'')
    elif problem == 'garbage':
        path.write_bytes(os.urandom(300))
    elif problem == 'truncated':
        Image.fromarray(smooth_uint8(64, 64)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    elif problem == 'directory':
        path.mkdir()
    with pytest.raises(ImageError) as e:
        load_image(path)
    msg = str(e.value)
    assert str(path) in msg and '\n' not in msg
    assert isinstance(e.value, ValueError)


def read_png16(path):
    """Decode a filter-0 16-bit PNG written by save_image (PIL reads 16-bit colour as 8-bit)."""
    data = path.read_bytes()
    w, h, depth, ctype = struct.unpack('>IIBB', data[16:26])
    idat, pos = b'', 8
    while pos < len(data):
        n, tag = struct.unpack('>I4s', data[pos:pos + 8])
        if tag == b'IDAT':
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    c = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, -1)
    assert depth == 16 and not rows[:, 0].any()
    return rows[:, 1:].copy().view('>u2').reshape(h, w, c).astype(np.uint16)


def test_save_image_round_trips(tmp_path):
    img = as_tensor(smooth_uint8(9, 11))
    alpha = img[1:2].flip(-1)
    save_image(tmp_path / 'a.png', img, alpha=alpha)
    back, info = load_image(tmp_path / 'a.png')
    assert torch.equal(back, img) and info.mode == 'RGBA' and torch.equal(info.alpha, alpha)
    save_image(tmp_path / 'g.png', img[:1].expand(3, -1, -1), mode_hint='L')
    back, info = load_image(tmp_path / 'g.png')
    assert info.mode == 'L' and torch.equal(back, img[:1].expand(3, -1, -1))
    g16 = torch.rand(1, 9, 11, generator=torch.Generator().manual_seed(0))
    g16[0, 0, :3] = torch.tensor([0.5, 1.5, 2.5]) / 65535  # ties: exactly representable, must round to even
    save_image(tmp_path / 'g16.png', g16.expand(3, -1, -1), bit_depth=16, mode_hint='I;16')
    back, info = load_image(tmp_path / 'g16.png')
    assert info.mode == 'I;16' and torch.equal(back[0], (g16[0] * 65535).round() / 65535)
    rgb16 = torch.rand(3, 9, 11)
    save_image(tmp_path / 'c16.png', rgb16, bit_depth=16, alpha=alpha)
    raw = read_png16(tmp_path / 'c16.png')
    assert np.array_equal(raw[..., :3], (rgb16 * 65535).round().permute(1, 2, 0).numpy().astype(np.uint16))
    save_image(tmp_path / 'q.jpg', img, alpha=alpha)                  # alpha dropped: JPEG has none
    assert load_image(tmp_path / 'q.jpg')[0].shape == (3, 9, 11)
    save_image(tmp_path / 'clamp.png', img * 3 - 1)                   # out-of-range values are clamped
    assert set(np.unique(np.asarray(Image.open(tmp_path / 'clamp.png')))) <= set(range(256))


def test_save_image_errors_and_atomicity(tmp_path):
    img = torch.rand(3, 5, 5)
    for path, kwargs in [(tmp_path / 'x.xyz', {}), (tmp_path / 'no_dir' / 'x.png', {}),
                         (tmp_path / 'x.jpg', {'bit_depth': 16}), (tmp_path / 'x.png', {'bit_depth': 12})]:
        with pytest.raises(ImageError) as e:
            save_image(path, img, **kwargs)
        assert str(path) in str(e.value) and '\n' not in str(e.value)
    save_image(tmp_path / 'ok.png', img)
    assert sorted(os.listdir(tmp_path)) == ['ok.png']                # no temporary file left behind


# ----------------------------------------------------------------------------- registry and folders

def test_registry_names_and_errors(hr_folder):
    assert {'image-folder', 'paired-image-folders', 'sr-implicit-downsampled', 'sr-implicit-paired',
            'sr-implicit-uniform-varied', 'sr-integer-downsampled'} <= set(datasets.list_datasets())
    with pytest.raises(DatasetSpecError, match='registered datasets: .*image-folder'):
        datasets.make({'name': 'image-foldr'})
    with pytest.raises(DatasetSpecError, match="does not take argument\\(s\\) 'bogus'") as e:
        datasets.make({'name': 'image-folder', 'args': {'root_path': str(hr_folder), 'bogus': 1}})
    assert '\n' not in str(e.value)
    with pytest.raises(DatasetSpecError, match='root_path'):
        datasets.make({'name': 'image-folder', 'args': {}})


def test_image_folder_lists_images_only(hr_folder, tmp_path):
    ds = hr_dataset(hr_folder, repeat=3)
    assert [os.path.basename(f) for f in ds.files] == ['img0.png', 'img1.png', 'img2.png']
    assert len(ds) == 9 and torch.equal(ds[4], ds[1]) and ds[1].shape == (3, 230, 200)
    assert len(hr_dataset(hr_folder, first_k=2)) == 2
    split = tmp_path / 'split.json'
    split.write_text('{"train": ["img2.png", "img0.png"]}')
    ds = hr_dataset(hr_folder, split_file=str(split), split_key='train')
    assert torch.equal(ds[0], load_image(hr_folder / 'img2.png')[0])
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('x')
    with pytest.raises(DatasetError, match=str(empty)):
        hr_dataset(empty)
    with pytest.raises(DatasetError, match=str(tmp_path / 'absent')):
        hr_dataset(tmp_path / 'absent')
    with pytest.raises(DatasetError, match='cache'):
        hr_dataset(hr_folder, cache='disk')


def test_image_folder_corrupt_file_names_path(tmp_path):
    root = tmp_path / 'bad'
    root.mkdir()
    Image.fromarray(smooth_uint8(16, 16)).save(root / 'a.png')
    (root / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n' + os.urandom(64))
    ds = hr_dataset(root)
    assert ds[0].shape == (3, 16, 16)
    with pytest.raises(ImageError, match=str(root / 'b.png')):
        ds[1]
    with pytest.raises(ImageError, match=str(root / 'b.png')):
        hr_dataset(root, cache='in_memory')


def test_caches_round_trip(hr_folder, tmp_path):
    gray = smooth_uint8(20, 24)[..., 0]
    Image.fromarray(gray).save(hr_folder / 'img3_gray.png')
    plain = hr_dataset(hr_folder)
    binned = hr_dataset(hr_folder, cache='bin')
    memory = hr_dataset(hr_folder, cache='in_memory')
    bin_root = hr_folder.parent / '_bin_hr'
    assert sorted(os.listdir(bin_root)) == [f'img{i}.png.npy' for i in range(3)] + ['img3_gray.png.npy']
    for i in range(len(plain)):
        assert torch.equal(plain[i], binned[i]) and torch.equal(plain[i], memory[i])
    assert plain[3].shape == (3, 20, 24)
    stamp = os.path.getmtime(bin_root / 'img0.png.npy')
    again = hr_dataset(str(hr_folder) + '/', cache='bin')                # reuses the files (trailing slash ok)
    assert os.path.getmtime(bin_root / 'img0.png.npy') == stamp and torch.equal(again[0], plain[0])


def test_paired_folders(tmp_path, hr_folder):
    lr_root = tmp_path / 'lr'
    lr_root.mkdir()
    for i in range(3):
        arr = np.asarray(Image.open(hr_folder / f'img{i}.png'))
        h, w = arr.shape[0] // 2, arr.shape[1] // 2                      # LR of the HR cropped to even sizes
        Image.fromarray(arr[:2 * h:2, :2 * w:2]).save(lr_root / f'img{i}x2.png')
    ds = datasets.make({'name': 'paired-image-folders',
                        'args': {'root_path_1': str(lr_root), 'root_path_2': str(hr_folder), 'repeat': 2}})
    assert len(ds) == 6 and ds.pair_scales == [2, 2, 2]
    lr, hr = ds[4]
    assert torch.equal(lr, hr[:, :2 * lr.shape[1]:2, :2 * lr.shape[2]:2])
    (lr_root / 'img9x2.png').write_bytes((lr_root / 'img0x2.png').read_bytes())
    with pytest.raises(DatasetError, match='img9x2.png has no HR partner'):
        datasets.make({'name': 'paired-image-folders',
                       'args': {'root_path_1': str(lr_root), 'root_path_2': str(hr_folder)}})


# ----------------------------------------------------------------------------- implicit wrappers

def implicit(hr, name='sr-implicit-downsampled', **args):
    return datasets.make({'name': name, 'args': args}, args={'dataset': hr})


def test_downsampled_train_items_checklist(hr_folder):
    """The published shapes: inp (3,48,48), coord/cell (2304,2), gt (2304,3) for s in [1, 4]."""
    ds = implicit(hr_dataset(hr_folder, repeat=4), inp_size=48, scale_min=1, scale_max=4, augment=True,
                  sample_q=2304)
    for i in range(len(ds)):
        item = ds[i]
        assert item['inp'].shape == (3, 48, 48) and item['gt'].shape == (2304, 3)
        assert item['coord'].shape == (2304, 2) and item['cell'].shape == (2304, 2)
        side = round(2 / item['cell'][0, 0].item())                  # the HR crop size round(48 s)
        assert 48 <= side <= 192 and torch.all(item['cell'] == item['cell'][0])
        # every query is a pixel centre of the side x side crop
        k = ((item['coord'] + 1) * side / 2 - 0.5)
        assert torch.allclose(k, k.round(), atol=1e-3)
        assert len(set(map(tuple, k.round().long().tolist()))) == 2304  # without replacement


@pytest.mark.parametrize('scale', [1.0, 2.5, 3.7, 4.0])
def test_downsampled_lr_is_pil_bicubic_of_hr_crop(hr_folder, scale):
    ds = implicit(hr_dataset(hr_folder), inp_size=48, scale_min=scale, scale_max=scale)
    item = ds[1]
    side = round(48 * scale)
    assert item['gt'].shape == (side * side, 3)
    crop = (item['gt'].t().reshape(3, side, side) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    ref = np.asarray(Image.fromarray(crop).resize((48, 48), Image.BICUBIC))    # PIL directly, in uint8
    assert torch.equal(item['inp'], as_tensor(ref))
    assert torch.equal(item['coord'], make_coord((side, side)))


def test_downsampled_test_mode(hr_folder):
    ds = implicit(hr_dataset(hr_folder), scale_min=3.3)
    item = ds[0]                                                      # 200 x 210 image
    h, w = int(200 / 3.3 + 1e-9), int(210 / 3.3 + 1e-9)
    H, W = round(h * 3.3), round(w * 3.3)
    hr = hr_dataset(hr_folder)[0][:, :H, :W]
    assert item['inp'].shape == (3, h, w) and item['gt'].shape == (H * W, 3)
    assert torch.equal(item['inp'], pil_bicubic_resize(hr, (h, w)))
    assert torch.equal(item['gt'], hr.reshape(3, -1).t())
    assert torch.allclose(item['cell'][0], torch.tensor([2 / H, 2 / W]))


def test_randomness_is_a_function_of_seed_epoch_index(hr_folder):
    ds = implicit(hr_dataset(hr_folder, repeat=2), inp_size=16, scale_min=1, scale_max=4, augment=True,
                  sample_q=100, seed=7)
    ds.set_epoch(3)
    first = ds[2]
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    assert items_equal(first, ds[2])                                   # global RNG state is irrelevant
    other = implicit(hr_dataset(hr_folder, repeat=2), inp_size=16, scale_min=1, scale_max=4, augment=True,
                     sample_q=100, seed=7)
    other.set_epoch(3)
    assert items_equal(first, other[2])                                # a fresh dataset: same item
    ds.set_epoch(4)
    assert not items_equal(first, ds[2])
    ds.set_epoch(3)
    assert not items_equal(first, ds[5]) and items_equal(first, ds[2])
    other.seed = 8
    assert not items_equal(first, other[2])


def test_epoch_reaches_dataloader_workers(hr_folder):
    ds = implicit(hr_dataset(hr_folder), inp_size=16, scale_min=1, scale_max=4, augment=True, sample_q=64)
    expected = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        expected.append([ds[i] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        batch = next(iter(loader))
        for key in ('inp', 'coord', 'gt'):
            assert torch.equal(batch[key], torch.stack([it[key] for it in expected[epoch]]))


def test_paired_wrapper_crops_are_aligned(tmp_path, hr_folder):
    lr_root = tmp_path / 'lr'
    lr_root.mkdir()
    for i in range(3):  # LR = HR decimated by 2 (not a real downscale: it makes alignment checkable)
        hr = np.asarray(Image.open(hr_folder / f'img{i}.png'))
        Image.fromarray(hr[:hr.shape[0] // 2 * 2:2, :hr.shape[1] // 2 * 2:2]).save(lr_root / f'img{i}.png')
    pairs = datasets.make({'name': 'paired-image-folders',
                           'args': {'root_path_1': str(lr_root), 'root_path_2': str(hr_folder), 'repeat': 3}})
    ds = implicit(pairs, 'sr-implicit-paired', inp_size=24)
    for i in range(len(ds)):
        item = ds[i]
        hr = item['gt'].t().reshape(3, 48, 48)
        assert item['inp'].shape == (3, 24, 24) and torch.equal(item['inp'], hr[:, ::2, ::2])
    test = implicit(pairs, 'sr-implicit-paired')[1]                   # LR 115 x 100 of HR 230 x 200
    assert test['inp'].shape == (3, 115, 100) and test['gt'].shape == (230 * 200, 3)
    flipped = implicit(pairs, 'sr-implicit-paired', inp_size=24, augment=True, sample_q=300)[0]
    assert flipped['coord'].shape == (300, 2) and flipped['gt'].shape == (300, 3)


def test_uniform_varied_wrapper(tmp_path, hr_folder):
    pairs = datasets.make({'name': 'paired-image-folders',
                           'args': {'root_path_1': str(hr_folder), 'root_path_2': str(hr_folder)}})
    ds = implicit(pairs, 'sr-implicit-uniform-varied', size_min=32, size_max=64, augment=True, sample_q=500)
    sides = []
    for i in range(3):
        item = ds[i]
        assert item['coord'].shape == (500, 2) and item['gt'].shape == (500, 3)
        sides.append(round(2 / item['cell'][0].max().item()))        # the HR's shorter side
    assert sides == [32, 48, 64]


def test_oversized_crop_and_sample_q_errors(hr_folder):
    with pytest.raises(DatasetError, match='does not fit'):
        implicit(hr_dataset(hr_folder), inp_size=100, scale_min=3)[0]
    with pytest.raises(DatasetError, match='sample_q'):
        implicit(hr_dataset(hr_folder), inp_size=8, sample_q=100)[0]


def test_real_training_photo(data_dir):
    root = need(data_dir / 'train' / 'kodak24', 'kodak24 training photos')
    ds = implicit(hr_dataset(root, first_k=2), inp_size=48, scale_min=1, scale_max=4, augment=True, sample_q=2304)
    item = ds[1]
    assert item['inp'].shape == (3, 48, 48) and item['gt'].shape == (2304, 3)
    assert torch.equal(item['inp'], (item['inp'] * 255).round() / 255)


# ----------------------------------------------------------------------------- integer scales (IGConv)

def test_integer_wrapper_items(hr_folder):
    ds = implicit(hr_dataset(hr_folder), 'sr-integer-downsampled', inp_size=24, scales=[2, 3, 4], augment=True)
    for scale in (2, 3, 4):
        item = ds[(1, scale)]
        assert item['scale'] == scale and item['inp'].shape == (3, 24, 24)
        assert item['gt'].shape == (3, 24 * scale, 24 * scale)
        assert torch.equal(item['inp'], pil_bicubic_resize(item['gt'], (24, 24)))
    assert ds[0]['scale'] in (2, 3, 4) and items_equal(ds[(0, 3)], ds[(0, 3)])
    test = implicit(hr_dataset(hr_folder), 'sr-integer-downsampled', inp_size=None, scales=[3])[0]
    assert test['inp'].shape == (3, 66, 70) and test['gt'].shape == (3, 198, 210)
    with pytest.raises(DatasetError):
        implicit(hr_dataset(hr_folder), 'sr-integer-downsampled', scales=[2.5])


def test_scale_sampler_batches_frequencies_determinism():
    sampler = ScaleBatchSampler(3001, batch_size=4, scales=[2, 3, 4], seed=5)
    assert len(sampler) == 750
    counts, seen = Counter(), []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 750 and all(len(b) == 4 for b in batches)
        for b in batches:
            assert len({s for _, s in b}) == 1
            counts[b[0][1]] += 1
        idx = [i for b in batches for i, _ in b]
        assert len(set(idx)) == len(idx) == 3000
        seen.append(batches)
    for s in (2, 3, 4):
        assert abs(counts[s] - 1000) < 100, counts                  # 3000 batches, sigma ~ 26
    sampler.set_epoch(2)
    assert list(sampler) == seen[2]
    assert seen[0] != seen[1]
    assert list(ScaleBatchSampler(3001, 4, [2, 3, 4], seed=5)) == seen[0]
    ordered = list(ScaleBatchSampler(10, 3, [2], shuffle=False, drop_last=False))
    assert [[i for i, _ in b] for b in ordered] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_scale_sampler_ddp_shards_are_disjoint():
    shards = [ScaleBatchSampler(103, batch_size=5, scales=[2, 3, 4], seed=1, rank=r, world_size=4) for r in range(4)]
    for s in shards:
        s.set_epoch(7)
    indices = [[i for b in s for i, _ in b] for s in shards]
    assert all(len(s) == 5 for s in shards) and all(len(ix) == 25 for ix in indices)
    flat = [i for ix in indices for i in ix]
    assert len(set(flat)) == len(flat)
    assert set().union(*[set(s.shard()) for s in shards]) <= set(range(103))
    assert sum(len(s.shard()) for s in shards) == 100                 # truncated to a multiple of world_size
    scale_seqs = [[b[0][1] for b in s] for s in shards]
    assert len({tuple(q) for q in scale_seqs}) > 1                     # ranks draw scales independently
    with pytest.raises(DatasetError):
        ScaleBatchSampler(3, batch_size=4)


def test_scale_sampler_drives_a_dataloader(hr_folder):
    ds = implicit(hr_dataset(hr_folder, repeat=4), 'sr-integer-downsampled', inp_size=16, augment=True)
    sampler = ScaleBatchSampler(ds, batch_size=3, seed=2)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=0)
    for batch in loader:
        s = int(batch['scale'][0])
        assert torch.all(batch['scale'] == s) and batch['gt'].shape == (3, 3, 16 * s, 16 * s)


def test_make_batch_sampler_from_spec(hr_folder):
    ds = implicit(hr_dataset(hr_folder, repeat=5), 'sr-integer-downsampled', inp_size=16, scales=[2, 4])
    train = make_batch_sampler({'name': 'per-batch-random-scale'}, ds, 4, seed=3, rank=1, world=2)
    assert train.scales == [2, 4] and train.rank == 1 and train.world_size == 2 and len(train) == 1
    val = make_batch_sampler({'name': 'per-batch-random-scale', 'args': {'scales': [3]}}, ds, 4, shuffle=False)
    assert len(val) == 4 and [len(b) for b in val] == [4, 4, 4, 3] and val.scales == [3]
    with pytest.raises(DatasetSpecError, match='per-batch-random-scale'):
        make_batch_sampler({'name': 'random-scale'}, ds, 4)
    with pytest.raises(DatasetSpecError, match="'bogus'"):
        make_batch_sampler({'name': 'per-batch-random-scale', 'args': {'bogus': 1}}, ds, 4)
