"""Frequency (FFT) L1 loss of IGConv+ (unnormalised, as published: docs/deviations.md, I15).

``L_FFT = mean |stack(Re, Im)(rfft2(sr)) - stack(Re, Im)(rfft2(hr))|``: 2-D real FFT over the last two
axes, PyTorch's default ("backward", i.e. unnormalised) forward transform, L1 averaged over every
(batch, channel, freq_y, freq_x, re/im) entry. Because the transform is unnormalised the loss grows
with the patch size (kept as published). The published total loss is ``L1 + 0.05 * L_FFT``.

In this code base images are normalised as ``(x - 0.5) / 0.5``, so the loss (like the L1 term) is
twice its value on [0, 1] images; the ratio of the two terms is unchanged.
"""
import torch
from torch import nn


def _spectrum(x):
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    f = torch.fft.rfft2(x)
    return torch.stack([f.real, f.imag], dim=-1)


def fft_l1_loss(sr, hr):
    """Mean L1 distance of the unnormalised rfft2 spectra (real and imaginary parts) of (..., H, W) tensors."""
    if sr.shape != hr.shape:
        raise ValueError(f'fft_l1_loss: shapes differ, {tuple(sr.shape)} vs {tuple(hr.shape)}')
    return (_spectrum(sr) - _spectrum(hr)).abs().mean()


class FFTL1Loss(nn.Module):
    """``weight * fft_l1_loss(sr, hr)`` as a module."""

    def __init__(self, weight=1.0):
        super().__init__()
        self.weight = weight

    def forward(self, sr, hr):
        return self.weight * fft_l1_loss(sr, hr)

    def extra_repr(self):
        return f'weight={self.weight}'
