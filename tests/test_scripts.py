"""test.py, demo.py and init_cmsr.py end to end (bicubic numbers, golden checkpoints, image modes, errors)."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

import demo
import init_cmsr
import models
import test as test_script
from engine.inference import Upscaler
from engine import cmsr
from models.checkpoint import load_model
from utils.image import load_image
from utils import metrics

from .conftest import DATA, ROOT, load_golden, need, run_test, set5_opts, smooth_uint8

CLASSIC_BICUBIC = {2: 33.66, 3: 30.39, 4: 28.42}


def golden_checkpoint(tmp_path, name):
    """A golden case's spec and weights saved in the published checkpoint format."""
    path = tmp_path / f'{name}.pth'
    torch.save({'model': load_golden(name)['model'], 'epoch': 1}, path)
    return path


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_bicubic_baseline_on_set5(tmp_path, capsys, scale):
    summary, results, out = run_test(tmp_path, capsys, '--config', str(ROOT / f'configs/test/set5-x{scale}.yaml'),
                                     '--model', 'bicubic', *set5_opts(scale))
    assert abs(summary['psnr'] - CLASSIC_BICUBIC[scale]) <= 0.05
    assert summary['protocol'] == 'test-original' and 'protocol test-original' in out
    rows = list(csv.DictReader(open(results / 'per_image.csv')))
    assert [r['name'] for r in rows] == ['baby', 'bird', 'butterfly', 'head', 'woman']
    assert abs(np.mean([float(r['psnr']) for r in rows]) - summary['psnr']) < 1e-9


