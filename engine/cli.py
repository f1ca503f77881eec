"""Command-line arguments shared by ``test.py``, ``demo.py``, ``train.py``, ``init_cmsr.py`` and ``scripts/*``.

Argument handling only (the inference session is ``engine/inference.py``, process groups
``engine/distributed.py``, dataset building ``datasets/build.py``, the error policy ``engine/errors.py``):

* **flags in both spellings**: ours (``--mse-threshold``) and the published LMF scripts'
  (``--mse_threshold``) name the same option; booleans are parsed for real (``parse_bool``:
  True/False/true/false/1/0/yes/no), so ``--fast False`` means off (published quirk B16 fixed);
* **the session's flags** (``add_session_args``, ``session_options``): ``--window``, ``--tile``,
  ``--tile-overlap``, ``--scale-max`` / the published ``--scale_max``, ``--no-cell-clip``, and the CMSR table
  (``add_cmsr_args``: ``--cmsr T.yaml`` or the published ``--cmsr True --cmsr_path T.yaml``; ``--cmsr-grid
  exact|published``, default exact, published when the published spelling ``--cmsr True`` is used);
* **threads** (``add_threads_arg``, ``apply_threads``): ``--threads N``, default ``utils.resources.default_threads``;
* **device flags** (``choose_device``): ``--device cpu|cuda|cuda:N|mps`` or the published ``--gpu N``
  (CUDA device N; where CUDA is absent one line says the run goes on on the CPU); default CUDA, else
  MPS, else CPU; under ``torchrun`` each process takes ``cuda:LOCAL_RANK`` (or the CPU).
"""
import argparse
import os

from .errors import CLIError, note

#: ``train.py --stop-after`` default when set: lets tests run a published training command verbatim and stop it.
STOP_AFTER_ENV = 'ASSR_STOP_AFTER'

TRUE_WORDS = ('true', '1', 'yes', 'on')
FALSE_WORDS = ('false', '0', 'no', 'off')
#: --render-kernel choices (``LMDecoder.set_render_mode``'s kernels)
RENDER_KERNELS = ('auto', 'fused', 'mm', 'linear', 'onednn', 'conv1x1')


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
    """``--device``, the published ``--gpu`` (``multi``: a comma list is accepted, for training) and
    ``--threads`` (scripts call ``apply_threads(args)`` once their flags are parsed)."""
    parser.add_argument('--device', default=None,
                        help='cpu, cuda, cuda:N or mps (default: cuda if available, else mps, else cpu)')
    parser.add_argument('--gpu', default=None, metavar='N' + (',M' if multi else ''),
                        help='published spelling: run on CUDA device N' + (' (a comma list: several GPUs)'
                                                                          if multi else '')
                        + '; without CUDA the run goes on on the CPU with a note')
    add_threads_arg(parser)


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
    parser.add_argument('--cmsr-grid', '--cmsr_grid', dest='cmsr_grid', choices=('exact', 'published'), default=None,
                        help="grids CMSR renders its levels on: 'exact' pixel grids (no flat blocks along the right "
                             "and bottom borders) or the 'published' resized LR grid (reproduces the published "
                             "numbers); default exact, published with the published spelling --cmsr True")


def cmsr_grid(cmsr, grid, script=None):
    """The CMSR level grid (``engine.cmsr.GRIDS``) of ``--cmsr`` / ``--cmsr-grid``: the explicit choice, else
    'published' when CMSR is switched on in the published spelling (``--cmsr True --cmsr_path T.yaml``, one
    note line), else 'exact'."""
    if grid is not None:
        return grid
    if cmsr is not None and is_bool_word(cmsr) and parse_bool(cmsr):
        note('published spelling --cmsr True: CMSR renders on the published level grid (flat blocks along the '
             'right and bottom borders); --cmsr-grid exact avoids them', script)
        return 'published'
    return 'exact'


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return n


def add_threads_arg(parser):
    """``--threads N``: CPU threads of this process (``apply_threads``)."""
    parser.add_argument('--threads', type=positive_int, default=None, metavar='N',
                        help='CPU threads for torch (default: OMP_NUM_THREADS if set, else the usable cores minus '
                             'the cores other processes keep busy, divided among the torchrun processes on this '
                             'machine, at least 1; README "Threads")')


