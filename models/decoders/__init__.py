"""Implicit decoders (LIIF, LTE, LTE-fast, MetaSR, CiaoSR, LM-LIIF, LM-LTE, LM-CiaoSR) and their MLPs; shared
machinery in ``implicit``."""
from . import mlp, liif, lte, metasr, lmliif, lmlte, ltefast, ciaosr, lmciaosr  # noqa: F401
