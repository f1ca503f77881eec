"""The IGConv repository's commands, verbatim (engine/basicsr): ``python igconv/test.py -opt X.yml``,
``python igconv/train.py -opt X.yml`` and the distributed launch, on copies of the published option files
(../shared/published/igconv-options) edited as a user does: data and checkpoint paths (Set5, generated
images), output roots, ``num_gpu: 0``, and for speed the sizes (``network_g`` widths and depths, iterations,
batch, patch).

Checked: the BasicSR output layout (results/<name>/, experiments/<name>/models/net_g_<iter>.pth with params /
params_ema, training_states/), the metric lines, PSNR / SSIM equal to an independent NumPy implementation of
BasicSR's protocol (tensor2img uint8, to_y_channel with +16, crop = scale, cv2-style SSIM) to 1e-6, bit-exact
resume, refusals in one line with nothing written, and every published option file (skipped only when its
architecture is not registered yet).
"""
import copy
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import models
from engine.basicsr import cli
from models.zoo import PUBLISHED_ARCHS

from .conftest import DATA, ROOT, SHARED, need

OPTIONS = SHARED / 'published' / 'igconv-options'
SET5 = DATA / 'benchmark' / 'Set5'
OPTION_FILES = sorted(str(p.relative_to(OPTIONS)) for p in OPTIONS.glob('*/*/*.yaml')) if OPTIONS.is_dir() else []

#: network_g sizes a user shrinks for a quick run (only keys of the published files, plus the IGConv widths).
TINY = {
    'EDSRIG': dict(num_feat=8, num_block=1, implicit_dim=8, latent_layers=2),
    'EDSRIGPlus': dict(num_feat=8, num_block=1, implicit_dim=8, latent_layers=2),
    'RDNIGPlus': dict(G0=8, RDNconfig=[1, 1, 8], implicit_dim=8, latent_layers=2),
    'RCANIGPlus': dict(n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4, implicit_dim=8, latent_layers=2),
    'SwinIRMS': dict(embed_dim=8, depths=[1], num_heads=[1], window_size=8, img_size=16, implicit_dim=8,
                     latent_layers=2),
    'ATD': dict(embed_dim=12, depths=[1], num_heads=[2], window_size=8, img_size=16, category_size=32, num_tokens=8,
                reducted_dim=4, convffn_kernel_size=3),
    'HAT': dict(embed_dim=12, depths=[1], num_heads=[2], window_size=8, img_size=16, squeeze_factor=2),
    'HiT_SRF': dict(embed_dim=12, depths=[1], num_heads=[2]),
    'MambaIR': dict(embed_dim=30, depths=[1], d_state=4),          # channel attention squeezes by 30
    'PLKSRIGPlus': dict(dim=16, n_blocks=1, kernel_size=7, implicit_dim=8, latent_layers=2),
    'SMFANetIG': dict(dim=8, n_blocks=1),
    'SMFANetIGPlus': dict(dim=8, n_blocks=1),
    'SRFormer': dict(embed_dim=12, depths=[1], num_heads=[2], window_size=8, img_size=16),
}

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore::FutureWarning')


# ------------------------------------------------------------------------------------------------
# what a user edits
# ------------------------------------------------------------------------------------------------
def published(rel):
    return yaml.safe_load((need(OPTIONS, 'the published IGConv option files') / rel).read_text())


def shrink_network(opt):
    kind = opt['network_g']['type']
    if kind not in PUBLISHED_ARCHS:
        pytest.skip(f'architecture {kind} is not registered')
    opt['network_g'].update(TINY[kind])
    return opt


def set5_entry(entry):
    """A validation / test entry pointed at Set5 (HR, and the published LR files of its scale)."""
    entry['dataroot_gt'] = str(need(SET5, 'Set5') / 'HR')
    if 'dataroot_lq' in entry:
        entry['dataroot_lq'] = str(SET5 / 'LR_bicubic' / f'X{entry["ds_scale"]}')
    return entry


def tiny_checkpoint(opt, path):
    """Random weights of the option's (shrunk) network, in BasicSR's layout {'params', 'params_ema'}."""
    net = opt['network_g']
    torch.manual_seed(0)
    model = models.make({'name': net['type'], 'args': {k: v for k, v in net.items() if k != 'type'}})
    sd = model.state_dict()
    torch.save({'params': sd, 'params_ema': sd}, path)
    return path


