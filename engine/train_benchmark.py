"""Training speed: ``train.py``'s step, and optionally the published LMF loop, timed in one run.

Used by ``scripts/train_benchmark.py``. For each config (default: the published EDSR-baseline LM-LIIF,
LM-LTE and LIIF configs: batch 16, 48x48 LR crops, 2304 queries, scales U(1, 4)) a worker process builds
the training run exactly as ``train.py`` does (``engine.run_setup.setup_run``) and times
``engine.training.train_step``, the function ``train.py`` calls, split by its ``probe`` into

* data: waiting for the next batch of the run's DataLoader (cropping, resizing, query sampling, collation);
* forward: zeroing the gradients, moving the batch, the model, the loss and reading its value;
* backward: ``loss.backward()``;
* optimizer: the optimizer step (and EMA update when configured).

The four add up to the step time, which is measured apart, end to end. On CUDA every boundary is
synchronised.

The published loop (``--published PATH``, a checkout of the LMF repository) runs in a second worker process
that imports the checkout's own ``datasets``, ``models`` and ``utils`` (its ``image-folder`` with
``cache: in_memory``, its ``sr-implicit-downsampled`` wrapper, ``models.make``, ``utils.make_optimizer``)
and performs the body of its ``train.py`` ``train()`` loop: batch to the device, input normalisation,
``model(inp, coord, cell)``, target normalisation, ``nn.L1Loss``, ``utils.calc_psnr``, ``loss.item()``,
``zero_grad``, ``backward``, ``step``, with the same batch size, crops, queries, seed and thread count. Its
TensorBoard writes are left out (they only slow it down). On a CPU-only machine the checkout's ``.cuda()``
calls are made to return the tensor (module) on the benchmark device; ``torchvision._meta_registrations``
(meta kernels of detection operators the loop never calls) is skipped so that a torchvision wheel built for
CUDA imports on a CPU-only torch. The checkout's imports (torchvision, tensorboardX, imageio, timm) must be
importable (``PYTHONPATH``).

Fairness: the two workers run in blocks of ``block`` iterations, alternately (which goes first alternates
too), after ``warmup`` iterations each, so that a background load affects both alike. With DataLoader
workers (``workers`` > 0) a loop's workers keep preparing batches while the other loop runs: its data time
is then understated (the default, 0, loads inside the timed step). Each worker sets
``torch.set_num_threads(threads)`` (and ``OMP_NUM_THREADS``).

Data: the config's training folders when they exist; else the stand-in photos (``load/train_standin/``:
sun80, kodak24, mcmaster, bsd200, see configs/train-standin); else synthetic images (smooth random
textures, 512x384), written to a temporary folder. ``images`` files, evenly spaced over the sorted list, are
linked into one temporary folder that both loops read with ``cache: in_memory``; the report says which
data was used. Peak memory: the worker's peak resident set (``ru_maxrss``, Linux) on CPU, which includes
the decoded images, or ``torch.cuda.max_memory_allocated`` on CUDA (DataLoader worker processes not
included).
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = ('configs/train-lmf/train_edsr-baseline-lmliif.yaml',
                   'configs/train-lmf/train_edsr-baseline-lmlte.yaml',
                   'configs/train-original/train_edsr-baseline-liif.yaml')
STANDIN = ('sun80', 'kodak24', 'mcmaster', 'bsd200')
PHASES = ('data', 'forward', 'backward', 'optimizer')


class BenchmarkError(ValueError):
    """A benchmark input is wrong (config, path) or a worker failed; the message says which."""


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _config_roots(cfg):
    ds = (cfg.get('train_dataset') or {}).get('dataset') or {}
    root = (ds.get('args') or {}).get('root_path')
    if root is None:
        return []
    roots = [root] if isinstance(root, str) else list(root)
    return [r if os.path.isabs(r) else os.path.join(os.getcwd(), r) for r in roots]


def _image_files(folder):
    from utils.image import is_image_file
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if is_image_file(f) and os.path.isfile(os.path.join(folder, f)))


def _synthetic_images(folder, n, seed=0):
    """``n`` smooth random RGB images (512x384 PNG) in ``folder``: bilinear upsampling of noise."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        small = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(small).resize((512, 384), Image.BILINEAR)
        img.save(os.path.join(folder, f'synthetic_{i:03d}.png'))
    return _image_files(folder)


