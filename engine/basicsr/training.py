"""``igconv/train.py -opt X.yml``: BasicSR's iteration-based training loop (IGConv's ``train_pipeline``).

Built from the option file before anything is written (``build``): the training set
(``RandomScaleDownsampleImageDataset``) with ``datasets.samplers.ScaleBatchSampler`` (one scale per batch and
process, over ``dataset_enlarge_ratio`` x the images, BasicSR's ``EnlargedRandomScaleSampler``), the network
(``network.build_network``; ``pretrain_network_g`` loaded, the EMA copy from ``params_ema``), optimizer and
scheduler (``engine.components`` under the BasicSR names), the losses (``pixel_opt`` -> l_pix, ``fft_opt`` ->
l_freq, weighted by ``loss_weight``), EMA (``engine.run_setup.EMA``). Each iteration: the scheduler steps
(from the 2nd on), a linear warm-up overrides the learning rate below ``warmup_iter`` (BasicSR's
``update_learning_rate``), then one optimizer step (``engine.training.train_step``: DDP, a non-finite loss
stops every process). Every ``print_freq`` iterations a log line, every ``save_checkpoint_freq`` the
weights and the training state (``folders``), every ``val_freq`` the validation sets (``evaluation``, EMA
weights when kept). At the end ``net_g_latest.pth`` and a last validation.

Resuming (``path.resume_state: .../training_states/<iter>.state`` or ``--auto_resume``, the latest state of
``experiments/<name>``): the weights from the ``net_g_<iter>.pth`` beside the state ('params', EMA
'params_ema'), optimizer and scheduler states, epoch and iteration; ``pretrain_network_g`` is then ignored,
as in BasicSR. Unlike BasicSR, the run continues exactly where it stopped (fp32 bit-exact): the global RNGs
are reseeded from (manual_seed, iteration, rank) every iteration, data items and scales are functions of
(manual_seed, epoch, index), and the batches of the interrupted epoch already trained on are skipped
(the state's ``epoch_iter``; BasicSR restarts the epoch).
"""
import datetime
import glob
import itertools
import os
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from datasets.samplers import ScaleBatchSampler
from models.basicsr_checkpoint import read_checkpoint
from models.checkpoint import save_checkpoint
from utils.config import ConfigError

from ..components import LOSSES, build_optimizer, build_scheduler
from ..distributed import agree
from ..run_setup import EMA, Options, Run, Settings, derive_seed, seed_all
from ..training import train_step
from . import evaluation
from .folders import Log, prepare
from .launch import setup
from .network import build_network, eval_loaders, load_weights, make_dataset, test_forward
from .options import OptionError


class LoggedLoss:
    """The option's losses as one weighted sum, ``sum_k loss_weight_k * LOSSES[type_k](pred, gt)``, keeping the
    last value of each term (l_pix, l_freq) for the log."""

    def __init__(self, terms, where):
        try:
            self.terms = [(label, LOSSES.get(kind), weight) for label, kind, weight in terms]
        except ConfigError as e:
            raise OptionError(f'{where}: train losses: {e}') from None
        self.last = {}

    def __call__(self, pred, gt):
        total = 0.0
        for label, fn, weight in self.terms:
            value = weight * fn(pred, gt)
            self.last[label] = value.detach()
            total = total + value
        return total

    def __repr__(self):
        return ' + '.join(f'{w:g} * {fn.registry_name} ({label})' for label, fn, w in self.terms)


class _Skip:
    """A batch sampler without its first ``skip`` batches (the part of an epoch a resumed run has done)."""

    def __init__(self, sampler, skip):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


@dataclass
class Trainer:
    opts: object
    dd: object
    log: Log
    run: Run                       # what engine.training.train_step needs
    dataset: object
    sampler: ScaleBatchSampler
    val_loaders: list
    it: int = 0                    # iterations done
    epoch: int = 0
    epoch_iter: int = 0            # iterations done in this epoch
    resumed: bool = False
    tb: object = None
    best: evaluation.Best = field(default_factory=evaluation.Best)
    started: float = field(default_factory=time.time)
    timing: list = field(default_factory=lambda: [0.0, 0.0, 0])   # iteration seconds, data seconds, count

    @property
    def eval_model(self):
        return self.run.ema.model if self.run.ema is not None else self.run.model


