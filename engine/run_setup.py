"""Setting up a training run: the config checked and turned into objects, the run folder opened, the
last checkpoint restored. Used by ``engine.training`` (see its docstring for the whole picture).

* ``read_settings(cfg, options)``: every scalar entry checked (one-line ``ConfigError``) first.
* ``build_run``: model, optimizer, scheduler, loss, metric (``engine.components`` registries), EMA and
  loaders, in memory only.
* ``open_run_folder``: create and lock the folder, remove temporaries of killed saves
  (``engine.run_folder``).
* ``restore``: ``epoch-last.pth`` back into the run; refuses checkpoints with non-finite weights, a run
  marked as diverged (unless the learning rate changed), a different model or optimizer; honours
  changed optimizer arguments (``apply_optimizer_changes``).
* ``setup_run``: all of the above; a failed start leaves no run folder behind and stops every process.
"""
import copy
import inspect
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler

import datasets
import models
from models.budget import ModelSizeError, check_spec_size
from models.checkpoint import load_checkpoint
from datasets.build import build_dataset, check_data_norm
from utils.config import ConfigError, require
from utils.io import atomic_write, interrupts_deferred
from utils.untrusted import excerpt

from .components import WeightedLoss, _numbers, build_metric, build_optimizer, build_scheduler
from .distributed import Dist, agree
from .errors import TrainingDiverged
from .run_folder import RunLock, clean_stale_temporaries, clear_divergence, marker_lr, read_divergence

VAL_EPOCH = 0          # validation items are always drawn as in epoch 0: a fixed set


def derive_seed(*parts):
    """A 32-bit seed that depends on every part (SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
@dataclass
class Options:
    """Command-line choices of ``train.py`` (not part of the config)."""
    workers: int = 0
    seed: int = 0
    amp: Optional[str] = None          # None, 'bf16' or 'fp16'
    grad_clip: Optional[float] = None  # overrides the config's grad_clip
    resume: bool = True
    stop_after: Optional[int] = None
    progress: bool = True


@dataclass
class Settings:
    epoch_max: int
    epoch_val: Optional[int]
    epoch_save: Optional[int]
    accumulate: int
    ema_decay: Optional[float]
    grad_clip: Optional[float]
    val_scales: Optional[list]
    amp_dtype: Optional[torch.dtype]


def _int(cfg, key, minimum=1, default=None):
    value = cfg.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ConfigError(f'{key} must be an integer >= {minimum}, got {value!r}')
    return int(value)


def _positive_float(value, name):
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{name} must be a number, got {value!r}') from None
    if isinstance(value, bool) or not math.isfinite(out) or out <= 0:
        raise ConfigError(f'{name} must be a positive number, got {value!r}')
    return out


def read_settings(cfg, options=None):
    """Check the config's scalar entries (and the command-line options) before anything is built."""
    options = options or Options()
    require(cfg, 'epoch_max')
    epoch_max = _int(cfg, 'epoch_max')
    accumulate = _int(cfg, 'accumulate', default=1)
    ema = cfg.get('ema_decay')
    if ema is not None:
        ema = _positive_float(ema, 'ema_decay')
        if ema >= 1:
            raise ConfigError(f'ema_decay must be in (0, 1), got {cfg["ema_decay"]!r}')
    grad_clip = options.grad_clip if options.grad_clip is not None else cfg.get('grad_clip')
    grad_clip = _positive_float(grad_clip, 'grad_clip (--grad-clip)')
    if options.amp not in (None, 'bf16', 'fp16'):
        raise ConfigError(f'--amp must be bf16 or fp16, got {options.amp!r}')
    val_scales = cfg.get('val_scales')
    if val_scales is not None:
        if (not isinstance(val_scales, list) or not val_scales
                or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in val_scales)):
            raise ConfigError(f'val_scales must be a non-empty list of positive scales, got {val_scales!r}')
        if not cfg.get('val_dataset'):
            raise ConfigError('val_scales needs a val_dataset')
        if len(set(val_scales)) != len(val_scales):
            raise ConfigError(f'val_scales has repeated scales: {val_scales!r}')
    if options.stop_after is not None and options.stop_after < 1:
        raise ConfigError(f'--stop-after must be >= 1, got {options.stop_after}')
    if options.workers < 0:
        raise ConfigError(f'--workers must be >= 0, got {options.workers}')
    return Settings(epoch_max=epoch_max, epoch_val=_int(cfg, 'epoch_val'), epoch_save=_int(cfg, 'epoch_save'),
                    accumulate=accumulate, ema_decay=ema, grad_clip=grad_clip, val_scales=val_scales,
                    amp_dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}.get(options.amp))


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def make_dataset(spec, seed, where):
    if not isinstance(spec, dict):
        raise ConfigError(f'{where} must be a mapping {{dataset, wrapper, batch_size}}, got {excerpt(spec, 100)}')
    return build_dataset(spec, where, seed)


