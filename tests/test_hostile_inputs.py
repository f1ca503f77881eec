"""Hostile and careless inputs to every script (issue 17): each is refused before any work starts.

Every refusal must: exit with status 1, print exactly one line ``<script>: error: ...`` on stderr that
names the problem, print no traceback, and leave the files it was given (and their folders) exactly as
they were: no new, changed or removed file. The cases are grouped by the issue's causes (1-11) and
its "smaller" list. Everything runs in-process on tiny models and images built in temporary folders,
except the "Python without torch" cases (a subprocess whose import of torch fails).
"""
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import demo
import init_cmsr
import models
import test as test_script
import train as train_script
from engine import memory
from scripts import benchmark, export_model, prepare_data
from utils import validate
from utils.config import ConfigError, apply_overrides
from utils.image import _png16, load_array

from .conftest import TINY_LMLIIF, make_images, write_config

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / 'save' / 'pretrained_models' / 'edsr-b_lm-liif.pth'


# ------------------------------------------------------------------------------------------------
# fixtures: a tiny LM-LIIF checkpoint, images, a paired test set and its config
# ------------------------------------------------------------------------------------------------
def tiny_spec():
    import yaml
    return yaml.safe_load(TINY_LMLIIF)['model']


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Everything the cases read, in one folder (its files are snapshotted around every case)."""
    root = tmp_path_factory.mktemp('hostile')
    torch.manual_seed(0)
    spec = tiny_spec()
    model = models.make(spec)
    good = root / 'tiny.pth'
    torch.save({'model': {'name': spec['name'], 'args': spec['args'], 'sd': model.state_dict()}, 'epoch': 1}, good)
    rng = np.random.default_rng(0)
    img = root / 'in.png'
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(img)
    # paired benchmark layout: HR/<name>.png, LR_bicubic/X2/<name>x2.png, X4/<name>x4.png
    for name in ('apple', 'pear', 'plum'):
        hr = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
        (root / 'HR').mkdir(exist_ok=True)
        hr.save(root / 'HR' / f'{name}.png')
        for s in (2, 4):
            (root / f'X{s}').mkdir(exist_ok=True)
            hr.resize((24 // s, 24 // s), Image.BICUBIC).save(root / f'X{s}' / f'{name}x{s}.png')
    cfg = root / 'set-x2.yaml'
    cfg.write_text(paired_config(root / 'X2', root / 'HR', 'benchmark-2'))
    hr_cfg = root / 'hr.yaml'
    hr_cfg.write_text(f'dataset: {{name: image-folder, args: {{root_path: {root / "HR"}}}}}\n')
    make_images(root / 'train_images', n=4, size=48)
    train_cfg = write_config(root / 'train.yaml', root / 'train_images', epoch_max=1)
    return {'root': root, 'good': good, 'img': img, 'cfg': cfg, 'hr_cfg': hr_cfg, 'train_cfg': train_cfg,
            'spec': spec, 'sd': model.state_dict()}


def paired_config(lr, hr, eval_type, batch_size=1, extra=''):
    return textwrap.dedent(f"""\
        test_dataset:
          dataset: {{name: paired-image-folders, args: {{root_path_1: {lr}, root_path_2: {hr}}}}}
          wrapper: {{name: sr-implicit-paired, args: {{}}}}
          batch_size: {batch_size}
        eval_type: {eval_type}
        """) + extra


def checkpoint(world, name, sd=None, args=None, model_name=None, **extra):
    """A variant of the tiny checkpoint written next to the world's files."""
    spec = {'name': model_name if model_name is not None else world['spec']['name'],
            'args': args if args is not None else world['spec']['args'],
            'sd': sd if sd is not None else world['sd']}
    path = world['root'] / name
    torch.save({'model': spec, 'epoch': 1, **extra}, path)
    return path


def snapshot(*folders):
    state = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            state[dirpath] = 'dir'
            for f in filenames:
                p = os.path.join(dirpath, f)
                if os.path.islink(p):
                    state[p] = 'link'
                    continue
                st = os.stat(p)
                with open(p, 'rb') as fh:
                    state[p] = (st.st_mode, hashlib.sha1(fh.read()).hexdigest())
    return state


def refused(capsys, main, argv, *words, watch=(), script=None):
    """Run ``main(argv)``; assert exit 1, one error line naming ``words``, no traceback, nothing changed."""
    capsys.readouterr()
    before = snapshot(*watch)
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    err = out.err.strip()
    assert code == 1, f'exit {code}; stderr: {err!r}'
    assert 'Traceback' not in out.err and 'Traceback' not in out.out, err
    lines = err.splitlines()
    assert len(lines) == 1, f'expected one line, got: {err!r}'
    if script:
        assert lines[0].startswith(f'{script}: error: '), lines[0]
    for w in words:
        assert w.lower() in lines[0].lower(), f'{w!r} not in {lines[0]!r}'
    assert snapshot(*watch) == before, 'files were created, changed or removed'
    return lines[0]


