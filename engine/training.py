"""Training behind ``train.py``, in parts that can be used and tested alone.

* ``setup_run(cfg, save_dir, dd, options) -> Run`` (``engine.run_setup``): settings checked, model,
  optimizer, scheduler, loss, metric, EMA and loaders built from the config (registries in
  ``engine.components``), all before the disk is touched; then the run folder is created and locked
  (``engine.run_folder``), stale temporary files removed and ``epoch-last.pth`` restored. A failed
  start leaves no run folder behind.
* ``train_epoch(run, epoch) -> EpochStats``: the iterations of one epoch (``train_step`` each).
* ``end_epoch(run, epoch, stats) -> str``: scheduler step, finiteness checks, validation
  (``validate``), checkpoints; returns the log line.
* ``fit(cfg, save_dir, dd, **options)``: the loop over epochs.

Conventions. Images are normalised as ``(x - 0.5) / 0.5`` for the model and the loss (models whose
``capabilities.input_range`` is 'unit', the published BasicSR architectures, get [0, 1]); validation
metrics see predictions clamped to [0, 1]. Implicit models (LIIF family) train on query batches
``{'inp', 'coord', 'cell', 'gt'}`` (``coord``/``cell`` (B, Q, 2), (row, col) order) and are called
``model(inp, coord, cell)``; grid models (IGConv) train on ``{'inp', 'gt', 'scale'}`` image batches
(one scale per batch) and are called ``model(inp, scale)``; LTE-fast's grid items (``coord``
(B, H, W, 2), one ``cell`` (B, 2) per image) go through the first call: the batch decides the call.

Determinism: the model is initialised from ``seed``; every epoch reseeds the global RNGs from
(seed, epoch, rank), the sampler shuffles with (seed, epoch) and every dataset item draws its
randomness from (seed, epoch, index). A run stopped after any epoch and started again with the same
command therefore continues exactly as if it had never stopped. Validation sets are fixed: their items
are drawn with epoch 0 at every validation (the published code redraws them; see docs/deviations.md).

Batches: ``batch_size`` is the effective (global) batch of one optimizer step. Under ``torchrun`` each
of the ``world`` processes takes ``batch_size / world`` samples (gradients averaged by DDP), and with
``accumulate: k`` each step sums the gradients of ``k`` micro-batches of ``batch_size / (world * k)``
(each micro-batch loss weighted by its share of the step's samples), which equals one large batch.
Only rank 0 logs, validates and writes checkpoints.

Options in the config beyond the published keys: ``scheduler`` / ``loss`` / ``val_metric`` (see
``engine.components``), ``ema_decay`` (e.g. 0.999: an exponential moving average of the weights is
kept, validated and saved as the checkpoint's ``model``; the optimised weights go to
``model_params``), ``accumulate``, ``grad_clip``, ``val_scales`` (e.g. [2, 3, 4]: validation on one
fixed set per scale, each logged; the best checkpoint is chosen by their mean).

Safety: a non-finite training loss, validation prediction or metric, or non-finite weights stop the
run before anything is saved for that epoch (``TrainingDiverged``): ``epoch-last.pth`` and
``epoch-best.pth`` keep the last good state, the run folder gets a ``DIVERGED`` marker, and resuming is
refused until the learning rate is changed (``--opt optimizer.args.lr=...``, honoured on resume) or
the run is restarted (``--no-resume``).
"""
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from models.checkpoint import model_spec, save_checkpoint
from utils.io import interrupts_deferred

from .distributed import agree
from .run_folder import clear_divergence, write_divergence
from .run_setup import VAL_EPOCH, Options, TrainingDiverged, _lr_of, all_finite, derive_seed, seed_all, setup_run


def normalise(x):
    """[0, 1] -> the models' (x - 0.5) / 0.5."""
    return (x - 0.5) / 0.5