def prepare_data(cfg, tmp, images):
    """(folder holding ``images`` image links or files, description). See the module docstring."""
    roots = _config_roots(cfg)
    if roots and all(os.path.isdir(r) for r in roots):
        files, what = [f for r in roots for f in _image_files(r)], 'the config\'s training images'
    else:
        standin = [os.path.join(ROOT, 'load', 'train_standin', s) for s in STANDIN]
        if all(os.path.isdir(s) for s in standin):
            files = [f for s in standin for f in _image_files(s)]
            what = 'stand-in photos (load/train_standin: ' + ', '.join(STANDIN) + ')'
        else:
            files = _synthetic_images(os.path.join(tmp, 'synthetic'), images)
            what = 'synthetic 512x384 images (the config\'s data and load/train_standin are absent)'
    if not files:
        raise BenchmarkError(f'no training images found for {what}')
    n = min(images, len(files))
    picked = [files[(i * len(files)) // n] for i in range(n)]
    folder = os.path.join(tmp, 'train')
    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(picked):
        os.symlink(os.path.abspath(f), os.path.join(folder, f'{i:04d}_{os.path.basename(f)}'))
    return folder, f'{n} {what}'


def benchmark_config(cfg, folder, needed_items):
    """The config with its training set replaced by ``folder`` (``cache: in_memory``, enough repeats for
    ``needed_items`` items), no validation set, and one checkpoint-free epoch plan."""
    import copy
    cfg = copy.deepcopy(cfg)
    n = len(os.listdir(folder))
    cfg['train_dataset']['dataset'] = {'name': 'image-folder', 'args': {
        'root_path': folder, 'repeat': max(1, math.ceil(needed_items / n) + 1), 'cache': 'in_memory'}}
    cfg.pop('val_dataset', None)
    cfg.pop('init_weights', None)
    cfg.pop('resume', None)
    return cfg


# ------------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------------
class _Clock:
    """Phase boundaries of one step (perf_counter; CUDA synchronised first)."""

    def __init__(self, device):
        import torch
        self.sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
        self.marks = []

    def start(self):
        self.sync()
        self.marks = [('start', time.perf_counter())]

    def __call__(self, name):
        self.sync()
        self.marks.append((name, time.perf_counter()))

    def split(self, total):
        """{phase: seconds} of the step just timed (forward/backward summed over micro-batches) and
        ``total``, the step's wall time measured apart by the caller (the phases should add up to it)."""
        out = dict.fromkeys(PHASES, 0.0)
        for (_, t0), (name, t1) in zip(self.marks, self.marks[1:]):
            out[name] += t1 - t0
        out['total'] = total
        return out


class OursLoop:
    """``train.py``'s run (``setup_run``) and its ``train_step``."""

    def __init__(self, cfg, save_dir, device, seed, workers, amp):
        from engine.distributed import setup_distributed
        from engine.run_setup import Options, derive_seed, seed_all, setup_run
        self.dd = setup_distributed(device)
        self.run = setup_run(cfg, save_dir, self.dd, Options(workers=workers, seed=seed, amp=amp, resume=False,
                                                            progress=False))
        seed_all(derive_seed(seed, 1, self.dd.rank))
        self.run.train.set_epoch(1)
        self.run.net.train()
        self.batches = iter(self.run.train.loader)
        self.clock = _Clock(self.dd.device)
        self.count = 0
        self.params = sum(p.numel() for p in self.run.model.parameters())

    def step(self):
        from engine.training import train_step
        t0 = time.perf_counter()
        self.clock.start()
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.run.train.loader)
            batch = next(self.batches)
        self.clock('data')
        loss, _, _ = train_step(self.run, [batch], 1, self.count, probe=self.clock)
        self.clock.sync()
        total = time.perf_counter() - t0
        self.count += 1
        return self.clock.split(total), loss

    def close(self):
        self.run.close()


def check_published(path):
    """Refuse a folder that is not an LMF checkout (no train.py, models/, datasets/, utils.py)."""
    if not all(os.path.exists(os.path.join(path, p)) for p in ('train.py', 'models', 'datasets', 'utils.py')):
        raise BenchmarkError(f'--published {path}: not a checkout of the LMF repository (needs train.py, models/, '
                             f'datasets/ and utils.py)')


def import_published(path, device):
    """The published checkout's ``datasets``, ``models``, ``utils`` modules (module docstring)."""
    import types

    import torch
    check_published(path)
    sys.modules.setdefault('torchvision._meta_registrations', types.ModuleType('torchvision._meta_registrations'))
    if device.type != 'cuda':
        torch.Tensor.cuda = lambda self, *a, **k: self.to(device)
        torch.nn.Module.cuda = lambda self, *a, **k: self.to(device)
    for name in ('datasets', 'models', 'utils'):      # this project's packages of the same names
        for key in [k for k in sys.modules if k == name or k.startswith(name + '.')]:
            del sys.modules[key]
    sys.path.insert(0, os.path.abspath(path))
    import importlib
    try:        # the checkout's modules, by name (not this project's packages of the same names)
        return tuple(importlib.import_module(name) for name in ('datasets', 'models', 'utils'))
    except ImportError as e:
        raise BenchmarkError(f'--published {path}: cannot import its modules ({e}); install what its '
                             f'requirements.txt names or add it to PYTHONPATH') from None


class PublishedLoop:
    """The body of the published ``train.py`` ``train()`` loop (module docstring)."""

    def __init__(self, cfg, path, device, seed, workers):
        import random

        import numpy as np
        import torch
        from torch.utils.data import DataLoader
        self.device = device
        self.datasets, self.models, self.utils = import_published(path, device)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        spec = cfg['train_dataset']
        dataset = self.datasets.make(spec['dataset'])
        dataset = self.datasets.make(spec['wrapper'], args={'dataset': dataset})
        self.loader = DataLoader(dataset, batch_size=spec['batch_size'], shuffle=True, num_workers=workers,
                                 pin_memory=device.type == 'cuda')
        self.model = self.models.make(cfg['model']).to(device)
        self.optimizer = self.utils.make_optimizer(self.model.parameters(), cfg['optimizer'])
        self.model.train()
        self.loss_fn = torch.nn.L1Loss()
        norm = cfg.get('data_norm') or {'inp': {'sub': [0], 'div': [1]}, 'gt': {'sub': [0], 'div': [1]}}   # as published
        self.inp_sub = torch.FloatTensor(norm['inp']['sub']).view(1, -1, 1, 1).to(device)
        self.inp_div = torch.FloatTensor(norm['inp']['div']).view(1, -1, 1, 1).to(device)
        self.gt_sub = torch.FloatTensor(norm['gt']['sub']).view(1, 1, -1).to(device)
        self.gt_div = torch.FloatTensor(norm['gt']['div']).view(1, 1, -1).to(device)
        self.batches = iter(self.loader)
        self.clock = _Clock(device)
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self):
        clock = self.clock
        t0 = time.perf_counter()
        clock.start()
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        clock('data')
        for k, v in batch.items():
            batch[k] = v.to(self.device)
        inp = (batch['inp'] - self.inp_sub) / self.inp_div
        pred = self.model(inp, batch['coord'], batch['cell'])
        gt = (batch['gt'] - self.gt_sub) / self.gt_div
        loss = self.loss_fn(pred, gt)
        self.utils.calc_psnr(pred, gt)
        value = loss.item()
        loss.item()
        self.optimizer.zero_grad()
        clock('forward')
        loss.backward()
        clock('backward')
        self.optimizer.step()
        clock('optimizer')
        total = time.perf_counter() - t0
        return clock.split(total), value

    def close(self):
        pass


