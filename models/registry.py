"""The model registry: ``register(name)`` and ``make(spec)``.

A *spec* is a plain dict ``{'name': <registered name>, 'args': {...}[, 'sd': state_dict]}``; it is
what YAML configs write under ``model:`` and what checkpoints store under ``'model'``, so a
checkpoint describes how to rebuild itself.
"""
import copy

from utils.registry import Registry


class ModelSpecError(ValueError):
    """A model spec names an unknown model or passes arguments its constructor does not take."""


MODELS = Registry('model', ModelSpecError)
register = MODELS.register
list_models = MODELS.names
get_model_class = MODELS.get


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
    model = MODELS.build(spec, args)
    # The spec (without weights) travels with the model, so that saving it is self-describing.
    model.spec = {'name': spec['name'], 'args': copy.deepcopy(spec.get('args') or {})}
    if load_sd:
        if 'sd' not in spec:
            raise ModelSpecError(f'model {spec["name"]!r}: load_sd=True but the spec has no "sd"')
        model.load_state_dict(spec['sd'], strict=strict)
    return model