def edit_test(opt, tmp, keep=2):
    """Test options: Set5 entries only (the first and last ``keep``), a tiny checkpoint, outputs in ``tmp``."""
    shrink_network(opt)
    entries = [(k, set5_entry(d)) for k, d in opt['datasets'].items() if str(d['name']).startswith('Set5')]
    entries = entries if len(entries) <= keep else [entries[0], entries[-1]]
    opt['datasets'] = dict(entries)
    opt['num_gpu'] = 0
    opt['path']['pretrain_network_g'] = str(tiny_checkpoint(opt, tmp / 'net_g.pth'))
    opt['path']['results_root'] = str(tmp / 'results')
    return opt


def make_images(folder, n=6, size=72):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        low = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(low).resize((size, size), Image.BICUBIC).save(folder / f'{i:04d}.png')
    return folder


def make_lmdb(images, target):
    """An lmdb folder as BasicSR's create_lmdb writes it (PNG bytes keyed by name, meta_info.txt)."""
    import lmdb
    env = lmdb.open(str(target), map_size=1 << 26)
    with env.begin(write=True) as txn, open(target / 'meta_info.txt', 'w') as meta:
        for path in sorted(images.iterdir()):
            im = Image.open(path).convert('RGB')
            buf = io.BytesIO()
            im.save(buf, 'PNG', compress_level=1)
            txn.put(path.stem.encode('ascii'), buf.getvalue())
            meta.write(f'{path.name} ({im.height},{im.width},3) 1\n')
    env.close()
    return target


def has_lmdb():
    import importlib.util
    return importlib.util.find_spec('lmdb') is not None


def edit_train(opt, tmp, total_iter=2, vals=1):
    """Train options: generated training images (lmdb when the file asks for it and lmdb is installed),
    validation sets on Set5 (the first ``vals``, or the keys listed), tiny sizes, 2 iterations, outputs in
    ``tmp``."""
    shrink_network(opt)
    train = opt['datasets']['train']
    images = make_images(tmp / 'hr')
    if train['io_backend']['type'] == 'lmdb' and has_lmdb():
        train['dataroot_gt'] = str(make_lmdb(images, tmp / 'hr.lmdb'))
    else:
        train['dataroot_gt'], train['io_backend'] = str(images), {'type': 'disk'}
    train.update(lq_size=8, batch_size_per_gpu=2, num_worker_per_gpu=0, dataset_enlarge_ratio=1)
    evals = [(k, set5_entry(d)) for k, d in opt['datasets'].items() if k != 'train']
    evals = evals[:vals] if isinstance(vals, int) else [(k, d) for k, d in evals if k in vals]
    opt['datasets'] = dict([('train', train)] + evals)
    opt['num_gpu'] = 0
    opt['train']['total_iter'] = total_iter
    opt['val']['val_freq'] = 2
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    opt['path']['experiments_root'] = str(tmp / 'experiments')
    if opt['path'].get('pretrain_network_g'):      # a fine-tuning stage: the user points at their stage-1 weights
        net = dict(opt['network_g'])
        stage1 = models.make({'name': net.pop('type'), 'args': net})
        key = opt['path'].get('param_key_g') or 'params'
        torch.save({key: stage1.state_dict()}, tmp / 'stage1.pth')
        opt['path']['pretrain_network_g'] = str(tmp / 'stage1.pth')
    return opt