def per_scale_spec(spec, scale, where):
    """A copy of a dataset spec whose wrapper produces only ``scale`` (``scales: [s]`` for integer
    wrappers, ``scale_min = scale_max = s`` for continuous ones); a batch sampler is dropped."""
    spec = copy.deepcopy(spec)
    spec.pop('batch_sampler', None)
    wrapper = require(spec, 'wrapper', where=where)
    cls = datasets.get_dataset_class(require(wrapper, 'name', where=f'{where}.wrapper'))
    params = inspect.signature(cls).parameters
    args = dict(wrapper.get('args') or {})
    if 'scales' in params:
        if scale != int(scale):
            raise ConfigError(f'val_scales: {wrapper["name"]} takes integer scales only, got {scale}')
        args['scales'] = [int(scale)]
    elif 'scale_min' in params and 'scale_max' in params:
        args['scale_min'] = args['scale_max'] = scale
    else:
        raise ConfigError(f"val_scales: the {where} wrapper {wrapper['name']!r} has no scale to fix")
    wrapper['args'] = args
    return spec


@dataclass
class Loader:
    loader: DataLoader
    sampler: object
    dataset: object

    def set_epoch(self, epoch):
        for obj in (self.sampler, self.dataset):
            if hasattr(obj, 'set_epoch'):
                obj.set_epoch(epoch)


def make_loader(spec, seed, dd, workers, train, where, accumulate=1):
    """DataLoader over ``{dataset, wrapper, batch_size[, batch_sampler]}``; each of the ``dd.world``
    processes loads micro-batches of ``batch_size / (world * accumulate)``."""
    ds = make_dataset(spec, seed, where)
    batch = require(spec, 'batch_size', where=where)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f'{where}.batch_size must be a positive integer, got {batch!r}')
    parts = dd.world * accumulate
    if batch % parts:
        raise ConfigError(f'{where}.batch_size={batch} is not divisible by {dd.world} process(es) x '
                          f'accumulate {accumulate}')
    micro = batch // parts
    common = dict(num_workers=workers, pin_memory=dd.device.type == 'cuda', persistent_workers=False)
    sampler_spec = spec.get('batch_sampler')
    if sampler_spec is not None:
        from datasets.samplers import make_batch_sampler
        sampler = make_batch_sampler(sampler_spec, ds, micro, seed=seed, rank=dd.rank, world=dd.world,
                                     shuffle=train)
        return Loader(DataLoader(ds, batch_sampler=sampler, **common), sampler, ds)
    sampler = DistributedSampler(ds, num_replicas=dd.world, rank=dd.rank, shuffle=train, seed=seed,
                                 drop_last=False)
    return Loader(DataLoader(ds, batch_size=micro, sampler=sampler, **common), sampler, ds)


def make_val_sets(cfg, seed, dd, workers):
    """``[(scale or None, Loader)]``: one set per ``val_scales`` entry, else the val_dataset as is."""
    spec = cfg.get('val_dataset')
    if not spec or not cfg.get('epoch_val'):
        return []
    single = Dist(0, 1, 0, dd.device)        # rank 0 validates everything
    scales = cfg.get('val_scales')
    if not scales:
        return [(None, make_loader(spec, seed, single, workers, False, 'val_dataset'))]
    return [(s, make_loader(per_scale_spec(spec, s, 'val_dataset'), seed, single, workers, False,
                            f'val_dataset (x{s})')) for s in scales]


