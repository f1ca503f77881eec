"""train.py never saves a diverged model, never lets two runs share a folder, leaves nothing behind
after a failed start, and honours or refuses (never ignores) config changes on resume."""
import os
import subprocess
import sys

import pytest
import torch

from models.checkpoint import load_checkpoint

from .conftest import make_images, run_train, write_config


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp('images'), n=4, size=48)


def tiny(tmp_path, data, **kw):
    kw.setdefault('repeat', 1)
    kw.setdefault('sample_q', 64)
    return write_config(tmp_path / 'tiny.yaml', data, **kw)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith('train.py: error: ') and '\n' not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_a_diverging_run_keeps_the_last_good_checkpoint_and_refuses_to_resume_into_divergence(
        tmp_path, data, capsys):
    cfg = tiny(tmp_path, data, epoch_max=4)
    run = tmp_path / 'runs/_tiny'
    assert run_train(cfg, tmp_path / 'runs', '--stop-after', '1') == 0
    good = snapshot(run)
    assert {'epoch-last.pth', 'epoch-best.pth'} <= set(good)
    capsys.readouterr()
    # a huge learning rate from epoch 2 on (a changed lr is honoured on resume)
    assert run_train(cfg, tmp_path / 'runs', '--opt', 'optimizer.args.lr=1.e+30') == 1
    one_line_error(capsys, 'epoch 2', 'non-finite', 'still holds epoch 1',
                   'epoch-best.pth epoch 1', 'lower learning rate')
    now = snapshot(run)
    for name in ('epoch-last.pth', 'epoch-best.pth'):
        assert now[name] == good[name], name
    assert not (run / 'epoch-2.pth').exists()
    assert 'DIVERGED' in now and 'error:' in now['log.txt'].decode().splitlines()[-1]
    # the same command again would diverge again: refused, with the way out, nothing changed
    assert run_train(cfg, tmp_path / 'runs', '--opt', 'optimizer.args.lr=1.e+30') == 1
    one_line_error(capsys, 'diverged before', 'lower it (--opt optimizer.args.lr=...)', '--no-resume')
    assert {k: v for k, v in snapshot(run).items() if k != 'log.txt'} == \
        {k: v for k, v in now.items() if k != 'log.txt'}
    # a lower learning rate continues from the good epoch 1 to the end
    assert run_train(cfg, tmp_path / 'runs') == 0
    ckpt = load_checkpoint(run / 'epoch-last.pth')
    assert ckpt['epoch'] == 4 and not (run / 'DIVERGED').exists()
    assert all(torch.isfinite(v).all() for v in ckpt['model']['sd'].values() if v.is_floating_point())


def test_a_checkpoint_with_non_finite_weights_is_not_resumed(tmp_path, data, capsys):
    cfg = tiny(tmp_path, data, epoch_max=2)
    assert run_train(cfg, tmp_path / 'r', '--stop-after', '1') == 0
    last = tmp_path / 'r/_tiny/epoch-last.pth'
    ckpt = torch.load(last, weights_only=True)
    next(iter(ckpt['model']['sd'].values())).view(-1)[0] = float('nan')
    torch.save(ckpt, last)
    before = snapshot(last.parent)
    capsys.readouterr()
    assert run_train(cfg, tmp_path / 'r') == 1
    one_line_error(capsys, 'non-finite', 'epoch-N.pth', '--no-resume')
    assert {k: v for k, v in snapshot(last.parent).items() if k != 'log.txt'} == \
        {k: v for k, v in before.items() if k != 'log.txt'}


def test_changed_learning_rate_is_honoured_on_resume(tmp_path, data, capsys):
    cfg = tiny(tmp_path, data, epoch_max=3)      # milestones [2], gamma 0.5
    assert run_train(cfg, tmp_path / 'r', '--stop-after', '1') == 0
    assert run_train(cfg, tmp_path / 'r', '--stop-after', '1', '--opt', 'optimizer.args.lr=4.e-4') == 0
    out = capsys.readouterr().out
    assert 'optimizer.args.lr changed from 0.001 to 0.0004' in out
    ckpt = load_checkpoint(tmp_path / 'r/_tiny/epoch-last.pth')
    assert ckpt['epoch'] == 2
    # epoch 2 ran at 4e-4; the milestone at 2 halved it
    assert ckpt['optimizer']['sd']['param_groups'][0]['lr'] == pytest.approx(2e-4, rel=1e-12)
    assert 'lr: 0.0004' in (tmp_path / 'r/_tiny/config.yaml').read_text()


@pytest.mark.parametrize('opt, needle', [
    (['optimizer.name=sgd'], "optimizer.name is 'sgd' but"),
    (['model.args.mod_input=false'], 'model config differs'),
])
def test_incompatible_changes_on_resume_are_refused(tmp_path, data, capsys, opt, needle):
    cfg = tiny(tmp_path, data, epoch_max=2)
    assert run_train(cfg, tmp_path / 'r', '--stop-after', '1') == 0
    before = snapshot(tmp_path / 'r/_tiny')
    capsys.readouterr()
    assert run_train(cfg, tmp_path / 'r', '--opt', *opt) == 1
    one_line_error(capsys, needle, '--no-resume')
    assert snapshot(tmp_path / 'r/_tiny') == before


