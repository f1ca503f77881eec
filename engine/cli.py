"""The script layer shared by ``test.py``, ``demo.py``, ``train.py``, ``init_cmsr.py`` and ``scripts/*``.

One place for what every entry point needs:

* **flags in both spellings**: ours (``--mse-threshold``) and the published LMF scripts'
  (``--mse_threshold``) name the same option; booleans are parsed for real (``parse_bool``:
  True/False/true/false/1/0/yes/no), so ``--fast False`` means off (published quirk B16 fixed);
* **device policy** (``choose_device``): ``--device cpu|cuda|cuda:N|mps`` or the published ``--gpu N``
  (CUDA device N; where CUDA is absent one line says the run goes on on the CPU); default CUDA, else
  MPS, else CPU; under ``torchrun`` each process takes ``cuda:LOCAL_RANK`` (or the CPU);
* **model loading** (``resolve_model_path``, ``load_model``): a bare file name such as
  ``edsr-b_lm-liif.pth`` that does not exist in the working directory is looked up in
  ``save/pretrained_models/`` and ``save/``; a checkpoint whose args carry a ``cmsr_spec`` does not turn
  CMSR on (it is dropped with a one-line note: CMSR only on explicit flags);
* **dataset construction** (``build_dataset``) from a ``{dataset, wrapper}`` spec, the configs' format;
* **error reporting** (``run``): errors of the ValueError family (and checkpoint / file errors) become
  one line ``<script>: error: <message>`` on stderr and exit status 1, never a traceback;
* **evaluation sharding** (``Shard``, ``gather``): under ``torchrun`` each process takes every
  ``world``-th image and rank 0 gathers the per-image rows.

Conventions of the rest of the code base hold: images (B, 3, h, w) in [0, 1], models see
``(x - 0.5) / 0.5``; coordinates are (row, col).
"""
import argparse
import os
import sys

#: Where a bare checkpoint name (no folder) is looked up when it is not in the working directory,
#: relative to the working directory (the published README runs from the repository root).
MODEL_SEARCH_DIRS = (os.path.join('save', 'pretrained_models'), 'save')

#: ``train.py --stop-after`` default when set: lets tests run a published training command verbatim and stop it.
STOP_AFTER_ENV = 'ASSR_STOP_AFTER'

TRUE_WORDS = ('true', '1', 'yes', 'on')
FALSE_WORDS = ('false', '0', 'no', 'off')


class CLIError(ValueError):
    """A command-line value is wrong or flags contradict each other."""


def script_name():
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'script'