# ------------------------------------------------------------------------------------------------
# building and resuming
# ------------------------------------------------------------------------------------------------
def resume_path(opts, auto):
    """The training state to resume from: ``--auto_resume`` -> the latest of experiments/<name>, else
    ``path.resume_state`` (None: a new run)."""
    if auto:
        states = glob.glob(os.path.join(glob.escape(opts.folder), 'training_states', '*.state'))
        iters = [int(os.path.basename(s)[:-6]) for s in states if os.path.basename(s)[:-6].isdigit()]
        if iters:
            return os.path.join(opts.folder, 'training_states', f'{max(iters)}.state')
    return opts.resume_state


def read_state(path):
    state = read_checkpoint(path)
    if not isinstance(state, dict) or not {'iter', 'epoch', 'optimizers', 'schedulers'} <= set(state) \
            or len(state['optimizers']) != 1 or len(state['schedulers']) != 1:
        raise OptionError(f'{path}: not a BasicSR training state of one optimizer and one scheduler')
    return state


def restore(tr, path, state):
    """Load a training state and the weights saved with it (``models/net_g_<iter>.pth`` beside its folder)."""
    run, it = tr.run, int(state['iter'])
    weights = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), 'models', f'net_g_{it}.pth')
    load_weights(run.model, weights, 'params', True, tr.log)
    if run.ema is not None:
        load_weights(run.ema.model, weights, 'params_ema', True, tr.log)
    try:
        run.optimizer.load_state_dict(state['optimizers'][0])
        run.scheduler.load_state_dict(state['schedulers'][0])
    except (ValueError, KeyError, TypeError) as e:
        raise OptionError(f'{path}: the optimizer / scheduler state does not fit train.optim_g / train.scheduler '
                          f'({" ".join(str(e).split())[:200]})') from None
    tr.it, tr.epoch, tr.epoch_iter, tr.resumed = it, int(state['epoch']), int(state.get('epoch_iter', 0)), True
    tr.log(f"Resuming training from epoch: {tr.epoch}, iter: {it} ({path}).")


def build(opts, args, dd, log):
    """Everything of the run, in memory (nothing written); resumed when asked."""
    path = resume_path(opts, args.auto_resume)
    state = read_state(path) if path else None
    if state is not None and not opts.seed_given and state.get('manual_seed') is not None:
        opts.seed = int(state['manual_seed'])
    seed_all(opts.seed)
    loader = opts.train_set.loader
    dataset = make_dataset(opts, opts.train_set)
    sampler = ScaleBatchSampler(len(dataset) * loader['dataset_enlarge_ratio'], loader['batch_size_per_gpu'],
                                scales=dataset.scales, seed=opts.seed, shuffle=loader['use_shuffle'],
                                drop_last=True, rank=dd.rank, world_size=dd.world)
    val_loaders = eval_loaders(opts)         # built (and checked) even without a val section, as BasicSR
    model = build_network(opts)
    if state is None and opts.pretrain:
        load_weights(model, opts.pretrain, opts.param_key, opts.strict_load, log)
    model = model.to(dd.device).train()
    decay = opts.train.ema_decay
    ema = EMA(model, decay) if decay > 0 else None
    if ema is not None and state is None and opts.pretrain:
        load_weights(ema.model, opts.pretrain, 'params_ema', opts.strict_load, log)
    try:
        optimizer = build_optimizer(opts.train.optimizer, [p for p in model.parameters() if p.requires_grad])
    except ConfigError as e:
        raise OptionError(f'{opts.file}: train.optim_g: {e}') from None
    try:
        scheduler = build_scheduler({'scheduler': opts.train.scheduler}, optimizer, opts.train.total_iter)
    except ConfigError as e:
        raise OptionError(f'{opts.file}: train.scheduler: {e}') from None
    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.device.index] if dd.device.type == 'cuda' else None,
            find_unused_parameters=opts.find_unused)
    settings = Settings(epoch_max=opts.train.total_iter, epoch_val=None, epoch_save=None, accumulate=1,
                        ema_decay=decay or None, grad_clip=None, val_scales=None, amp_dtype=None)
    run = Run(cfg=opts.raw, save_dir=opts.folder, dd=dd, options=Options(seed=opts.seed, progress=False),
              settings=settings, model=model, net=net, optimizer=optimizer, scheduler=scheduler, scaler=None,
              loss=LoggedLoss(opts.train.losses, opts.file), metric=None, train=None, val_sets=[], ema=ema,
              unit=model.capabilities.input_range == 'unit')
    tr = Trainer(opts=opts, dd=dd, log=log, run=run, dataset=dataset, sampler=sampler, val_loaders=val_loaders)
    if state is not None:
        restore(tr, path, state)
    return tr


