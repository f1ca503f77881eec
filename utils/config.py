"""YAML configs: loading, ``--opt a.b=value`` overrides, validation with one-line errors."""
import copy
import os

import yaml

from utils.untrusted import ContentError, check_tree, excerpt

class ConfigError(ValueError):
    """A config file is missing, malformed or lacks a required entry."""


def load_yaml(path, what='config', error=None):
    """Parse a YAML file; a missing file, a syntax error or content beyond ``utils.untrusted.check_tree``'s bounds
    (depth, expanded size: YAML alias bombs) raises ``error`` (default ConfigError) in one line."""
    error = error or ConfigError
    if not os.path.exists(path):
        raise error(f'{what} not found: {path}')
    if not os.path.isfile(path):      # a folder, FIFO, socket or device
        raise error(f'{what} {path}: not a regular file')
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
        return check_tree(data, path)
    except ContentError as e:
        raise error(str(e)) from None
    except yaml.YAMLError as e:
        raise error(f'{path}: not valid YAML ({str(e).splitlines()[0]})') from None
    except UnicodeDecodeError:
        raise error(f'{path}: not a text (UTF-8) YAML file') from None
    except RecursionError:
        raise error(f'{path}: YAML nested too deeply') from None
    except OSError as e:
        raise error(f'{path}: cannot read {what} ({e.strerror or e})') from None


def load_config(path):
    cfg = load_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f'{path}: expected a mapping at the top level')
    return cfg


def parse_value(text, where='--opt value'):
    """YAML-parse an override value: ``1.e-4`` -> float, ``[1,2]`` -> list, ``true`` -> bool; within the
    bounds of config files (``utils.untrusted.check_tree``: depth, expanded size), else ``ConfigError``.

    Note PyYAML reads ``1e-4`` (no dot) as a string; ``as_float`` below accepts both forms.
    """
    try:
        return check_tree(yaml.safe_load(text), where)
    except yaml.YAMLError:
        return text
    except ContentError as e:
        raise ConfigError(str(e)) from None
    except RecursionError:
        raise ConfigError(f'{where}: nested too deeply') from None


def _closest(key, options):
    import difflib
    names = [str(o) for o in options]
    close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
    return f' (did you mean {", ".join(repr(c) for c in close)}?)' if close else ''


def _check_type(item, path, old, new):
    """An override must keep the kind of value it replaces: a number stays a number, a flag a flag and a
    mapping a mapping (a string written where a number was, e.g. ``epoch_max=abc``, is refused)."""
    if old is None or new is None:
        return
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise ConfigError(f'override {excerpt(item, 80)}: {path} is true/false, got {excerpt(new, 60)}')
    elif isinstance(old, (int, float)):
        if isinstance(new, bool) or not isinstance(new, (int, float)):
            try:
                float(new)
            except (TypeError, ValueError):
                raise ConfigError(f'override {excerpt(item, 80)}: {path} is a number ({excerpt(old, 60)}), got '
                                  f'{excerpt(new, 60)}') from None
    elif isinstance(old, dict) and not isinstance(new, dict):
        raise ConfigError(f'override {excerpt(item, 80)}: {path} is a mapping ({", ".join(map(str, old)) or "empty"}); '
                          f'set its entries ({path}.KEY=VALUE), not the mapping itself')
    elif isinstance(old, list) and not isinstance(new, list):
        raise ConfigError(f'override {excerpt(item, 80)}: {path} is a list, got {excerpt(new, 60)}; write it as '
                          f'[a, b, ...]')


def apply_overrides(cfg, overrides):
    """Apply ``['a.b.c=value', '+a.new=value', ...]`` to a copy of ``cfg``; values are YAML-parsed.

    Every key must already exist in the config (a misspelt key is an error naming the closest existing
    keys); adding an entry needs the explicit form ``+a.b.new=value`` (which creates missing
    intermediate mappings). An empty key or key part (``=3``, ``a..b=3``) is refused, and so is a value
    of another kind than the one it replaces (``epoch_max=abc``).
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        if not isinstance(item, str) or '=' not in item:
            raise ConfigError(f"override {excerpt(item, 80)} must look like key.path=value (or +key.path=value to add "
                              f"a key)")
        key, value = item.split('=', 1)
        key = key.strip()
        add = key.startswith('+')
        if add:
            key = key[1:]
        parts = key.split('.')
        if len(key) > 200:                   # messages below quote the key: keep them one short line
            raise ConfigError(f'override {excerpt(item, 80)}: a key of {len(key)} characters; config keys are short')
        if not key or any(p.strip() == '' or p != p.strip() for p in parts):
            raise ConfigError(f"override {excerpt(item, 80)}: empty or blank key part in {key!r}; "
                              f"write key.path=value")
        node = cfg
        for i, p in enumerate(parts[:-1]):
            path = '.'.join(parts[:i + 1])
            if p not in node or node[p] is None:
                if not add:
                    where = f"in '{'.'.join(parts[:i])}'" if i else 'at the top level of the config'
                    known = f'; it has: {", ".join(map(str, node))}' if node else ''
                    raise ConfigError(f"override {excerpt(item, 80)}: no entry {p!r} {where}{_closest(p, node)}"
                                      f"{known}; write +{key}=... to add it")
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {excerpt(item, 80)}: {path} is not a mapping (it holds "
                                  f"{excerpt(node[p], 60)})")
            node = node[p]
        last = parts[-1]
        new = parse_value(value, f'--opt {excerpt(key, 60)}')
        if last not in node:
            if not add:
                where = f"in '{'.'.join(parts[:-1])}'" if len(parts) > 1 else 'at the top level of the config'
                raise ConfigError(f"override {excerpt(item, 80)}: no entry {last!r} {where}{_closest(last, node)}; "
                                  f"write +{key}={value if len(value) <= 60 else value[:57] + '...'} to add "
                                  f"a new entry")
        else:
            _check_type(item, key, node[last], new)
        node[last] = new
    return cfg


def require(cfg, *keys, where='config'):
    """Return cfg[k1][k2]... or raise a ConfigError naming the missing entry."""
    node = cfg
    for i, k in enumerate(keys):
        if not isinstance(node, dict) or k not in node:
            raise ConfigError(f"{where}: missing entry '{'.'.join(keys[:i + 1])}'")
        node = node[k]
    return node


def as_float(value, name):
    """Numbers written as ``1e-4`` are strings for PyYAML; accept them explicitly."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{name} must be a number, got {excerpt(value, 60)}') from None
