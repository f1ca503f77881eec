"""Implicit decoders (LIIF, LTE, MetaSR, LM-LIIF, LM-LTE) and their MLPs; shared machinery in ``implicit``."""
from . import mlp, liif, lte, metasr, lmliif, lmlte  # noqa: F401
