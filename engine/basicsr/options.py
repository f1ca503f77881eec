"""BasicSR option files (the IGConv repository's ``options/{train,test}/**/*.yml``): the command line, reading,
validation and translation into ``Options``, before anything is built or written.

Every key is handled or refused: an unknown or unsupported key raises ``OptionError`` naming it (with the
reason for the BasicSR keys this code base does not implement). What each key does:

* top level: ``name`` (the experiment / results folder), ``model_type`` (the published test-time forward:
  ``MODEL_TYPES``), ``num_gpu`` (0: CPU; otherwise CUDA when present, one device per process),
  ``manual_seed`` (None: drawn and logged, as BasicSR), ``scale`` (copied into the datasets by BasicSR and
  read by none of these; accepted, no effect), ``print_network`` (log the architecture),
  ``find_unused_parameters`` (DistributedDataParallel), ``dist_params`` (BasicSR reads it for slurm only;
  with ``--launcher pytorch`` the backend is nccl on CUDA, gloo on CPU, the port the launcher's).
* ``datasets``: ``train`` (training) and ``val*`` (validation) for train.py, ``test*`` / ``val*`` for
  test.py; each is ``name``, ``type`` (a ``datasets.paired`` class) and that class's arguments, plus for
  ``train`` the loader keys ``LOADER_KEYS``.
* ``network_g``: ``type`` (a registered published architecture, ``models.zoo.PUBLISHED_ARCHS``) and its
  constructor arguments (checked by the registry when it is built).
* ``path``: ``pretrain_network_g``, ``param_key_g`` (default 'params'), ``strict_load_g`` (default true),
  ``resume_state`` (train), ``experiments_root`` (train) / ``results_root`` (test): the parent folders of
  ``<name>/`` (default ``experiments/`` and ``results/`` in the repository root, as BasicSR).
* ``train``: ``optim_g`` and ``scheduler`` (``type`` + arguments: ``engine.components`` registries under the
  BasicSR names), ``total_iter``, ``warmup_iter`` (linear warm-up, BasicSR's), ``ema_decay``, ``pixel_opt``
  / ``fft_opt`` (``type``, ``loss_weight``, ``reduction: mean``; logged as l_pix / l_freq).
* ``val``: ``val_freq`` (train), ``save_img``, ``suffix`` (test image names), ``pbar``, ``metrics``
  (``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel``, ``better``; ``crop_border`` is replaced
  by each dataset's scale, as the published model classes do).
* ``logger``: ``print_freq``, ``save_checkpoint_freq``, ``use_tb_logger`` (TensorBoard in
  ``tb_logger/<name>``), ``wandb`` (only ``project: ~``).

Command line (``parse_args``): ``-opt``, ``--launcher none|pytorch``, ``--auto_resume``, ``--debug``,
``--local-rank`` / ``--local_rank``, ``--force_yml a:b=value``, BasicSR's flags.
"""
import argparse
import os
import random
import re
from dataclasses import dataclass, field
from typing import Optional

from utils.config import ConfigError, load_yaml, parse_value
from utils.validate import InputError
from utils.validate import integer as _integer
from utils.validate import number as _number

#: Repository root: where ``experiments/``, ``results/`` and ``tb_logger/`` go by default (BasicSR's root_path).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: BasicSR model classes of the IGConv repository -> their test-time forward (``models.zoo.base.TEST_FORWARDS``).
MODEL_TYPES = {'MSRModel': 'plain', 'SwinIRMSModel': 'window_pad', 'MambaMSModel': 'tiles'}
TRAIN_TYPES = ('RandomScaleDownsampleImageDataset',)
EVAL_TYPES = ('FixedScalePairedImageDataset', 'FixedScaleDownsampleImageDataset')
LOADER_KEYS = ('batch_size_per_gpu', 'num_worker_per_gpu', 'use_shuffle', 'dataset_enlarge_ratio', 'prefetch_mode',
               'pin_memory', 'persistent_workers')
