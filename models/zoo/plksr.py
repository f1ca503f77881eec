"""PLKSR + IGConv+ (published ``PLKSRIGPlus``; ``to_rgb``, C = ``dim`` = 64).

Encoder: PLKSR (Lee & Yun, "Partial Large Kernel CNNs for Efficient Super-Resolution"), ``F = feats(x)``:
a 3x3 conv, then ``n_blocks`` PLK blocks, no global skip and no mean shift; ``SR = to_rgb(F, r) + skip(x, F, r)``.

A PLK block: ``x + refine(EA(PLK(CCM(x))))`` with
* CCM, the channel mixer: conv, GELU, conv (``dim -> 2 dim -> dim``), kernels 3/1 (``CCM``), 1/3 (``ICCM``) or
  3/3 (``DCCM``, published);
* PLK, the partial large-kernel conv: one ``kernel_size`` x ``kernel_size`` conv on the first
  ``int(dim * split_ratio)`` channels, the other channels passed through;
* EA, element-wise attention ``x * sigmoid(conv3x3(x))`` (``use_ea``);
* ``refine``: a 1x1 conv.
All convolutions are local, so the receptive radius is finite (:func:`plksr_radius`; 309 LR px published).
"""
import torch
from torch import nn

from utils.validate import integer, number

from .base import PublishedIGConvSR, published_arch


PUBLISHED_OPTIONS_PLKSRIGPLUS = {'dim': 64, 'n_blocks': 28, 'kernel_size': 17, 'split_ratio': 0.25,
                                 'ccm_type': 'DCCM', 'lk_type': 'PLK', 'use_ea': True, 'implicit_dim': 256,
                                 'latent_layers': 4, 'geo_ensemble': True}

#: Channel-mixer kernel sizes (first conv, second conv) by ``ccm_type``.
MIXER_KERNELS = {'CCM': (3, 1), 'ICCM': (1, 3), 'DCCM': (3, 3)}
#: Std of the truncated-normal init of the published PLKSR convolution weights (biases: PyTorch default).
INIT_STD = 0.02


def _trunc_normal(conv):
    nn.init.trunc_normal_(conv.weight, std=INIT_STD, a=-2.0, b=2.0)
    return conv


