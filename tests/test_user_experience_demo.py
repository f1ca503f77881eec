"""What a user sees with demo.py, the API and torch.hub (issue 23 items 2, 3, 8, 9, 10; issue 24's hub/API
items): paths from any working directory, one size convention (WIDTHxHEIGHT), the thread policy, folder
input, and torch.hub entries that upscale images. Tiny images and the bicubic model keep each test fast."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import api
import demo
from engine import batch, cli
from engine.errors import UpscaleError
from engine.inference import REPO_ROOT, Session, resolve_model_path, resolve_path
from utils import resources
from utils.imresize import imresize
from utils.validate import InputError, fit_size, show_size, size_text

from .conftest import ROOT

BUNDLED = ROOT / 'save' / 'pretrained_models'


def need_bundled():
    if not (BUNDLED / 'edsr-b_lm-liif.safetensors').exists():
        pytest.skip('bundled LM-LIIF not present')


def image(path, size=(12, 10), seed=0, mode='RGB'):
    """A random image of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def bicubic(path, size):
    """The independent expectation of ``--model bicubic``: MATLAB's uint8 bicubic ``imresize`` to ``size``
    (H, W) (the comparisons allow one grey level: the model goes through float32)."""
    x = torch.from_numpy(np.array(Image.open(path).convert('RGB'))).permute(2, 0, 1)     # uint8, as MATLAB
    y = imresize(x.unsqueeze(0), size=size)[0].double()
    return y.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def close(a, b):
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


# ------------------------------------------------------------------------------------------------
# threads (item 8)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('cores,load,world,expect', [
    (8, 0.0, 1, 8),        # idle machine: every core
    (2, 1.0, 1, 1),        # beside one CPU-bound process on 2 cores
    (2, 0.2, 1, 2),        # a nearly idle 2-core machine
    (8, 0.0, 2, 4),        # torchrun --nproc_per_node 2 on 8 idle cores
    (8, 2.6, 2, 2),        # ... beside about three busy processes: 5 free cores, 2 each
    (2, 7.7, 1, 1),        # overloaded: never below 1
    (4, 0.0, 8, 1),        # more ranks than cores: 1 each
])
def test_default_thread_policy(cores, load, world, expect):
    assert resources.default_threads(cores=cores, load=load, local_world=world, claimed=0) == expect


@pytest.mark.parametrize('cores,load,claimed,expect', [
    (2, 0.0, 2, 1),        # the second of two runs started together: the first one's claim counts
    (2, 1.0, 1, 1),        # a training run both runnable and claimed: counted once
    (8, 0.0, 3, 5),
    (2, 0.0, 0, 2),
])
def test_claimed_threads_count_as_busy(cores, load, claimed, expect):
    assert resources.default_threads(cores=cores, load=load, local_world=1, claimed=claimed) == expect


CLAIMER = """
import sys, time
sys.path.insert(0, {root!r})
from utils import resources
resources.machine_load = lambda: 0.0          # both runs sample an idle machine at the same instant
resources.usable_cores = lambda: 2
print(resources.decide_threads(None), flush=True)
time.sleep({hold})
"""


def claimer(tmp_path, hold, name='claimer.py'):
    import subprocess
    import sys
    script = tmp_path / name
    script.write_text(CLAIMER.format(root=str(REPO_ROOT), hold=hold))
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop('OMP_NUM_THREADS', None)
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)


def test_runs_started_together_share_the_cores(tmp_path, monkeypatch):
    """Two runs started in the same instant on an idle 2-core machine: one takes 2 threads, the other 1 (both
    took 2 before the claims registry: 4.5x slower each, README "Threads"); a claim ends with its process,
    also one killed without cleaning up."""
    import signal
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    runs = [claimer(tmp_path, 30), claimer(tmp_path, 30)]
    counts = sorted(int(p.stdout.readline()) for p in runs)
    assert counts == [1, 2]
    assert resources.claimed_threads() == 3                      # seen from a third process
    for p in runs:
        p.send_signal(signal.SIGKILL)                            # no atexit: stale claims
        p.wait()
    assert resources.claimed_threads() == 0
    assert not list(tmp_path.glob(f'assr-threads-{os.getuid()}/*.claim'))    # stale files removed
    done = claimer(tmp_path, 0)
    assert int(done.stdout.readline()) == 2
    done.wait()
    assert not list(tmp_path.glob(f'assr-threads-{os.getuid()}/*.claim'))    # released at exit


