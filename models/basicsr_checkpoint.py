"""BasicSR checkpoints of the published IGConv architectures (``models.load_model(path, arch=... | options=...)``).

A BasicSR training run saves ``{'params': state_dict}``, plus ``'params_ema'`` when the option file has
``ema_decay``; released models are in that layout. Which architecture (and which arguments) the file
holds is not stored in it: it comes from the option file's ``network_g`` (``type`` + arguments) or from
an architecture name, whose arguments default to the published option files' (``models.zoo.PUBLISHED_OPTIONS``).

Key choice: the option file's ``path.param_key_g`` when given, else ``params_ema`` when present (the
EMA weights the published tests use), else ``params``. Files are read with ``weights_only=True``.
"""
import os

from utils.config import ConfigError, load_yaml

from .state_dicts import CheckpointError, _load, _shape_mismatch, check_dtypes, check_entries, check_finite, strip_prefix

PARAM_KEYS = ('params_ema', 'params')


def is_basicsr(ckpt):
    """Whether a loaded checkpoint has the BasicSR layout (``params`` / ``params_ema`` state dicts)."""
    return isinstance(ckpt, dict) and 'model' not in ckpt and any(
        isinstance(ckpt.get(k), dict) for k in PARAM_KEYS)


def describe(ckpt):
    """What a checkpoint holds at the top level, for error messages."""
    if not isinstance(ckpt, dict):
        return f'a {type(ckpt).__name__}, not a dict'
    keys = [repr(k) for k in list(ckpt)[:12]]
    more = f', ... ({len(ckpt) - 12} more)' if len(ckpt) > 12 else ''
    return f'top-level keys {", ".join(keys) + more}' if keys else 'an empty dict'


def read_options(path):
    """(arch, args, param_key or None) from a BasicSR option file's ``network_g`` (and ``path.param_key_g``)."""
    try:
        opt = load_yaml(os.fspath(path), 'option file')
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    net = opt.get('network_g') if isinstance(opt, dict) else None
    if not isinstance(net, dict) or not isinstance(net.get('type'), str):
        raise CheckpointError(f"{path}: an option file needs a 'network_g' mapping with a 'type' "
                              f"(found {describe(opt) if isinstance(opt, dict) else type(opt).__name__})")
    args = {k: v for k, v in net.items() if k != 'type'}
    key = (opt.get('path') or {}).get('param_key_g') if isinstance(opt.get('path'), dict) else None
    return net['type'], args, key


def resolve_arch(arch, args=None):
    """(registered name, args): published defaults for a bare name, overridden by ``args``."""
    from .zoo import ALIASES, PUBLISHED_ARCHS, PUBLISHED_OPTIONS
    name = ALIASES.get(arch, arch)
    if name not in PUBLISHED_ARCHS:
        raise CheckpointError(f'unknown IGConv architecture {arch!r}; known: {", ".join(sorted(PUBLISHED_ARCHS))} '
                              f'(aliases {", ".join(sorted(ALIASES))})')
    merged = dict(PUBLISHED_OPTIONS[name]) if args is None else dict(args)
    return name, merged


def pick_state_dict(ckpt, where, param_key=None):
    """The state dict of a BasicSR checkpoint: ``param_key`` if given, else params_ema, else params."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{where}: not a BasicSR checkpoint: {describe(ckpt)}')
    keys = (param_key,) if param_key else PARAM_KEYS
    for k in keys:
        if isinstance(ckpt.get(k), dict):
            return k, ckpt[k]
    if param_key and any(isinstance(ckpt.get(k), dict) for k in PARAM_KEYS):
        raise CheckpointError(f"{where}: no {param_key!r} state dict (param_key_g); the file has {describe(ckpt)}")
    if isinstance(ckpt.get('model'), dict) and 'sd' in ckpt['model']:
        raise CheckpointError(f"{where}: this is a checkpoint of this code base ('model' entry), not a BasicSR one; "
                              f"load it without arch/options")
    raise CheckpointError(f"{where}: not a BasicSR checkpoint (expected 'params_ema' or 'params' state dicts); "
                          f"found {describe(ckpt)}")


def read_checkpoint(path, map_location='cpu'):
    """The dict a BasicSR ``.pth`` (or training ``.state``) file holds, read with ``weights_only=True``;
    a missing or unreadable file raises ``CheckpointError`` in one line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        return _load(path, map_location)
    except Exception as e:   # unpickling refused or unreadable: one line
        raise CheckpointError(f'{path}: not a readable weights-only PyTorch checkpoint '
                              f'({" ".join(str(e).split())[:300]})') from None


def load_basicsr(path_or_ckpt, arch=None, options=None, args=None, map_location='cpu', strict=True):
    """Build a published IGConv architecture and load a BasicSR checkpoint into it (eval mode).

    Args:
        path_or_ckpt: a ``.pth`` path or an already loaded dict ``{'params_ema': sd, 'params': sd}`` /
            ``{'params': sd}`` (a ``module.`` prefix is removed).
        arch: architecture name (``'EDSRIGPlus'``, alias ``'edsr-ig-plus'``, ...); its arguments default to
            the published option file's unless ``args`` is given.
        options: a BasicSR option file (its ``network_g`` gives type and arguments; ``path.param_key_g``
            the key); ``arch``, if also given, must agree with its type.
        args: constructor arguments replacing the defaults (with ``arch``) or updating the option's.
    Returns the model; its ``spec`` (``{'name', 'args'}``) lets ``save_checkpoint`` write our format.
    """
    from .registry import ModelSpecError, make
    if arch is None and options is None:
        raise CheckpointError('a BasicSR checkpoint needs the architecture: pass arch=NAME or options=OPTION.yml')
    param_key = None
    from .zoo import ALIASES
    if options is not None:
        name, opt_args, param_key = read_options(options)
        if arch is not None and ALIASES.get(arch, arch) != ALIASES.get(name, name):
            raise CheckpointError(f'arch {arch!r} disagrees with {options}: network_g type {name!r}')
        name, model_args = resolve_arch(name, opt_args)
        model_args.update(args or {})
    else:
        name, model_args = resolve_arch(arch, args)
    if isinstance(path_or_ckpt, dict):
        ckpt, where = path_or_ckpt, 'checkpoint'
    else:
        where = os.fspath(path_or_ckpt)
        ckpt = read_checkpoint(where, map_location)
    key, sd = pick_state_dict(ckpt, where, param_key)
    check_entries(sd, where, repr(key))
    sd = strip_prefix(sd)
    check_finite(sd, where)
    try:
        model = make({'name': name, 'args': model_args})
    except (ModelSpecError, ValueError, TypeError) as e:
        raise CheckpointError(f'{where}: cannot build {name}: {e}') from None
    check_dtypes(model, sd, where)
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        detail = _shape_mismatch(model, sd)
        raise CheckpointError(f'{where}: {key!r} weights do not fit {name} with args {model_args}: '
                              f'{detail or " ".join(str(e).split())[:1000]}') from None
    model.basicsr_param_key = key
    return model.to(map_location).eval()
