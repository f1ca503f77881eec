"""YAML configs: loading, ``--opt a.b=value`` overrides, validation with one-line errors."""
import copy
import os

import yaml


class ConfigError(ValueError):
    """A config file is missing, malformed or lacks a required entry."""


def load_yaml(path, what='config', error=None):
    """Parse a YAML file; a missing file or a syntax error raises ``error`` (default ConfigError) in one line."""
    error = error or ConfigError
    if not os.path.isfile(path):
        raise error(f'{what} not found: {path}')
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise error(f'{path}: not valid YAML ({str(e).splitlines()[0]})') from None


def load_config(path):
    cfg = load_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f'{path}: expected a mapping at the top level')
    return cfg


def parse_value(text):
    """YAML-parse an override value: ``1.e-4`` -> float, ``[1,2]`` -> list, ``true`` -> bool.

    Note PyYAML reads ``1e-4`` (no dot) as a string; ``as_float`` below accepts both forms.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg, overrides):
    """Apply ``['a.b.c=value', ...]`` to a copy of ``cfg`` (creating intermediate mappings)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        if '=' not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, value = item.split('=', 1)
        parts = key.strip().split('.')
        node = cfg
        for p in parts[:-1]:
            if p not in node or node[p] is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a mapping")
            node = node[p]
        node[parts[-1]] = parse_value(value)
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
        raise ConfigError(f'{name} must be a number, got {value!r}') from None