# ------------------------------------------------------------------------------------------------
# demo.py
# ------------------------------------------------------------------------------------------------
def run_demo(world, capsys, extra, *words, out=None, watch_more=()):
    out = out or world['root'] / 'out.png'
    argv = ['--input', world['img'], '--output', out, '--model', world['good'], '--device', 'cpu', '--quiet', *extra]
    return refused(capsys, demo.main, argv, *words, watch=(world['root'], *watch_more), script='demo.py')


@pytest.mark.parametrize('extra,words', [
    (['--scale', '2', '--tile-overlap', '-3'], ['--tile-overlap', '>= 0']),          # cause 3
    (['--scale', '2', '--tile', '8', '--tile-overlap', '-10'], ['--tile-overlap']),   # cause 3
    (['--scale', '2', '--tile', '-4'], ['--tile']),
    (['--scale', '2', '--window', '-3'], ['--window']),                               # cause 10
    (['--scale', '2', '--window', '1000'], ['--window', '64']),                       # cause 10
    (['--scale', '2', '--bsize', '-1'], ['--bsize']),                                 # smaller
    (['--scale', '2', '--bsize', '0'], ['--bsize']),
    (['--scale', '1e6'], ['--scale', 'not supported']),                               # cause 4
    (['--size', '100000x100000'], ['100000x100000', 'GiB', '--size']),                # cause 4
    (['--scale', '1'], ['--scale 1', 'factor']),                                      # smaller: --scale 1
    (['--scale', '1,1'], ['--scale']),
    (['--scale', '0.5'], ['--scale', '>= 1']),
    (['--scale', 'nan'], ['--scale']),
    (['--scale', '-2'], ['--scale']),
    (['--scale', 'abc'], ['--scale']),
    (['--size', '10x20'], ['--size', 'not larger']),
    (['--size', '0x40'], ['--size']),
    (['--size', '40'], ['--size', 'WIDTHxHEIGHT']),
])
def test_demo_refuses_bad_numbers(world, capsys, extra, words):
    run_demo(world, capsys, extra, *words)


def test_demo_output_equal_to_input_is_refused(world, capsys):             # cause 5
    before = world['img'].read_bytes()
    run_demo(world, capsys, ['--scale', '2'], '--output', 'input', out=world['img'])
    assert world['img'].read_bytes() == before


def test_demo_output_reaching_the_input_through_a_link_is_refused(world, capsys, tmp_path):   # cause 5
    link = tmp_path / 'alias.png'
    link.symlink_to(world['img'])
    run_demo(world, capsys, ['--scale', '2'], 'input', out=link, watch_more=(tmp_path,))


def test_demo_output_over_the_model_is_refused(world, capsys):
    run_demo(world, capsys, ['--scale', '2'], 'input', out=world['good'])


@pytest.mark.parametrize('make_out,words', [
    (lambda r: r / 'missing' / 'o.png', ['does not exist']),
    (lambda r: r / 'HR', ['directory']),
    (lambda r: r / 'in.png' / 'o.png', ['file, not a folder']),
    (lambda r: r / 'o.xyz', ['extension']),
])
def test_demo_bad_output_paths(world, capsys, make_out, words):
    run_demo(world, capsys, ['--scale', '2'], '--output', *words, out=make_out(world['root']))


def test_demo_unwritable_output_folder(world, capsys, tmp_path):
    if os.geteuid() == 0:
        pytest.skip('running as root: every folder is writable')
    folder = tmp_path / 'ro'
    folder.mkdir()
    folder.chmod(0o500)
    try:
        run_demo(world, capsys, ['--scale', '2'], 'not writable', out=folder / 'o.png', watch_more=(tmp_path,))
    finally:
        folder.chmod(0o700)


def test_demo_refuses_a_checkpoint_with_non_finite_weights(world, capsys):      # causes 1 and 11
    sd = {k: v.clone() for k, v in world['sd'].items()}
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    sd[key].view(-1)[1] = float('nan')
    bad = checkpoint(world, 'nan.pth', sd=sd)
    refused(capsys, demo.main, ['--input', world['img'], '--output', world['root'] / 'o.png', '--model', bad,
                                '--scale', '2', '--quiet', '--device', 'cpu'],
            key, 'non-finite', watch=(world['root'],), script='demo.py')


