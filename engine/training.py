"""The training loop behind ``train.py``: YAML-driven, resumable bit-exactly, single or multi-process.

Determinism: the model is initialised from ``seed``; every epoch reseeds the global RNGs from
(seed, epoch, rank), the sampler shuffles with (seed, epoch) and every dataset item draws its
randomness from (seed, epoch, index). A run stopped after any epoch and started again with the same
command therefore continues exactly as if it had never stopped.

Multi-process: under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes ``batch_size / world_size``
samples of every global batch (``DistributedSampler``), gradients are averaged by
``DistributedDataParallel``, and only rank 0 logs, validates and writes checkpoints. CUDA uses NCCL,
CPU uses gloo.
"""
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, DistributedSampler

import datasets
import models
from models.checkpoint import load_checkpoint, save_checkpoint
from utils.config import ConfigError, as_float, require

NORM = {'sub': [0.5], 'div': [0.5]}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def main(self):
        return self.rank == 0


def setup_distributed(device=None):
    """Read torchrun's environment; initialise the process group when there is more than one process."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError('--device cuda requested but CUDA is not available')
        dev = torch.device('cuda', local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if dev.type == 'cuda' else 'gloo')
    return Dist(rank, world, local_rank, dev)


def derive_seed(*parts):
    """A 32-bit seed that depends on every part (SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_data_norm(cfg):
    norm = cfg.get('data_norm')
    if norm is None:
        return
    for key in ('inp', 'gt'):
        part = norm.get(key, NORM)
        if [float(v) for v in part.get('sub', [0.5])] != [0.5] or [float(v) for v in part.get('div', [0.5])] != [0.5]:
            raise ConfigError(f'data_norm.{key}: only the published normalisation (x - 0.5) / 0.5 is supported, '
                              f'got {part}')


def normalise(x):
    return (x - 0.5) / 0.5


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def make_dataset(spec, seed, where):
    base = datasets.make(require(spec, 'dataset', where=where))
    wrapper = spec.get('wrapper')
    if wrapper is None:
        return base
    return datasets.make(wrapper, args={'dataset': base, 'seed': seed})


def make_loader(spec, seed, dd, workers, train, where):
    """DataLoader over a dataset spec ``{dataset, wrapper, batch_size[, batch_sampler]}``."""
    ds = make_dataset(spec, seed, where)
    batch = int(require(spec, 'batch_size', where=where))
    if batch % dd.world:
        raise ConfigError(f'{where}.batch_size={batch} is not divisible by the {dd.world} processes')
    per_rank = batch // dd.world
    common = dict(num_workers=workers, pin_memory=dd.device.type == 'cuda', persistent_workers=False)
    sampler_spec = spec.get('batch_sampler')
    if sampler_spec is not None:
        from datasets.samplers import make_batch_sampler
        sampler = make_batch_sampler(sampler_spec, ds, per_rank, seed=seed, rank=dd.rank, world=dd.world,
                                     shuffle=train)
        return DataLoader(ds, batch_sampler=sampler, **common), sampler, ds
    sampler = DistributedSampler(ds, num_replicas=dd.world, rank=dd.rank, shuffle=train, seed=seed,
                                 drop_last=False)
    return DataLoader(ds, batch_size=per_rank, sampler=sampler, **common), sampler, ds


def set_epoch(epoch, *objs):
    for obj in objs:
        if obj is not None and hasattr(obj, 'set_epoch'):
            obj.set_epoch(epoch)


# ------------------------------------------------------------------------------------------------
# losses and steps
# ------------------------------------------------------------------------------------------------
def is_grid_model(model):
    model = getattr(model, 'module', model)
    return bool(getattr(model, 'integer_scales_only', False))


def forward_batch(model, batch, device):
    """Normalised prediction and target for a batch (implicit models: queried points; grid models: images)."""
    inp = normalise(batch['inp'].to(device, non_blocking=True))
    gt = normalise(batch['gt'].to(device, non_blocking=True))
    if is_grid_model(model):
        scale = int(batch['scale'][0])
        return model(inp, scale), gt
    return model(inp, batch['coord'].to(device), batch['cell'].to(device)), gt


def loss_terms(cfg):
    spec = cfg.get('loss') or {'l1': 1.0}
    unknown = set(spec) - {'l1', 'fft'}
    if unknown:
        raise ConfigError(f'loss: unknown term(s) {sorted(unknown)}; known: l1, fft')
    return {k: as_float(v, f'loss.{k}') for k, v in spec.items()}


def compute_loss(pred, gt, terms):
    loss = terms.get('l1', 0.0) * (pred - gt).abs().mean()
    if terms.get('fft'):
        from models.upsamplers.losses import fft_l1_loss
        loss = loss + terms['fft'] * fft_l1_loss(pred, gt)
    return loss


@torch.no_grad()
def validate(model, loader, device):
    """Mean PSNR (dB, RGB in [0, 1], no border shave) of the published training validation."""
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        pred, gt = forward_batch(model, batch, device)
        pred = (pred * 0.5 + 0.5).clamp(0, 1)
        gt = gt * 0.5 + 0.5
        mse = (pred - gt).pow(2).mean().item()
        total += (-10 * math.log10(mse) if mse > 0 else 100.0) * batch['inp'].shape[0]
        count += batch['inp'].shape[0]
    model.train()
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
class Logger:
    def __init__(self, save_dir, main):
        self.main = main
        self.path = os.path.join(save_dir, 'log.txt')
        self.writer = None
        if main:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(save_dir, 'tensorboard'))

    def __call__(self, msg):
        if not self.main:
            return
        print(msg, flush=True)
        with open(self.path, 'a') as f:
            f.write(msg + '\n')

    def scalar(self, tag, value, step):
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def compute_num_params(model):
    n = sum(p.numel() for p in model.parameters())
    return f'{n / 1e6:.1f}M' if n >= 1e6 else f'{n / 1e3:.1f}K'