def plksr_radius(n_blocks, kernel_size, ccm_type, use_ea):
    """LR pixels beyond a pixel that F depends on: the first 3x3 conv plus, per block, the mixer's two
    convs, the large kernel and EA's 3x3."""
    k1, k2 = MIXER_KERNELS[ccm_type]
    return 1 + n_blocks * (k1 // 2 + k2 // 2 + kernel_size // 2 + (1 if use_ea else 0))


class ChannelMixer(nn.Sequential):
    """CCM / ICCM / DCCM: ``conv(dim -> 2 dim, k1), GELU, conv(2 dim -> dim, k2)``."""

    def __init__(self, dim, ccm_type):
        k1, k2 = MIXER_KERNELS[ccm_type]
        super().__init__(nn.Conv2d(dim, dim * 2, k1, 1, k1 // 2), nn.GELU(),
                         _trunc_normal(nn.Conv2d(dim * 2, dim, k2, 1, k2 // 2)))


class PartialLargeKernelConv(nn.Module):
    """A ``kernel_size`` conv on the first ``pdim`` channels (published ``PLKConv2d``, ``with_idt`` False);
    the remaining channels pass through unchanged."""

    def __init__(self, pdim, kernel_size):
        super().__init__()
        self.pdim = pdim
        self.conv = _trunc_normal(nn.Conv2d(pdim, pdim, kernel_size, 1, kernel_size // 2))

    def forward(self, x):
        return torch.cat([self.conv(x[:, :self.pdim]), x[:, self.pdim:]], dim=1)


class ElementwiseAttention(nn.Module):
    """``x * sigmoid(conv3x3(x))`` (published ``EA``)."""

    def __init__(self, dim):
        super().__init__()
        self.f = nn.Sequential(_trunc_normal(nn.Conv2d(dim, dim, 3, 1, 1)), nn.Sigmoid())

    def forward(self, x):
        return x * self.f(x)


class PLKBlock(nn.Module):
    """``x + refine(attn(lk(channe_mixer(x))))`` (``channe_mixer``: the published state-dict spelling)."""

    def __init__(self, dim, ccm_type, kernel_size, pdim, use_ea):
        super().__init__()
        self.channe_mixer = ChannelMixer(dim, ccm_type)
        self.lk = PartialLargeKernelConv(pdim, kernel_size)
        self.attn = ElementwiseAttention(dim) if use_ea else nn.Identity()
        self.refine = _trunc_normal(nn.Conv2d(dim, dim, 1))

    def forward(self, x):
        return x + self.refine(self.attn(self.lk(self.channe_mixer(x))))


@published_arch('PLKSRIGPlus', options=PUBLISHED_OPTIONS_PLKSRIGPLUS, aliases=('plksr-ig-plus',))
class PLKSRIGPlus(PublishedIGConvSR):
    """PLKSR encoder + IGConv+ (published ``PLKSRIGPlus``): ``SR = to_rgb(F, r) + skip(x, F, r)``.

    Published arguments; only ``lk_type`` 'PLK' without ``with_idt`` is supported (the published option
    file's; the sparse / rectangular large kernels are ablations of the PLKSR paper, and the published
    ``with_idt`` test path drops channels), so the sparse-kernel arguments must stay at their defaults.
    ``max_s`` (fixed to 4 in the published code) is an extension."""

    UPSAMPLER = 'to_rgb'

    def __init__(self, dim, n_blocks, ccm_type, kernel_size, split_ratio, lk_type='PLK', use_max_kernel=False,
                 sparse_kernels=(5, 5, 5, 5), sparse_dilations=(1, 2, 3, 4), with_idt=False, use_ea=True,
                 sk_kernel_size=3, implicit_dim=256, latent_layers=4, geo_ensemble=True, max_s=4):
        super().__init__()
        who = type(self).__name__
        _check_supported(who, lk_type, use_max_kernel, sparse_kernels, sparse_dilations, with_idt)
        if ccm_type not in MIXER_KERNELS:
            raise ValueError(f'{who}: ccm_type must be one of {sorted(MIXER_KERNELS)}, got {ccm_type!r}')
        dim = integer(dim, f'{who}: dim', minimum=1, allow_none=False)
        n_blocks = integer(n_blocks, f'{who}: n_blocks', minimum=0, allow_none=False)
        kernel_size = integer(kernel_size, f'{who}: kernel_size', minimum=1, allow_none=False)
        if kernel_size % 2 == 0:
            raise ValueError(f'{who}: kernel_size must be odd (a same-size conv), got {kernel_size}')
        pdim = int(dim * number(split_ratio, f'{who}: split_ratio', positive=True, maximum=1, allow_none=False))
        if pdim < 1:
            raise ValueError(f'{who}: split_ratio {split_ratio!r} leaves no channel for the large kernel '
                             f'(dim {dim})')
        self.feats = nn.Sequential(_trunc_normal(nn.Conv2d(3, dim, 3, 1, 1)),
                                   *[PLKBlock(dim, ccm_type, kernel_size, pdim, bool(use_ea))
                                     for _ in range(n_blocks)])
        self._make_upsamplers(dim, sk_kernel_size, implicit_dim, latent_layers, geo_ensemble, True, max_s)
        self.receptive_radius = plksr_radius(n_blocks, kernel_size, ccm_type, bool(use_ea))

    @property
    def fft_loss_weight(self):
        """0.02 in the published PLKSR-IGConv+ recipe (0.05 for the other IGConv+ models)."""
        return 0.02

    def encode(self, x):
        return self.feats(x)


def _check_supported(who, lk_type, use_max_kernel, sparse_kernels, sparse_dilations, with_idt):
    if lk_type != 'PLK':
        raise ValueError(f"{who}: only lk_type 'PLK' (the published option) is supported, got {lk_type!r}")
    if with_idt:
        raise ValueError(f'{who}: with_idt=True is not supported (the published test-time path drops '
                         f'channels with it; no published option sets it)')
    if use_max_kernel or list(sparse_kernels) != [5, 5, 5, 5] or list(sparse_dilations) != [1, 2, 3, 4]:
        raise ValueError(f"{who}: use_max_kernel / sparse_kernels / sparse_dilations only apply to lk_type "
                         f"'SparsePLK', which is not supported; leave them at their defaults")
