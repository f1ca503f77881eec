"""test.py result folders (issue 23 item 4, issue 24): default folders named from protocol, config, checkpoint
run folder + file and the options that change results, never silently replaced (--overwrite); --save-dir images
named after their HR files, refused inside a dataset folder; no NaN in summary.json; nothing partial left
after a failure. Tiny LM-LIIF checkpoints and 24x24 images in temporary folders."""
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import models
import test as test_script
from engine import cmsr
from engine.evaluation import Evaluation, check_scores

from .conftest import TINY_LMLIIF

NAMES = ('apple', 'pear', 'plum')


def _config(lr, hr, eval_type='benchmark-2'):
    return textwrap.dedent(f"""\
        test_dataset:
          dataset: {{name: paired-image-folders, args: {{root_path_1: {lr}, root_path_2: {hr}}}}}
          wrapper: {{name: sr-implicit-paired, args: {{}}}}
          batch_size: 1
        eval_type: {eval_type}
        protocol: test-original
        """)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Two runs' epoch-best.pth, a paired x2 set (HR/, X2/), two configs of the same file name in two folders;
    the working directory is tmp_path (default results go to ./outputs/test/...)."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    spec = yaml.safe_load(TINY_LMLIIF)['model']
    ckpts = []
    for run in ('run-a', 'run-b'):
        (tmp_path / 'save' / run).mkdir(parents=True)
        sd = models.make(spec).state_dict()
        path = tmp_path / 'save' / run / 'epoch-best.pth'
        torch.save({'model': {'name': spec['name'], 'args': spec['args'], 'sd': sd}, 'epoch': 1}, path)
        ckpts.append(path)
    rng = np.random.default_rng(0)
    for name in NAMES:
        hr = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
        (tmp_path / 'HR').mkdir(exist_ok=True)
        (tmp_path / 'X2').mkdir(exist_ok=True)
        hr.save(tmp_path / 'HR' / f'{name}.png')
        hr.resize((12, 12), Image.BICUBIC).save(tmp_path / 'X2' / f'{name}x2.png')
    cfgs = []
    for folder in ('test', 'test-lmf'):
        (tmp_path / 'configs' / folder).mkdir(parents=True)
        cfg = tmp_path / 'configs' / folder / 'set-x2.yaml'
        cfg.write_text(_config(tmp_path / 'X2', tmp_path / 'HR'))
        cfgs.append(cfg)
    table = tmp_path / 'table.yaml'
    cmsr.save_tables(table, {8: {1: 0.3, 8: 1}})
    return {'root': tmp_path, 'ckpts': ckpts, 'cfgs': cfgs, 'table': table}


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*') if p.is_file())


def run(capsys, *argv):
    """test.py in this process: (exit status, stderr)."""
    code = test_script.main([str(a) for a in argv] + ['--device', 'cpu', '--quiet'])
    return code, capsys.readouterr().err.strip()


def refused(capsys, world, argv, *words):
    before = files_under(world['root'])
    code, err = run(capsys, *argv)
    assert code == 1 and len(err.splitlines()) == 1 and 'Traceback' not in err, err
    assert err.startswith('test.py: error: '), err
    for w in words:
        assert w in err, err
    assert files_under(world['root']) == before, 'files were created, changed or removed'
    return err


def default_folder(world, *extra, config=0, ckpt=0):
    args = test_script.build_parser().parse_args(['--config', str(world['cfgs'][config]),
                                                  '--model', str(world['ckpts'][ckpt]), *map(str, extra)])
    return test_script.default_results_folder(args, 'test-original')


def test_default_folders_tell_runs_configs_and_options_apart(world):
    base = default_folder(world)
    assert base == os.path.join('outputs', 'test', 'test-original', 'test_set-x2', 'run-a_epoch-best')
    folders = {base, default_folder(world, ckpt=1), default_folder(world, config=1),
               default_folder(world, '--cmsr', world['table']),
               default_folder(world, '--cmsr', world['table'], '--cmsr-grid', 'published'),
               default_folder(world, '--cmsr', 'True', '--cmsr_path', world['table']),       # published spelling
               default_folder(world, '--window', '8'), default_folder(world, '--scale-max', '6'),
               default_folder(world, '--no-cell-clip'), default_folder(world, '--tile', '16'),
               default_folder(world, '--opt', 'eval_type=benchmark-3')}
    assert len(folders) == 10          # the published spelling is the published grid: the same folder
    assert default_folder(world, '--cmsr', 'True', '--cmsr_path', world['table']).endswith(
        'run-a_epoch-best+cmsr-table-published')
    # options that do not change results do not change the folder
    assert default_folder(world, '--eval-bsize', '7', '--fast', 'False') == base
    assert test_script.build_parser().parse_args(['--config', 'c', '--model', 'bicubic']) and \
        test_script.default_results_folder(test_script.build_parser().parse_args(
            ['--config', str(world['cfgs'][0]), '--model', 'bicubic']), 'test-original').endswith('bicubic')


