"""Up-front validation of what users pass to the scripts: paths, output paths, numeric options, scales.

Every check runs before any compute or write and raises ``InputError`` (a ValueError) whose message is
one line naming the input (``--output out.png: ...``). Scripts print it as ``<script>: error: <message>``
and exit 1. Nothing here imports torch, so the checks are cheap and usable before heavy imports.

Conventions: in code, sizes are (rows, cols) = (height, width) in pixels and scales (row factor, col factor);
written for users (flags, prints, file names), sizes are WIDTHxHEIGHT (``size_text``, ``show_size``).
"""
import inspect
import math
import os

from utils.untrusted import excerpt

class InputError(ValueError):
    """A command-line value, path or config entry is invalid; the message names it."""


def one_line(text, limit=400):
    """Collapse whitespace so that a message is a single line (cut at ``limit`` characters)."""
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


# ------------------------------------------------------------------------------------------------
# numbers
# ------------------------------------------------------------------------------------------------
def _given(value, name, allow_none, kind):
    """Common start of ``integer`` and ``number``: False for a None that ``allow_none`` permits (the caller
    returns None), True for a value to convert; ``InputError`` for a missing required value or a bool
    (never a number here). ``kind``: 'an integer' / 'a number', for the message."""
    if value is None:
        if allow_none:
            return False
        raise InputError(f'{name} is required')
    if isinstance(value, bool):
        raise InputError(f'{name} must be {kind}, got {value!r}')
    return True


def _in_range(v, shown, name, minimum, maximum, spec=''):
    """Common end of ``integer`` and ``number``: ``InputError`` unless minimum <= v <= maximum (None: no
    bound); messages show the bound formatted with ``spec`` and the value as ``shown``."""
    if minimum is not None and v < minimum:
        raise InputError(f'{name} must be >= {minimum:{spec}}, got {shown}')
    if maximum is not None and v > maximum:
        raise InputError(f'{name} must be <= {maximum:{spec}}, got {shown}')


def integer(value, name, minimum=None, maximum=None, allow_none=True):
    """``value`` as an int within [minimum, maximum] (integer text such as '7' accepted); bools, floats with a
    fraction and other text are refused, naming ``name``."""
    if not _given(value, name, allow_none, 'an integer'):
        return None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise InputError(f'{name} must be an integer, got {value!r}')
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InputError(f'{name} must be an integer, got {value!r}') from None
    if not isinstance(value, int):
        try:
            import numbers
            if isinstance(value, numbers.Integral):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise InputError(f'{name} must be an integer, got {type(value).__name__} {excerpt(value, 80)}') from None
    _in_range(value, value, name, minimum, maximum)
    return value


def number(value, name, minimum=None, maximum=None, positive=False, allow_none=True):
    """``value`` as a finite float (text such as '1e-4' accepted) within the given bounds."""
    if not _given(value, name, allow_none, 'a number'):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f'{name} must be a number, got {excerpt(value, 80)}') from None
    if not math.isfinite(v):
        raise InputError(f'{name} must be a finite number, got {value!r}')
    if positive and v <= 0:
        raise InputError(f'{name} must be > 0, got {value!r}')
    _in_range(v, repr(value), name, minimum, maximum, 'g')
    return v


MAX_WINDOW = 64


def cli_numbers(args, script, labels=None):
    """Check the common numeric options of an ``argparse`` namespace (only those it has).

    * ``tile`` >= 0 (or 'auto'), ``tile_overlap`` >= 0, ``window`` 0..64 (0 = no padding; or 'auto'),
    * ``bsize`` / ``eval_bsize`` > 0, ``stop_after`` >= 1, ``workers`` >= 0, ``first_k`` >= 1,
    * ``max_train_scale`` >= 1 and finite, ``mse_threshold`` > 0 and finite, ``grad_clip`` > 0,
      ``repeats`` >= 1, ``warmup`` >= 0, ``max_seconds`` > 0.

    Messages name the flag ``--<dest with dashes>`` unless ``labels`` maps the dest to the flag a script
    spells (``{'max_train_scale': '--trained-scale'}``).
    """
    labels = labels or {}

    def has(name):
        return getattr(args, name, None) is not None

    def flag(name):
        return labels.get(name, '--' + name.replace('_', '-'))

    for name, lo, hi in (('tile', 0, None), ('window', 0, MAX_WINDOW)):
        value = getattr(args, name, None)
        if value is not None and value != 'auto':
            integer(value, flag(name), minimum=lo, maximum=hi)
    if has('tile_overlap'):
        integer(args.tile_overlap, flag('tile_overlap'), minimum=0)
    for name in ('bsize', 'eval_bsize'):
        if has(name):
            integer(getattr(args, name), flag(name), minimum=1)
    for name, lo in (('stop_after', 1), ('workers', 0), ('first_k', 1), ('repeats', 1), ('warmup', 0)):
        if has(name):
            integer(getattr(args, name), flag(name), minimum=lo)
    for name in ('max_train_scale', 'mse_threshold', 'grad_clip', 'max_seconds'):
        if has(name):
            number(getattr(args, name), flag(name), positive=True)
    if has('max_train_scale'):           # the largest training scale: x1 or more
        number(args.max_train_scale, flag('max_train_scale'), minimum=1)
    return args


