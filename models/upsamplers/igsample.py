"""IGSample: the input-dependent resampling skip of IGConv+.

A DySample-style learned resampling of the LR image: a second implicit-grid hypernetwork (``convs``,
grouped in two: an "offset" head and a "scope" head) generates a conv weight (12 r^2, C, k, k); the conv
applied to the encoder features predicts, for every HR pixel and every colour, an (x, y) offset of the
LR position it samples. With zero learned offsets IGSample is bilinear upsampling (half-pixel
alignment, border padding).

Conventions
-----------
* Conv output channel ``o * r^2 + i * r + j``, o in 0..11: o < 6 -> offsets ``O_raw``, o >= 6 -> scope
  logits ``S``; within each half ``o = a * 3 + c`` with a in {x, y} and c in {R, G, B}.
* Offsets (LR-pixel units): ``delta = 0.5 * sigmoid(S) * O_raw + p``, with the position prior
  ``p_x = (j - (r - 1) / 2) / r``, ``p_y = (i - (r - 1) / 2) / r``.
* HR pixel (h r + i, w r + j) of colour c samples the LR image at ``(w + 0.5 + delta_x, h + 0.5 + delta_y)``
  (pixel centres at +0.5), bilinearly, ``align_corners=False``, border padding.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from .igconv import ImplicitKernelGenerator, check_integer_scale, fixed_conv, traced_conv_same

#: Output channels per (kernel element, sub-pixel): 2 axes x 3 colours for offsets, the same for scope.
N_OUT = 12


def position_prior(r, device=None, dtype=torch.float32):
    """(6 r^2,) offsets of the sub-pixel centres from the LR pixel centre, layout ``a*3r^2 + c*r^2 + i*r + j``."""
    n = (torch.arange(r, device=device, dtype=dtype) - (r - 1) / 2) / r
    px = n.view(1, r).expand(r, r)  # varies along j
    py = n.view(r, 1).expand(r, r)  # varies along i
    return torch.stack([px, py]).unsqueeze(1).expand(2, 3, r, r).reshape(6 * r * r)


def sample_with_offsets(img, offsets, scope, r):
    """Resample each colour plane of ``img`` (B, 3, h, w) at learned positions.

    Args:
        offsets, scope: (B, 6 r^2, h, w) raw offsets and scope logits (layout in the module docstring).
    Returns:
        (B, 3, r h, r w).
    """
    B, _, h, w = img.shape
    prior = position_prior(r, device=img.device, dtype=offsets.dtype).view(1, -1, 1, 1)
    delta = 0.5 * torch.sigmoid(scope) * offsets + prior
    delta = delta.view(B, 2, 3, r, r, h, w)
    gx = torch.arange(w, device=img.device, dtype=delta.dtype).view(1, w) + 0.5
    gy = torch.arange(h, device=img.device, dtype=delta.dtype).view(h, 1) + 0.5
    x = (gx + delta[:, 0]) * (2 / w) - 1  # (B, 3, r, r, h, w)
    y = (gy + delta[:, 1]) * (2 / h) - 1
    grid = torch.stack([x, y], dim=-1)  # (B, 3, i, j, h, w, 2)
    grid = grid.permute(0, 1, 4, 2, 5, 3, 6).reshape(B * 3, h * r, w * r, 2)
    out = F.grid_sample(img.reshape(B * 3, 1, h, w).to(grid.dtype), grid, mode='bilinear',
                        padding_mode='border', align_corners=False)
    return out.view(B, 3, h * r, w * r)


@register('igsample')
class IGSample(nn.Module):
    """IGSample skip: LR image (B, 3, h, w), features (B, C, h, w), integer r -> (B, 3, r*h, r*w).

    Official constructor names; internally the hypernetwork is ``2 * implicit_dim`` wide and split into
    two groups. Parameters (C = 64, defaults): 362,752. At initialisation the scope logits are exactly 0
    and the offsets nearly 0, i.e. IGSample starts as bilinear upsampling.
    """

    def __init__(self, dim, kernel_size=3, implicit_dim=128, latent_layers=2, geo_ensemble=True, max_s=4):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.convs = ImplicitKernelGenerator(dim, kernel_size, 2 * implicit_dim, latent_layers, out_per_pos=N_OUT,
                                             groups=2, last_bias=False, geo_ensemble=geo_ensemble, max_s=max_s)
        self._init_mlp()

    @property
    def geo_ensemble(self):
        return self.convs.geo_ensemble

    @property
    def max_s(self):
        return self.convs.max_s

    @torch.no_grad()
    def _init_mlp(self):
        layers = [m for m in self.convs.query_kernel if isinstance(m, nn.Conv2d)]
        for m in layers[:-1]:
            nn.init.trunc_normal_(m.weight, std=0.01)
            nn.init.trunc_normal_(m.bias, std=0.01)
        last = layers[-1].weight  # (12, H'/2, 1, 1)
        m = torch.empty(2, last.shape[1], 1, 1)
        nn.init.trunc_normal_(m, std=0.01)
        last.zero_()
        last[:N_OUT // 2] = m.repeat(3, 1, 1, 1)

    def kernel(self, scale):
        """(12 r^2, C, k, k) weight (FGRep-averaged when ``geo_ensemble``); cached in eval mode."""
        return self.convs.kernel(scale)

    def forward(self, img, feat, scale):
        r = check_integer_scale(scale)
        q = F.conv2d(feat, self.kernel(r), padding=self.kernel_size // 2)
        offsets, scope = q.chunk(2, dim=1)
        return sample_with_offsets(img, offsets, scope, r)

    def traced_forward(self, img, feat, r):
        """``forward(img, feat, r)`` in traceable form for a 0-d int64 tensor ``r``."""
        q = traced_conv_same(feat, self.convs.traced_kernel(r), self.kernel_size)
        n = N_OUT // 2 * r * r
        return sample_with_offsets(img, q[:, :n], q[:, n:], r)

    @torch.no_grad()
    def instantiate(self, scale):
        """IGSample folded at one scale: a fixed bias-free conv (12 r^2 C k^2 weights) + the resampling."""
        r = check_integer_scale(scale)
        weight = self.convs._final_kernel(r)
        return InstantiatedIGSample(weight, r)


class InstantiatedIGSample(nn.Module):
    """IGSample with its kernel generated once: ``forward(img, feat, scale=None)``."""

    def __init__(self, weight, scale):
        super().__init__()
        self.scale = int(scale)
        self.conv = fixed_conv(weight)

    def forward(self, img, feat, scale=None):
        if scale is not None and check_integer_scale(scale) != self.scale:
            raise ValueError(f'this IGSample was instantiated for x{self.scale}, got x{scale}')
        offsets, scope = self.conv(feat).chunk(2, dim=1)
        return sample_with_offsets(img, offsets, scope, self.scale)