def checkpoint_state(model, optimizer, opt_spec, scheduler, scaler, epoch, best, cfg):
    module = getattr(model, 'module', model)
    return {
        'model': {'name': cfg['model']['name'], 'args': cfg['model'].get('args') or {}, 'sd': module.state_dict()},
        'optimizer': {'name': opt_spec['name'], 'args': opt_spec.get('args') or {}, 'sd': optimizer.state_dict()},
        'scheduler': None if scheduler is None else {'last_epoch': scheduler.last_epoch},
        'scaler': None if scaler is None else scaler.state_dict(),
        'epoch': epoch,
        'best_val': best,
        'rng': {'torch': torch.get_rng_state(), 'python': random.getstate()},
        'config': cfg,
    }


def make_optimizer(spec, params):
    name = spec.get('name')
    args = dict(spec.get('args') or {})
    if 'lr' in args:
        args['lr'] = as_float(args['lr'], 'optimizer.args.lr')
    if name == 'adam':
        return torch.optim.Adam(params, **args)
    if name == 'adamw':
        return torch.optim.AdamW(params, **args)
    raise ConfigError(f"optimizer.name: unknown optimizer {name!r}; known: adam, adamw")


def train(cfg, save_dir, dd, workers=0, seed=0, amp=None, grad_clip=None, resume=True, stop_after=None,
          progress=True):
    """Run (or continue) training. Returns the final epoch reached."""
    check_data_norm(cfg)
    terms = loss_terms(cfg)
    epoch_max = int(require(cfg, 'epoch_max'))
    epoch_val = cfg.get('epoch_val')
    epoch_save = cfg.get('epoch_save')
    opt_spec = require(cfg, 'optimizer')
    grad_clip = grad_clip if grad_clip is not None else cfg.get('grad_clip')

    if dd.main:
        os.makedirs(save_dir, exist_ok=True)
    if dd.world > 1:
        dist.barrier()
    log = Logger(save_dir, dd.main)
    last_path = os.path.join(save_dir, 'epoch-last.pth')
    ckpt = load_checkpoint(last_path, map_location='cpu') if resume and os.path.exists(last_path) else None

    seed_all(derive_seed(seed, 0xC0FFEE))
    model = models.make(cfg['model']).to(dd.device)
    optimizer = make_optimizer(opt_spec, model.parameters())
    sched_cfg = cfg.get('multi_step_lr')
    scheduler = None
    if sched_cfg is not None:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[int(m) for m in sched_cfg['milestones']], gamma=float(sched_cfg.get('gamma', 0.1)))
    if amp not in (None, 'bf16', 'fp16'):
        raise ConfigError(f'--amp must be bf16 or fp16, got {amp!r}')
    amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(dd.device.type) if amp == 'fp16' else None

    epoch_start, best = 1, -1e18
    if ckpt is not None:
        model.load_state_dict(ckpt['model']['sd'])
        optimizer.load_state_dict(ckpt['optimizer']['sd'])
        if scheduler is not None and ckpt.get('scheduler'):
            scheduler.last_epoch = ckpt['scheduler']['last_epoch']
            scheduler._last_lr = [g['lr'] for g in optimizer.param_groups]
        if scaler is not None and ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
        epoch_start, best = ckpt['epoch'] + 1, ckpt.get('best_val', best)
        changed = sorted(k for k in set(cfg) | set(ckpt.get('config', {}))
                         if cfg.get(k) != ckpt.get('config', {}).get(k))
        log(f'resuming from {last_path} (epoch {ckpt["epoch"]})'
            + (f'; config entries changed since: {", ".join(changed)} (optimizer and scheduler state come from '
               f'the checkpoint)' if changed else ''))
        del ckpt
    if cfg.get('resume') not in (None, last_path):
        log(f"note: config entry 'resume: {cfg['resume']}' is ignored; runs resume from {last_path}")

    train_loader, train_sampler, train_ds = make_loader(require(cfg, 'train_dataset'), seed, dd, workers, True,
                                                        'train_dataset')
    val_loader = None
    if cfg.get('val_dataset') and epoch_val:
        single = Dist(0, 1, 0, dd.device)
        val_loader, val_sampler, val_ds = make_loader(cfg['val_dataset'], seed, single, workers, False, 'val_dataset')
    if epoch_start == 1:
        log(f'train dataset: size={len(train_ds)}')
        if val_loader is not None:
            log(f'val dataset: size={len(val_ds)}')
        log(f'model: #params={compute_num_params(model)}')
        if dd.main:
            with open(os.path.join(save_dir, 'config.yaml'), 'w') as f:
                yaml.safe_dump(cfg, f, sort_keys=False)

    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.device.index] if dd.device.type == 'cuda' else None)
    iters = len(train_loader)
    t_start, epochs_run = time.time(), 0
    for epoch in range(epoch_start, epoch_max + 1):
        t_epoch = time.time()
        seed_all(derive_seed(seed, epoch, dd.rank))
        set_epoch(epoch, train_sampler, train_ds)
        net.train()
        loss_sum, n = 0.0, 0
        per_scale = {}   # multi-scale (IGConv) batches: mean loss of each scale, for the log
        bar = train_loader
        if progress and dd.main:
            from tqdm import tqdm
            bar = tqdm(train_loader, leave=False, desc=f'epoch {epoch}/{epoch_max}', dynamic_ncols=True)
        for it, batch in enumerate(bar):
            ctx = torch.autocast(dd.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
            with ctx:
                pred, gt = forward_batch(net, batch, dd.device)
                loss = compute_loss(pred.float(), gt, terms)
            value = loss.detach().clone()
            if dd.world > 1:
                dist.all_reduce(value)
                value /= dd.world
            value = value.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f'loss is {value} at epoch {epoch}, iteration {it + 1}; stopping. '
                    f'{last_path} still holds epoch {epoch - 1}' if epoch > 1 else
                    f'loss is {value} at epoch {epoch}, iteration {it + 1}; stopping before any checkpoint')
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            loss_sum += value
            n += 1
            if 'scale' in batch:
                acc = per_scale.setdefault(int(batch['scale'][0]), [0.0, 0])
                acc[0] += loss.item()
                acc[1] += 1
            log.scalar('loss/train', value, (epoch - 1) * iters + it + 1)
            if progress and dd.main:
                bar.set_postfix(loss=f'{loss_sum / n:.4f}')
        if scheduler is not None:
            log.scalar('lr', optimizer.param_groups[0]['lr'], epoch)
            scheduler.step()
        msg = f'epoch {epoch}/{epoch_max}, train: loss={loss_sum / max(n, 1):.4f}'
        if per_scale:
            msg += ' (' + ', '.join(f'x{k}: {v[0] / v[1]:.4f}' for k, v in sorted(per_scale.items())) + ')'

        if dd.main:
            improved = False
            if val_loader is not None and epoch % int(epoch_val) == 0:
                set_epoch(epoch, val_sampler, val_ds)
                psnr = validate(model, val_loader, dd.device)
                log.scalar('psnr/val', psnr, epoch)
                msg += f', val: psnr={psnr:.4f}'
                if psnr > best:
                    best, improved = psnr, True
            state = checkpoint_state(net, optimizer, opt_spec, scheduler, scaler, epoch, best, cfg)
            if improved:
                save_checkpoint(os.path.join(save_dir, 'epoch-best.pth'), state)
            if epoch_save and epoch % int(epoch_save) == 0:
                save_checkpoint(os.path.join(save_dir, f'epoch-{epoch}.pth'), state)
            save_checkpoint(last_path, state)
            elapsed = time.time() - t_start
            epochs_run += 1
            eta = elapsed / epochs_run * (epoch_max - epoch)
            msg += f', {time.time() - t_epoch:.1f}s, {elapsed / 60:.1f}m elapsed, ~{eta / 60:.1f}m left'
            log(msg)
        else:
            epochs_run += 1
        if dd.world > 1:
            dist.barrier()
        if stop_after is not None and epochs_run >= stop_after:
            log(f'stopping after {epochs_run} epoch(s) as asked; run the same command again to continue')
            break
    log.close()
    return epoch if epoch_start <= epoch_max else epoch_start - 1