def forward_batch(model, batch, device, unit=False):
    """Prediction and target of a batch (see the module docstring for the two batch kinds), both
    normalised as (x - 0.5) / 0.5, or both in [0, 1] for ``unit`` models (``capabilities.input_range``
    'unit', the published BasicSR architectures)."""
    inp = batch['inp'].to(device, non_blocking=True)
    gt = batch['gt'].to(device, non_blocking=True)
    if not unit:
        inp, gt = normalise(inp), normalise(gt)
    if 'coord' in batch:
        return model(inp, batch['coord'].to(device), batch['cell'].to(device)), gt
    return model(inp, int(batch['scale'][0])), gt


# ------------------------------------------------------------------------------------------------
# one epoch
# ------------------------------------------------------------------------------------------------
@dataclass
class EpochStats:
    loss: float
    steps: int
    per_scale: dict          # scale -> mean loss of its micro-batches (multi-scale grid training)
    grad_norm: Optional[float] = None   # total gradient norm of the last step before clipping


def _batch_len(batch):
    return int(batch['inp'].shape[0])


def train_step(run, group, epoch=0, step=0, probe=None):
    """One optimizer step over a list of micro-batches; returns (loss of the step, {scale: losses},
    total gradient norm before clipping or None). The gradients stay in ``.grad`` until the next step.

    ``probe`` (timing, ``scripts/train_benchmark.py``): called as ``probe('forward')`` after each
    micro-batch's forward pass and loss (its value read), ``probe('backward')`` after its backward pass and
    ``probe('optimizer')`` after the optimizer step (and EMA update); it changes nothing computed."""
    dd, net = run.dd, run.net
    total = sum(_batch_len(b) for b in group)
    dtype = run.settings.amp_dtype
    run.optimizer.zero_grad(set_to_none=True)
    step_loss, per_scale = 0.0, []
    for i, batch in enumerate(group):
        sync = net.no_sync() if dd.world > 1 and i < len(group) - 1 else nullcontext()
        with sync:
            with torch.autocast(dd.device.type, dtype=dtype) if dtype else nullcontext():
                pred, gt = forward_batch(net, batch, dd.device, run.unit)
                loss = run.loss(pred.float(), gt)
            value = loss.detach().clone()
            if dd.world > 1:
                dist.all_reduce(value)
                value /= dd.world
            value = value.item()
            if probe is not None:
                probe('forward')
            if not math.isfinite(value):
                raise TrainingDiverged(f'the training loss is {value} at epoch {epoch}, step {step + 1}')
            weighted = loss * (_batch_len(batch) / total)
            (run.scaler.scale(weighted) if run.scaler is not None else weighted).backward()
            if probe is not None:
                probe('backward')
        step_loss += value * _batch_len(batch) / total
        if 'scale' in batch:
            per_scale.append((int(batch['scale'][0]), loss.item()))
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    norm = None
    if run.settings.grad_clip:
        norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip))
    try:
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
    except RuntimeError as e:      # e.g. Adam's step size lr / (1 - beta1^t) beyond float32
        if 'overflow' not in str(e):
            raise
        raise TrainingDiverged(f'the optimizer step overflowed at epoch {epoch}, step {step + 1} (learning rate '
                               f'{run.optimizer.param_groups[0]["lr"]:g})') from None
    if run.ema is not None:
        run.ema.update(run.model)
    if probe is not None:
        probe('optimizer')
    return step_loss, per_scale, norm