def test_an_earlier_result_is_never_replaced_without_overwrite(world, capsys):
    argv = ['--config', world['cfgs'][0], '--model', world['ckpts'][0]]
    assert run(capsys, *argv)[0] == 0
    folder = world['root'] / default_folder(world)
    summary = json.loads((folder / 'summary.json').read_text())
    assert summary['model'] == str(world['ckpts'][0]) and summary['options'] == []
    # the other run's epoch-best.pth, the other protocol folder's config: their own folders
    assert run(capsys, '--config', world['cfgs'][0], '--model', world['ckpts'][1])[0] == 0
    assert run(capsys, '--config', world['cfgs'][1], '--model', world['ckpts'][0])[0] == 0
    assert len(list((world['root'] / 'outputs').rglob('summary.json'))) == 3
    refused(capsys, world, argv, default_folder(world), 'earlier run', '--overwrite')
    refused(capsys, world, [*argv, '--results-dir', folder], 'earlier run')
    (folder / 'summary.json').write_text('{}')
    assert run(capsys, *argv, '--overwrite')[0] == 0
    assert json.loads((folder / 'summary.json').read_text())['images'] == 3


def test_save_dir_names_images_after_their_files(world, capsys):
    sr = world['root'] / 'sr'
    code, err = run(capsys, '--config', world['cfgs'][0], '--model', world['ckpts'][0], '--save-dir', sr)
    assert code == 0, err
    assert sorted(p.name for p in sr.iterdir()) == [f'{n}.png' for n in NAMES]
    assert not [p for p in world['root'].iterdir() if p.name.startswith('.')]      # no staging folder left
    argv = ['--config', world['cfgs'][0], '--model', world['ckpts'][1], '--save-dir', sr]
    refused(capsys, world, argv, '--save-dir', 'already holds files')
    assert run(capsys, *argv, '--overwrite')[0] == 0


@pytest.mark.parametrize('where', ['HR', 'X2', 'HR/sub'])
def test_save_dir_inside_a_dataset_folder_is_refused(world, capsys, where):
    target = world['root'] / where
    refused(capsys, world, ['--config', world['cfgs'][0], '--model', world['ckpts'][0], '--save-dir', target],
            '--save-dir', 'inside the dataset folder')
    refused(capsys, world, ['--config', world['cfgs'][0], '--model', world['ckpts'][0], '--results-dir', target],
            '--results-dir', 'inside the dataset folder')


def test_a_failed_run_leaves_nothing_and_says_what_is_known(world, capsys):
    """Huge finite weights overflow: no results folder, no --save-dir, no staging folder; the message says the
    weights are finite (not 'a diverged run')."""
    spec = yaml.safe_load(TINY_LMLIIF)['model']
    sd = {k: (v * 1e30 if v.is_floating_point() else v) for k, v in torch.load(world['ckpts'][0])['model']['sd'].items()}
    huge = world['root'] / 'save' / 'huge.pth'
    torch.save({'model': {'name': spec['name'], 'args': spec['args'], 'sd': sd}, 'epoch': 1}, huge)
    err = refused(capsys, world, ['--config', world['cfgs'][0], '--model', huge, '--save-dir', world['root'] / 'sr'],
                  'non-finite', 'apple', 'weights are finite', 'no result')
    assert 'diverged' not in err


def test_no_nan_in_summary_json(world, capsys):
    """Images whose scored area is below SSIM's 11x11 window have no SSIM: the mean is null, never NaN."""
    small = world['root'] / 'small'
    for sub in ('HR', 'X2'):
        (small / sub).mkdir(parents=True)
    for name in NAMES:
        Image.open(world['root'] / 'HR' / f'{name}.png').crop((0, 0, 12, 12)).save(small / 'HR' / f'{name}.png')
        Image.open(world['root'] / 'X2' / f'{name}x2.png').crop((0, 0, 6, 6)).save(small / 'X2' / f'{name}x2.png')
    cfg = world['root'] / 'small.yaml'
    cfg.write_text(_config(small / 'X2', small / 'HR'))
    code, err = run(capsys, '--config', cfg, '--model', world['ckpts'][0], '--results-dir', world['root'] / 'r')
    assert code == 0, err
    text = (world['root'] / 'r' / 'summary.json').read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f'{c} in summary.json'))
    assert summary['ssim'] is None and summary['psnr'] is not None
    assert Evaluation().mean('psnr') is None
    # the bicubic baseline never clips cells (an infinite scale): null, not Infinity
    code, err = run(capsys, '--config', cfg, '--model', 'bicubic', '--results-dir', world['root'] / 'b')
    assert code == 0, err
    summary = json.loads((world['root'] / 'b' / 'summary.json').read_text(),
                         parse_constant=lambda c: pytest.fail(f'{c} in summary.json'))
    assert summary['cell_clip'] is None


def test_non_finite_scores_are_refused_naming_the_image():
    check_scores('baby', {'psnr': 30.0, 'ssim': None})
    with pytest.raises(ValueError, match=r'image baby: PSNR is inf \(the prediction equals the ground truth'):
        check_scores('baby', {'psnr': float('inf'), 'ssim': 1.0})
    with pytest.raises(ValueError, match='image bird: SSIM is nan'):
        check_scores('bird', {'psnr': 30.0, 'ssim': float('nan')})


def test_progress_goes_to_stderr_and_no_progress_turns_it_off(world, capsys):
    base = ['--config', str(world['cfgs'][0]), '--model', str(world['ckpts'][0]), '--device', 'cpu']
    assert test_script.main([*base, '--results-dir', str(world['root'] / 'p1')]) == 0
    out = capsys.readouterr()
    assert '/3 ' in out.err and 'img/s' in out.err and 'img/s' not in out.out      # per image, on stderr
    assert test_script.main([*base, '--results-dir', str(world['root'] / 'p2'), '--no-progress']) == 0
    out = capsys.readouterr()
    assert out.err == '' and 'result: PSNR' in out.out
