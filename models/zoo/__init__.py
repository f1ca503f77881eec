"""The IGConv model zoo: the published IGConv / IGConv+ SR architectures (Lee, Yun & Ro, arXiv 2408.09674).

Registered under the published ``network_g`` type names, with the published constructor arguments and
state-dict key names, so that a BasicSR option file's ``network_g`` builds the model and a released
checkpoint (``{'params_ema': sd, 'params': sd}`` or ``{'params': sd}``) loads strictly:

===============  ==================================================================  ==============  =====
name             encoder (feature F fed to the upsampler)                            upsampler key   C
===============  ==================================================================  ==============  =====
``EDSRIG``       full EDSR (256 ch x 32 blocks, res_scale 0.1), F = body + skip      ``upsample``    256
``EDSRIGPlus``   the same, IGConv+ (FGRep + IGSample ``skip``)                        ``upsample``    256
``RDNIGPlus``    RDN config B (G0 64, 16 RDB x 8 convs, growth 64), IGConv+           ``UPNet``       64
``RCANIGPlus``   RCAN 10 groups x 20 RCAB, 64 ch, reduction 16, IGConv+               ``tail``        64
``SwinIRMS``     SwinIR classical (embed 180, 6 x 6 RSTB), F = conv_after_body + x   ``upsample``    180
``SMFANetIG``    SMFANet (48 ch x 12 FMB), F = feats + to_feat; IGConv, no skip      ``to_img``      48
SMFANetIGPlus    the same, IGConv+ (FGRep + IGSample ``skip``)                       ``to_img``      48
``PLKSRIGPlus``  PLKSR (64 ch x 28 PLK blocks, kernel 17, DCCM, EA), F = feats(x)    ``to_rgb``      64
``HAT``          HAT (180, 6 x 6 RHAG, window 16, OCAB overlap 0.5), IGConv+         ``upsample``    180
``SRFormer``     SRFormer (180, 6 x 6 PSA groups, window 22), IGConv or IGConv+      ``upsample``    180
``ATD``          ATD (210, 6 x 6, window 16, 128-token dictionaries), IGConv+        ``upsample``    210
``HiT_SRF``      HiT-SRF (embed 60, 4 x 6, windows 4-64, SCC), tiled test forward    ``upsample``    60
``MambaIR``      MambaIR (embed 180, 6 x 6 VSS; Light: 60, 4 x 6, mlp 1.5), tiles    ``upsample``    180/60
===============  ==================================================================  ==============  =====

Lower-case aliases: ``edsr-ig``, ``edsr-ig-plus``, ``rdn-ig-plus``, ``rcan-ig-plus``, ``swinir-ms``, ``smfanet-ig``,
``smfanet-ig-plus``, ``plksr-ig-plus``, ``hat``, ``srformer``, ``atd``, ``hit-srf``, ``mambair``.

``HiT_SRF`` (alias ``hit-srf``) and ``MambaIR`` (alias ``mambair``) share one type between IGConv and IGConv+ (and
MambaIR-Light): a bare name builds the IGConv+ option file; every published option file's ``network_g`` is in
``hit_srf.PUBLISHED_OPTION_FILES`` / ``mambair.PUBLISHED_OPTION_FILES``.

Conventions, registration and the test-time forward: :mod:`.base`.
"""
from . import base, edsr, rdn, rcan, swinir, smfanet, plksr, hat, srformer, atd, hit_srf, mambair  # noqa: F401,E501
from .base import ALIASES, PUBLISHED_ARCHS, PUBLISHED_OPTIONS, PublishedIGConvSR, published_arch  # noqa: F401