def micro_batch_groups(batches, k):
    """Consecutive groups of ``k`` micro-batches (the last group may be shorter)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def train_epoch(run, epoch):
    """The optimizer steps of one epoch. Raises ``TrainingDiverged`` on a non-finite loss (every rank)."""
    dd = run.dd
    seed_all(derive_seed(run.options.seed, epoch, dd.rank))
    run.train.set_epoch(epoch)
    run.net.train()
    batches = run.train.loader
    bar = None
    if run.options.progress and dd.main:
        from tqdm import tqdm
        batches = bar = tqdm(batches, leave=False, desc=f'epoch {epoch}/{run.settings.epoch_max}', dynamic_ncols=True)
    k = run.settings.accumulate
    steps_per_epoch = math.ceil(len(run.train.loader) / k)
    loss_sum, steps, per_scale, norm = 0.0, 0, {}, None
    for step, group in enumerate(micro_batch_groups(batches, k)):
        value, scales, norm = train_step(run, group, epoch, step)
        loss_sum += value
        steps += 1
        for s, v in scales:
            acc = per_scale.setdefault(s, [0.0, 0])
            acc[0] += v
            acc[1] += 1
        run.log.scalar('loss/train', value, (epoch - 1) * steps_per_epoch + step + 1)
        if bar is not None:
            bar.set_postfix(loss=f'{loss_sum / steps:.4f}')
    if bar is not None:
        bar.close()
    return EpochStats(loss=loss_sum / max(steps, 1), steps=steps,
                      per_scale={s: v[0] / v[1] for s, v in sorted(per_scale.items())}, grad_norm=norm)


@torch.no_grad()
def validate(model, loader, device, metric, unit=False):
    """Mean of ``metric`` over a validation set, weighted by batch size (predictions clamped to [0, 1];
    ``unit``: the model works on [0, 1] images, else on (x - 0.5) / 0.5). Raises ``TrainingDiverged`` on
    a non-finite prediction."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in loader:
            pred, gt = forward_batch(model, batch, device, unit)
            if not bool(torch.isfinite(pred).all()):
                raise TrainingDiverged('the model predicts non-finite values on the validation set')
            if not unit:
                pred, gt = pred * 0.5 + 0.5, gt * 0.5 + 0.5
            value = metric(pred.clamp(0, 1), gt)
            total += value * _batch_len(batch)
            count += _batch_len(batch)
    finally:
        model.train(was_training)
    return total / max(count, 1)


def validate_all(run):
    """{scale or None: value} over the run's validation sets (items fixed: drawn as in epoch 0)."""
    values = {}
    for scale, val in run.val_sets:
        val.set_epoch(VAL_EPOCH)
        values[scale] = validate(run.eval_model, val.loader, run.dd.device, run.metric, run.unit)
    return values


def checkpoint_state(run, epoch):
    """The checkpoint dict: ``model`` from the model's own spec (the EMA weights when enabled)."""
    module = run.model
    state = {
        'model': model_spec(module, run.eval_model.state_dict()),
        'optimizer': {'name': run.cfg['optimizer']['name'], 'args': run.cfg['optimizer'].get('args') or {},
                      'sd': run.optimizer.state_dict()},
        'scheduler': None if run.scheduler is None else {'last_epoch': run.scheduler.last_epoch},
        'scaler': None if run.scaler is None else run.scaler.state_dict(),
        'epoch': epoch,
        'best_val': run.best,
        'best_epoch': run.best_epoch,
        'rng': {'torch': torch.get_rng_state(), 'python': random.getstate()},
        'config': run.cfg,
    }
    if run.ema is not None:
        state['model_params'] = {'sd': module.state_dict()}
        state['ema'] = {'decay': run.ema.decay}
    return state


def end_epoch(run, epoch, stats):
    """Rank 0 after an epoch: scheduler step, checks, validation, checkpoints. Returns the log line.

    Nothing is written when the weights, a validation prediction or the metric are not finite
    (``TrainingDiverged``)."""
    s = run.settings
    if run.scheduler is not None:
        run.log.scalar('lr', run.optimizer.param_groups[0]['lr'], epoch)
        run.scheduler.step()
    msg = f'epoch {epoch}/{s.epoch_max}, train: loss={stats.loss:.4f}'
    if stats.per_scale:
        msg += ' (' + ', '.join(f'x{k}: {v:.4f}' for k, v in stats.per_scale.items()) + ')'
    weights = list(run.model.parameters()) + (list(run.ema.model.parameters()) if run.ema else [])
    if not all_finite(weights):
        raise TrainingDiverged(f'the weights are not finite after epoch {epoch}')
    improved = False
    if run.val_sets and epoch % s.epoch_val == 0:
        try:
            values = validate_all(run)
        except TrainingDiverged as e:
            raise TrainingDiverged(f'{e} after epoch {epoch}') from None
        name = run.metric.registry_name
        mean = sum(values.values()) / len(values)
        bad = -math.inf if run.metric.higher_is_better else math.inf
        if any(math.isnan(v) or v == bad for v in values.values()):
            raise TrainingDiverged(f'the validation {name} is not finite after epoch {epoch} ({values})')
        if list(values) == [None]:
            msg += f', val: {name}={mean:.4f}'
        else:
            msg += f', val: {name} ' + ', '.join(f'x{k}={v:.4f}' for k, v in values.items()) + f', mean={mean:.4f}'
            for k, v in values.items():
                run.log.scalar(f'{name}/val_x{k}', v, epoch)
        run.log.scalar(f'{name}/val', mean, epoch)
        if run.better(mean):
            run.best, run.best_epoch, improved = mean, epoch, True
    state = checkpoint_state(run, epoch)
    with interrupts_deferred():       # Ctrl-C: the epoch's checkpoints are all written, then it stops
        if improved:
            save_checkpoint(os.path.join(run.save_dir, 'epoch-best.pth'), state)
            msg += ' (best)'
        if s.epoch_save and epoch % s.epoch_save == 0:
            save_checkpoint(os.path.join(run.save_dir, f'epoch-{epoch}.pth'), state)
        save_checkpoint(run.last_path, state)
        run.last_saved = epoch
        clear_divergence(run.save_dir)
    return msg