METRIC_TYPES = {'calculate_psnr': 'psnr', 'calculate_ssim': 'ssim'}
LOSS_LABELS = {'pixel_opt': 'l_pix', 'fft_opt': 'l_freq'}

TOP_KEYS = {'train': {'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'network_g', 'path', 'train',
                      'val', 'logger', 'dist_params', 'print_network', 'find_unused_parameters'},
            'test': {'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'network_g', 'path', 'val',
                     'dist_params', 'print_network'}}
PATH_KEYS = {'train': {'pretrain_network_g', 'param_key_g', 'strict_load_g', 'resume_state', 'experiments_root'},
             'test': {'pretrain_network_g', 'param_key_g', 'strict_load_g', 'results_root'}}
TRAIN_KEYS = {'ema_decay', 'optim_g', 'scheduler', 'total_iter', 'warmup_iter', 'pixel_opt', 'fft_opt'}
VAL_KEYS = {'train': {'val_freq', 'save_img', 'pbar', 'metrics'}, 'test': {'save_img', 'suffix', 'pbar', 'metrics'}}

#: Why some BasicSR keys are refused (any other unknown key: 'not an option of BasicSR/IGConv here').
UNSUPPORTED = {
    'use_amp': 'mixed precision is not supported (the published MSRModel AMP path calls the network without its scale)',
    'train': 'only igconv/train.py trains',
    'logger': 'only igconv/train.py logs training',
    'path.resume_state': 'only igconv/train.py resumes',
    'train.perceptual_opt': 'perceptual losses are not implemented here',
    'train.wave_opt': 'wavelet losses are not implemented here',
    'train.mesa_opt': 'the MESA loss is not implemented here',
    'train.gan_opt': 'GAN training is not implemented here',
    'val.self_ensemble': 'self-ensemble testing is not implemented here (the published numbers do not use it)',
    'val.discretize_net_g': 'a dead option of the published code (no network defines discretize)',
    'val.val_freq': 'test.py does not validate periodically',
    'val.suffix': 'only test.py names images with a suffix',
    'path.ignore_resume_networks': 'only network_g exists here',
    'network_d': 'GAN training is not implemented here',
}


class OptionError(ConfigError):
    """An option file or command-line option is missing, malformed or not supported."""


@dataclass
class DataSpec:
    """One ``datasets`` entry: ``args`` for the ``datasets`` registry class ``type``; ``loader`` for train."""
    key: str
    name: str
    type: str
    args: dict
    loader: dict = field(default_factory=dict)


@dataclass
class MetricSpec:
    name: str                 # the option's metric name (psnr, ssim, ...)
    kind: str                 # 'psnr' or 'ssim'
    y_channel: bool
    higher: bool
    crop_border: Optional[int] = None   # given in the file; replaced by each dataset's scale


@dataclass
class ValSpec:
    freq: Optional[int]
    save_img: bool
    suffix: Optional[str]
    pbar: bool
    metrics: list


@dataclass
class TrainSpec:
    total_iter: int
    warmup_iter: int
    ema_decay: float
    optimizer: dict           # {'name', 'args'} for engine.components.build_optimizer
    scheduler: dict           # {'name', 'args'}
    losses: list              # [(label, loss type, weight)]


@dataclass
class LoggerSpec:
    print_freq: int
    save_checkpoint_freq: int
    use_tb_logger: bool