# ------------------------------------------------------------------------------------------------
# EMA, checks
# ------------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's parameters: ``ema = decay * ema + (1 - decay) * w`` after
    every optimizer step (BasicSR's ``model_ema``); buffers are copied."""

    def __init__(self, model, decay):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def compute_num_params(model):
    n = sum(p.numel() for p in model.parameters())
    return f'{n / 1e6:.1f}M' if n >= 1e6 else f'{n / 1e3:.1f}K'


def all_finite(tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def optimizer_tensors(state_dict):
    for state in state_dict.get('state', {}).values():
        yield from (v for v in state.values() if torch.is_tensor(v))


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
class Logger:
    """Prints and appends to ``log.txt`` (rank 0 only); scalars go to TensorBoard (``tensorboard/``).

    Every write holds Ctrl-C until it is done (``utils.io.interrupts_deferred``): an interrupt landing inside
    the TensorBoard writer's queue would leave its thread waiting forever and ``close`` would hang."""

    def __init__(self, save_dir, main):
        self.main = main
        self.path = os.path.join(save_dir, 'log.txt')
        self.writer = None
        if main:
            from tensorboardX import SummaryWriter
            with interrupts_deferred():
                self.writer = SummaryWriter(os.path.join(save_dir, 'tensorboard'))

    def __call__(self, msg, echo=True):
        """Append ``msg`` to log.txt, and print it unless ``echo`` is False."""
        if not self.main:
            return
        with interrupts_deferred():
            if echo:
                print(msg, flush=True)
            with open(self.path, 'a') as f:
                f.write(msg + '\n')

    def scalar(self, tag, value, step):
        if self.writer is not None:
            with interrupts_deferred():
                self.writer.add_scalar(tag, value, step)

    def close(self):
        if self.writer is not None:
            with interrupts_deferred():
                self.writer.close()
                self.writer = None


@dataclass
class Run:
    """Everything one epoch needs; built by ``setup_run``."""
    cfg: dict
    save_dir: str
    dd: Dist
    options: Options
    settings: Settings
    model: torch.nn.Module
    net: torch.nn.Module                   # the model, wrapped in DDP when world > 1
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    loss: WeightedLoss
    metric: object
    train: Loader
    val_sets: list
    ema: Optional[EMA] = None
    unit: bool = False                     # the model works on [0, 1] images (else (x - 0.5) / 0.5)
    epoch_start: int = 1
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    last_saved: Optional[int] = None       # epoch held by epoch-last.pth
    log: object = None
    lock: Optional[RunLock] = None
    created: Optional[str] = None          # the folder this invocation created (rank 0), removed if it fails
    notes: list = field(default_factory=list)

    @property
    def last_path(self):
        return os.path.join(self.save_dir, 'epoch-last.pth')

    @property
    def eval_model(self):
        """The weights that are validated and saved as ``model``: the EMA when enabled."""
        return self.ema.model if self.ema is not None else self.model

    def better(self, value):
        if self.best is None:
            return True
        return value > self.best if self.metric.higher_is_better else value < self.best

    def saved_state(self):
        """Where the checkpoints stand, for messages."""
        if self.last_saved is None:
            return 'no checkpoint has been written'
        best = '' if self.best_epoch is None else f' and epoch-best.pth epoch {self.best_epoch} ({self.best:.4f})'
        return f'{self.last_path} still holds epoch {self.last_saved}{best}'

    def close(self):
        if self.log is not None:
            self.log.close()
        if self.lock is not None:
            self.lock.release()


def build_run(cfg, save_dir, dd, options):
    """Everything from the config, in memory only (no file written)."""
    settings = read_settings(cfg, options)
    check_data_norm(cfg)
    loss = WeightedLoss(cfg.get('loss'))
    metric = build_metric(cfg.get('val_metric'))
    opt_spec = require(cfg, 'optimizer')
    model_cfg = require(cfg, 'model')
    seed_all(derive_seed(options.seed, 0xC0FFEE))
    copies = 4 + (1 if settings.ema_decay else 0)      # weights, gradients, Adam's two moments (+ EMA)
    try:
        check_spec_size(model_cfg, 'model', copies=copies, device=dd.device)
    except ModelSizeError as e:
        raise ConfigError(str(e)) from None
    model = models.make(model_cfg).to(dd.device)
    try:
        unit = model.capabilities.input_range == 'unit'
    except AttributeError:
        raise ConfigError(f"model {model_cfg['name']!r} is not a super-resolution model (it declares no "
                          f"capabilities)") from None
    optimizer = build_optimizer(opt_spec, model.parameters())
    scheduler = build_scheduler(cfg, optimizer, settings.epoch_max)
    scaler = torch.amp.GradScaler(dd.device.type) if settings.amp_dtype == torch.float16 else None
    ema = EMA(model, settings.ema_decay) if settings.ema_decay else None
    train = make_loader(require(cfg, 'train_dataset'), options.seed, dd, options.workers, True, 'train_dataset',
                        settings.accumulate)
    if len(train.loader) == 0:
        raise ConfigError('train_dataset: no batch to train on (dataset smaller than one batch per process)')
    val_sets = make_val_sets(cfg, options.seed, dd, options.workers)
    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.device.index] if dd.device.type == 'cuda' else None)
    return Run(cfg=cfg, save_dir=save_dir, dd=dd, options=options, settings=settings, model=model, net=net,
               optimizer=optimizer, scheduler=scheduler, scaler=scaler, loss=loss, metric=metric, train=train,
               val_sets=val_sets, ema=ema, unit=unit)