def exploding_checkpoint(world):
    """Huge but finite weights: every prediction overflows to NaN/inf (a diverged run, cause 1)."""
    sd = {k: (v * 1e30 if v.is_floating_point() else v) for k, v in world['sd'].items()}
    return checkpoint(world, 'huge.pth', sd=sd)


def test_demo_refuses_to_write_non_finite_predictions(world, capsys):          # cause 1
    bad = exploding_checkpoint(world)
    refused(capsys, demo.main, ['--input', world['img'], '--output', world['root'] / 'o.png', '--model', bad,
                                '--scale', '2', '--quiet', '--device', 'cpu'],
            'non-finite', 'nothing written', watch=(world['root'],), script='demo.py')


@pytest.mark.parametrize('mutate,words', [
    (lambda s: dict(s, args=dict(s['args'], encoder_spec={'name': 'edsr-baseline',
                                                            'args': {'n_feats': 'sixteen', 'no_upsampling': True}})),
     ['bad.pth', 'n_feats', 'sixteen']),                                                # cause 10
    (lambda s: dict(s, name=['lmliif']), ['name', 'list']),                             # cause 10
    (lambda s: dict(s, args=['not', 'a', 'dict']), ['args', 'mapping']),               # smaller: non-dict args
    (lambda s: dict(s, args=dict(s['args'], encoder_spec={'name': 'edsr-baseline',
                                                            'args': {'n_feats': 10 ** 9, 'no_upsampling': True}})),
     ['n_feats', 'implausibly large']),                                                 # hostile: huge model
    (lambda s: dict(s, sd={'a': 'b'}), ['sd']),
])
def test_demo_refuses_malformed_checkpoints(world, capsys, mutate, words):
    spec = mutate({'name': world['spec']['name'], 'args': world['spec']['args'], 'sd': world['sd']})
    path = world['root'] / 'bad.pth'
    torch.save({'model': spec}, path)
    try:
        refused(capsys, demo.main, ['--input', world['img'], '--output', world['root'] / 'o.png', '--model', path,
                                    '--scale', '2', '--quiet', '--device', 'cpu'],
                *words, watch=(world['root'],), script='demo.py')
    finally:
        path.unlink()


def test_state_dict_mismatch_message_is_not_cut(world, capsys):              # smaller
    sd = dict(world['sd'])
    removed = sorted(sd)[:3]
    for k in removed:
        del sd[k]
    sd['extra.weight'] = torch.zeros(2)
    bad = checkpoint(world, 'mismatch.pth', sd=sd)
    line = refused(capsys, demo.main, ['--input', world['img'], '--output', world['root'] / 'o.png', '--model', bad,
                                       '--scale', '2', '--quiet', '--device', 'cpu'],
                   'missing', 'unexpected', 'extra.weight', watch=(world['root'],), script='demo.py')
    assert all(k in line for k in removed)


@pytest.mark.parametrize('table,words', [
    ('6:\n  1: -0.05\n  2: 1\n', ['-0.05']),                           # negative threshold
    ('6:\n  1: 0.9\n  2: 0.3\n  3: 1\n', ['must not decrease']),      # non-monotone
    ('0:\n  1: 0.5\n', ['target scale']),                              # zero target scale
    ('6:\n  -2: 0.5\n', ['decode scale']),                             # negative decode scale
    ('# model: lte\n6:\n  1: 0.5\n  2: 1\n', ['lte']),              # made for another model kind
    ('model: lte\n6:\n  1: 0.5\n  2: 1\n', ['lte']),                # the same, as older files record it
])
def test_cmsr_tables_are_validated(world, capsys, table, words):        # cause 6
    path = world['root'] / 'cmsr.yaml'
    path.write_text(table)
    try:
        run_demo(world, capsys, ['--scale', '8', '--cmsr', path], 'cmsr.yaml', *words)
    finally:
        path.unlink()


# ------------------------------------------------------------------------------------------------
# test.py
# ------------------------------------------------------------------------------------------------
def run_test(world, capsys, config, extra=(), *words, model=None, watch_more=()):
    argv = ['--config', config, '--model', model or world['good'], '--device', 'cpu', '--quiet',
            '--results-dir', world['root'] / 'results', *extra]
    return refused(capsys, test_script.main, argv, *words, watch=(world['root'], *watch_more), script='test.py')


def write(world, name, text):
    path = world['root'] / name
    path.write_text(text)
    return path


def test_test_py_works_on_the_fixture(world, tmp_path, capsys):
    """The fixture itself is fine: the refusals below are caused by what each case changes."""
    code = test_script.main(['--config', str(world['cfg']), '--model', str(world['good']), '--device', 'cpu',
                             '--quiet', '--results-dir', str(tmp_path / 'r')])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / 'r' / 'summary.json').exists()


