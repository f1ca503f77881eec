"""CNN and transformer encoders: LR image (B, 3, h, w) -> feature map (B, out_dim, h, w).

Every encoder takes ``no_upsampling``; with it (as every implicit model uses them) it returns the
feature map at LR resolution and exposes its channel count as ``out_dim``. State-dict keys equal
those of the published EDSR / RDN / RCAN / SwinIR implementations used by LIIF, LTE and LMF.
"""
from . import edsr, rdn, rcan, swinir  # noqa: F401