def test_a_second_run_into_the_same_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, data, capsys):
    cfg = tiny(tmp_path, data, epoch_max=1)
    folder = tmp_path / 'r/_tiny'
    folder.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        import socket
        (folder / 'run.lock').write_text(f'{other.pid} {socket.gethostname()}\n')
        assert run_train(cfg, tmp_path / 'r') == 1
        one_line_error(capsys, f'in use by another training process (pid {other.pid})')
        assert sorted(p.name for p in folder.iterdir()) == ['run.lock']
    finally:
        other.kill()
        other.wait()
    # the owner is gone: the lock is stale and taken over; a killed save's temporary file is removed
    (folder / '.epoch-last.pth.abc123.tmp').write_bytes(b'partial')
    assert run_train(cfg, tmp_path / 'r') == 0
    log = (folder / 'log.txt').read_text()
    assert f'took over a stale lock (pid {other.pid} is not running)' in log
    assert 'removed 1 temporary file(s)' in log
    assert not any(p.name.endswith('.tmp') for p in folder.iterdir())
    assert not (folder / 'run.lock').exists()          # released at the end


def test_a_failed_start_leaves_no_run_folder(tmp_path, data, capsys):
    cfg = tiny(tmp_path, data, extra='')
    text = cfg.read_text().replace(str(data), str(tmp_path / 'missing'), 1)
    cfg.write_text(text)
    assert run_train(cfg, tmp_path / 'save') == 1
    one_line_error(capsys, 'missing')
    assert not (tmp_path / 'save').exists()
    # refused while another process holds the folder: the existing folder is left as it was
    assert run_train(tiny(tmp_path, data), tmp_path / 'save2', '--opt', 'epoch_max=0') == 1
    one_line_error(capsys, 'epoch_max must be', '>= 1')
    assert not (tmp_path / 'save2').exists()


def test_run_lock_unit(tmp_path):
    from engine.run_folder import RunFolderError, RunLock
    with RunLock(str(tmp_path)) as lock:
        assert lock.held and (tmp_path / 'run.lock').read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunFolderError, match='locked by process 1 on host'):
            (tmp_path / 'run.lock').write_text('1 some-other-host\n')
            RunLock(str(tmp_path)).acquire()
        (tmp_path / 'run.lock').write_text('1 x\n')
    assert (tmp_path / 'run.lock').exists()              # not ours any more: left alone


def _take_lock(folder, barrier, results):
    from engine.run_folder import RunFolderError, RunLock
    barrier.wait()
    try:
        lock = RunLock(folder).acquire()
    except RunFolderError:
        results.put('refused')
        return
    results.put('owner')
    import time
    time.sleep(1.0)          # hold it while the others try
    lock.release()


def test_concurrent_takeover_of_a_stale_lock_has_one_owner(tmp_path):
    """Four processes start together on a stale lock (its process is dead): exactly one owns the folder,
    the others are refused, in every trial."""
    import multiprocessing as mp
    ctx = mp.get_context('fork' if 'fork' in mp.get_all_start_methods() else 'spawn')
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    import socket
    for trial in range(5):
        folder = tmp_path / f't{trial}'
        folder.mkdir()
        (folder / 'run.lock').write_text(f'{dead.pid} {socket.gethostname()}\n')
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_take_lock, args=(str(folder), barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        outcomes = sorted(results.get(timeout=5) for _ in procs)
        assert outcomes == ['owner', 'refused', 'refused', 'refused'], (trial, outcomes)
        assert not (folder / 'run.lock').exists()


@pytest.mark.parametrize('kind', ['exported', 'no_epoch', 'bad_epoch'])
def test_resume_refuses_a_file_that_is_not_a_training_checkpoint(tmp_path, data, capsys, kind):
    """An exported model copied over epoch-last.pth, or a checkpoint without (or with a bad) epoch: one line
    naming the file and the way out, nothing written (issue 24, cause 2)."""
    cfg = tiny(tmp_path, data, epoch_max=2)
    assert run_train(cfg, tmp_path / 'r', '--stop-after', '1') == 0
    run = tmp_path / 'r/_tiny'
    ckpt = torch.load(run / 'epoch-last.pth', weights_only=True)      # not memory-mapped: rewritten below
    if kind == 'exported':
        ckpt = {'model': ckpt['model']}
    elif kind == 'no_epoch':
        del ckpt['epoch']
    else:
        ckpt['epoch'] = 'two'
    torch.save(ckpt, run / 'epoch-last.pth')
    before = snapshot(run)
    capsys.readouterr()
    assert run_train(cfg, tmp_path / 'r') == 1
    one_line_error(capsys, 'epoch-last.pth', "'epoch'" if kind == 'bad_epoch' else 'not a training checkpoint')
    assert {k: v for k, v in snapshot(run).items() if k != 'log.txt'} == \
        {k: v for k, v in before.items() if k != 'log.txt'}