def script(name):
    """The repository's ``train.py`` / ``test.py`` as modules (``import test`` would find the standard library's)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'{name}_script', ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(opt, path):
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def run_command(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------------------
# the two commands, verbatim
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tested(tmp_path_factory):
    """``python igconv/test.py -opt X.yml`` on EDSR_IGConvPlus_DIV2K.yaml (Set5 x2 and x4, tiny network)."""
    tmp = tmp_path_factory.mktemp('igconv_test')
    opt = edit_test(published('test/EDSR/EDSR_IGConvPlus_DIV2K.yaml'), tmp)
    option = write(opt, tmp / 'EDSR_IGConvPlus_DIV2K.yaml')
    proc = run_command('igconv/test.py', '-opt', option)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return opt, option, proc, Path(opt['path']['results_root']) / opt['name']


def test_test_command_verbatim(tested):
    opt, _, proc, folder = tested
    names = [d['name'] for d in opt['datasets'].values()]
    assert names == ['Set5X2', 'Set5X4']
    metrics = json.loads((folder / 'metrics.json').read_text())
    for name in names:                  # BasicSR's lines: 'Validation <set>' then one line per metric
        block = proc.stdout.split(f'Validation {name}\n', 1)[1].splitlines()[:2]
        assert block[0].startswith(f'\t # psnr: {metrics[name]["psnr"]:.4f}\tBest: ')
        assert block[1].startswith(f'\t # ssim: {metrics[name]["ssim"]:.4f}\tBest: ')
        assert sorted(p.name for p in (folder / 'visualization' / name).iterdir()) == \
            sorted(f'{stem}x{name[-1]}_{opt["name"]}.png' for stem in ('baby', 'bird', 'butterfly', 'head', 'woman'))
    logs = list(folder.glob(f'test_{opt["name"]}_*.log'))
    assert len(logs) == 1 and 'Validation Set5X4' in logs[0].read_text()


def basicsr_y(rgb_u8):
    """BasicSR's to_y_channel of a BGR uint8 image (here given as RGB): float64 on [0, 255]."""
    img = rgb_u8[..., ::-1].astype(np.float64) / 255.
    return (np.dot(img, [24.966, 128.553, 65.481]) + 16.0) / 255. * 255.


def basicsr_psnr(a, b, crop):
    a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    return 10. * np.log10(255. * 255. / np.mean((a - b) ** 2))


def basicsr_ssim(a, b, crop):
    """BasicSR's _ssim: cv2.filter2D with the 11 x 11 Gaussian (sigma 1.5), the valid part, mean of the map."""
    a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    g = np.exp(-(np.arange(11) - 5.) ** 2 / (2 * 1.5 ** 2))
    window = np.outer(g / g.sum(), g / g.sum())
    h, w = a.shape[0] - 10, a.shape[1] - 10

    def filt(x):
        out = np.zeros((h, w))
        for i in range(11):
            for j in range(11):
                out += window[i, j] * x[i:i + h, j:j + w]
        return out
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = filt(a), filt(b)
    s1, s2, s12 = filt(a * a) - mu1 ** 2, filt(b * b) - mu2 ** 2, filt(a * b) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))
    return ssim_map.mean()


def test_metrics_equal_independent_basicsr_computation(tested):
    """PSNR / SSIM of igconv/test.py == NumPy BasicSR protocol on an independently computed SR, to 1e-6."""
    opt, option, _, folder = tested
    model = models.load_model(opt['path']['pretrain_network_g'], options=option).eval()
    metrics = json.loads((folder / 'metrics.json').read_text())
    for entry in opt['datasets'].values():
        s, psnrs, ssims = entry['ds_scale'], [], []
        for stem in ('baby', 'bird', 'butterfly', 'head', 'woman'):
            lr = np.array(Image.open(SET5 / 'LR_bicubic' / f'X{s}' / f'{stem}x{s}.png').convert('RGB'))
            hr = np.array(Image.open(SET5 / 'HR' / f'{stem}.png').convert('RGB'))
            with torch.no_grad():
                out = model(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255, s)
            sr = np.round(out[0].clamp(0, 1).permute(1, 2, 0).numpy() * np.float32(255.)).astype(np.uint8)
            hr = hr[:lr.shape[0] * s, :lr.shape[1] * s]
            saved = np.array(Image.open(folder / 'visualization' / entry['name'] / f'{stem}x{s}_{opt["name"]}.png'))
            assert np.array_equal(saved, sr)
            psnrs.append(basicsr_psnr(basicsr_y(sr), basicsr_y(hr), s))
            ssims.append(basicsr_ssim(basicsr_y(sr), basicsr_y(hr), s))
        assert abs(metrics[entry['name']]['psnr'] - np.mean(psnrs)) < 1e-6
        assert abs(metrics[entry['name']]['ssim'] - np.mean(ssims)) < 1e-6