def note(message, script=None):
    """One informational line on stderr, prefixed like errors (``test.py: note: ...``)."""
    print(f'{script or script_name()}: note: {message}', file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# flags
# ------------------------------------------------------------------------------------------------
def parse_bool(text):
    """``'True'``/``'false'``/``'1'``/``'0'``/``'yes'``/``'no'`` (any case) -> bool; anything else raises."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean (True/False, true/false, 1/0), got {text!r}')


def is_bool_word(text):
    return str(text).strip().lower() in TRUE_WORDS + FALSE_WORDS


def add_bool_flag(parser, name, default=None, help=None):
    """``--name`` (on), ``--name True|False|1|0`` (published spelling) and ``--no-name`` (off)."""
    dest = name.lstrip('-').replace('-', '_')
    parser.add_argument(name, dest=dest, nargs='?', const=True, default=default, type=parse_bool,
                        metavar='BOOL', help=help)
    parser.add_argument('--no-' + name.lstrip('-'), dest=dest, action='store_false',
                        help=f'same as {name} False')


def add_device_args(parser, multi=False):
    """``--device`` and the published ``--gpu`` (``multi``: a comma list is accepted, for training)."""
    parser.add_argument('--device', default=None,
                        help='cpu, cuda, cuda:N or mps (default: cuda if available, else mps, else cpu)')
    parser.add_argument('--gpu', default=None, metavar='N' + (',M' if multi else ''),
                        help='published spelling: run on CUDA device N' + (' (a comma list: several GPUs)'
                                                                          if multi else '')
                        + '; without CUDA the run goes on on the CPU with a note')


def add_cmsr_args(parser):
    """``--cmsr TABLE.yaml`` (ours) or ``--cmsr True --cmsr_path TABLE.yaml`` (published), ``--cmsr_mse``."""
    parser.add_argument('--cmsr', metavar='TABLE.yaml|BOOL',
                        help='render with CMSR using this Scale2Mod table (LM models, scales beyond the training '
                             "range); the published spelling '--cmsr True --cmsr_path TABLE.yaml' works too, and "
                             "'--cmsr False' turns it off")
    parser.add_argument('--cmsr-path', '--cmsr_path', dest='cmsr_path', metavar='TABLE.yaml',
                        help='published spelling: the table file, used with --cmsr True')
    parser.add_argument('--cmsr-mse', '--cmsr_mse', dest='cmsr_mse', type=float, default=None, metavar='MSE',
                        help='published flag: the MSE threshold the table was built with; recorded only (the '
                             'table file decides what is rendered, as in the published code)')


def cmsr_table_path(cmsr, cmsr_path):
    """The table file CMSR should use, or None; both spellings, contradictions refused.

    ``--cmsr T.yaml`` -> T.yaml; ``--cmsr True --cmsr_path T.yaml`` -> T.yaml; ``--cmsr False`` (with or
    without a path) -> None. A table file literally named like a boolean must be written ``./True``.
    """
    if cmsr is None:
        if cmsr_path:
            raise CLIError(f'--cmsr_path {cmsr_path} is given without --cmsr True: add --cmsr True (published '
                           f'spelling) or write --cmsr {cmsr_path}')
        return None
    if is_bool_word(cmsr):
        if not parse_bool(cmsr):
            return None
        if not cmsr_path:
            raise CLIError('--cmsr True needs --cmsr_path TABLE.yaml (or write --cmsr TABLE.yaml)')
        return cmsr_path
    if cmsr_path and os.path.normpath(cmsr_path) != os.path.normpath(cmsr):
        raise CLIError(f'--cmsr {cmsr} and --cmsr_path {cmsr_path} name different tables; give one')
    return cmsr


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text!r}') from None
    if not (value > 0 and value != float('inf')):
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text!r}')
    return value


# ------------------------------------------------------------------------------------------------
# devices
# ------------------------------------------------------------------------------------------------
def distributed_env():
    """(rank, world, local_rank) from torchrun's environment (0, 1, 0 for a plain run)."""
    return (int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)),
            int(os.environ.get('LOCAL_RANK', 0)))


def parse_gpus(gpu):
    try:
        ids = [int(g) for g in str(gpu).split(',') if g.strip() != '']
    except ValueError:
        raise CLIError(f'--gpu {gpu!r}: expected a CUDA device number such as 0, or a list such as 0,1') from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise CLIError(f'--gpu {gpu!r}: expected a CUDA device number such as 0, or a list such as 0,1')
    return ids


def _mps_available(torch):
    mps = getattr(torch.backends, 'mps', None)
    return mps is not None and mps.is_available()


def choose_device(device=None, gpu=None, script=None):
    """The device a script runs on, as a string for ``torch.device`` (the one device policy).

    ``device`` (``--device``): cpu, cuda, cuda:N or mps, refused when absent. ``gpu`` (``--gpu``, the
    published flag): CUDA device N (the first of a list: callers needing several GPUs check
    ``parse_gpus`` themselves); without CUDA one note line and the CPU. Neither: CUDA if available, else
    MPS, else CPU. Under torchrun a CUDA run takes ``cuda:LOCAL_RANK``.
    """
    import torch
    if device is not None and gpu is not None:
        raise CLIError(f'give --device or --gpu, not both (--device {device}, --gpu {gpu})')
    _, world, local_rank = distributed_env()
    if gpu is not None:
        ids = parse_gpus(gpu)
        if not torch.cuda.is_available():
            note(f'--gpu {gpu}: CUDA is not available on this machine; running on the CPU', script)
            return 'cpu'
        if world > 1:
            return f'cuda:{local_rank}'
        n = torch.cuda.device_count()
        if ids[0] >= n:
            raise CLIError(f'--gpu {gpu}: this machine has {n} CUDA device(s), numbered 0..{n - 1}')
        return f'cuda:{ids[0]}'
    if device is None:
        if torch.cuda.is_available():
            return f'cuda:{local_rank}' if world > 1 else 'cuda'
        return 'mps' if _mps_available(torch) and world == 1 else 'cpu'
    name = str(device).strip().lower()
    if name == 'cpu':
        return 'cpu'
    if name == 'mps':
        if not _mps_available(torch):
            raise CLIError('--device mps: MPS is not available on this machine')
        return 'mps'
    if name == 'cuda' or name.startswith('cuda:'):
        if not torch.cuda.is_available():
            raise CLIError(f'--device {device}: CUDA is not available on this machine')
        if name == 'cuda':
            return f'cuda:{local_rank}' if world > 1 else 'cuda'
        try:
            index = int(name.split(':', 1)[1])
        except ValueError:
            raise CLIError(f'--device {device}: expected cuda:N with N a number') from None
        if not 0 <= index < torch.cuda.device_count():
            raise CLIError(f'--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)')
        return name
    raise CLIError(f'--device {device!r}: expected cpu, cuda, cuda:N or mps')