def test_lr_files_of_another_scale_are_refused(world, capsys):                  # cause 2
    cfg = write(world, 'x4-with-x2.yaml', paired_config(world['root'] / 'X2', world['root'] / 'HR', 'benchmark-4'))
    run_test(world, capsys, cfg, (), 'x4', 'x2', 'applex2.png')


def test_lr_files_of_other_images_are_refused(world, capsys, tmp_path):          # cause 2
    other = tmp_path / 'LR'
    other.mkdir()
    for name in ('kiwi', 'lime', 'fig'):                 # same count and sizes, other images
        Image.new('RGB', (12, 12)).save(other / f'{name}x2.png')
    cfg = write(world, 'other.yaml', paired_config(other, world['root'] / 'HR', 'benchmark-2'))
    run_test(world, capsys, cfg, (), 'no HR partner', watch_more=(tmp_path,))


def test_lr_of_the_wrong_size_is_refused(world, capsys, tmp_path):              # cause 2
    lr = tmp_path / 'LR'
    lr.mkdir()
    for name in ('apple', 'pear', 'plum'):
        Image.new('RGB', (12, 12 if name != 'pear' else 10)).save(lr / f'{name}x2.png')
    cfg = write(world, 'wrongsize.yaml', paired_config(lr, world['root'] / 'HR', 'benchmark-2'))
    run_test(world, capsys, cfg, (), 'pearx2.png', 'pear.png', 'integer-scale', watch_more=(tmp_path,))


@pytest.mark.parametrize('extra,words', [
    (['--tile', '4', '--tile-overlap', '-3'], ['--tile-overlap']),       # cause 3
    (['--tile', '-1'], ['--tile']),
    (['--window', '-3'], ['--window']),                                  # cause 10
    (['--window', '1000'], ['--window']),
    (['--eval-bsize', '-5'], ['--eval-bsize']),                          # smaller
    (['--workers', '-1'], ['--workers']),
    (['--opt', 'test_datset.batch_size=4'], ['test_datset', 'test_dataset']),   # cause 8
    (['--opt', 'eval_typ=benchmark-2'], ['eval_typ', 'eval_type']),
    (['--opt', '=3'], ['empty']),
    (['--opt', 'a..b=3'], ['empty']),
    (['--opt', 'test_dataset.batch_size=abc'], ['batch_size', 'abc']),
    (['--opt', 'eval_type=benchmark-0'], ['benchmark-0']),              # smaller
    (['--opt', 'test_dataset.dataset.args.root_path_1=42'], ['root_path_1', '42']),   # cause 10
])
def test_test_py_refuses_bad_options(world, capsys, extra, words):
    run_test(world, capsys, world['cfg'], extra, *words)


@pytest.mark.parametrize('text,words', [
    (lambda w: paired_config(w['root'] / 'X2', w['root'] / 'HR', 'benchmark-2', batch_size='abc'),
     ['batch_size', 'abc']),
    (lambda w: paired_config(w['root'] / 'X2', w['root'] / 'HR', 'benchmark-0'), ['benchmark-0']),
    (lambda w: paired_config(w['root'] / 'X2', w['root'] / 'HR', 'set5'), ['eval_type']),
    (lambda w: paired_config(42, w['root'] / 'HR', 'benchmark-2'), ['root_path_1', '42']),
    (lambda w: paired_config(w['root'] / 'X2', w['root'] / 'nothing', 'benchmark-2'), ['not found']),
    (lambda w: 'test_dataset: [1, 2\n', ['YAML']),
])
def test_test_py_refuses_bad_configs(world, capsys, text, words):
    cfg = write(world, 'bad.yaml', text(world))
    try:
        run_test(world, capsys, cfg, (), *words)
    finally:
        cfg.unlink()


def test_binary_config_is_named(world, capsys):                                 # smaller
    cfg = world['root'] / 'binary.yaml'
    cfg.write_bytes(bytes(range(256)) * 4)
    try:
        run_test(world, capsys, cfg, (), 'binary.yaml')
    finally:
        cfg.unlink()


@pytest.mark.parametrize('which', ['--results-dir', '--save-dir'])
def test_result_folders_on_a_file_are_refused_before_the_evaluation(world, capsys, which):   # cause 10
    argv = ['--config', world['cfg'], '--model', world['good'], '--device', 'cpu', '--quiet',
            '--results-dir', world['root'] / 'results', which, world['img']]
    refused(capsys, test_script.main, argv, which, 'is a file', watch=(world['root'],), script='test.py')