# ------------------------------------------------------------------------------------------------
# scales and sizes
# ------------------------------------------------------------------------------------------------
MAX_SIDE = 1 << 20     # no image side beyond a million pixels (a typo such as --scale 1e6)


def scales_list(text, name='--scales', integers=True, minimum=1):
    """``'2,3,4'`` -> [2, 3, 4] (sorted, unique); one-line errors for empty items, text, values < minimum."""
    parts = [p.strip() for p in str(text).split(',')]
    if not parts or any(p == '' for p in parts):
        raise InputError(f'{name} {text!r}: give comma-separated numbers such as 2,3,4')
    out = []
    for p in parts:
        try:
            v = int(p) if integers else float(p)
        except ValueError:
            kind = 'integers' if integers else 'numbers'
            raise InputError(f'{name} {text!r}: {p!r} is not a number; give {kind} such as 2,3,4') from None
        if not (math.isfinite(v) and v >= minimum):
            raise InputError(f'{name} {text!r}: scales must be >= {minimum}')
        if v > MAX_SIDE:
            raise InputError(f'{name} {text!r}: scale {p} is unreasonably large')
        out.append(v)
    return sorted(set(out))


def size_text(text, name='--size', order='WxH'):
    """A size written ``WIDTHxHEIGHT`` (``'1920x1080'``: the one convention of flags, prints, file names and the
    README) -> ``(rows, cols)`` = (1080, 1920); positive integers only. ``order='HxW'`` reads the rows first
    (kept for older flags that document it)."""
    parts = str(text).lower().replace(' ', '').split('x')
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        example = '1080x1920' if order == 'HxW' else '1920x1080'
        label = 'HEIGHTxWIDTH' if order == 'HxW' else 'WIDTHxHEIGHT'
        raise InputError(f'{name} {excerpt(text, 40)} must be {label} in pixels, e.g. {example}')
    a, b = int(parts[0]), int(parts[1])
    if a < 1 or b < 1:
        raise InputError(f'{name} {text!r} must be positive')
    if max(a, b) > MAX_SIDE:
        raise InputError(f'{name} {text!r}: a side above {MAX_SIDE} pixels is not supported')
    return (a, b) if order == 'HxW' else (b, a)


def show_size(size):
    """(rows, cols) -> ``'COLSxROWS'`` (WIDTHxHEIGHT, as every print and file name writes sizes)."""
    return f'{size[1]}x{size[0]}'


def fit_size(in_size, box, keep_aspect=False, name='--size'):
    """The output (H, W) for a requested ``box`` (H, W) and an input (h, w), and a one-line note or None.

    ``keep_aspect``: the largest size with the input's aspect ratio inside the box (one side equals the box,
    the other is rounded). Otherwise the box itself; when that changes the aspect ratio by more than a pixel
    the note says so (and names ``--keep-aspect``).
    """
    h, w = in_size
    BH, BW = box
    if BH * w <= BW * h:           # the height binds
        fit = (BH, min(BW, max(1, int(math.floor(w * BH / h + 0.5)))))
    else:
        fit = (min(BH, max(1, int(math.floor(h * BW / w + 0.5)))), BW)
    if keep_aspect:
        return fit, None
    if abs(fit[0] - BH) <= 1 and abs(fit[1] - BW) <= 1:
        return (BH, BW), None
    return (BH, BW), (f'{name} {show_size(box)} changes the aspect ratio of the {show_size(in_size)} input '
                      f'({w / h:.3g}:1 -> {BW / BH:.3g}:1); --keep-aspect fits it inside instead '
                      f'({show_size(fit)})')


