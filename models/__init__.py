"""Models: encoders, implicit decoders, upsamplers and baselines, built by name from specs.

    >>> import models
    >>> models.list_models()
    >>> model = models.make({'name': 'lmliif', 'args': {...}})
"""
from .registry import ModelSpecError, get_model_class, list_models, make, register

from . import encoders, decoders, upsamplers, zoo, baselines  # noqa: E402,F401  (populate the registry)
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint, model_spec  # noqa: E402,F401