def fit(cfg, save_dir, dd, **options):
    """Run (or continue) training; ``options`` are the fields of ``Options``. Returns the last epoch
    reached. Raises ``TrainingDiverged`` (after logging it and marking the folder) on divergence."""
    opts = Options(**options)
    run = setup_run(cfg, save_dir, dd, opts)
    epoch = run.epoch_start - 1
    try:
        t_start, epochs_run = time.time(), 0
        for epoch in range(run.epoch_start, run.settings.epoch_max + 1):
            t_epoch = time.time()
            error, msg = None, None
            try:
                stats = train_epoch(run, epoch)
                if dd.main:
                    msg = end_epoch(run, epoch, stats)
            except TrainingDiverged as e:
                error = e
            agree(dd, error)
            epochs_run += 1
            if dd.main:
                elapsed = time.time() - t_start
                eta = elapsed / epochs_run * (run.settings.epoch_max - epoch)
                run.log(msg + f', {time.time() - t_epoch:.1f}s, {elapsed / 60:.1f}m elapsed, ~{eta / 60:.1f}m left')
            if opts.stop_after is not None and epochs_run >= opts.stop_after and epoch < run.settings.epoch_max:
                run.log(f'stopping after {epochs_run} epoch(s) as asked; run the same command again to continue')
                break
    except TrainingDiverged as e:
        message = (f'{e}; stopping without saving this epoch: {run.saved_state()}. Resuming needs a lower '
                   f'learning rate (--opt optimizer.args.lr=...) or --no-resume')
        if dd.main:
            run.log(f'error: {message}', echo=False)      # train.py prints it (stderr)
            write_divergence(save_dir, _lr_of(cfg['optimizer'].get('args')), str(e))
        raise TrainingDiverged(message) from None
    except KeyboardInterrupt:
        run.close()
        raise KeyboardInterrupt(_abandon(run, dd, epoch)) from None
    except BaseException:
        run.close()
        _abandon(run, dd)
        raise
    finally:
        run.close()
    return epoch


def _abandon(run, dd, epoch=None):
    """After a failure or an interrupt in ``epoch``: a run folder this invocation created and never wrote a
    checkpoint into is removed on rank 0 (nothing of it could be resumed); otherwise the checkpoints are kept
    (written atomically, all of an epoch or none, so the last one is intact). Returns the interrupt message."""
    if not dd.main:                      # rank 0 saves and reports what is kept
        return 'interrupted'
    when = '' if epoch is None else f' {"after" if run.last_saved == epoch else "during"} epoch {epoch}'
    if run.last_saved is None:
        if run.created:
            shutil.rmtree(run.created, ignore_errors=True)
            return f'interrupted{when}, before the first checkpoint; removed {run.created}'
        return f'interrupted{when}; no checkpoint was written'
    return f'interrupted{when}; {run.last_path} holds epoch {run.last_saved}: run the same command again to resume'
