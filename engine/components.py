"""Registries of the training components a YAML config names: optimizers, schedulers, losses, metrics.

Each is a ``utils.registry.Registry``; a new component is one registered function, then named in the
config. Config forms (the published LIIF / LTE / LMF keys keep working):

* ``optimizer: {name: adam, args: {lr: 1.e-4, betas: [0.9, 0.99]}}`` -> ``OPTIMIZERS``; the function
  receives ``params`` plus ``args``. Numbers PyYAML reads as strings (``1e-4``) are accepted.
* ``multi_step_lr: {milestones: [200, 400], gamma: 0.5}`` (published) or
  ``scheduler: {name: cosine, args: {...}}`` -> ``SCHEDULERS``; the function receives ``optimizer``,
  ``epoch_max`` and ``args``. Schedulers step once per epoch, after the epoch's iterations.
* ``loss: {l1: 1.0, fft: 0.05}`` -> ``LOSSES``: the weighted sum of ``fn(pred, gt)`` (default ``l1``);
  a term may also be ``{weight: w, args: {...}}`` (extra keyword arguments of the function).
* ``val_metric: psnr`` -> ``METRICS`` (default ``psnr``); ``fn(pred, gt) -> float`` on one validation
  batch, predictions and targets in [0, 1] (predictions clamped); the validation value is the mean over
  batches weighted by batch size. ``higher_is_better`` (an attribute the decorator sets) picks the best
  checkpoint.

BasicSR option files (``engine.basicsr``) name their components by BasicSR's class names, registered
here as aliases (``Adam``, ``AdamW``, ``SGD``, ``RMSprop``; ``MultiStepLR``; ``L1Loss``, ``MSELoss``,
``FFTLoss``) or entries of their own (``CosineAnnealingRestartLR``); there a scheduler steps once per
iteration.

Example, a new loss used as ``loss: {charbonnier: 1.0}``::

    from engine.components import LOSSES

    @LOSSES.register('charbonnier')
    def charbonnier(pred, gt, eps=1e-3):
        return ((pred - gt) ** 2 + eps ** 2).sqrt().mean()

Predictions and targets given to losses are normalised as ``(x - 0.5) / 0.5``: (B, Q, 3) query
values for implicit models, (B, 3, H, W) images for grid models.
"""
import functools
import inspect
import math

import torch

from utils import metrics as image_metrics
from utils.config import ConfigError
from utils.registry import Registry
from utils.untrusted import excerpt

OPTIMIZERS = Registry('optimizer', ConfigError)
SCHEDULERS = Registry('scheduler', ConfigError)
LOSSES = Registry('loss', ConfigError)
METRICS = Registry('metric', ConfigError)


def _numbers(args, where):
    """Turn numeric strings (PyYAML reads ``1e-4`` as a string) into floats; other values unchanged."""
    out = {}
    for k, v in args.items():
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ConfigError(f'{where}.{k} must be a number, got {v!r}') from None
        out[k] = v
    return out


def _wrap_torch(cls, first):
    """A factory with ``cls``'s signature (so the registry checks argument names) calling ``cls``."""
    @functools.wraps(cls, assigned=('__doc__',), updated=())
    def build(**kwargs):
        return cls(kwargs.pop(first), **kwargs)
    build.__signature__ = inspect.signature(cls)
    return build


for _name, _cls in (('adam', torch.optim.Adam), ('adamw', torch.optim.AdamW), ('sgd', torch.optim.SGD),
                    ('rmsprop', torch.optim.RMSprop)):
    OPTIMIZERS.register(_name)(_wrap_torch(_cls, 'params'))


@SCHEDULERS.register('multi_step_lr')
def multi_step_lr(optimizer, epoch_max, milestones, gamma=0.1):
    """lr x gamma at each milestone epoch (the published ``multi_step_lr`` entry)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[int(m) for m in milestones],
                                                gamma=float(gamma))


@SCHEDULERS.register('step_lr')
def step_lr(optimizer, epoch_max, step_size, gamma=0.1):
    """lr x gamma every ``step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(step_size), gamma=float(gamma))