def torchrun_command(n, argv, script='train.py'):
    """The torchrun command line equivalent to ``script argv`` with ``--gpu`` removed, on ``n`` processes."""
    import shlex
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == '--gpu':
            skip = True
            continue
        if a.startswith('--gpu='):
            continue
        rest.append(a)
    return f'torchrun --nproc_per_node {n} {script} ' + ' '.join(shlex.quote(a) for a in rest)


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def resolve_model_path(path):
    """A checkpoint path as given, or a bare file name found in ``save/pretrained_models`` / ``save``.

    The published README runs ``init_cmsr.py --model edsr-b_lm-liif.pth`` from the repository root,
    where the file lies in ``save/pretrained_models/``.
    """
    if os.path.exists(path):
        return path
    if os.path.dirname(path) == '':
        for folder in MODEL_SEARCH_DIRS:
            candidate = os.path.join(folder, path)
            if os.path.isfile(candidate):
                return candidate
        where = ', '.join(f'{d}/' for d in MODEL_SEARCH_DIRS)
        raise CLIError(f'model file not found: {path} (looked in the working directory and in {where})')
    raise CLIError(f'model file not found: {path}')


def load_model(path, device='cpu', script=None):
    """(model in eval mode on ``device``, checkpoint dict or None) for a checkpoint path or ``'bicubic'``.

    A non-null ``cmsr_spec`` in the checkpoint's args (the published scripts stored it) is dropped with
    one note: CMSR is switched on by ``--cmsr`` only.
    """
    import models
    if path == 'bicubic':
        return models.make({'name': 'bicubic'}).to(device).eval(), None
    path = resolve_model_path(path)
    ckpt = models.load_checkpoint(path, map_location='cpu')
    args = ckpt['model'].get('args') or {}
    if isinstance(args, dict) and args.get('cmsr_spec') is not None:
        note(f'{path}: ignoring the cmsr_spec stored in the checkpoint; CMSR is used only with --cmsr', script)
        ckpt = dict(ckpt, model=dict(ckpt['model'], args=dict(args, cmsr_spec=None)))
    model = models.load_model(ckpt, map_location='cpu', where=path).to(device).eval()
    return model, ckpt


def checkpoint_max_scale(ckpt):
    """Largest training scale recorded in a checkpoint's training config (``train_dataset.wrapper.args``
    ``scale_max``, else the largest of ``scales`` for integer-scale training), or None."""
    cfg = (ckpt or {}).get('config')
    if not isinstance(cfg, dict):
        return None
    wrapper = ((cfg.get('train_dataset') or {}).get('wrapper') or {})
    args = wrapper.get('args') or {}
    value = args.get('scale_max', None)
    if value is None and args.get('scales'):
        value = max(args['scales'])
    if value is None and wrapper.get('name', '').startswith('sr-implicit-downsampled'):
        value = args.get('scale_min', 1)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def max_train_scale(model, ckpt=None, override=None):
    """The scale test-time cells are clipped at: ``override`` (``--scale_max`` / ``--trained_scale``), else
    the checkpoint's training config, else the model's declared ``capabilities.max_train_scale``."""
    value = override if override is not None else checkpoint_max_scale(ckpt)
    if value is None:
        return model.capabilities.max_train_scale
    if not value > 0:
        raise CLIError(f'--scale_max must be positive, got {value}')
    return value