def test_root_scripts_dispatch_option_commands(tmp_path, capsys):
    """``python test.py -opt X.yml`` / ``python train.py -opt X.yml`` are the same commands (train.py runs in
    ``test_resume_is_bit_exact``); ``--opt KEY=VALUE`` stays the overrides of the code base's own configs."""
    assert script('test').main(['-opt', str(tmp_path / 'none.yml')]) == 1
    assert capsys.readouterr().err.startswith('test.py: error: option file not found')
    assert cli.is_option_command(['-opt', 'x.yml']) and cli.is_option_command(['-opt=x.yml'])
    assert not cli.is_option_command(['--config', 'c.yaml', '--opt', 'epoch_max=2'])


def test_train_command_verbatim(tmp_path):
    """``python igconv/train.py -opt X.yml`` on EDSRIGPlus_DIV2K.yaml: BasicSR's experiment layout."""
    opt = edit_train(published('train/EDSR/EDSRIGPlus_DIV2K.yaml'), tmp_path, vals=('val_1', 'val_4'))
    option = write(opt, tmp_path / 'EDSRIGPlus_DIV2K.yaml')
    proc = run_command('igconv/train.py', '-opt', option)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / 'experiments' / opt['name']
    weights = torch.load(folder / 'models' / 'net_g_2.pth', weights_only=True)
    assert set(weights) == {'params', 'params_ema'}                  # ema_decay 0.999
    assert (folder / 'models' / 'net_g_latest.pth').is_file()
    state = torch.load(folder / 'training_states' / '2.state', weights_only=True)
    assert {'epoch', 'iter', 'optimizers', 'schedulers'} <= set(state) and state['iter'] == 2
    assert (folder / option.name).read_text().startswith('# GENERATE TIME:')
    log = next(folder.glob(f'train_{opt["name"]}_*.log')).read_text()
    for entry in opt['datasets'].values():
        if entry is not opt['datasets']['train']:
            assert f'Validation {entry["name"]}\n\t # psnr: ' in log
    assert 'l_pix: ' in log and 'l_freq: ' in log
    assert (tmp_path / 'tb_logger' / opt['name']).is_dir()            # use_tb_logger, beside experiments/
    sr = models.load_model(folder / 'models' / 'net_g_2.pth', options=option)   # loads as a released model
    assert all(torch.equal(v, weights['params_ema'][k]) for k, v in sr.state_dict().items())


# ------------------------------------------------------------------------------------------------
# resume, refusals, distributed
# ------------------------------------------------------------------------------------------------
def _train(opt, path, *extra):
    return cli.main(['-opt', str(write(opt, path)), *extra], 'train', 'igconv/train.py')