# ------------------------------------------------------------------------------------------------
# one iteration and what happens around it
# ------------------------------------------------------------------------------------------------
def update_learning_rate(tr):
    """BasicSR's ``update_learning_rate``: the scheduler steps from the 2nd iteration on; below
    ``warmup_iter`` the learning rate is ``initial_lr * it / warmup_iter``."""
    optimizer, it, warmup = tr.run.optimizer, tr.it, tr.opts.train.warmup_iter
    if it > 1:
        with warnings.catch_warnings():       # after resuming, the first step precedes optimizer.step()
            warnings.filterwarnings('ignore', message='Detected call of `lr_scheduler.step()`')
            tr.run.scheduler.step()
    if it < warmup:
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr'] / warmup * it


def log_progress(tr, iter_time, data_time):
    """BasicSR's MessageLogger line (loss terms averaged over the processes), and TensorBoard scalars."""
    last = tr.run.loss.last
    values = torch.stack([v.float().reshape(()) for v in last.values()])
    if tr.dd.world > 1:
        dist.all_reduce(values)
        values /= tr.dd.world
    if not tr.dd.main:
        return
    total, opts = tr.opts.train.total_iter, tr.opts
    lrs = ','.join(f'{g["lr"]:.3e}' for g in tr.run.optimizer.param_groups)
    eta = datetime.timedelta(seconds=int(iter_time * (total - tr.it)))
    terms = ' '.join(f'{k}: {v:.4e}' for k, v in zip(last, values.tolist()))
    tr.log(f'[{opts.name[:5]}..][epoch:{tr.epoch:3d}, iter:{tr.it:8,d}, lr:({lrs},)] '
           f'[eta: {eta}, time (data): {iter_time:.3f} ({data_time:.3f})] {terms}')
    if tr.tb is not None:
        for k, v in zip(last, values.tolist()):
            tr.tb.add_scalar(f'losses/{k}', v, tr.it)


def save(tr, label):
    """``models/net_g_<label>.pth`` ({'params'[, 'params_ema']}) and, for an iteration, its training state."""
    run, folder = tr.run, tr.opts.folder
    weights = {'params': {k: v.detach().cpu() for k, v in run.model.state_dict().items()}}
    if run.ema is not None:
        weights['params_ema'] = {k: v.detach().cpu() for k, v in run.ema.model.state_dict().items()}
    save_checkpoint(os.path.join(folder, 'models', f'net_g_{label}.pth'), weights)
    if label != 'latest':
        state = {'epoch': tr.epoch, 'iter': tr.it, 'optimizers': [run.optimizer.state_dict()],
                 'schedulers': [run.scheduler.state_dict()], 'epoch_iter': tr.epoch_iter,
                 'manual_seed': tr.opts.seed}
        save_checkpoint(os.path.join(folder, 'training_states', f'{tr.it}.state'), state)


def validate(tr):
    """Every validation set with the EMA weights (else the trained ones), as BasicSR's ``validation``."""
    opts, model = tr.opts, tr.eval_model
    was_training = model.training
    model.eval()
    forward = test_forward(model, opts)
    try:
        for name, loader in tr.val_loaders:
            save = None
            if opts.val.save_img:
                vis = os.path.join(opts.folder, 'visualization')
                save = evaluation.image_saver(vis, str(tr.it), per_image_folder=True)
            values = evaluation.evaluate(forward, loader, opts.val.metrics, tr.dd.device, save, opts.val.pbar)
            if opts.val.metrics:
                evaluation.report(name, values, opts.val.metrics, tr.best, tr.it, tr.log, tr.tb, tr.it)
    finally:
        model.train(was_training)


def main_process_work(tr, saving, validating, label=None):
    """Rank 0 saves / validates; every process then learns whether it failed (``agree``)."""
    error = None
    if tr.dd.main:
        try:
            if saving:
                tr.log('Saving models and training states.')
                save(tr, label or tr.it)
            if validating:
                validate(tr)
        except Exception as e:       # noqa: BLE001  (re-raised by agree)
            error = e
    agree(tr.dd, error)


