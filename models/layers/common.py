"""Layers shared by the transformer encoders and the published architectures (SwinIR, HAT, SRFormer, ATD,
HiT-SRF, MambaIR, ...): stochastic depth, the two-layer GELU MLP and its convolutional variant (ConvFFN),
token <-> map reshapes and the patch-embedding norm. Token tensors are (B, L, C) with L = h * w in row-major
order; maps are (B, C, h, w).
"""
from torch import nn


def drop_path(x, p, training):
    """Stochastic depth: zero whole samples with probability ``p`` and rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DepthwiseConvGELU(nn.Module):
    """A k x k depthwise conv and GELU applied to tokens through their map (state-dict name ``depthwise_conv.0``)."""

    def __init__(self, dim, kernel_size):
        super().__init__()
        self.depthwise_conv = nn.Sequential(nn.Conv2d(dim, dim, kernel_size, 1, (kernel_size - 1) // 2, groups=dim),
                                            nn.GELU())

    def forward(self, x, x_size):
        return map_to_tokens(self.depthwise_conv(tokens_to_map(x, x_size)))


class ConvFFN(nn.Module):
    """SRFormer's / ATD's feed-forward: ``fc2(h + dwconv(h))`` with ``h = GELU(fc1(x))`` (tokens (B, L, C))."""

    def __init__(self, dim, hidden, kernel_size=5):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = DepthwiseConvGELU(hidden, kernel_size)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, x_size):
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x, x_size))


def tokens_to_map(x, x_size):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x_size[0], x_size[1])


def map_to_tokens(x):
    return x.flatten(2).transpose(1, 2)


class PatchEmbedNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(map_to_tokens(x))