@SCHEDULERS.register('cosine')
def cosine(optimizer, epoch_max, eta_min=0.0, t_max=None):
    """Cosine annealing from the initial lr to ``eta_min`` over ``t_max`` epochs (default ``epoch_max``)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(t_max or epoch_max),
                                                      eta_min=float(eta_min))


@SCHEDULERS.register('cosine_restart')
def cosine_restart(optimizer, epoch_max, periods, eta_min=0.0):
    """Cosine annealing restarted after each period (epochs); ``periods`` [T_0, T_0 * T_mult]."""
    t0 = int(periods[0])
    mult = int(periods[1]) // t0 if len(periods) > 1 else 1
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=max(mult, 1),
                                                                eta_min=float(eta_min))


@SCHEDULERS.register('exponential')
def exponential(optimizer, epoch_max, gamma):
    """lr x gamma every epoch."""
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=float(gamma))


@LOSSES.register('l1')
def l1(pred, gt):
    """Mean absolute error (the published LIIF / LTE / LMF / IGConv pixel loss)."""
    return (pred - gt).abs().mean()


@LOSSES.register('mse')
def mse(pred, gt):
    """Mean squared error."""
    return (pred - gt).pow(2).mean()


@LOSSES.register('fft')
def fft(pred, gt):
    """IGConv+'s frequency L1 loss (``models.upsamplers.losses.fft_l1_loss``; image batches only)."""
    from models.upsamplers.losses import fft_l1_loss
    if pred.dim() != 4:
        raise ConfigError('loss.fft needs image predictions (B, 3, H, W) (a grid model such as IGConv), '
                          f'got shape {tuple(pred.shape)}')
    return fft_l1_loss(pred, gt)



# ------------------------------------------------------------------------------------------------
# BasicSR names: what the option files of BasicSR-based repositories (IGConv) write as ``type``
# (``engine.basicsr`` looks them up here)
# ------------------------------------------------------------------------------------------------
def _alias(registry, alias, name):
    """Register ``alias`` as another name of the entry ``name`` (same signature, same behaviour)."""
    target = registry.get(name)

    @functools.wraps(target, assigned=('__doc__',), updated=())
    def entry(*args, **kwargs):
        return target(*args, **kwargs)
    entry.__signature__ = inspect.signature(target)
    registry.register(alias)(entry)


for _alias_name, _name in (('Adam', 'adam'), ('AdamW', 'adamw'), ('SGD', 'sgd'), ('RMSprop', 'rmsprop')):
    _alias(OPTIMIZERS, _alias_name, _name)
_alias(SCHEDULERS, 'MultiStepLR', 'multi_step_lr')
for _alias_name, _name in (('L1Loss', 'l1'), ('MSELoss', 'mse'), ('FFTLoss', 'fft')):
    _alias(LOSSES, _alias_name, _name)