def output_size(in_size, scale=None, size=None, scale_text=None, size_label=None):
    """Target (H, W) of an upscale of ``in_size`` (h, w) by ``scale`` (sy, sx) or to ``size`` (H, W).

    Refuses targets that are not larger than the input (naming --scale or --size, whichever was given, or
    ``size_label`` when the size was derived from what the user typed) and sides beyond ``MAX_SIDE``.
    """
    h, w = in_size
    if size is not None:
        H, W = size
        label = size_label or f'--size {W}x{H}'
    else:
        sy, sx = scale
        label = f'--scale {scale_text if scale_text is not None else f"{sy:g},{sx:g}"}'
        if sy < 1 or sx < 1:
            raise InputError(f'{label}: this upscales; factors must be >= 1')
        if sy == 1 and sx == 1:
            raise InputError(f'{label}: a factor of 1 leaves the {w}x{h} input unchanged; give a factor > 1')
        if max(h * sy, w * sx) > MAX_SIDE:
            raise InputError(f'{label}: the output would be {w * sx:.4g}x{h * sy:.4g} pixels; a side above '
                             f'{MAX_SIDE} is not supported')
        H, W = int(math.floor(h * sy + 1e-9)), int(math.floor(w * sx + 1e-9))
    if H < h or W < w or (H, W) == (h, w):
        raise InputError(f'{label} is not larger than the input {w}x{h}')
    return H, W


# ------------------------------------------------------------------------------------------------
# paths
# ------------------------------------------------------------------------------------------------
def _same_file(a, b):
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def input_file(path, name):
    """An existing, readable regular file."""
    if path is None or str(path) == '':
        raise InputError(f'{name}: no path given')
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f'{name} {path}: file not found')
    if os.path.isdir(path):
        raise InputError(f'{name} {path}: is a directory, not a file')
    if not os.path.isfile(path):      # a FIFO, socket or device would block or stream forever
        raise InputError(f'{name} {path}: not a regular file')
    if not os.access(path, os.R_OK):
        raise InputError(f'{name} {path}: not readable (permission denied)')
    return path