def test_resume_is_bit_exact(tmp_path):
    """2 iterations, then resumed (``path.resume_state``, through ``python train.py -opt``) to 4, mid-epoch and
    across a warm-up end and an lr milestone == 4 iterations at once: identical weights, EMA and optimizer."""
    base = edit_train(published('train/EDSR/EDSRIGPlus_DIV2K.yaml'), tmp_path, total_iter=4)
    del base['val']
    base['train'].update(warmup_iter=3)
    base['train']['scheduler']['milestones'] = [3]
    ref = copy.deepcopy(base)
    ref['path']['experiments_root'] = str(tmp_path / 'ref')
    assert _train(ref, tmp_path / 'ref.yml') == 0
    half = copy.deepcopy(base)
    half['train']['total_iter'] = 2
    assert _train(half, tmp_path / 'half.yml') == 0
    folder = tmp_path / 'experiments' / base['name']
    base['path']['resume_state'] = str(folder / 'training_states' / '2.state')
    assert script('train').main(['-opt', str(write(base, tmp_path / 'resume.yml'))]) == 0
    a = torch.load(tmp_path / 'ref' / base['name'] / 'models' / 'net_g_4.pth', weights_only=True)
    b = torch.load(folder / 'models' / 'net_g_4.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    sa = torch.load(tmp_path / 'ref' / base['name'] / 'training_states' / '4.state', weights_only=True)
    sb = torch.load(folder / 'training_states' / '4.state', weights_only=True)
    # BasicSR's warm-up leaves the (chainable) MultiStepLR at lr x 2/3 after it; x 0.5 at the milestone
    assert sa['optimizers'][0]['param_groups'][0]['lr'] == sb['optimizers'][0]['param_groups'][0]['lr'] \
        == pytest.approx(1e-4 / 3 * 2 * 0.5, rel=1e-12)
    assert all(torch.equal(x, y) for i in sa['optimizers'][0]['state']
               for x, y in zip(sa['optimizers'][0]['state'][i].values(), sb['optimizers'][0]['state'][i].values()))


def test_auto_resume_takes_the_latest_state(tmp_path):
    from engine.basicsr.options import read_options
    from engine.basicsr.training import resume_path
    opt = edit_train(published('train/EDSR/EDSRIG_DIV2K.yaml'), tmp_path)
    opts = read_options(str(write(opt, tmp_path / 'o.yml')), 'train')
    states = Path(opts.folder) / 'training_states'
    assert resume_path(opts, auto=True) is None
    states.mkdir(parents=True)
    for it in (2, 10, 4):
        (states / f'{it}.state').touch()
    assert resume_path(opts, auto=True) == str(states / '10.state')


def test_lmdb_folders_read_as_the_image_folders(tmp_path):
    """BasicSR lmdb folders (the optional lmdb package) give the same items as the image folders they hold."""
    pytest.importorskip('lmdb', reason='the optional lmdb package is not installed')
    import datasets
    images = make_images(tmp_path / 'hr', n=3)
    lmdb_root = make_lmdb(images, tmp_path / 'hr.lmdb')
    lr = make_images(tmp_path / 'lr', n=3, size=36)
    lr_lmdb = make_lmdb(lr, tmp_path / 'lr.lmdb')

    def build(kind, **args):
        return datasets.make({'name': kind, 'args': args})
    for disk, lm in (
            (build('RandomScaleDownsampleImageDataset', dataroot_gt=str(images), io_backend={'type': 'disk'},
                   random_scales=[2, 3], lq_size=8, use_hflip=True, use_rot=True, seed=5),
             build('RandomScaleDownsampleImageDataset', dataroot_gt=str(lmdb_root), io_backend={'type': 'lmdb'},
                   random_scales=[2, 3], lq_size=8, use_hflip=True, use_rot=True, seed=5)),
            (build('FixedScaleDownsampleImageDataset', dataroot_gt=str(images), ds_scale=3,
                   io_backend={'type': 'disk'}),
             build('FixedScaleDownsampleImageDataset', dataroot_gt=str(lmdb_root), ds_scale=3,
                   io_backend={'type': 'lmdb'})),
            (build('FixedScalePairedImageDataset', dataroot_gt=str(images), dataroot_lq=str(lr), ds_scale=2,
                   io_backend={'type': 'disk'}),
             build('FixedScalePairedImageDataset', dataroot_gt=str(lmdb_root), dataroot_lq=str(lr_lmdb),
                   ds_scale=2, io_backend={'type': 'lmdb'}))):
        for index in ((4, 3), (1, 2)) if isinstance(disk, datasets.paired.RandomScaleDownsampleImageDataset) \
                else (0, 2):
            a, b = disk[index], lm[index]
            assert torch.equal(a['inp'], b['inp']) and torch.equal(a['gt'], b['gt'])


def test_cosine_annealing_restart_is_basicsrs():
    """``CosineAnnealingRestartLR`` (SMFANet options) against BasicSR's closed form, two periods with a restart."""
    from engine.components import SCHEDULERS
    from utils.config import ConfigError
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    args = {'periods': [4, 6], 'restart_weights': [1, 0.5], 'eta_min': 1e-6}
    sched = SCHEDULERS.build({'name': 'CosineAnnealingRestartLR', 'args': args}, {'optimizer': opt, 'epoch_max': 10})
    for t in range(10):
        cycle, start, period = (0, 0, 4) if t <= 4 else (1, 4, 6)
        expected = 1e-6 + [1, 0.5][cycle] * 0.5 * (1e-3 - 1e-6) * (1 + np.cos(np.pi * (t - start) / period))
        assert opt.param_groups[0]['lr'] == pytest.approx(expected, rel=1e-12)
        opt.step()
        sched.step()
    with pytest.raises(ConfigError, match='cover 10 steps but the run takes 11'):
        SCHEDULERS.build({'name': 'CosineAnnealingRestartLR', 'args': args}, {'optimizer': opt, 'epoch_max': 11})


def test_weights_load_as_basicsr_does(tmp_path):
    """param_key_g falls back to 'params'; strict_load_g false skips (and logs) what does not fit."""
    from engine.basicsr.network import load_weights
    from models.checkpoint import CheckpointError
    small = models.make({'name': 'EDSRIG', 'args': TINY['EDSRIG']})
    torch.save({'params': small.state_dict()}, tmp_path / 'net.pth')
    other = models.make({'name': 'EDSRIG', 'args': dict(TINY['EDSRIG'], implicit_dim=16)})
    lines = []
    assert load_weights(other, tmp_path / 'net.pth', 'params_ema', False, lambda m, **k: lines.append(m)) == 'params'
    assert 'params_ema does not exist, use params' in lines[0]
    assert any('size different, ignored' in line for line in lines[1:])
    assert torch.equal(other.conv_first.weight, small.conv_first.weight)
    with pytest.raises(CheckpointError, match='weights do not fit EDSRIG'):
        load_weights(other, tmp_path / 'net.pth', 'params', True, lambda m, **k: None)


def test_force_yml_and_debug(tmp_path):
    """BasicSR's --force_yml a:b=value (existing keys only) and --debug (debug_<name>, frequent logs)."""
    from engine.basicsr.options import OptionError, read_options
    path = str(write(edit_train(published('train/EDSR/EDSRIG_DIV2K.yaml'), tmp_path), tmp_path / 'o.yml'))
    opts = read_options(path, 'train', force=['train:ema_decay=0.99', 'logger:print_freq=7'])
    assert opts.train.ema_decay == 0.99 and opts.logger.print_freq == 7
    with pytest.raises(OptionError, match='train:ema_dcay is not in the option file'):
        read_options(path, 'train', force=['train:ema_dcay=0.99'])
    opts = read_options(path, 'train', debug=True)
    assert opts.name == 'debug_EDSRIG_DIV2K' and opts.val.freq == 8 and opts.logger.save_checkpoint_freq == 8
    assert opts.tb_folder is None and opts.folder.endswith('debug_EDSRIG_DIV2K')


REFUSED = [
    ('test', lambda o: o.update(foo=1), 'option foo is not supported'),
    ('test', lambda o: o.update(use_amp=True), 'option use_amp is not supported: mixed precision'),
    ('test', lambda o: o['datasets']['test_1'].update(color='y'), "does not take argument(s) 'color'"),
    ('test', lambda o: o['val']['metrics']['psnr'].update(type='calculate_niqe'), 'val.metrics.psnr.type'),
    ('test', lambda o: o['network_g'].update(type='NoSuchArch'), 'architecture NoSuchArch is not registered'),
    ('test', lambda o: o['path'].update(pretrain_network_g='/nonexistent/net_g.pth'), 'checkpoint not found'),
    ('test', lambda o: o['datasets']['test_1'].update(dataroot_lq='/nonexistent/X2'), '/nonexistent/X2'),
    ('train', lambda o: o['train'].update(perceptual_opt={'type': 'PerceptualLoss'}), 'train.perceptual_opt'),
    ('train', lambda o: o['train']['optim_g'].update(type='Lion'), "unknown optimizer 'Lion'"),
    ('train', lambda o: o['logger']['wandb'].update(project='p'), 'logger.wandb.project'),
]


@pytest.mark.parametrize('phase, edit, expected', REFUSED, ids=[r[2][:40] for r in REFUSED])
def test_unsupported_options_are_refused_in_one_line(tmp_path, capsys, phase, edit, expected):
    if phase == 'test':
        opt = edit_test(published('test/EDSR/EDSR_IGConv_DIV2K.yaml'), tmp_path, keep=1)
    else:
        opt = edit_train(published('train/EDSR/EDSRIG_DIV2K.yaml'), tmp_path)
    edit(opt)
    capsys.readouterr()
    assert cli.main(['-opt', str(write(opt, tmp_path / 'o.yml'))], phase, f'igconv/{phase}.py') == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'{phase}.py: error: ') and expected in err, err
    assert not (tmp_path / 'results').exists() and not (tmp_path / 'experiments').exists()