def test_machine_load_sees_runs_started_together(monkeypatch):
    """Runnable tasks now (minus this one, median of the samples); the lagging load average is not used."""
    monkeypatch.setattr(os, 'getloadavg', lambda: (3.2, 1.0, 0.5))      # busy a minute ago
    readings = iter([2, 2, 9, 2, 1, 2, 2, 1, 2])           # this run + another one, one transient spike
    monkeypatch.setattr(resources, 'running_tasks', lambda: next(readings))
    assert resources.machine_load(interval=0) == 1.0
    monkeypatch.setattr(resources, 'running_tasks', lambda: 1)          # only this run now
    assert resources.machine_load(interval=0) == 0.0
    monkeypatch.setattr(resources, 'running_tasks', lambda: None)       # no /proc: the average
    assert resources.machine_load(interval=0) == 3.2


def test_thread_choice_order_and_flag(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert resources.choose_threads(None) == 3                     # the user's environment wins over the default
    assert resources.choose_threads(2) == 2                        # --threads / threads= win over both
    monkeypatch.delenv('OMP_NUM_THREADS')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    monkeypatch.setattr(resources, 'usable_cores', lambda: 6)
    monkeypatch.setattr(resources, 'machine_load', lambda: 0.4)
    monkeypatch.setattr(resources, 'claimed_threads', lambda: 0)
    assert resources.choose_threads(None) == 3
    for bad in (0, -1, 1.5, True, '2'):
        with pytest.raises(ValueError, match='threads'):
            resources.choose_threads(bad)


@pytest.mark.parametrize('module,extra', [('demo', ['--input', 'a.png', '--output', 'b.png', '--scale', '2']),
                                          ('test', ['--config', 'c.yaml', '--model', 'm.pth']),
                                          ('init_cmsr', ['--config', 'c.yaml', '--model', 'm.pth', '--save-path', 't.yaml']),
                                          ('train', ['--config', 'c.yaml']),
                                          ('scripts.benchmark', [])])
def test_every_script_takes_threads(module, extra, capsys):
    import importlib
    mod = importlib.import_module(module)
    parse = getattr(mod, 'build_parser', None)
    args = parse().parse_args(extra + ['--threads', '3']) if parse else mod.parse_args(extra + ['--threads', '3'])
    assert args.threads == 3
    with pytest.raises(SystemExit):
        (parse().parse_args if parse else mod.parse_args)(extra + ['--threads', '0'])
    assert 'positive integer' in capsys.readouterr().err


def test_demo_threads_flag_sets_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        src = image(tmp_path / 'a.png')
        assert demo.main(['--input', str(src), '--output', str(tmp_path / 'b.png'), '--scale', '2',
                          '--model', 'bicubic', '--device', 'cpu', '--threads', '2']) == 0
        assert torch.get_num_threads() == 2 and '(2 threads)' in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_api_threads_are_restored():
    before = torch.get_num_threads()
    out = api.upscale(torch.rand(3, 6, 5), scale=2, model='bicubic', threads=2, device='cpu')
    assert out.shape == (3, 12, 10) and torch.get_num_threads() == before
    with pytest.raises(UpscaleError, match='threads'):
        api.upscale(torch.rand(3, 6, 5), scale=2, model='bicubic', threads=0, device='cpu')


# ------------------------------------------------------------------------------------------------
# paths (item 2)
# ------------------------------------------------------------------------------------------------
def test_bundled_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    need_bundled()
    monkeypatch.chdir(tmp_path)
    rel = os.path.join('save', 'pretrained_models', 'edsr-b_lm-liif.safetensors')
    assert resolve_model_path(rel) == os.path.join(REPO_ROOT, rel)
    assert resolve_model_path('edsr-b_lm-liif.safetensors') == os.path.join(REPO_ROOT, rel)
    assert os.path.samefile(resolve_model_path(None), BUNDLED / 'edsr-b_lm-liif.safetensors')
    table = os.path.join('save', 'pretrained_models', 'edsr-b_lm-liif_cmsr.yaml')
    assert resolve_path(table, 'CMSR table') == os.path.join(REPO_ROOT, table)
    # a user's own file relative to the working directory always wins
    (tmp_path / 'save' / 'pretrained_models').mkdir(parents=True)
    (tmp_path / table).write_text('mine')
    assert resolve_path(table, 'CMSR table') == table
    with pytest.raises(ValueError, match=r'model file not found: save/absent\.pth'):
        resolve_model_path(os.path.join('save', 'absent.pth'))


def test_demo_from_another_directory(tmp_path, monkeypatch, capsys):
    need_bundled()
    monkeypatch.chdir(tmp_path)
    src = image(tmp_path / 'in.png', size=(7, 6))
    for model in ([], ['--model', 'save/pretrained_models/edsr-b_lm-liif.pth'], ['--model', 'edsr-b_lm-liif.pth']):
        assert demo.main(['--input', 'in.png', '--output', 'out.png', '--scale', '2', '--device', 'cpu',
                          '--quiet', *model]) == 0
        assert Image.open('out.png').size == (14, 12)
    ref = np.asarray(Image.open('out.png'))
    assert demo.main(['--input', str(src), '--output', 'd.png', '--scale', '2', '--device', 'cpu', '--quiet']) == 0
    assert np.array_equal(np.asarray(Image.open('d.png')), ref)       # default .safetensors = bundled .pth
    assert demo.main(['--input', 'in.png', '--output', 'x.png', '--scale', '2', '--model', 'save/nothere.pth']) == 1
    err = capsys.readouterr().err
    assert 'model file not found: save/nothere.pth' in err and 'default model' not in err
    assert not (tmp_path / 'x.png').exists()


def test_demo_cmsr_table_from_another_directory(tmp_path, monkeypatch, capsys):
    """The README's CMSR command with its repository-relative table, run from outside the repository."""
    need_bundled()
    monkeypatch.chdir(tmp_path)
    image(tmp_path / 'in.png', size=(6, 5))
    assert demo.main(['--input', 'in.png', '--output', 'o.png', '--scale', '6', '--device', 'cpu', '--cmsr',
                      'save/pretrained_models/edsr-b_lm-liif_cmsr.yaml']) == 0
    assert Image.open(tmp_path / 'o.png').size == (36, 30) and 'CMSR' in capsys.readouterr().out
    assert demo.main(['--input', 'in.png', '--output', 'p.png', '--scale', '6', '--cmsr', 'save/none.yaml']) == 1
    assert 'CMSR table not found: save/none.yaml' in capsys.readouterr().err and not (tmp_path / 'p.png').exists()


# ------------------------------------------------------------------------------------------------
# sizes (item 3)
# ------------------------------------------------------------------------------------------------
def test_one_size_convention():
    assert size_text('1920x1080') == (1080, 1920) and show_size((1080, 1920)) == '1920x1080'
    with pytest.raises(InputError, match='WIDTHxHEIGHT'):
        size_text('1920*1080')
    # fit inside: a 4:3 photo in a 16:9 box keeps 4:3
    assert fit_size((300, 400), (1080, 1920), keep_aspect=True) == ((1080, 1440), None)
    assert fit_size((400, 300), (1080, 1920), keep_aspect=True) == ((1080, 810), None)
    assert fit_size((100, 400), (1080, 1920), keep_aspect=True) == ((480, 1920), None)
    size, note = fit_size((300, 400), (1080, 1920))
    assert size == (1080, 1920) and '--keep-aspect' in note and '1440x1080' in note
    assert fit_size((300, 400), (901, 1200)) == ((901, 1200), None)      # within a pixel: no note


def test_demo_size_is_width_by_height_with_keep_aspect(tmp_path, capsys):
    src = image(tmp_path / 'in.png', size=(12, 9))                     # 4:3
    out = tmp_path / 'out.png'
    base = ['--input', str(src), '--output', str(out), '--model', 'bicubic', '--device', 'cpu']
    assert demo.main(base + ['--size', '32x18']) == 0
    captured = capsys.readouterr()
    assert Image.open(out).size == (32, 18) and 'changes the aspect ratio' in captured.err
    assert '-> ' + str(out) + ' (32x18' in captured.out
    assert close(np.asarray(Image.open(out)), bicubic(src, (18, 32)))
    assert demo.main(base + ['--size', '32x18', '--keep-aspect']) == 0
    assert Image.open(out).size == (24, 18) and 'aspect' not in capsys.readouterr().err
    assert demo.main(base + ['--scale', '2', '--keep-aspect']) == 1
    assert '--keep-aspect needs --size' in capsys.readouterr().err


def test_api_size_is_width_height_and_names_files_so(tmp_path):
    src = image(tmp_path / 'p.png', size=(12, 9))
    arr = api.upscale(np.asarray(Image.open(src)), size=(30, 20), model='bicubic', device='cpu')
    assert arr.shape == (20, 30, 3) and close(arr, bicubic(src, (20, 30)))
    assert api.upscale(Image.open(src), size='30x20', keep_aspect=True, model='bicubic').size == (27, 20)
    written = api.upscale(str(src), size=(30, 20), model='bicubic', device='cpu')
    assert written == str(tmp_path / 'p_30x20.png') and Image.open(written).size == (30, 20)


# ------------------------------------------------------------------------------------------------
# folders and progress (items 7, 9)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def photos(tmp_path):
    root = tmp_path / 'photos'
    (root / 'trip' / 'day1').mkdir(parents=True)
    image(root / 'a.png', seed=1)
    image(root / 'b.jpg', seed=2, size=(9, 7))
    image(root / 'trip' / 'c.png', seed=3, mode='L')
    image(root / 'trip' / 'day1' / 'd.gif', seed=4)
    (root / 'notes.txt').write_text('not an image')
    (root / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    return root


def run_folder(photos, out, *extra):
    return demo.main(['--input', str(photos), '--output', str(out), '--scale', '2', '--model', 'bicubic',
                      '--device', 'cpu', *extra])


def test_demo_folder_mirrors_the_tree_skips_and_reports(photos, tmp_path, capsys):
    out = tmp_path / 'out'
    assert run_folder(photos, out) == 1                                  # broken.png fails, the others go on
    captured = capsys.readouterr()
    assert sorted(os.listdir(out)) == ['a.png', 'b.jpg']                 # not recursive; nothing for broken.png
    assert 'broken.png' in captured.err
    assert '2 upscaled, 1 failed' in captured.err and 'img' in captured.err    # summary + tqdm bar over images
    assert close(np.asarray(Image.open(out / 'a.png')), bicubic(photos / 'a.png', (20, 24)))
    os.remove(photos / 'broken.png')
    assert run_folder(photos, out, '--recursive') == 0
    assert '2 upscaled, 2 skipped (output exists; --overwrite replaces), 0 failed' in capsys.readouterr().out
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()) == \
        ['a.png', 'b.jpg', 'trip/c.png', 'trip/day1/d.png']               # .gif is written as .png
    assert Image.open(out / 'trip' / 'c.png').mode == 'L'
    before = (out / 'a.png').stat().st_mtime_ns
    assert run_folder(photos, out, '--recursive', '--overwrite', '--quiet') == 0
    assert (out / 'a.png').stat().st_mtime_ns != before


def test_demo_folder_output_placement(photos, tmp_path, capsys):
    os.remove(photos / 'broken.png')
    assert run_folder(photos, photos) == 1
    assert 'is the input folder' in capsys.readouterr().err
    inside = photos / 'trip' / 'up'
    assert run_folder(photos, inside, '--recursive', '--quiet') == 0     # never read back as input
    assert run_folder(photos, inside, '--recursive') == 0
    assert '0 upscaled, 4 skipped' in capsys.readouterr().out
    assert not (inside / 'trip' / 'up').exists()
    assert run_folder(tmp_path / 'nothing', tmp_path / 'o2') == 1 and not (tmp_path / 'o2').exists()
    assert run_folder(photos / 'a.png', tmp_path / 'o3.png', '--recursive') == 1
    assert 'not a folder' in capsys.readouterr().err and not (tmp_path / 'o3.png').exists()


def test_api_folder(photos, tmp_path):
    os.remove(photos / 'broken.png')
    summary = api.upscale(str(photos), scale=2, model='bicubic', device='cpu', progress=False)
    assert isinstance(summary, batch.FolderSummary) and len(summary.upscaled) == 2
    assert sorted(os.listdir(tmp_path / 'photos_x2')) == ['a.png', 'b.jpg']
    summary = api.upscale(photos, scale=2, model='bicubic', recursive=True, progress=False)
    assert summary.line().startswith('2 upscaled, 2 skipped')
    (photos / 'zz.png').write_bytes(b'junk')
    with pytest.raises(UpscaleError, match='1 failed'):
        api.upscale(photos, scale=2, model='bicubic', progress=False)


def test_single_run_progress_bar(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, 'PROGRESS_AFTER', 0)            # the bar appears once a run lasts this long
    src = image(tmp_path / 'in.png')
    assert demo.main(['--input', str(src), '--output', str(tmp_path / 'o.png'), '--scale', '2', '--model',
                      'bicubic', '--device', 'cpu']) == 0
    assert 'upscaling' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# torch.hub and the API (item 10; issue 24)
# ------------------------------------------------------------------------------------------------
def test_hub_entry_is_an_image_to_image_callable(tmp_path):
    need_bundled()
    up = torch.hub.load(str(ROOT), 'lm_liif', source='local')
    x = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    y = up(x, 2)                                                 # the call the issue says failed
    ref = Session(api.load(None, 'cpu'), 'cpu')(x, (18, 14))
    assert y.shape == (1, 3, 18, 14) and torch.equal(y, ref)
    pil = up(Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)), size=(20, 15))
    assert pil.size == (20, 15)
    assert api.session_for(up, 'cpu').model is up.sr_model       # the hub model also opens a session
    other = torch.hub.load(str(ROOT), 'liif', source='local')    # random weights, same kind of callable
    assert other(x[0], scale=2).shape == (3, 18, 14)