def test_test_py_refuses_non_finite_weights_and_predictions(world, capsys):      # causes 1 and 11
    sd = {k: v.clone() for k, v in world['sd'].items()}
    key = next(k for k, v in sd.items() if v.is_floating_point())
    sd[key].view(-1)[0] = float('inf')
    run_test(world, capsys, world['cfg'], (), key, 'non-finite', model=checkpoint(world, 'inf.pth', sd=sd))
    run_test(world, capsys, world['cfg'], ('--save-dir', world['root'] / 'sr'), 'non-finite', 'no result',
             model=exploding_checkpoint(world))


def test_dataset_errors_in_workers_are_one_line(world, capsys, tmp_path):       # cause 10
    hr = tmp_path / 'HR'
    hr.mkdir()
    for f in (world['root'] / 'HR').iterdir():
        (hr / f.name).write_bytes(f.read_bytes())
    data = (hr / 'pear.png').read_bytes()
    (hr / 'pear.png').write_bytes(data[:len(data) // 2])        # header intact, pixels truncated
    cfg = write(world, 'trunc.yaml', paired_config(world['root'] / 'X2', hr, 'benchmark-2'))
    run_test(world, capsys, cfg, ('--workers', '1'), 'pear.png', watch_more=(tmp_path,))


# ------------------------------------------------------------------------------------------------
# train.py
# ------------------------------------------------------------------------------------------------
def run_train(world, capsys, cfg, extra, *words, tmp_path):
    argv = ['--config', cfg, '--save-root', tmp_path / 'runs', '--workers', '0', '--no-progress', '--device', 'cpu',
            *extra]
    return refused(capsys, train_script.main, argv, *words, watch=(world['root'], tmp_path), script='train.py')


@pytest.mark.parametrize('extra,words', [
    (['--opt', 'epoch_maxx=1'], ['epoch_maxx', 'epoch_max']),                           # cause 8
    (['--opt', 'train_datset.batch_size=4'], ['train_datset', 'train_dataset']),         # cause 8
    (['--opt', '=3'], ['empty']),
    (['--opt', 'a..b=3'], ['empty']),
    (['--opt', 'epoch_max=abc'], ['epoch_max', 'abc']),
    (['--opt', 'model.args.encoder_spec.args.n_feats=sixteen'], ['n_feats']),            # cause 10
    (['--opt', 'model.name=[lmliif]'], ['name']),                                        # cause 10
    (['--opt', 'train_dataset.wrapper.args.inp_size=-5'], ['inp_size', '-5']),          # cause 10
    (['--opt', 'train_dataset.dataset.args.root_path=42'], ['root_path', '42']),        # cause 10
    (['--opt', 'train_dataset.batch_size=abc'], ['batch_size', 'abc']),
    (['--stop-after', '0'], ['--stop-after']),                                          # smaller
    (['--workers', '-2'], ['--workers']),
    (['--grad-clip', '-1'], ['--grad-clip']),
])
def test_train_refuses_bad_options(world, capsys, tmp_path, extra, words):
    run_train(world, capsys, world['train_cfg'], extra, *words, tmp_path=tmp_path)


def test_train_refuses_a_run_folder_in_use(world, capsys, tmp_path):      # cause 7
    import socket
    run = tmp_path / 'runs' / '_train'
    run.mkdir(parents=True)
    (run / 'run.lock').write_text(f'{os.getppid()} {socket.gethostname()}\n')    # a live process owns it
    run_train(world, capsys, world['train_cfg'], [], 'in use', tmp_path=tmp_path)


def test_train_on_a_file_as_save_root(world, capsys, tmp_path):
    blocker = tmp_path / 'runs'
    blocker.write_text('not a folder')
    run_train(world, capsys, world['train_cfg'], [], 'is a file', tmp_path=tmp_path)


def test_opt_adding_a_key_needs_the_explicit_form():                           # cause 8
    cfg = {'epoch_max': 3, 'model': {'name': 'x', 'args': {}}}
    with pytest.raises(ConfigError, match=r"\+model.args.depth=4"):
        apply_overrides(cfg, ['model.args.depth=4'])
    assert apply_overrides(cfg, ['+model.args.depth=4'])['model']['args'] == {'depth': 4}
    assert cfg['model']['args'] == {}


# ------------------------------------------------------------------------------------------------
# init_cmsr.py
# ------------------------------------------------------------------------------------------------
def run_init(world, capsys, extra, *words, save=None, model=None, watch_more=()):
    argv = ['--model', model or world['good'], '--config', world['hr_cfg'], '--scales', '6',
            '--save-path', save or world['root'] / 'table.yaml', '--device', 'cpu', '--quiet', *extra]
    return refused(capsys, init_cmsr.main, argv, *words, watch=(world['root'], *watch_more), script='init_cmsr.py')


@pytest.mark.parametrize('extra,words', [
    (['--trained-scale', '0'], ['--trained-scale']),                                   # cause 10
    (['--trained-scale', 'nan'], ['--trained-scale']),
    (['--scales', '6,x'], ['--scales']),
    (['--scales', '0'], ['--scales']),
    (['--window', '-3'], ['--window']),
    (['--first-k', '0'], ['--first-k']),
    (['--mse-threshold', '-1'], ['--mse-threshold']),
    (['--opt', 'datset.args.root_path=x'], ['datset', 'dataset']),                     # cause 8
])
def test_init_cmsr_refuses_bad_options(world, capsys, extra, words):
    run_init(world, capsys, extra, *words)


@pytest.mark.parametrize('save,words', [
    (lambda r: r / 'in.png' / 'table.yaml', ['--save-path', 'file, not a folder']),     # cause 10
    (lambda r: r / 'HR', ['--save-path', 'directory']),
    (lambda r: r / 'hr.yaml', ['--save-path', 'input']),
    (lambda r: r / 'table.txt', ['--save-path', 'extension']),
])
def test_init_cmsr_checks_the_save_path_before_compute(world, capsys, save, words):
    run_init(world, capsys, [], *words, save=save(world['root']))


def test_init_cmsr_refuses_non_finite_weights(world, capsys):                  # cause 11
    sd = {k: v.clone() for k, v in world['sd'].items()}
    key = next(k for k, v in sd.items() if v.is_floating_point())
    sd[key].view(-1)[0] = float('nan')
    run_init(world, capsys, [], key, 'non-finite', model=checkpoint(world, 'nan2.pth', sd=sd))


# ------------------------------------------------------------------------------------------------
# scripts/export_model.py
# ------------------------------------------------------------------------------------------------
def training_checkpoint(world, name):
    return checkpoint(world, name, optimizer={'name': 'adam', 'args': {}, 'sd': {'state': {}, 'param_groups': []}},
                      config={'epoch_max': 3})


def test_export_onto_itself_is_refused(world, capsys):                          # cause 5
    src = training_checkpoint(world, 'run-last.pth')
    refused(capsys, export_model.main, [src, src], 'input', watch=(world['root'],), script='export_model.py')
    refused(capsys, export_model.main, [src, world['root'] / '.' / 'run-last.pth'], 'input', watch=(world['root'],))


def test_export_over_another_training_checkpoint_is_refused(world, capsys):     # cause 5
    src = training_checkpoint(world, 'run-a.pth')
    dst = training_checkpoint(world, 'run-b.pth')
    refused(capsys, export_model.main, [src, dst], 'optimizer', 'resume', watch=(world['root'],))


def test_export_refuses_diverged_weights(world, capsys, tmp_path):           # causes 1 and 11
    sd = {k: v.clone() for k, v in world['sd'].items()}
    key = next(k for k, v in sd.items() if v.is_floating_point())
    sd[key].view(-1)[0] = float('nan')
    src = checkpoint(world, 'nan3.pth', sd=sd)
    refused(capsys, export_model.main, [src, tmp_path / 'x.pth'], key, 'non-finite',
            watch=(world['root'], tmp_path))


@pytest.mark.parametrize('dst,words', [
    (lambda r: r / 'missing' / 'x.pth', ['does not exist']),
    (lambda r: r / 'HR', ['directory']),
    (lambda r: r / 'in.png', ['not a checkpoint']),
])
def test_export_bad_destinations(world, capsys, dst, words):
    refused(capsys, export_model.main, [world['good'], dst(world['root'])], *words, watch=(world['root'],))


def test_export_says_what_it_drops(world, capsys, tmp_path):
    src = training_checkpoint(world, 'run-c.pth')
    assert export_model.main([str(src), str(tmp_path / 'x.pth')]) == 0
    assert 'not copied: optimizer' in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# scripts/prepare_data.py (cause 9)
# ------------------------------------------------------------------------------------------------
def tar_with(path, *members, truncate=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    path.write_bytes(raw[:len(raw) // 2 + 100] if truncate else raw)
    return path


def member(name, kind=tarfile.REGTYPE, data=b'', **attrs):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, (data if kind == tarfile.REGTYPE else None)


PNG = b'\x89PNG' + b'0' * 2000


@pytest.mark.parametrize('members,words', [
    ([member('benchmark/Set5/HR/a.png', data=PNG), member('benchmark/dev', tarfile.CHRTYPE, devmajor=1, devminor=3)],
     ['device']),
    ([member('benchmark/Set5/HR/a.png', data=PNG), member('benchmark/fifo', tarfile.FIFOTYPE)], ['FIFO']),
    ([member('benchmark/Set5/HR/a.png', data=PNG), member('benchmark/up', tarfile.SYMTYPE, linkname='../../../etc')],
     ['outside']),
    ([member('benchmark/Set5/HR/a.png', data=PNG), member('benchmark/abs', tarfile.SYMTYPE, linkname='/etc/passwd')],
     ['outside']),
    ([member('benchmark/Set5/HR/a.png', data=PNG), member('benchmark/h', tarfile.LNKTYPE, linkname='../../x')],
     ['outside']),
    ([member('../evil.png', data=PNG)], ['outside']),
])
def test_prepare_data_refuses_hostile_archives(capsys, tmp_path, members, words):
    src = tmp_path / 'src'
    src.mkdir()
    tar_with(src / 'benchmark.tar', *members)
    root = tmp_path / 'load'
    refused(capsys, prepare_data.main, ['--root', root, '--only', 'benchmark', '--from-dir', src, '--quiet'], *words,
            watch=(tmp_path,), script='prepare_data.py')
    assert not root.exists()


def test_prepare_data_truncated_archive(capsys, tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    tar_with(src / 'benchmark.tar', member('benchmark/Set5/HR/a.png', data=PNG * 20),
             member('benchmark/Set5/HR/b.png', data=PNG * 20), truncate=True)
    refused(capsys, prepare_data.main, ['--root', tmp_path / 'load', '--only', 'benchmark', '--from-dir', src,
                                        '--quiet'], 'truncated', watch=(tmp_path,), script='prepare_data.py')


def test_prepare_data_missing_archive_creates_nothing(capsys, tmp_path):
    refused(capsys, prepare_data.main, ['--root', tmp_path / 'load', '--only', 'benchmark', '--from-dir', tmp_path,
                                        '--quiet'], 'benchmark.tar', 'not found', watch=(tmp_path,))


def test_prepare_data_drops_special_bits_and_owners(capsys, tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    tar_with(src / 'benchmark.tar', member('benchmark/Set5/HR/a.png', data=PNG, mode=0o6777, uid=4242, gid=4242,
                                           uname='mallory', gname='mallory'),
             member('benchmark/Set5/HR/inner', tarfile.SYMTYPE, linkname='a.png'))
    assert prepare_data.main(['--root', str(tmp_path / 'load'), '--only', 'benchmark', '--from-dir', str(src),
                              '--quiet']) == 0
    f = tmp_path / 'load' / 'benchmark' / 'Set5' / 'HR' / 'a.png'
    st = f.stat()
    assert st.st_mode & 0o7000 == 0 and st.st_mode & 0o022 == 0
    assert st.st_uid == os.getuid() and f.read_bytes() == PNG
    inner = f.parent / 'inner'           # a link inside the archive becomes a copy: no link is ever created
    assert not inner.is_symlink() and inner.read_bytes() == PNG


# ------------------------------------------------------------------------------------------------
# scripts/benchmark.py (cause 10)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('extra,words', [
    (['--input', '160'], ['--input', 'WIDTHxHEIGHT']),
    (['--input', '0x90'], ['--input']),
    (['--input', 'axb'], ['--input']),
    (['--scales', '2,,4'], ['--scales']),
    (['--scales', '2,four'], ['--scales', 'four']),
    (['--scales', '-2'], ['--scales']),
    (['--device', 'tpu'], ['--device', 'tpu']),
    (['--models', 'liif,nosuch'], ['nosuch']),
    (['--repeats', '0'], ['--repeats']),
    (['--bsize', '-1'], ['--bsize']),
    (['--render-kernel', 'fused', '--bf16-rows'], ['--render-kernel fused', 'float32 only', '--bf16-rows']),
    (['--render-kernel', 'fused', '--render-mode', 'bf16'], ['--render-kernel fused', 'float32 only']),
])
def test_benchmark_refuses_bad_options(capsys, tmp_path, extra, words):
    refused(capsys, benchmark.main, ['--out', tmp_path / 'bench', *extra], *words, watch=(tmp_path,),
            script='benchmark.py')


def test_benchmark_out_on_a_file(capsys, tmp_path):
    f = tmp_path / 'f'
    f.write_text('x')
    refused(capsys, benchmark.main, ['--out', f], '--out', 'is a file', watch=(tmp_path,))


# ------------------------------------------------------------------------------------------------
# a Python without torch (cause 10): "No module named 'torch'" in one line, not an UnboundLocalError
# ------------------------------------------------------------------------------------------------
NO_TORCH = textwrap.dedent("""\
    import runpy, sys
    class NoTorch:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == 'torch' or name.startswith('torch.'):
                raise ModuleNotFoundError("No module named 'torch'", name='torch')
    sys.meta_path.insert(0, NoTorch())
    sys.argv = sys.argv[1:]
    if sys.argv[0].startswith('scripts.'):
        runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name='__main__')
    """)


@pytest.mark.parametrize('argv', [
    ['demo.py', '--input', 'x.png', '--output', 'y.png', '--scale', '2'],
    ['test.py', '--config', 'c.yaml', '--model', 'bicubic'],
    ['train.py', '--config', 'c.yaml'],
    ['init_cmsr.py', '--model', 'm.pth', '--config', 'c.yaml', '--save-path', 't.yaml'],
    ['scripts.export_model', 'a.pth', 'b.pth'],
    ['scripts.benchmark'],
])
def test_without_torch_the_message_says_so(tmp_path, argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, '-c', NO_TORCH, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 1, err
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    assert "No module named 'torch'" in err and 'error' in err


# ------------------------------------------------------------------------------------------------
# library checks behind the scripts
# ------------------------------------------------------------------------------------------------
def test_memory_estimate_names_the_option_that_makes_it_fit(world):          # cause 4
    model = models.make(world['spec'])
    est = memory.estimate(model, (100, 100), (400, 400), chunk=65536)
    assert est.output == 400 * 400 * 3 * 4 + 400 * 400 * 4          # float buffer + 8-bit image with alpha room
    with pytest.raises(memory.MemoryEstimateError, match='--size or --scale'):
        memory.check(model, (100, 100), (4000, 4000), available=100 << 20)
    # a decoder chunk too large for what is left: the message proposes a --bsize that fits
    big = memory.estimate(model, (100, 100), (400, 400), chunk=160000)
    room = (big.output + big.encoder + big.decoder // 10) * memory.SAFETY
    with pytest.raises(memory.MemoryEstimateError, match=r'--bsize \d+'):
        memory.check(model, (100, 100), (400, 400), chunk=160000, available=int(room))
    # an encoder too large for the whole input: --tile
    enc = memory.estimate(model, (3000, 3000), (6000, 6000), chunk=1000)
    with pytest.raises(memory.MemoryEstimateError, match=r'--tile \d+'):
        memory.check(model, (3000, 3000), (6000, 6000), chunk=1000,
                     available=int((enc.output + enc.decoder + enc.encoder / 4) * memory.SAFETY))
    memory.check(model, (100, 100), (400, 400), available=1 << 40)      # fits


def test_validate_numbers_and_sizes():
    assert validate.integer('7', 'n', minimum=1) == 7
    for bad in ('x', 2.5, True, -1):
        with pytest.raises(validate.InputError, match='n must'):
            validate.integer(bad, 'n', minimum=0)
    assert validate.output_size((10, 20), scale=(2.5, 2.5)) == (25, 50)
    assert validate.size_text('1920x1080', order='WxH') == (1080, 1920)
    assert validate.scales_list('4,2,4') == [2, 4]


def test_sixteen_bit_colour_png_keeps_sixteen_bits(tmp_path):                  # smaller
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 65536, (7, 9, 3), dtype=np.uint16)
    path = tmp_path / 'c16.png'
    path.write_bytes(_png16(arr))
    got, info = load_array(path)
    assert info.bit_depth == 16 and got.dtype == np.uint16 and np.array_equal(got, arr)
    # PIL (8 bits) agrees on the high bytes: an independent decoder of the same file
    assert np.array_equal(np.asarray(Image.open(path).convert('RGB')), (arr >> 8).astype(np.uint8))


def test_demo_keeps_sixteen_bit_colour(world, tmp_path, capsys):
    rng = np.random.default_rng(4)
    src = tmp_path / 'c16.png'
    src.write_bytes(_png16(rng.integers(0, 65536, (8, 10, 3), dtype=np.uint16)))
    out = tmp_path / 'o.png'
    assert demo.main(['--input', str(src), '--output', str(out), '--model', str(world['good']), '--scale', '2',
                      '--quiet', '--device', 'cpu']) == 0, capsys.readouterr().err
    arr, info = load_array(out)
    assert info.bit_depth == 16 and arr.shape == (16, 20, 3)
    assert np.any(arr % 257 != 0)          # not 8-bit values widened


def test_bundled_checkpoint_still_loads():
    if not BUNDLED.exists():
        pytest.skip('bundled model absent')
    model = models.load_model(str(BUNDLED))
    assert sum(p.numel() for p in model.parameters()) > 1000