def _missing_ancestor(path):
    """The topmost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    path = os.path.abspath(path)
    top = None
    while not os.path.exists(path):
        top = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return top


def open_run_folder(run):
    """Rank 0: create and lock the run folder, remove stale temporaries. Returns the folder it created
    (to delete if the start fails) or None."""
    created = _missing_ancestor(run.save_dir)
    try:
        os.makedirs(run.save_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f'cannot create the run folder {run.save_dir}: {e.strerror or e}') from None
    try:
        run.lock = RunLock(run.save_dir).acquire()
    except Exception:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    if run.lock.took_over:
        run.notes.append(f'took over a stale lock ({run.lock.took_over} is not running)')
    removed = clean_stale_temporaries(run.save_dir)
    if removed:
        run.notes.append(f'removed {len(removed)} temporary file(s) left by an interrupted save: {", ".join(removed)}')
    return created


def _lr_of(args):
    return _numbers(args or {}, 'optimizer.args').get('lr')


def check_training_state(ckpt, path):
    """Refuse a file that is not a training checkpoint of ``train.py`` (an exported model copied over
    ``epoch-last.pth``, a file without an epoch or optimizer state) in one line, before anything is used."""
    missing = [k for k in ('epoch', 'optimizer') if k not in ckpt]
    if missing:
        raise ConfigError(f'{path} is not a training checkpoint (no {" / ".join(missing)}: an exported or '
                          f'published model?); resume needs the epoch-last.pth a run wrote: start over with '
                          f'--no-resume, or warm-start from this file with init_weights: {path}')
    epoch, opt = ckpt['epoch'], ckpt['optimizer']
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ConfigError(f"{path}: 'epoch' must be a non-negative integer, got {excerpt(epoch, 40)}")
    if not isinstance(opt, dict) or not isinstance(opt.get('name'), str) or not isinstance(opt.get('sd'), dict):
        raise ConfigError(f"{path}: 'optimizer' must be {{'name', 'args', 'sd'}} as train.py writes it")
    for key in ('model_params', 'scheduler', 'scaler'):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise ConfigError(f"{path}: '{key}' must be a mapping, got {type(ckpt[key]).__name__}")
    sched = ckpt.get('scheduler')
    if sched and (isinstance(sched.get('last_epoch'), bool) or not isinstance(sched.get('last_epoch'), int)):
        raise ConfigError(f"{path}: 'scheduler.last_epoch' must be an integer")


def restore(run, ckpt):
    """Load ``epoch-last.pth`` into the run: weights, optimizer (with config changes honoured), scheduler,
    AMP scaler, EMA, epoch and best value. Refuses diverged or mismatching checkpoints."""
    path = run.last_path
    cfg = run.cfg
    check_training_state(ckpt, path)
    old_cfg = ckpt.get('config') or {}
    params_sd = (ckpt.get('model_params') or {}).get('sd', ckpt['model']['sd'])
    if not all_finite(ckpt['model']['sd'].values()) or not all_finite(params_sd.values()) \
            or not all_finite(optimizer_tensors((ckpt.get('optimizer') or {}).get('sd', {}))):
        raise TrainingDiverged(f'{path} holds non-finite weights or optimizer state (a diverged run); copy an '
                               f'earlier epoch-N.pth over it to resume from there, or start over with --no-resume')
    if ckpt['model'].get('name') != cfg['model'].get('name') or \
            (ckpt['model'].get('args') or {}) != (cfg['model'].get('args') or {}):
        raise ConfigError(f'the model config differs from the one {path} was trained with; restore it or start '
                          f'over with --no-resume')
    marker = read_divergence(run.save_dir)
    new_lr = _lr_of(cfg['optimizer'].get('args'))
    if marker is not None and new_lr == marker_lr(marker):
        reason = marker.splitlines()[1] if len(marker.splitlines()) > 1 else 'see log.txt'
        raise TrainingDiverged(f'this run diverged before ({reason}); resuming with the same learning rate '
                               f'({new_lr}) would diverge again: lower it (--opt optimizer.args.lr=...) or start '
                               f'over with --no-resume')
    try:
        run.model.load_state_dict(params_sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f'{path}: weights do not fit the configured model: {first}') from None
    if ckpt['optimizer'].get('name') != cfg['optimizer'].get('name'):
        raise ConfigError(f"optimizer.name is {cfg['optimizer'].get('name')!r} but {path} was trained with "
                          f"{ckpt['optimizer'].get('name')!r}; its state cannot carry over: keep it or start over "
                          f"with --no-resume")
    try:
        run.optimizer.load_state_dict(ckpt['optimizer']['sd'])
    except (ValueError, KeyError) as e:
        raise ConfigError(f'{path}: optimizer state does not fit: {e}') from None
    apply_optimizer_changes(run, ckpt['optimizer'].get('args') or {}, cfg['optimizer'].get('args') or {})
    if run.scheduler is not None and ckpt.get('scheduler'):
        run.scheduler.last_epoch = ckpt['scheduler']['last_epoch']
        run.scheduler._last_lr = [g['lr'] for g in run.optimizer.param_groups]
    if run.scaler is not None and ckpt.get('scaler'):
        run.scaler.load_state_dict(ckpt['scaler'])
    if run.ema is not None:
        if ckpt.get('model_params') is not None:
            run.ema.model.load_state_dict(ckpt['model']['sd'])
        else:
            run.ema.model.load_state_dict(params_sd)
            run.notes.append('EMA enabled on resume: the average starts from the restored weights')
    elif ckpt.get('model_params') is not None:
        run.notes.append('EMA disabled on resume: training continues from the optimised (non-averaged) weights')
    run.epoch_start = int(ckpt['epoch']) + 1
    run.last_saved = int(ckpt['epoch'])
    run.best = ckpt.get('best_val')
    if run.best is not None and run.best < -1e17:      # older checkpoints: -1e18 meant "none"
        run.best = None
    run.best_epoch = ckpt.get('best_epoch')
    changed = sorted(k for k in set(cfg) | set(old_cfg) if cfg.get(k) != old_cfg.get(k))
    run.notes.append(f'resuming from {path} (epoch {ckpt["epoch"]})'
                     + (f'; config entries changed since: {", ".join(changed)}' if changed else ''))


def warm_start(run, path):
    """``init_weights: PATH`` in a config: a new run starts from the weights of a checkpoint of the same model
    (name and args equal; the EMA average, when the file holds one, is taken), with a fresh optimizer, schedule
    and epoch count. Ignored when the run resumes from its own ``epoch-last.pth``."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f'init_weights must be a checkpoint path, got {excerpt(path, 60)}')
    ckpt = load_checkpoint(path, map_location='cpu')
    spec = ckpt['model']
    if spec.get('name') != run.cfg['model'].get('name') or \
            (spec.get('args') or {}) != (run.cfg['model'].get('args') or {}):
        raise ConfigError(f'init_weights: {path} holds a different model ({spec.get("name")!r} with other args) '
                          f'than the config')
    if not all_finite(spec['sd'].values()):
        raise ConfigError(f'init_weights: {path} holds non-finite weights')
    try:
        run.model.load_state_dict(spec['sd'])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f'init_weights: {path}: weights do not fit the configured model: {first}') from None
    if run.ema is not None:
        run.ema.model.load_state_dict(spec['sd'])
    run.notes.append(f'weights initialised from {path} (init_weights); optimizer and schedule start fresh')