def test_hub_pretrained_must_be_a_bool_and_network_passes_through(tmp_path):
    need_bundled()
    for bad in ('False', 0):
        with pytest.raises(UpscaleError, match='pretrained must be True or False'):
            torch.hub.load(str(ROOT), 'lm_liif', pretrained=bad, source='local')
    x = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(1))
    lte = torch.hub.load(str(ROOT), 'upscale', x, scale=2, network='lm_lte', source='local')
    ref = api.upscale(x, scale=2, model=str(BUNDLED / 'edsr-b_lm-lte.safetensors'))
    liif = api.upscale(x, scale=2)
    assert torch.equal(lte, ref) and not torch.equal(lte, liif)
    import hubconf
    assert torch.equal(hubconf.upscale(x, scale=2, model='lm_lte'), ref)   # model= when called directly


def test_api_cache_follows_the_file(tmp_path):
    need_bundled()
    path = tmp_path / 'm.safetensors'
    shutil.copyfile(BUNDLED / 'edsr-b_lm-liif.safetensors', path)
    first = api.load(str(path))
    assert api.load(str(path)) is first                          # cached while the file is unchanged
    shutil.copyfile(BUNDLED / 'edsr-b_lm-lte.safetensors', path)
    second = api.load(str(path))
    assert second is not first and type(second) is not type(first)
    x = torch.rand(3, 6, 5)
    assert torch.equal(api.upscale(x, scale=2, model=str(path)),
                       api.upscale(x, scale=2, model=str(BUNDLED / 'edsr-b_lm-lte.safetensors')))