def read_rgb(path):
    """An 8-bit RGB file as float32 (1, 3, H, W) in [0, 1] (k / 255), read with PIL."""
    arr = np.asarray(Image.open(path).convert('RGB'), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


@pytest.mark.parametrize('name', ['lmliif_edsr', 'liif_edsr'])
def test_golden_checkpoints_run_end_to_end(tmp_path, capsys, name):
    """test.py's per-image rows and saved images equal an independent run: the same checkpoint loaded with
    ``load_model``, each Set5 x4 LR file upscaled by the engine to its HR size and scored with utils.metrics
    (Y, border 4, the published ``calc_psnr``)."""
    ckpt = golden_checkpoint(tmp_path, name)
    save_dir = tmp_path / 'sr'
    summary, results, _ = run_test(tmp_path, capsys, '--config', str(ROOT / 'configs/test/set5-x4.yaml'),
                                   '--model', str(ckpt), '--save-dir', str(save_dir), *set5_opts(4))
    rows = list(csv.DictReader(open(results / 'per_image.csv')))
    names = ['baby', 'bird', 'butterfly', 'head', 'woman']
    assert [r['name'] for r in rows] == names
    assert sorted(p.name for p in save_dir.iterdir()) == [f'{n}.png' for n in names]     # named after the HR files
    base = DATA / 'benchmark' / 'Set5'
    upscale = Upscaler(load_model(str(ckpt)))
    for i, (row, stem) in enumerate(zip(rows, names), 1):
        lr = read_rgb(base / 'LR_bicubic' / 'X4' / f'{stem}x4.png')
        h, w = lr.shape[-2:]
        hr = read_rgb(base / 'HR' / f'{stem}.png')[..., :4 * h, :4 * w]
        assert (row['lr_size'], row['hr_size']) == (f'{w}x{h}', f'{4 * w}x{4 * h}')      # WIDTHxHEIGHT
        with torch.no_grad():
            sr = upscale(lr, (4 * h, 4 * w))
        assert abs(float(row['psnr']) - float(metrics.psnr(sr, hr, dataset='benchmark', scale=4)[0])) <= 1e-3, row
        assert abs(float(row['ssim']) - float(metrics.ssim(sr, hr, crop_border=4)[0])) <= 1e-6, row
        saved = np.asarray(Image.open(save_dir / f'{stem}.png'))
        expected = np.round(np.clip(sr[0].permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)
        assert saved.shape == (4 * h, 4 * w, 3) and np.array_equal(saved, expected), stem
    assert abs(summary['psnr'] - np.mean([float(r['psnr']) for r in rows])) < 1e-9


def test_lmf_protocol_and_cmsr_at_x8(tmp_path, capsys):
    ckpt = golden_checkpoint(tmp_path, 'lmliif_edsr')
    table = {8: load_golden('cmsr_lmliif_edsr')['render_table'][8]}
    table_path = tmp_path / 't.yaml'
    cmsr.save_tables(table_path, table)
    base = need(DATA / 'benchmark' / 'Set5', 'Set5')
    opts = ['--opt', f'test_dataset.dataset.args.root_path={base}/HR']
    plain, _, _ = run_test(tmp_path, capsys, '--config', str(ROOT / 'configs/test-lmf/set5-x8.yaml'),
                           '--model', str(ckpt), *opts)
    with_cmsr, _, out = run_test(tmp_path, capsys, '--config', str(ROOT / 'configs/test-lmf/set5-x8.yaml'),
                                 '--model', str(ckpt), '--cmsr', str(table_path), *opts)
    assert plain['protocol'] == 'test-lmf'
    assert 0 < with_cmsr['cmsr_rendered_fraction'] < 1 and 'CMSR rendered fraction' in out
    assert 0 < with_cmsr['cmsr_render_share'] < 1 and with_cmsr['cmsr_gmacs_saved'] > 0 and 'GMACs saved' in out
    assert abs(with_cmsr['psnr'] - plain['psnr']) < 1.0


def test_test_py_errors(tmp_path, capsys):
    assert test_script.main(['--config', str(tmp_path / 'none.yaml'), '--model', 'bicubic']) == 1
    assert 'config not found' in capsys.readouterr().err
    assert test_script.main(['--config', str(ROOT / 'configs/test/set5-x2.yaml'), '--model', 'bicubic', '--opt',
                             f'test_dataset.dataset.args.root_path_1={tmp_path}/missing']) == 1
    assert 'not found' in capsys.readouterr().err


def test_tiled_equals_untiled_for_edsr_lmliif_x4():
    torch.manual_seed(0)
    spec = {'name': 'lmliif', 'args': load_golden('lmliif_edsr')['model']['args']}
    spec['args'] = dict(spec['args'], encoder_spec={'name': 'edsr-baseline', 'args': {'no_upsampling': True}})
    model = models.make(spec).eval()                              # full EDSR-baseline, random weights
    img = torch.rand(1, 3, 70, 53)
    full = Upscaler(model)(img, (280, 212))
    tiled = Upscaler(model, tile=24)(img, (280, 212))             # overlap: receptive radius + reach = 37
    assert (full - tiled).abs().max() <= 1e-5


# ----------------------------------------------------------------------------------------- demo.py
@pytest.fixture(scope='module')
def demo_model(tmp_path_factory):
    path = tmp_path_factory.mktemp('m') / 'lmliif.pth'
    torch.save({'model': load_golden('lmliif_edsr')['model']}, path)
    return path


def rgb_image(path, size=(20, 16), mode='RGB'):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    img = Image.fromarray(arr, 'RGBA')
    if mode != 'RGBA':
        img = img.convert('RGB').convert(mode)
    img.save(path)
    return path


def run_demo(*argv):
    return demo.main([*argv, '--quiet'])


@pytest.mark.parametrize('target,size', [(['--scale', '2.5'], (50, 40)), (['--scale', '3,2'], (40, 48)),
                                         (['--size', '37x51'], (37, 51)), (['--scale', '1.1'], (22, 17))])
def test_demo_output_sizes(tmp_path, demo_model, target, size):
    src = rgb_image(tmp_path / 'in.png')
    out = tmp_path / 'out.png'
    assert run_demo('--input', str(src), '--output', str(out), '--model', str(demo_model), *target) == 0
    assert Image.open(out).size == size          # (width, height)


@pytest.mark.parametrize('mode,expect', [('L', 'L'), ('RGBA', 'RGBA'), ('P', 'RGB'), ('I;16', 'I;16')])
def test_demo_image_modes(tmp_path, demo_model, mode, expect):
    src = tmp_path / 'in.png'
    if mode == 'I;16':
        arr = (np.arange(20 * 16, dtype=np.uint16).reshape(16, 20) * 200)
        Image.fromarray(arr).save(src)          # uint16 -> mode I;16
    else:
        rgb_image(src, mode=mode)
    out = tmp_path / 'out.png'
    assert run_demo('--input', str(src), '--output', str(out), '--model', str(demo_model), '--scale', '2') == 0
    img = Image.open(out)
    assert img.size == (40, 32)
    assert img.mode in ({expect} | ({'I', 'I;16'} if expect == 'I;16' else set()))
    _, info = load_image(out)
    if mode == 'I;16':
        assert info.bit_depth == 16
    if mode == 'RGBA':
        a_in = np.asarray(Image.open(src))[..., 3].astype(float).mean()
        a_out = np.asarray(img)[..., 3].astype(float).mean()
        assert abs(a_in - a_out) < 8               # alpha was upscaled, not dropped


def test_demo_respects_exif_orientation(tmp_path, demo_model):
    src = tmp_path / 'rot.jpg'
    img = Image.fromarray(np.zeros((10, 30, 3), np.uint8))     # 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6                                             # rotate 90 degrees on display
    img.save(src, exif=exif)
    out = tmp_path / 'out.png'
    assert run_demo('--input', str(src), '--output', str(out), '--model', str(demo_model), '--scale', '2') == 0
    assert Image.open(out).size == (20, 60)


def test_bicubic_demo_matches_engine(tmp_path):
    src = rgb_image(tmp_path / 'in.png')
    out = tmp_path / 'out.png'
    assert run_demo('--input', str(src), '--output', str(out), '--model', 'bicubic', '--scale', '3') == 0
    expect = Upscaler(models.make({'name': 'bicubic'}))(load_image(src)[0][None], (48, 60))
    got = load_image(out)[0]
    assert (got - expect[0]).abs().max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize('setup,argv,message', [
    ('none', ['--scale', '2'], 'file not found'),
    ('empty', ['--scale', '2'], 'empty'),
    ('corrupt', ['--scale', '2'], 'in.png'),
    ('ok', ['--scale', '0'], 'must be finite and positive'),
    ('ok', ['--scale', '-3'], 'must be finite and positive'),
    ('ok', ['--scale', 'nan'], 'must be finite and positive'),
    ('ok', ['--size', '10x10'], 'not larger than the input'),
    ('ok', ['--scale', '2', '--model', '/nonexistent/model.pth'], 'model file not found'),
    ('ok', ['--scale', '2', '--output-dir-missing'], 'does not exist'),
])
def test_demo_bad_inputs(tmp_path, demo_model, capsys, setup, argv, message):
    src = tmp_path / 'in.png'
    if setup == 'ok':
        rgb_image(src)
    elif setup == 'empty':
        src.write_bytes(b'')
    elif setup == 'corrupt':
        rgb_image(src)
        src.write_bytes(src.read_bytes()[:60])
    out = tmp_path / 'out.png'
    if '--output-dir-missing' in argv:
        argv = [a for a in argv if a != '--output-dir-missing']
        out = tmp_path / 'missing' / 'out.png'
    if '--model' not in argv:
        argv = [*argv, '--model', str(demo_model)]
    assert run_demo('--input', str(src), '--output', str(out), *argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and err.count('\n') == 0
    assert not out.exists() and not list(tmp_path.glob('.out.png*'))


def test_demo_unwritable_output(tmp_path, demo_model, capsys):
    src = rgb_image(tmp_path / 'in.png')
    locked = tmp_path / 'locked'
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if (locked / 'probe').exists() or __import__('os').access(locked, __import__('os').W_OK):
            pytest.skip('running as a user who can write anywhere (root)')
        assert run_demo('--input', str(src), '--output', str(locked / 'o.png'), '--model', str(demo_model),
                        '--scale', '2') == 1
        assert 'not writable' in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_demo_integer_only_models_refuse_fractional_scales(tmp_path, capsys):
    src = rgb_image(tmp_path / 'in.png')
    model = models.make({'name': 'igconv-edsr-baseline', 'args': {'encoder_args': {'n_resblocks': 1}}})
    path = tmp_path / 'ig.pth'
    torch.save({'model': dict(model.spec, sd=model.state_dict())}, path)
    out = tmp_path / 'o.png'
    assert run_demo('--input', str(src), '--output', str(out), '--model', str(path), '--scale', '2.5') == 1
    assert 'integer scales only' in capsys.readouterr().err and not out.exists()
    assert run_demo('--input', str(src), '--output', str(out), '--model', str(path), '--scale', '3') == 0
    assert Image.open(out).size == (60, 48)


# ------------------------------------------------------------------------------------------ init_cmsr.py
def published_table_reader(path, scale):
    """What the published LMF code does with a table file: ``yaml.load(FullLoader)``; ``init_cmsr.py`` sorts
    the targets (``sorted(s2m_tables)``); the CMSR render walks the targets until one is >= the scale, then
    that table's decode scales below it (``models/lmliif.py``, ``query_rgb_cmsr``). Any key that is not a
    number makes these comparisons raise. Returns the (decode scales, thresholds) the render would use."""
    import yaml
    with open(path) as f:
        s2m_tables = yaml.load(f, Loader=yaml.FullLoader)
    s2m_tables = {k: s2m_tables[k] for k in sorted(s2m_tables)}
    for k, v in s2m_tables.items():
        scale2mean = s2m_tables[k]
        if k >= scale:
            break
    decode_scales, thresholds = [], [0]
    for s, t in scale2mean.items():
        if s >= scale:
            break
        decode_scales.append(s)
        thresholds.append(t)
    return decode_scales, thresholds


def test_init_cmsr_builds_several_scales_and_keeps_existing_tables(tmp_path, demo_model):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((72, 60), Image.BICUBIC) \
            .save(folder / f'{i}.png')
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text(f'dataset: {{name: image-folder, args: {{root_path: {folder}}}}}\n')
    out = tmp_path / 'tables.yaml'
    cmsr.save_tables(out, {2: {1: 0.3, 2: 1}})
    assert init_cmsr.main(['--model', str(demo_model), '--config', str(cfg), '--scales', '6,18',
                           '--mse-threshold', '2e-3', '--save-path', str(out), '--quiet']) == 0
    tables = cmsr.load_tables(out)
    assert list(tables) == [2, 6, 18] and 18 in tables[18] and tables[2] == {1: 0.3, 2: 1}
    # the model kind is a first-line comment: the published parser reads the same tables
    assert out.read_text().startswith('# model: lmliif\n')
    for S in (2, 6, 18, 12):
        target = next((t for t in tables if t >= S), list(tables)[-1])
        below = [s for s in tables[target] if s < S]
        assert published_table_reader(out, S) == (below, [0] + [tables[target][s] for s in below])
    # the same as the library on the same LR inputs
    model = models.load_model(demo_model)
    import datasets
    from engine.inference import normalise
    for S in (6, 18):
        table = cmsr.initial_table(S)
        data = datasets.make({'name': 'sr-implicit-downsampled', 'args': {'scale_min': S}},
                             args={'dataset': datasets.make({'name': 'image-folder', 'args': {'root_path': str(folder)}})})
        for i in range(len(data)):
            cmsr.update_table(model, normalise(data[i]['inp'][None]), table, 2e-3, S, cell_clip=max(S / 4, 1))
        assert tables[S] == table


def test_init_cmsr_refuses_non_lm_models(tmp_path, capsys):
    ckpt = golden_checkpoint(tmp_path, 'liif_edsr')
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text(f'dataset: {{name: image-folder, args: {{root_path: {tmp_path}}}}}\n')
    assert init_cmsr.main(['--model', str(ckpt), '--config', str(cfg), '--save-path', str(tmp_path / 't.yaml')]) == 1
    assert 'CMSR tables are for LM models' in capsys.readouterr().err


def test_every_test_config_is_consistent_with_its_name():
    """configs/test*/<set>-x<S>.yaml: scale, scoring, protocol and LR source agree with the file name."""
    import re

    from engine.evaluation import parse_eval_type
    from utils.config import load_config
    paths = [p for p in sorted((ROOT / 'configs').glob('test*/*.yaml'))
             if not p.stem.startswith('test-')    # the published LMF names: tests/test_published_cli.py
             and p.parent.name != 'test-fast'     # grid-model variants of configs/test: tests/test_lmf_models.py
             and p.parent.name != 'test-igconv']  # BasicSR protocol: tests/test_basicsr_protocol.py
    assert len(paths) == 2 * (5 * 6 + 8)  # 5 benchmarks x {2,3,4,6,8,12} + DIV2K x {2,3,4,6,12,18,24,30}
    for path in paths:
        name, scale = re.fullmatch(r'([a-z0-9]+)-x(\d+)', path.stem).groups()
        cfg = load_config(path)
        kind, s = parse_eval_type(cfg['eval_type'])
        assert (kind, s) == ('div2k' if name == 'div2k' else 'benchmark', int(scale)), path
        assert cfg['protocol'] == {'test': 'test-original', 'test-lmf': 'test-lmf'}[path.parent.name], path
        ds, wrapper = cfg['test_dataset']['dataset'], cfg['test_dataset']['wrapper']
        if ds['name'] == 'paired-image-folders':  # published LR files: test-original at x2-x4 only
            assert path.parent.name == 'test' and int(scale) <= 4, path
            assert ds['args']['root_path_1'].endswith(f'X{scale}') and wrapper['name'] == 'sr-implicit-paired'
        else:
            assert wrapper['args']['scale_min'] == wrapper['args']['scale_max'] == int(scale), path
        assert cfg['test_dataset']['batch_size'] == 1


def test_cmsr_eval_table(tmp_path, capsys):
    from scripts import cmsr_eval
    hr = tmp_path / 'data' / 'Tiny' / 'HR'
    hr.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(smooth_uint8(96, 80, seed=i)).save(hr / f"{i}.png")
    ckpt = golden_checkpoint(tmp_path, 'lmliif_edsr')
    table_path = tmp_path / 't.yaml'
    cmsr.save_tables(table_path, {8: {8: 1}})     # everything at the target: PSNR unchanged, share 1
    assert cmsr_eval.main(['--model', str(ckpt), '--cmsr', str(table_path), '--root', str(tmp_path / 'data'),
                           '--sets', 'Tiny', '--scales', '8', '--repeats', '1', '--no-progress']) == 0
    rows = [r.split('|')[1:-1] for r in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert [[c.strip() for c in row[:3]] for row in rows] == [['Tiny', 'x8', 'exact'], ['Tiny', 'x8', 'published']]
    exact, published = rows
    assert exact[3] == exact[4] and float(exact[5]) == 1.0 and float(exact[6]) == 1.0
    assert exact[9].strip() == '0 / 0'            # exact grids at the target scale: the plain rendering itself
    border, interior = (float(v) for v in published[9].split('/'))
    assert border > interior                      # the published grid's flat border blocks