class CosineRestartLR(torch.optim.lr_scheduler.LRScheduler):
    """BasicSR's ``CosineAnnealingRestartLR``: consecutive cosine cycles of ``periods[i]`` steps; cycle i
    starts at ``restart_weights[i]`` x the initial lr and falls to ``eta_min``. At step t (``last_epoch``)
    in cycle i, which began at step s: ``eta_min + w_i (lr0 - eta_min) (1 + cos(pi (t - s) / periods[i])) / 2``;
    a step beyond the last period raises ``ValueError``."""

    def __init__(self, optimizer, periods, restart_weights=(1,), eta_min=0.0, last_epoch=-1):
        self.periods = [int(p) for p in periods]
        self.restart_weights = [float(w) for w in restart_weights]
        self.eta_min = float(eta_min)
        self.ends = [sum(self.periods[:i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t = self.last_epoch
        cycle = next((i for i, end in enumerate(self.ends) if t <= end), None)
        if cycle is None:
            raise ValueError(f'CosineAnnealingRestartLR: step {t} is beyond its periods {self.periods}')
        start = self.ends[cycle - 1] if cycle else 0
        phase = math.cos(math.pi * (t - start) / self.periods[cycle])
        return [self.eta_min + self.restart_weights[cycle] * 0.5 * (base - self.eta_min) * (1 + phase)
                for base in self.base_lrs]


@SCHEDULERS.register('CosineAnnealingRestartLR')
def cosine_annealing_restart(optimizer, epoch_max, periods, restart_weights=(1,), eta_min=0.0):
    """BasicSR's cosine annealing with restarts (``CosineRestartLR``); ``periods`` in scheduler steps must
    cover the run (``sum(periods) >= epoch_max``), one restart weight per period."""
    if not isinstance(periods, (list, tuple)) or not periods or any(
            isinstance(p, bool) or not isinstance(p, (int, float)) or p != int(p) or p < 1 for p in periods):
        raise ConfigError(f'CosineAnnealingRestartLR: periods must be a list of positive integers, got {periods!r}')
    if not isinstance(restart_weights, (list, tuple)) or len(restart_weights) != len(periods):
        raise ConfigError(f'CosineAnnealingRestartLR: restart_weights {restart_weights!r} must have one weight per '
                          f'period ({len(periods)})')
    if sum(int(p) for p in periods) < epoch_max:
        raise ConfigError(f'CosineAnnealingRestartLR: the periods {list(periods)} cover {sum(int(p) for p in periods)} '
                          f'steps but the run takes {epoch_max}')
    return CosineRestartLR(optimizer, periods, restart_weights, eta_min)

def register_metric(name, higher_is_better=True):
    """Decorator: register a validation metric ``fn(pred01, gt01) -> float`` and its direction."""
    def decorator(fn):
        fn.higher_is_better = higher_is_better
        return METRICS.register(name)(fn)
    return decorator


@register_metric('psnr')
def psnr(pred, gt):
    """PSNR (dB, RGB in [0, 1], no border shave, no cap) of the whole batch at once, as the published
    training validation (``calc_psnr`` on a batch): one MSE over every value of the batch."""
    return image_metrics.psnr(pred.reshape(1, 1, -1, 1), gt.reshape(1, 1, -1, 1)).item()


@register_metric('l1', higher_is_better=False)
def l1_metric(pred, gt):
    """Mean absolute error in [0, 1] (lower is better)."""
    return (pred - gt).abs().mean().item()


# ------------------------------------------------------------------------------------------------
# building from a config
# ------------------------------------------------------------------------------------------------
def build_optimizer(spec, params):
    """``spec`` = ``{name, args}``; returns the optimizer over ``params``."""
    if not isinstance(spec, dict) or 'name' not in spec:
        raise ConfigError(f'optimizer must be a mapping {{name, args}}, got {excerpt(spec, 100)}')
    args = spec.get('args') or {}
    if not isinstance(args, dict):
        raise ConfigError(f'optimizer.args must be a mapping, got {type(args).__name__}')
    spec = {'name': spec['name'], 'args': _numbers(args, 'optimizer.args')}
    try:
        return OPTIMIZERS.build(spec, {'params': list(params)})
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f'optimizer {spec["name"]!r}: {e}') from None


def scheduler_spec(cfg):
    """The scheduler entry of a config as ``{name, args}`` (``multi_step_lr:`` is the published form),
    or None (constant learning rate)."""
    legacy = cfg.get('multi_step_lr')
    spec = cfg.get('scheduler')
    if legacy is not None and spec is not None:
        raise ConfigError("config has both 'multi_step_lr' and 'scheduler'; keep one")
    if legacy is not None:
        if not isinstance(legacy, dict):
            raise ConfigError(f'multi_step_lr must be a mapping {{milestones, gamma}}, got {excerpt(legacy, 100)}')
        return {'name': 'multi_step_lr', 'args': dict(legacy)}
    if spec is None:
        return None
    if not isinstance(spec, dict) or 'name' not in spec:
        raise ConfigError(f'scheduler must be a mapping {{name, args}}, got {excerpt(spec, 100)}')
    return spec


def build_scheduler(cfg, optimizer, epoch_max):
    spec = scheduler_spec(cfg)
    if spec is None:
        return None
    try:
        return SCHEDULERS.build(spec, {'optimizer': optimizer, 'epoch_max': epoch_max})
    except (TypeError, ValueError, IndexError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f'scheduler {spec["name"]!r}: {e}') from None


class WeightedLoss:
    """``sum_k weight_k * LOSSES[k](pred, gt, **args_k)`` from the config's ``loss`` mapping."""

    def __init__(self, spec):
        spec = {'l1': 1.0} if spec is None else spec
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f'loss must be a mapping of loss name to weight, got {excerpt(spec, 100)}')
        self.terms = []
        for name, value in spec.items():
            fn = LOSSES.get(name)
            args = {}
            if isinstance(value, dict):
                unknown = set(value) - {'weight', 'args'}
                if unknown:
                    raise ConfigError(f'loss.{name}: unknown key(s) {sorted(unknown)}; use weight and args')
                args = dict(value.get('args') or {})
                value = value.get('weight', 1.0)
                params = inspect.signature(fn).parameters
                bad = sorted(set(args) - set(params) - {'pred', 'gt'})
                if bad:
                    raise ConfigError(f'loss {name!r} does not take argument(s) {bad}; it takes: '
                                      f'{", ".join(list(params)[2:]) or "nothing"}')
            try:
                weight = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f'loss.{name} must be a number (the weight), got {value!r}') from None
            self.terms.append((name, weight, fn, args))

    def __call__(self, pred, gt):
        total = 0.0
        for _, weight, fn, args in self.terms:
            if weight:
                total = total + weight * fn(pred, gt, **args)
        return total

    def __repr__(self):
        return ' + '.join(f'{w:g} * {n}' for n, w, _, _ in self.terms)


def build_metric(name):
    """The validation metric ``name``; registered without ``register_metric``, higher is better."""
    fn = METRICS.get('psnr' if name is None else name)
    if not hasattr(fn, 'higher_is_better'):
        fn.higher_is_better = True
    return fn