def peak_memory_mb(device):
    import resource

    import torch
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux


def worker_main(spec):
    """Serve one loop over a private pipe: lines ``run N`` -> one JSON line of N step splits; ``memory``;
    ``quit``. Anything the project prints goes to stderr."""
    proto = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)

    def send(obj):
        proto.write(json.dumps(obj) + '\n')
        proto.flush()

    try:
        import torch
        torch.set_num_threads(spec['threads'])
        device = torch.device(spec['device'])
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        if spec['loop'] == 'published':
            loop = PublishedLoop(spec['cfg'], spec['published'], device, spec['seed'], spec['workers'])
        else:
            loop = OursLoop(spec['cfg'], spec['save_dir'], spec['device'], spec['seed'], spec['workers'],
                            spec['amp'])
        send({'ready': True, 'params': loop.params})
    except BenchmarkError as e:
        send({'error': str(e)})
        return 1
    except Exception as e:      # noqa: BLE001  (reported by the driver in one line)
        send({'error': f'{type(e).__name__}: {e}'})
        return 1
    for line in sys.stdin:
        cmd = line.split()
        try:
            if cmd[0] == 'run':
                steps = [loop.step() for _ in range(int(cmd[1]))]
                send({'splits': [s for s, _ in steps], 'loss': [v for _, v in steps]})
            elif cmd[0] == 'memory':
                send({'memory_mb': peak_memory_mb(device)})
            else:
                break
        except Exception as e:      # noqa: BLE001
            send({'error': f'{type(e).__name__}: {e}'})
            return 1
    loop.close()
    return 0