def test_api_errors_are_one_type_and_huge_requests_are_refused_first(tmp_path):
    cases = [dict(image=torch.rand(3, 8, 8), scale=100000),
             dict(image=torch.rand(3, 8, 8), size=(900000, 900000)),
             dict(image=str(tmp_path / 'missing.png'), scale=2),
             dict(image=torch.rand(3, 8, 8), scale=2, model=str(tmp_path / 'absent.pth')),
             dict(image=torch.rand(3, 8, 8), scale='abc'),
             dict(image=torch.rand(3, 8, 8), size=(10, 10, 10))]
    for kw in cases:
        image_ = kw.pop('image')
        with pytest.raises(UpscaleError) as info:
            api.upscale(image_, model=kw.pop('model', 'bicubic'), device='cpu', **kw)
        assert '\n' not in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(UpscaleError, match='GiB'):
        api.upscale(torch.rand(3, 8, 8), scale=100000, model='bicubic', device='cpu')
    with pytest.raises(UpscaleError, match='model file not found'):
        api.upscale(torch.rand(3, 8, 8), scale=2, model=str(tmp_path / 'absent.pth'))


def test_threads_flag_is_in_the_shared_device_flags():
    import argparse
    p = argparse.ArgumentParser()
    cli.add_device_args(p)
    assert p.parse_args(['--threads', '4']).threads == 4 and p.parse_args([]).threads is None


