"""The model registry: ``register(name)`` and ``make(spec)``.

A *spec* is a plain dict ``{'name': <registered name>, 'args': {...}[, 'sd': state_dict]}``; it is
what YAML configs write under ``model:`` and what checkpoints store under ``'model'``, so a
checkpoint describes how to rebuild itself.
"""
import copy
import difflib
import inspect

_MODELS = {}


class ModelSpecError(ValueError):
    """A model spec names an unknown model or passes arguments its constructor does not take."""


def register(name):
    """Decorator that registers a model class or factory function under ``name``."""
    def decorator(cls):
        if name in _MODELS:
            raise KeyError(f'model name {name!r} is registered twice')
        _MODELS[name] = cls
        cls.registry_name = name
        return cls
    return decorator


def list_models():
    """Sorted names of every registered model."""
    return sorted(_MODELS)


def get_model_class(name):
    if name not in _MODELS:
        hint = difflib.get_close_matches(str(name), _MODELS, n=1)
        hint = f' (did you mean {hint[0]!r}?)' if hint else ''
        raise ModelSpecError(f'unknown model {name!r}{hint}; registered models: {", ".join(list_models())}')
    return _MODELS[name]


def _check_args(cls, name, args):
    params = inspect.signature(cls).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    accepted = list(params)
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ModelSpecError(f'model {name!r} does not take argument(s) {", ".join(map(repr, unknown))}; '
                             f'it takes: {", ".join(accepted)}')


def make(spec, args=None, load_sd=False, strict=True):
    """Build a model from a spec.

    Args:
        spec: ``{'name', 'args'[, 'sd']}``.
        args: overrides merged over a deep copy of ``spec['args']`` (parents use it to inject
            ``in_dim`` / ``out_dim`` into child MLPs, so such values written in a YAML child spec
            are ignored, as in the published code).
        load_sd: load ``spec['sd']`` into the model.
        strict: passed to ``load_state_dict``.
    """
    if not isinstance(spec, dict) or 'name' not in spec:
        raise ModelSpecError(f'a model spec must be a dict with a "name" key, got {spec!r:.200}')
    name = spec['name']
    cls = get_model_class(name)
    model_args = copy.deepcopy(spec.get('args') or {})
    if not isinstance(model_args, dict):
        raise ModelSpecError(f'model {name!r}: "args" must be a mapping, got {type(model_args).__name__}')
    if args:
        model_args.update(args)
    _check_args(cls, name, model_args)
    model = cls(**model_args)
    # The spec (without weights) travels with the model, so that saving it is self-describing.
    model.spec = {'name': name, 'args': copy.deepcopy(spec.get('args') or {})}
    if load_sd:
        if 'sd' not in spec:
            raise ModelSpecError(f'model {name!r}: load_sd=True but the spec has no "sd"')
        model.load_state_dict(spec['sd'], strict=strict)
    return model