def test_missing_option_file_and_launcher_without_launch(tmp_path, capsys):
    assert cli.main(['-opt', str(tmp_path / 'none.yml')], 'test', 'igconv/test.py') == 1
    assert 'option file not found' in capsys.readouterr().err
    opt = edit_train(published('train/EDSR/EDSRIG_DIV2K.yaml'), tmp_path)
    assert _train(opt, tmp_path / 'o.yml', '--launcher', 'pytorch') == 1
    assert 'torch.distributed.launch' in capsys.readouterr().err
    assert not (tmp_path / 'experiments').exists()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize('launcher', ['torch.distributed.launch', 'torchrun'])
def test_distributed_launch_on_two_cpu_processes(tmp_path, launcher):
    """The README's launch line with 2 CPU processes (gloo): one scale per process and batch, rank 0 writes."""
    opt = edit_train(published('train/RDN/RDN_IGPlus_DIV2K.yaml'), tmp_path)
    option = write(opt, tmp_path / 'RDN_IGPlus_DIV2K.yaml')
    module = 'torch.distributed.launch' if launcher == 'torch.distributed.launch' else 'torch.distributed.run'
    proc = run_command('-m', module, '--nproc_per_node=2', f'--master_port={_free_port()}', 'igconv/train.py',
                       '-opt', option, '--launcher', 'pytorch', timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / 'experiments' / opt['name']
    assert set(torch.load(folder / 'models' / 'net_g_2.pth', weights_only=True)) == {'params'}   # no EMA
    log = next(folder.glob('train_*.log')).read_text()
    assert 'World size (gpu number): 2' in log and 'Validation Urban100X4' in log
    assert proc.stdout.count('Start training from epoch') == 1          # only rank 0 logs


# ------------------------------------------------------------------------------------------------
# every published option file
# ------------------------------------------------------------------------------------------------
def test_every_key_of_every_published_option_file_is_understood():
    """All published files, as released, pass the option checks (only data, weights and architectures are
    looked at when a run starts)."""
    from engine.basicsr.options import read_options
    assert len(OPTION_FILES) == 39
    for rel in OPTION_FILES:
        opts = read_options(str(OPTIONS / rel), rel.split('/')[0])
        assert opts.network['type'] == published(rel)['network_g']['type']
        assert opts.datasets and (opts.train_set is not None) == rel.startswith('train/')


#: option files the default suite runs (the whole sweep is slow: about 10-30 s a file on 2 cores)
DEFAULT_SWEEP = {'test/EDSR/EDSR_IGConvPlus_DIV2K.yaml', 'train/SMFANet/SMFANet_IGPlus_DF2K.yaml'}


@pytest.mark.parametrize('rel', [pytest.param(r, marks=() if r in DEFAULT_SWEEP else pytest.mark.slow)
                                 for r in OPTION_FILES])
def test_published_option_file(tmp_path, rel):
    """Test options run on Set5 (their first Set5 set) with a BasicSR-layout checkpoint; train options run 2
    iterations on a tiny set (sizes shrunk, paths edited). Skipped only when the architecture is not registered."""
    opt = published(rel)
    if rel.startswith('test/'):
        opt = edit_test(opt, tmp_path, keep=1)
        assert cli.main(['-opt', str(write(opt, tmp_path / 'o.yml'))], 'test', 'igconv/test.py') == 0
        metrics = json.loads((tmp_path / 'results' / opt['name'] / 'metrics.json').read_text())
        assert list(metrics) == [d['name'] for d in opt['datasets'].values()]
        assert all(np.isfinite(v) for m in metrics.values() for v in m.values()) and all(metrics.values())
    else:
        opt = edit_train(opt, tmp_path)
        assert _train(opt, tmp_path / 'o.yml') == 0
        folder = tmp_path / 'experiments' / opt['name']
        weights = torch.load(folder / 'models' / 'net_g_2.pth', weights_only=True)
        ema = float(opt['train'].get('ema_decay', 0)) > 0
        assert set(weights) == ({'params', 'params_ema'} if ema else {'params'})
        assert (folder / 'training_states' / '2.state').is_file()
        val = next(k for k in opt['datasets'] if k != 'train')
        assert f'Validation {opt["datasets"][val]["name"]}' in next(folder.glob('train_*.log')).read_text()