def input_folder(path, name):
    """An existing, readable folder."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f'{name} {path}: folder not found')
    if not os.path.isdir(path):
        raise InputError(f'{name} {path}: is a file, not a folder')
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f'{name} {path}: not readable (permission denied)')
    return path


def _nearest_existing(path):
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _creatable(folder, name, path, what):
    """Check that the absent ``folder`` can be created with its parents: its nearest existing ancestor is a
    writable folder. Messages name the option and ``path``; ``what`` is how they call ``folder``."""
    base = _nearest_existing(folder)
    if not os.path.isdir(base):
        raise InputError(f'{name} {path}: {base} is a file, not a folder')
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f'{name} {path}: cannot create {what} ({base} is not writable)')


def output_file(path, name, inputs=(), create_parent=False, extensions=None):
    """A file we may create or replace: not a folder, not equal to any of ``inputs``, folder writable.

    Args:
        inputs: paths (or None) read by the same command; writing over one of them is refused.
        create_parent: the folder may be missing (it will be created), but what exists of it must be
            folders and writable. Otherwise the folder must exist.
        extensions: allowed extensions (lower case, with the dot), or None.
    """
    if path is None or str(path) == '':
        raise InputError(f'{name}: no path given')
    path = os.fspath(path)
    if path.endswith(os.sep) or os.path.isdir(path):
        raise InputError(f'{name} {path}: is a directory; give a file name')
    for other in inputs:
        if other is not None and str(other) != '' and _same_file(path, os.fspath(other)):
            raise InputError(f'{name} {path}: is also an input ({other}); writing it would destroy the input, '
                             f'give another path')
    if extensions is not None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in extensions:
            raise InputError(f'{name} {path}: unsupported extension {ext or "(none)"!r}; use one of '
                             f'{", ".join(extensions)}')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        if not create_parent:
            if os.path.exists(folder):
                raise InputError(f'{name} {path}: {folder} is a file, not a folder')
            raise InputError(f'{name} {path}: output folder {folder} does not exist')
        _creatable(folder, name, path, folder)
        return path
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f'{name} {path}: folder {folder} is not writable')
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(f'{name} {path}: exists and is not a regular file')
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f'{name} {path}: exists and is not writable')
    return path


def output_folder(path, name, inputs=()):
    """A folder we will create (with parents) or write into: no file in the way, writable."""
    if path is None or str(path) == '':
        raise InputError(f'{name}: no path given')
    path = os.fspath(path)
    for other in inputs:
        if other is not None and str(other) != '' and _same_file(path, os.fspath(other)):
            raise InputError(f'{name} {path}: is also an input ({other}); give another folder')
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(f'{name} {path}: is a file, not a folder')
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f'{name} {path}: folder is not writable')
        return path
    _creatable(path, name, path, 'it')
    return path


# ------------------------------------------------------------------------------------------------
# constructor arguments (config / checkpoint 'args')
# ------------------------------------------------------------------------------------------------
def _type_ok(value, default):
    """Does ``value`` have a type compatible with a constructor default ``default``?"""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):     # an int default also takes a float (res_scale=1 -> 0.1)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, float):
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            return True
        try:            # PyYAML reads 1e-4 as a string; float('1e-4') is what constructors get
            float(value)
            return isinstance(value, str)
        except (TypeError, ValueError):
            return False
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def _type_name(default):
    if isinstance(default, bool):
        return 'true/false'
    if isinstance(default, int):
        return 'a number'
    if isinstance(default, float):
        return 'a number'
    if isinstance(default, str):
        return 'a string'
    if isinstance(default, (list, tuple)):
        return 'a list'
    if isinstance(default, dict):
        return 'a mapping'
    return type(default).__name__


def spec_types(spec, registry, where, _depth=0):
    """Check a ``{'name', 'args'}`` spec (and nested ``*_spec`` children) before building it.

    ``name`` must be a string; ``args`` a mapping; each argument's type must match its constructor
    default (a numeric default needs a number, a flag true/false, a string default a string, a list
    default a list, ...); negative or non-finite values for numeric arguments whose default is positive
    are refused. Unknown names/arguments are left to ``registry.build`` (which names them).
    """
    if _depth > 20:
        raise InputError(f'{where}: model spec nested too deeply')
    if not isinstance(spec, dict):
        raise InputError(f'{where}: expected a mapping {{name, args}}, got {type(spec).__name__}')
    name = spec.get('name')
    if not isinstance(name, str):
        raise InputError(f'{where}.name: must be a string (a registered name), got {type(name).__name__} '
                         f'{excerpt(name, 60)}')
    args = spec.get('args')
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InputError(f'{where}.args: must be a mapping, got {type(args).__name__}')
    try:
        cls = registry.get(name)
    except ValueError:
        return            # unknown name: registry.build reports it with suggestions
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    for key, value in args.items():
        if not isinstance(key, str):
            raise InputError(f'{where}.args: argument names must be strings, got {excerpt(key, 60)}')
        if key.endswith('_spec') and isinstance(value, dict):
            if 'name' in value:           # a child model spec (encoder_spec, imnet_spec, ...)
                spec_types(value, registry, f'{where}.args.{key}', _depth + 1)
            continue
        p = params.get(key)
        if p is None or p.default is p.empty:
            continue
        if not _type_ok(value, p.default):
            raise InputError(f'{where}.args.{key}: must be {_type_name(p.default)} (like the default '
                             f'{p.default!r}), got {type(value).__name__} {excerpt(value, 60)}')
        if isinstance(p.default, (int, float)) and not isinstance(p.default, bool) and p.default > 0 \
                and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not (math.isfinite(value) and value >= 0):
            raise InputError(f'{where}.args.{key}: must be a non-negative finite number, got {value}')


# ------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------
def message(error):
    """The one-line message of an exception, also for errors re-raised from DataLoader workers (whose
    text is 'Caught X in DataLoader worker process N.' followed by the worker's traceback: the last
    line, 'X: <message>', is what matters)."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith('Caught ') and 'DataLoader worker' in lines[0]:
        last = lines[-1]
        name = type(error).__name__
        if last.startswith(name + ': '):
            last = last[len(name) + 2:]
        else:
            last = last.split(': ', 1)[-1] if ': ' in last and last.split(': ', 1)[0].isidentifier() else last
        return one_line(f'{last} (in a data-loading worker)', 1000)
    return one_line(text, 1000) or type(error).__name__
