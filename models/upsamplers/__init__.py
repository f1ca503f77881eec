"""Multi-scale sub-pixel upsamplers (IGConv / IGConv+, Lee et al. 2024) and the SR models built on them.

* ``igconv``   :class:`~.igconv.IGConv`   feature map + integer scale -> RGB (hypernetwork-generated SPConv).
* ``igsample`` :class:`~.igsample.IGSample` learned per-colour resampling skip of IGConv+.
* ``igconv-sr`` and ``igconv[-plus]-{edsr-baseline,rdn,swinir}``: :class:`~.sr.IGConvSR`.
* The published architectures (``EDSRIG``, ``HAT``, ``MambaIR``, ...) are in :mod:`models.zoo`.
* :func:`~.losses.fft_l1_loss` / :class:`~.losses.FFTL1Loss`: the frequency loss of IGConv+.

These models are fixed-grid: integer, isotropic scales only. ``check_integer_scale(sh, sw)`` returns the
integer scale or raises :class:`IntegerScaleError` (a ``ValueError``) naming the implicit models to use.
"""
from . import igconv, igsample, sr, losses  # noqa: F401  (populate the registry)
from .igconv import IGConv, IntegerScaleError, check_integer_scale  # noqa: F401
from .igsample import IGSample  # noqa: F401
from .losses import FFTL1Loss, fft_l1_loss  # noqa: F401
from .sr import IGConvSR, scale_from_cell  # noqa: F401
