"""The residual group of the SwinIR-style restoration bodies (HiT-SR's RHTB, MambaIR's RSSG, SwinIR's RSTB):
a sequence of token blocks, a 3x3 conv on the map, and a residual connection, under the published
state-dict names ``residual_group.blocks.<i>`` and ``conv``.
"""
from torch import nn

from .common import map_to_tokens, tokens_to_map


class BlockSequence(nn.Module):
    """``blocks`` applied in order; every block is called as ``block(x, x_size)`` on tokens (B, h*w, C)."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, x_size):
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


class ResidualGroup(nn.Module):
    """tokens (B, h*w, C) -> ``x + tokens(conv(map(blocks(x))))`` with a 3x3 ``dim`` -> ``dim`` conv."""

    def __init__(self, dim, blocks):
        super().__init__()
        self.residual_group = BlockSequence(blocks)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, x_size):
        return map_to_tokens(self.conv(tokens_to_map(self.residual_group(x, x_size), x_size))) + x