def apply_optimizer_changes(run, old_args, new_args):
    """Honour ``optimizer.args`` changed since the checkpoint: a new ``lr`` rescales the current learning
    rate (keeping the schedule's progress) and the schedule's base; other entries replace the saved ones."""
    old, new = _numbers(old_args, 'optimizer.args'), _numbers(new_args, 'optimizer.args')
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key not in new:
            raise ConfigError(f'optimizer.args.{key} was removed since the checkpoint; set it explicitly')
        if key == 'lr':
            ratio = new['lr'] / old['lr'] if old.get('lr') else None
            for g in run.optimizer.param_groups:
                g['lr'] = g['lr'] * ratio if ratio else new['lr']
                if 'initial_lr' in g:
                    g['initial_lr'] = new['lr']
            if run.scheduler is not None and hasattr(run.scheduler, 'base_lrs'):
                run.scheduler.base_lrs = [new['lr'] for _ in run.scheduler.base_lrs]
            run.notes.append(f'optimizer.args.lr changed from {old.get("lr")} to {new["lr"]} since the checkpoint: '
                             f'the learning rate is now {run.optimizer.param_groups[0]["lr"]:.3g}')
        else:
            value = tuple(new[key]) if isinstance(new[key], list) else new[key]
            for g in run.optimizer.param_groups:
                if key not in g:
                    raise ConfigError(f'optimizer.args.{key}: not an argument of the saved optimizer')
                g[key] = value
            run.notes.append(f'optimizer.args.{key} changed from {old.get(key)!r} to {new[key]!r} since the '
                             f'checkpoint: using the new value')