def test_test_py_from_another_directory(tmp_path, monkeypatch, capsys):
    """A README test command (relative config, its load/... data folder) run from outside the repository."""
    import test as test_script
    from .conftest import DATA, need, set5_opts
    opts = [] if (ROOT / 'load' / 'benchmark' / 'Set5').exists() else set5_opts(2)
    if opts:
        need(DATA, 'shared image data')
    monkeypatch.chdir(tmp_path)
    assert test_script.main(['--config', 'configs/test/set5-x2.yaml', '--model', 'bicubic', '--quiet',
                             '--results-dir', 'res', *opts]) == 0
    assert 'PSNR 33.67' in capsys.readouterr().out and (tmp_path / 'res').is_dir()   # the classic 33.66 dB


def test_claims_register_one_exit_handler(tmp_path, monkeypatch):
    """The API claims threads on every call: the claim file comes and goes each time, and the handler that
    removes it at exit is registered once per process, not once per call."""
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    monkeypatch.setattr(resources, '_release_registered', False)
    registered = []
    monkeypatch.setattr(resources.atexit, 'register', registered.append)
    claims = tmp_path / f'assr-threads-{os.getuid()}'
    for _ in range(3):
        with resources.threads_held(2):
            assert len(list(claims.glob('*.claim'))) == 1
        assert not list(claims.glob('*.claim'))
    assert registered == [resources.release_threads]