class Worker:
    """A worker process (``python -m engine.train_benchmark SPEC.json``) and its pipe."""

    def __init__(self, name, spec, tmp, threads):
        self.name = name
        spec_path = os.path.join(tmp, f'{name}.json')
        with open(spec_path, 'w') as f:
            json.dump(spec, f)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.log = open(os.path.join(tmp, f'{name}.log'), 'w+')
        self.proc = subprocess.Popen([sys.executable, '-m', 'engine.train_benchmark', spec_path], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready = self.receive()

    def receive(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            tail = [t for t in self.log.read().strip().splitlines() if t.strip()][-1:] or ['no output']
            raise BenchmarkError(f'the {self.name} worker stopped: {tail[0][:300]}')
        msg = json.loads(line)
        if 'error' in msg:
            raise BenchmarkError(f'the {self.name} loop failed: {msg["error"][:500]}')
        return msg

    def request(self, text):
        self.proc.stdin.write(text + '\n')
        self.proc.stdin.flush()
        return self.receive()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('quit\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
@dataclass
class LoopResult:
    config: str
    loop: str
    batch: int
    splits: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    memory_mb: float = float('nan')
    params: int = 0

    def mean(self, key):
        return sum(s[key] for s in self.splits) / len(self.splits)

    @property
    def its(self):
        return 1.0 / self.mean('total')

    @property
    def samples(self):
        return self.batch * self.its


def run_benchmark(configs, iters=10, warmup=2, device='cpu', threads=None, workers=0, published=None, block=2,
                  amp=None, seed=0, images=32, report=print):
    """Time every config's loops; returns ([LoopResult], data description). ``report`` gets progress lines."""
    import torch

    from utils.config import load_config
    threads = threads or torch.get_num_threads()
    if published:
        check_published(published)
    results, data_what = [], None
    for path in configs:
        cfg = load_config(path)
        if cfg.get('train_dataset') is None or 'wrapper' not in cfg['train_dataset']:
            raise BenchmarkError(f'{path}: no train_dataset with a wrapper')
        batch = int(cfg['train_dataset'].get('batch_size', 1))
        with tempfile.TemporaryDirectory(prefix='train_benchmark_') as tmp:
            folder, data_what = prepare_data(cfg, tmp, images)
            bench = benchmark_config(cfg, folder, (warmup + iters + 1) * batch)
            base = dict(cfg=bench, device=device, threads=threads, seed=seed, workers=workers)
            loops = [('ours', dict(base, loop='ours', save_dir=os.path.join(tmp, 'run'), amp=amp))]
            if published:
                loops.append(('published', dict(base, loop='published', published=os.path.abspath(published))))
            started = []
            try:
                for name, spec in loops:
                    started.append(Worker(name, spec, tmp, threads))
                out = [LoopResult(os.path.relpath(path), w.name, batch, params=w.ready['params']) for w in started]
                for w in started:
                    w.request(f'run {warmup}') if warmup else None
                done, turn = 0, 0
                while done < iters:
                    n = min(block, iters - done)
                    order = started if turn % 2 == 0 else started[::-1]
                    for w in order:
                        msg = w.request(f'run {n}')
                        r = out[started.index(w)]
                        r.splits += msg['splits']
                        r.losses += msg['loss']
                    done += n
                    turn += 1
                    report(f'{os.path.basename(path)}: {done}/{iters} iterations')
                for w, r in zip(started, out):
                    r.memory_mb = w.request('memory')['memory_mb']
            finally:
                for w in started:
                    w.close()
        results += out
    return results, data_what


def format_table(results, device, threads, workers, data_what, iters, warmup):
    """Markdown table of the results, then one ratio line per config with both loops."""
    lines = [f'device {device}, {threads} thread(s), DataLoader workers {workers}, {iters} timed iterations '
             f'after {warmup} warm-up, data: {data_what}', '',
             '| config | loop | it/s | samples/s | data ms | forward ms | backward ms | optimizer ms | step ms '
             '| peak memory MB |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in results:
        lines.append(f'| {r.config} | {r.loop} | {r.its:.3f} | {r.samples:.2f} | '
                     + ' | '.join(f'{1000 * r.mean(k):.0f}' for k in PHASES + ('total',))
                     + f' | {r.memory_mb:.0f} |')
    by_config = {}
    for r in results:
        by_config.setdefault(r.config, {})[r.loop] = r
    ratios = [f'{c}: ours / published samples/s = {d["ours"].samples / d["published"].samples:.2f}x'
              for c, d in by_config.items() if 'ours' in d and 'published' in d]
    if ratios:
        lines += [''] + ratios
    return '\n'.join(lines)


if __name__ == '__main__':
    with open(sys.argv[1]) as f:
        sys.exit(worker_main(json.load(f)))