def apply_threads(args):
    """Set torch's thread count from ``--threads`` (or the default policy, ``utils.resources.set_threads``);
    returns the count."""
    from utils.resources import set_threads
    return set_threads(args.threads)


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


def parse_window(text):
    """``--window``: a number of LR pixels (0: no padding) or ``auto`` (the encoder's own window: 8 for SwinIR);
    the range is checked with the other numbers (``utils.validate.cli_numbers``)."""
    if text == 'auto':
        return 'auto'
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window must be a number of pixels or 'auto', got {text!r}") from None


def parse_tile(text):
    """``--tile``: 'auto', 0 (off) or a size in LR pixels (range checked by ``utils.validate.cli_numbers``)."""
    if text == 'auto':
        return 'auto'
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile must be 'auto', 0 (off) or a size in LR pixels, got {text!r}") \
            from None


def add_session_args(parser, window_default, tile_default=None):
    """The rendering flags ``demo.py`` and ``test.py`` share (``session_options`` turns them into ``Session``
    overrides). ``window_default``: 0 for the published evaluation script (``test.py``: its ``--window``
    default), ``'auto'`` for ``demo.py`` (the encoder's window)."""
    parser.add_argument('--window', type=parse_window, default=window_default, metavar='N|auto',
                        help=f"pad inputs to a multiple of N LR pixels; 'auto': the encoder's own window (8 for "
                             f"SwinIR encoders, else 0) (default: {window_default})")
    parser.add_argument('--tile', type=parse_tile, default=tile_default, metavar='N|auto',
                        help="encode inputs in tiles of N LR pixels (bounded memory); 'auto' tiles inputs above "
                             "512x512 with CNN encoders, where tiling is exact; 0: off (default: "
                             f"{tile_default or 0}). With SwinIR (window attention) tiled results are approximate")
    parser.add_argument('--tile-overlap', type=int, default=None,
                        help='LR pixels of context around each tile (default: exact for the encoder, e.g. 37 for '
                             'EDSR-baseline models)')
    parser.add_argument('--scale-max', '--scale_max', dest='max_train_scale', type=float, default=None,
                        help="largest training scale: cells are clipped by max(scale / it, 1) (default: the "
                             "checkpoint's training config, else the model's, 4)")
    parser.add_argument('--no-cell-clip', action='store_true',
                        help='do not clip cells (the LIIF repository protocol; clipping is the LTE/LMF default)')
    parser.add_argument('--render-mode', choices=['float32', 'bf16'], default='float32',
                        help="LM models' render MLP precision: float32 (default, the published outputs) or bf16 "
                             '(bfloat16: ~1e-3 from float32; fast on GPUs and CPUs with native bf16, emulated and '
                             'slower elsewhere)')
    parser.add_argument('--render-kernel', choices=RENDER_KERNELS, default='auto',
                        help="LM models' render kernel: auto (default: the fused C kernel, built once with the "
                             "machine's C compiler, where it applies: CPU, float32, render width 16; else mm), "
                             'fused (refused where it does not apply), or a product kernel for the unfused path '
                             '(mm, linear, onednn, conv1x1); all agree to ~1e-7')


def session_options(args, script=None):
    """``Session`` overrides from the flags of ``add_session_args`` and ``add_cmsr_args`` (a parser of a
    rendering script has both: ``demo.py``, ``test.py``)."""
    options = dict(window=args.window, tile=args.tile, tile_overlap=args.tile_overlap,
                   max_train_scale=args.max_train_scale, clip_cells=not args.no_cell_clip,
                   render_mode=args.render_mode, render_kernel=args.render_kernel)
    if cmsr_table_path(args.cmsr, args.cmsr_path) is not None:
        options['cmsr_exact_grid'] = cmsr_grid(args.cmsr, args.cmsr_grid, script) == 'exact'
    elif args.cmsr_grid is not None:
        raise CLIError(f'--cmsr-grid {args.cmsr_grid} needs --cmsr TABLE.yaml (CMSR is off)')
    return options


# ------------------------------------------------------------------------------------------------
# devices
# ------------------------------------------------------------------------------------------------
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

    from .distributed import distributed_env
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