# ------------------------------------------------------------------------------------------------
# configs and datasets
# ------------------------------------------------------------------------------------------------
def check_data_norm(cfg, where='config'):
    """Accept a config's ``data_norm`` only when it is the published (x - 0.5) / 0.5 every model uses."""
    from utils.config import ConfigError
    norm = cfg.get('data_norm')
    if norm is None:
        return
    if not isinstance(norm, dict):
        raise ConfigError(f'{where}: data_norm must be a mapping {{inp: {{sub, div}}, gt: {{sub, div}}}}')
    for key in ('inp', 'gt'):
        part = norm.get(key) or {}
        try:
            sub = [float(v) for v in part.get('sub', [0.5])]
            div = [float(v) for v in part.get('div', [0.5])]
        except (TypeError, ValueError, AttributeError):
            raise ConfigError(f'{where}: data_norm.{key} must hold lists of numbers, got {part!r}') from None
        if any(v != 0.5 for v in sub) or any(v != 0.5 for v in div):
            raise ConfigError(f'{where}: data_norm.{key} = {part}: the models here use the published '
                              f'normalisation (x - 0.5) / 0.5 only (sub [0.5], div [0.5])')


def build_dataset(spec, where='config', seed=None):
    """A dataset from ``{dataset: {...}, wrapper: {...}?}`` (the configs' format); ``seed`` is passed to
    wrappers that take one (training)."""
    import datasets
    from utils.config import require
    base = datasets.make(require(spec, 'dataset', where=where))
    wrapper = spec.get('wrapper')
    if not wrapper:
        return base
    extra = {'dataset': base}
    if seed is not None:
        extra['seed'] = seed
    return datasets.make(wrapper, args=extra)


def image_names(ds):
    """File stems of the HR images behind a (wrapped) dataset, in order, or None."""
    base = getattr(ds, 'dataset', ds)
    folder = getattr(base, 'dataset_2', base)
    files = getattr(folder, 'files', None)
    if not files:
        return None
    return [os.path.splitext(os.path.basename(f))[0] for f in files] * getattr(folder, 'repeat', 1)


# ------------------------------------------------------------------------------------------------
# sharded evaluation under torchrun
# ------------------------------------------------------------------------------------------------
class Shard:
    """Every ``world``-th item of a dataset starting at ``rank``; ``indices`` maps back to the dataset."""

    def __init__(self, dataset, rank, world):
        self.dataset = dataset
        self.indices = list(range(rank, len(dataset), world))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def init_process_group(device):
    """Start the torchrun process group (gloo on the CPU, nccl on CUDA) if there is more than one process."""
    import torch.distributed as dist
    _, world, _ = distributed_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if str(device).startswith('cuda') else 'gloo')
    return world


def gather(obj):
    """All processes' ``obj`` as a list ordered by rank, on every process (``[obj]`` without torchrun)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------
# error reporting
# ------------------------------------------------------------------------------------------------
def expected_errors():
    """Exception types that are the user's to fix: reported in one line, exit status 1."""
    from models import CheckpointError
    kinds = [ValueError, CheckpointError, OSError]
    try:
        from engine.training import TrainingDiverged
        kinds.append(TrainingDiverged)
    except ImportError:
        pass
    return tuple(kinds)


def missing_requirements(error, script):
    """Report an ImportError (e.g. a Python without torch) as one line ``<script>: error: <error> (install the
    requirements: ...)`` on stderr; returns the exit status, 1. Scripts call it around their heavy imports."""
    print(f'{script}: error: {error} (install the requirements: pip install -r requirements.txt)', file=sys.stderr)
    return 1


def run(main, argv=None, script=None):
    """Call ``main(argv)``; report expected errors as ``<script>: error: ...`` and return 1."""
    script = script or script_name()
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print(f'{script}: interrupted', file=sys.stderr)
        return 130
    except ImportError as e:       # e.g. a Python without torch (checked before expected_errors imports it)
        return missing_requirements(e, script)
    except MemoryError as e:
        print(f'{script}: error: out of memory ({e or "MemoryError"}); use --tile, a smaller --bsize or a smaller '
              f'input/--size', file=sys.stderr)
        return 1
    except expected_errors() as e:
        from utils.validate import message     # one line, also for errors re-raised from DataLoader workers
        print(f'{script}: error: {message(e)}', file=sys.stderr)
        return 1