@dataclass
class Options:
    """An option file, checked and translated (module docstring)."""
    file: str
    phase: str                # 'train' or 'test'
    raw: dict                 # the file as read (after --force_yml / --debug)
    name: str
    model_type: str
    num_gpu: object           # int >= 0 or 'auto'
    seed: int
    seed_given: bool
    network: dict             # {'type', 'args'}
    datasets: list            # eval DataSpecs, in test / validation order
    train_set: Optional[DataSpec]
    pretrain: Optional[str]
    param_key: Optional[str]
    strict_load: bool
    resume_state: Optional[str]
    folder: str               # experiments/<name> (train) or results/<name> (test)
    tb_folder: Optional[str]
    train: Optional[TrainSpec]
    val: Optional[ValSpec]
    logger: Optional[LoggerSpec]
    print_network: bool
    find_unused: bool

    @property
    def test_forward(self):
        return MODEL_TYPES[self.model_type]


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def parse_args(argv, phase, prog):
    """BasicSR's command line: ``-opt FILE [--launcher none|pytorch] [--auto_resume] [--debug] [--local-rank N]
    [--force_yml a:b=value ...]``."""
    p = argparse.ArgumentParser(prog=prog, description=f'{"Train" if phase == "train" else "Test"} from a BasicSR '
                                f'option file (IGConv repository commands; see engine/basicsr)')
    p.add_argument('-opt', required=True, metavar='OPTION.yml', help='BasicSR option file')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                   help='pytorch: one process per device under torch.distributed.launch or torchrun')
    p.add_argument('--auto_resume', '--auto-resume', action='store_true',
                   help='resume from the latest training state of experiments/<name>')
    p.add_argument('--debug', action='store_true', help="BasicSR's debug mode (name debug_<name>, frequent logs)")
    p.add_argument('--local-rank', '--local_rank', dest='local_rank', type=int, default=None,
                   help='set by torch.distributed.launch (LOCAL_RANK in the environment wins)')
    p.add_argument('--force_yml', '--force-yml', nargs='+', default=None, metavar='A:B=VALUE',
                   help='override existing option entries, e.g. train:ema_decay=0.999')
    return p.parse_args(argv)


def force_yml(raw, entries):
    """Apply BasicSR's ``--force_yml a:b=value`` entries to ``raw`` (existing keys only; YAML values)."""
    for entry in entries or ():
        if '=' not in entry:
            raise OptionError(f'--force_yml {entry!r}: expected KEY:SUBKEY=VALUE')
        keys, value = entry.split('=', 1)
        node, parts = raw, keys.strip().split(':')
        for i, k in enumerate(parts):
            if not isinstance(node, dict) or k not in node:
                raise OptionError(f'--force_yml {entry!r}: {":".join(parts[:i + 1])} is not in the option file '
                                  f'(only existing entries can be changed)')
            if i == len(parts) - 1:
                node[k] = parse_value(value.strip())
            node = node[k]


def apply_debug(raw):
    """BasicSR's ``--debug``: name ``debug_<name>``, validation every 8 iterations, logs every iteration."""
    if not str(raw.get('name', '')).startswith('debug'):
        raw['name'] = f'debug_{raw.get("name")}'
    if isinstance(raw.get('val'), dict):
        raw['val']['val_freq'] = 8
    if isinstance(raw.get('logger'), dict):
        raw['logger'].update(print_freq=1, save_checkpoint_freq=8)


# ------------------------------------------------------------------------------------------------
# small checks
# ------------------------------------------------------------------------------------------------
def check_keys(mapping, allowed, where):
    """Refuse the first key of ``mapping`` not in ``allowed``, naming it (``where``: its parent, '' at the top)."""
    if not isinstance(mapping, dict):
        raise OptionError(f'{where or "the option file"} must be a mapping, got {type(mapping).__name__}')
    for key in mapping:
        if key not in allowed:
            path = f'{where}.{key}' if where else str(key)
            reason = UNSUPPORTED.get(path, 'not an option this code base implements')
            raise OptionError(f'option {path} is not supported: {reason}; remove it '
                              f'(supported here: {", ".join(sorted(map(str, allowed)))})')


def _int(value, where, minimum=None, allow_none=False):
    try:
        return _integer(value, where, minimum=minimum, allow_none=allow_none)
    except InputError as e:
        raise OptionError(str(e)) from None


def _float(value, where, minimum=None, maximum=None):
    try:
        return float(_number(value, where, minimum=minimum, maximum=maximum, allow_none=False))
    except InputError as e:
        raise OptionError(str(e)) from None


def _bool(value, where):
    if not isinstance(value, bool):
        raise OptionError(f'{where} must be true or false, got {value!r:.60}')
    return value