def iteration(tr, batch, data_time):
    """One training iteration (the iteration counter already advanced) and what its number asks for."""
    opts, t0 = tr.opts, time.time()
    update_learning_rate(tr)
    seed_all(derive_seed(opts.seed, tr.it, tr.dd.rank))
    train_step(tr.run, [batch], tr.epoch, tr.it - 1)
    timing = tr.timing
    timing[0] += time.time() - t0 + data_time
    timing[1] += data_time
    timing[2] += 1
    if tr.it % opts.logger.print_freq == 0:
        log_progress(tr, timing[0] / timing[2], timing[1] / timing[2])
    saving = tr.it % opts.logger.save_checkpoint_freq == 0
    validating = opts.val is not None and tr.it % opts.val.freq == 0
    if saving or validating:
        main_process_work(tr, saving, validating)


def fit(tr):
    """The loop over epochs and iterations up to ``total_iter``, then the latest weights and a last
    validation (unless the last iteration just validated)."""
    opts, total = tr.opts, tr.opts.train.total_iter
    loader_opts = opts.train_set.loader
    tr.log(f'Start training from epoch: {tr.epoch}, iter: {tr.it}')
    while tr.it < total:
        tr.sampler.set_epoch(tr.epoch)
        tr.dataset.set_epoch(tr.epoch)
        loader = DataLoader(tr.dataset, batch_sampler=_Skip(tr.sampler, tr.epoch_iter),
                            num_workers=loader_opts['num_worker_per_gpu'],
                            pin_memory=loader_opts['pin_memory'] and tr.dd.device.type == 'cuda')
        t_data = time.time()
        for batch in loader:
            tr.it += 1
            tr.epoch_iter += 1
            iteration(tr, batch, time.time() - t_data)
            if tr.it >= total:
                break
            t_data = time.time()
        else:
            tr.epoch, tr.epoch_iter = tr.epoch + 1, 0
    consumed = datetime.timedelta(seconds=int(time.time() - tr.started))
    tr.log(f'End of training. Time consumed: {consumed}')
    tr.log('Save the latest model.')
    last_validated = opts.val is not None and tr.it % opts.val.freq == 0
    main_process_work(tr, True, opts.val is not None and not last_validated, label='latest')


def train(opts, args):
    """Build, check, prepare the folder (main process), train; every process stops on any one's error."""
    log = Log(main=int(os.environ.get('RANK', 0)) == 0)
    dd = setup(opts, args, log)
    tr, error = None, None
    try:
        tr = build(opts, args, dd, log)
    except Exception as e:       # noqa: BLE001  (re-raised on this process by agree)
        error = e
    agree(dd, error)
    lock = None
    try:
        if dd.main:
            lock = prepare(opts, log, resume=tr.resumed)
    except Exception as e:       # noqa: BLE001
        error = e
    agree(dd, error)
    try:
        start(tr)
        fit(tr)
    finally:
        if tr.tb is not None:
            tr.tb.close()
        if lock is not None:
            lock.release()


def start(tr):
    """The run's header in the log (options, statistics, network) and the TensorBoard writer."""
    opts, log = tr.opts, tr.log
    if not tr.dd.main:
        return
    log(yaml.safe_dump(opts.raw, sort_keys=False), echo=False)
    if not opts.seed_given:
        log(f'manual_seed not given: using {opts.seed}')
    loader = opts.train_set.loader
    per_epoch = len(tr.sampler)
    log(f'Training statistics:\n\tNumber of train images: {len(tr.dataset)}\n\tDataset enlarge ratio: '
        f'{loader["dataset_enlarge_ratio"]}\n\tBatch size per gpu: {loader["batch_size_per_gpu"]}\n\tWorld size '
        f'(gpu number): {tr.dd.world}\n\tRequire iter number per epoch: {per_epoch}\n\tTotal epochs: '
        f'{-(-opts.train.total_iter // per_epoch)}; iters: {opts.train.total_iter}.')
    for name, loader in tr.val_loaders:
        log(f'Number of val images/folders in {name}: {len(loader.dataset)}')
    model = tr.run.model
    log(f'Network: {type(model).__name__}, with parameters: {sum(p.numel() for p in model.parameters()):,d}')
    if opts.print_network:
        log(str(model), echo=False)
    log(f'Losses: {tr.run.loss!r}' + (f'; EMA decay {tr.run.ema.decay}' if tr.run.ema else ''))
    if opts.val:
        evaluation.note_crop_border(opts.val.metrics, log)
    if opts.tb_folder:
        from tensorboardX import SummaryWriter
        tr.tb = SummaryWriter(opts.tb_folder)