def setup_run(cfg, save_dir, dd, options=None):
    """Build the run (``build_run``), then create, lock and clean the run folder and resume from
    ``epoch-last.pth`` (unless ``options.resume`` is False). If anything fails, a run folder created
    here is removed again and every process raises."""
    options = options or Options()
    run = created = error = None
    try:
        try:
            run = build_run(cfg, save_dir, dd, options)
            if dd.main:
                created = open_run_folder(run)
        except Exception as e:          # noqa: BLE001  (re-raised on this rank by agree)
            error = e
        agree(dd, error)
        try:
            if options.resume and os.path.exists(run.last_path):
                restore(run, load_checkpoint(run.last_path, map_location='cpu'))
            else:
                if cfg.get('init_weights') is not None:
                    warm_start(run, cfg['init_weights'])
                if dd.main:
                    clear_divergence(save_dir)
            if cfg.get('resume') not in (None, run.last_path):
                run.notes.append(f"config entry 'resume: {cfg['resume']}' is ignored; runs resume from "
                                 f"{run.last_path}")
            if dd.main:
                with atomic_write(os.path.join(save_dir, 'config.yaml'), 'w') as f:
                    yaml.safe_dump(cfg, f, sort_keys=False)
            run.log = Logger(save_dir, dd.main)
        except Exception as e:          # noqa: BLE001
            error = e
        agree(dd, error)
    except BaseException:
        if run is not None:
            run.close()
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    run.created = created
    for note in run.notes:
        run.log(note)
    run.notes.clear()
    if run.epoch_start == 1:
        run.log(f'train dataset: size={len(run.train.dataset)}')
        for scale, val in run.val_sets:
            run.log(f'val dataset{"" if scale is None else f" x{scale}"}: size={len(val.dataset)}')
        run.log(f'model: #params={compute_num_params(run.model)}; loss: {run.loss!r}'
                + (f'; EMA decay {run.ema.decay}' if run.ema else '')
                + (f'; {run.settings.accumulate} micro-batches per step' if run.settings.accumulate > 1 else ''))
    return run