def _str(value, where, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise OptionError(f'{where} must be a non-empty string, got {value!r:.60}')
    return value


def _section(raw, key, required=False):
    value = raw.get(key)
    if value is None:
        if required:
            raise OptionError(f'option {key} is required')
        return {}
    if not isinstance(value, dict):
        raise OptionError(f'option {key} must be a mapping, got {type(value).__name__}')
    return value


def _typed(spec, where, registry_kind):
    """``{'type': T, **args}`` -> ``{'name': T, 'args': args}``."""
    if not isinstance(spec, dict) or not isinstance(spec.get('type'), str):
        raise OptionError(f'{where} must be a mapping with a {registry_kind} type, got {spec!r:.80}')
    return {'name': spec['type'], 'args': {k: v for k, v in spec.items() if k != 'type'}}


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def _dataset(key, entry, phase):
    where = f'datasets.{key}'
    if not isinstance(entry, dict):
        raise OptionError(f'{where} must be a mapping, got {type(entry).__name__}')
    types = TRAIN_TYPES if key == 'train' else EVAL_TYPES
    name, kind = _str(entry.get('name'), f'{where}.name'), entry.get('type')
    if kind not in types:
        raise OptionError(f'{where}.type must be one of {", ".join(types)} here, got {kind!r:.60}')
    args = {k: v for k, v in entry.items() if k not in ('name', 'type')}
    if 'seed' in args:
        raise OptionError(f'option {where}.seed is not supported: the data follow manual_seed; remove it')
    loader = {}
    if key == 'train':
        loader = {k: args.pop(k) for k in LOADER_KEYS if k in args}
        _loader(loader, where)
    return DataSpec(key=key, name=name, type=kind, args=args, loader=loader)


def _loader(loader, where):
    loader['batch_size_per_gpu'] = _int(loader.get('batch_size_per_gpu'), f'{where}.batch_size_per_gpu', 1)
    loader['num_worker_per_gpu'] = _int(loader.get('num_worker_per_gpu', 0), f'{where}.num_worker_per_gpu', 0)
    loader['dataset_enlarge_ratio'] = _int(loader.get('dataset_enlarge_ratio', 1),
                                           f'{where}.dataset_enlarge_ratio', 1)
    for k, default in (('use_shuffle', True), ('pin_memory', False), ('persistent_workers', False)):
        loader[k] = _bool(loader.get(k, default), f'{where}.{k}')
    if loader['persistent_workers']:
        raise OptionError(f'{where}.persistent_workers: true is not supported (workers must see each epoch\'s '
                          f'random draws)')
    mode = loader.get('prefetch_mode')
    if mode not in (None, 'cpu', 'cuda'):
        raise OptionError(f"{where}.prefetch_mode must be ~, cpu or cuda, got {mode!r:.40}")
    if mode == 'cuda' and not loader['pin_memory']:
        raise OptionError(f'{where}: prefetch_mode cuda needs pin_memory: true (as BasicSR)')


def _datasets(raw, phase):
    entries = _section(raw, 'datasets', required=True)
    evals, train_set = [], None
    for key, entry in entries.items():
        prefix = str(key).split('_')[0]
        if phase == 'train' and prefix not in ('train', 'val') or phase == 'test' and prefix not in ('test', 'val'):
            hint = {'train': 'a training set: train with igconv/train.py',
                    'test': 'a test set: test with igconv/test.py'}.get(prefix, f'name it {phase}, val_<n> or test_<n>')
            raise OptionError(f'datasets.{key}: not a dataset igconv/{phase}.py uses ({hint})')
        if key == 'train':
            train_set = _dataset(key, entry, phase)
        elif prefix == 'train':
            raise OptionError(f'datasets.{key}: the training dataset must be named train')
        else:
            evals.append(_dataset(str(key), entry, phase))
    if phase == 'train' and train_set is None:
        raise OptionError('datasets.train is required to train (a test option file? use igconv/test.py)')
    if phase == 'test':                           # IGConv's test.py: by the number after the last '_'
        evals.sort(key=lambda d: (0, int(d.key.rsplit('_', 1)[1])) if re.fullmatch(r'.+_\d+', d.key) else (1, d.key))
        if not evals:
            raise OptionError('datasets: no test_* / val_* dataset to test')
    return evals, train_set


def _metrics(metrics):
    out = []
    for name, spec in (metrics or {}).items():
        where = f'val.metrics.{name}'
        check_keys(spec, {'type', 'crop_border', 'test_y_channel', 'better'}, where)
        if spec.get('type') not in METRIC_TYPES:
            raise OptionError(f'{where}.type must be one of {", ".join(METRIC_TYPES)}, got {spec.get("type")!r:.40}')
        crop = spec.get('crop_border')
        if crop is not None:
            crop = _int(crop, f'{where}.crop_border', 0)
        better = spec.get('better', 'higher')
        if better not in ('higher', 'lower'):
            raise OptionError(f'{where}.better must be higher or lower, got {better!r:.40}')
        out.append(MetricSpec(name=str(name), kind=METRIC_TYPES[spec['type']],
                              y_channel=_bool(spec.get('test_y_channel', False), f'{where}.test_y_channel'),
                              higher=better == 'higher', crop_border=crop))
    return out


def _val(raw, phase):
    if raw.get('val') is None:
        if phase == 'test':
            raise OptionError('option val is required to test (metrics and/or save_img)')
        return None
    val = _section(raw, 'val')
    check_keys(val, VAL_KEYS[phase], 'val')
    metrics = val.get('metrics')
    if metrics is not None and not isinstance(metrics, dict):
        raise OptionError(f'val.metrics must be a mapping of metric name to {{type, ...}}, got {metrics!r:.60}')
    freq = _int(val.get('val_freq'), 'val.val_freq', 1) if phase == 'train' else None
    return ValSpec(freq=freq, save_img=_bool(val.get('save_img', False), 'val.save_img'),
                   suffix=_str(val.get('suffix'), 'val.suffix', allow_none=True),
                   pbar=_bool(val.get('pbar', False), 'val.pbar'), metrics=_metrics(metrics))


def _loss(key, spec):
    where = f'train.{key}'
    check_keys(spec, {'type', 'loss_weight', 'reduction'}, where)
    if spec.get('reduction', 'mean') != 'mean':
        raise OptionError(f"{where}.reduction: only mean is supported, got {spec['reduction']!r:.40}")
    return LOSS_LABELS[key], _str(spec.get('type'), f'{where}.type'), _float(spec.get('loss_weight', 1.0),
                                                                              f'{where}.loss_weight', 0)


def _train(raw):
    train = _section(raw, 'train', required=True)
    check_keys(train, TRAIN_KEYS, 'train')
    total = _int(train.get('total_iter'), 'train.total_iter', 1)
    losses = [_loss(k, train[k]) for k in LOSS_LABELS if train.get(k) is not None]
    if not losses:
        raise OptionError('train: no loss (give pixel_opt and/or fft_opt)')
    for key in ('optim_g', 'scheduler'):
        if train.get(key) is None:
            raise OptionError(f'option train.{key} is required')
    return TrainSpec(total_iter=total, warmup_iter=_int(train.get('warmup_iter', -1), 'train.warmup_iter', -1),
                     ema_decay=_float(train.get('ema_decay', 0), 'train.ema_decay', 0, 0.999999999),
                     optimizer=_typed(train['optim_g'], 'train.optim_g', 'optimizer'),
                     scheduler=_typed(train['scheduler'], 'train.scheduler', 'scheduler'), losses=losses)


def _logger(raw):
    log = _section(raw, 'logger', required=True)
    check_keys(log, {'print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb'}, 'logger')
    wandb = log.get('wandb') or {}
    check_keys(wandb, {'project', 'resume_id'}, 'logger.wandb')
    if wandb.get('project') is not None:
        raise OptionError('logger.wandb.project: Weights & Biases logging is not supported here (set it to ~; '
                          'use_tb_logger writes TensorBoard logs)')
    return LoggerSpec(print_freq=_int(log.get('print_freq'), 'logger.print_freq', 1),
                      save_checkpoint_freq=_int(log.get('save_checkpoint_freq'), 'logger.save_checkpoint_freq', 1),
                      use_tb_logger=_bool(log.get('use_tb_logger', False), 'logger.use_tb_logger'))


def _path(value, where):
    return None if value is None else os.path.expanduser(_str(value, where))


def _network(raw):
    net = _section(raw, 'network_g', required=True)
    return {'type': _str(net.get('type'), 'network_g.type'), 'args': {k: v for k, v in net.items() if k != 'type'}}


def _top(raw, phase):
    check_keys(raw, TOP_KEYS[phase], '')
    name = _str(raw.get('name'), 'name')
    if os.sep in name or name in ('.', '..'):
        raise OptionError(f'name must be a folder name, got {name!r}')
    model_type = raw.get('model_type')
    if model_type not in MODEL_TYPES:
        raise OptionError(f'model_type must be one of {", ".join(MODEL_TYPES)}, got {model_type!r:.60}')
    num_gpu = raw.get('num_gpu', 'auto')
    if num_gpu != 'auto':
        num_gpu = _int(num_gpu, 'num_gpu', 0)
    if raw.get('scale') is not None:
        _int(raw['scale'], 'scale', 1)
    dist = _section(raw, 'dist_params')
    check_keys(dist, {'backend', 'port'}, 'dist_params')
    if dist.get('backend', 'nccl') not in ('nccl', 'gloo'):
        raise OptionError(f"dist_params.backend must be nccl or gloo, got {dist['backend']!r:.40}")
    return name, model_type, num_gpu


def read_options(path, phase, force=None, debug=False):
    """Read and check an option file for ``phase`` ('train' or 'test'); returns ``Options``. Every problem
    raises ``OptionError`` in one line naming the file and the option."""
    raw = load_yaml(path, 'option file', OptionError)
    if not isinstance(raw, dict):
        raise OptionError(f'{path}: an option file is a mapping of options, got {type(raw).__name__}')
    try:
        force_yml(raw, force)
        if debug:
            apply_debug(raw)
        return _translate(path, phase, raw)
    except OptionError as e:
        raise OptionError(f'{path}: {e}') from None


def _translate(path, phase, raw):
    name, model_type, num_gpu = _top(raw, phase)
    evals, train_set = _datasets(raw, phase)
    paths = _section(raw, 'path')
    check_keys(paths, PATH_KEYS[phase], 'path')
    seed = raw.get('manual_seed')
    seed_given = seed is not None
    seed = _int(seed, 'manual_seed', 0) if seed_given else random.randint(1, 10000)
    param_key = paths.get('param_key_g', 'params')
    if param_key is not None:
        _str(param_key, 'path.param_key_g')
    root_key = 'experiments_root' if phase == 'train' else 'results_root'
    parent = _path(paths.get(root_key), f'path.{root_key}') or os.path.join(ROOT, root_key.split('_')[0])
    tb = os.path.join(os.path.dirname(os.path.abspath(parent)), 'tb_logger', name)
    train = _train(raw) if phase == 'train' else None
    logger = _logger(raw) if phase == 'train' else None
    return Options(
        file=path, phase=phase, raw=raw, name=name, model_type=model_type, num_gpu=num_gpu, seed=seed,
        seed_given=seed_given, network=_network(raw), datasets=evals, train_set=train_set,
        pretrain=_path(paths.get('pretrain_network_g'), 'path.pretrain_network_g'), param_key=param_key,
        strict_load=_bool(paths.get('strict_load_g', True), 'path.strict_load_g'),
        resume_state=_path(paths.get('resume_state'), 'path.resume_state'), folder=os.path.join(parent, name),
        tb_folder=tb if logger and logger.use_tb_logger and 'debug' not in name else None, train=train,
        val=_val(raw, phase), logger=logger, print_network=_bool(raw.get('print_network', False), 'print_network'),
        find_unused=_bool(raw.get('find_unused_parameters', False), 'find_unused_parameters'))
