"""The residual token trunk shared by SwinIR, HAT, SRFormer and ATD (state-dict names as published).

``conv_first`` (3x3 conv to ``embed_dim``) gives the shallow feature f; ``patch_embed`` (LayerNorm) turns it into
tokens (B, h*w, C); every entry of ``layers`` is a :class:`ConvResidualGroup` (SwinIR's RSTB, HAT's RHAG,
SRFormer's PSA_Group, ATD's ATDB); then ``norm`` and, back on the map, ``conv_after_body``, plus f.
"""
import torch
from torch import nn

from .common import PatchEmbedNorm, map_to_tokens, tokens_to_map


def stochastic_depth_rates(rate, depths):
    """Per-group lists of drop-path rates rising linearly from 0 to ``rate`` over all blocks."""
    dpr = [x.item() for x in torch.linspace(0, rate, sum(depths), device='cpu')]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [dpr[s:s + d] for s, d in zip(starts, depths)]


def init_transformer_weights(m):
    """The published initialisation (``model.apply`` it): Linear weights truncated normal (std 0.02), zero
    biases; LayerNorm weight 1, bias 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)


class ConvResidualGroup(nn.Module):
    """``residual_group`` (blocks on tokens), a 3x3 conv ``conv`` on the map, plus the input.

    ``forward(x, x_size, *context)``: x (B, h*w, C) tokens; ``context`` is passed on to the residual group.
    """

    def __init__(self, residual_group, dim):
        super().__init__()
        self.residual_group = residual_group
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, x_size, *context):
        return map_to_tokens(self.conv(tokens_to_map(self.residual_group(x, x_size, *context), x_size))) + x


class TokenTrunk(nn.Module):
    """Mixin: ``build_token_trunk(in_chans, embed_dim, groups)`` creates the trunk on the module itself (call it
    in ``__init__``; ``groups`` may be a generator: the residual groups are then built after ``conv_first``, in the
    published order). ``trunk(x, *context)``: (B, in_chans, h, w) -> ``conv_after_body(body) + conv_first(x)``,
    (B, embed_dim, h, w); ``context`` reaches every group."""

    def build_token_trunk(self, in_chans, embed_dim, groups):
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbedNorm(embed_dim)
        self.layers = nn.ModuleList(ConvResidualGroup(group, embed_dim) for group in groups)
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)

    def forward_features(self, x, *context):
        """Shallow feature map (B, C, h, w) -> the body's output map (before ``conv_after_body``)."""
        x_size = tuple(x.shape[-2:])
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x, x_size, *context)
        return tokens_to_map(self.norm(x), x_size)

    def trunk(self, x, *context):
        x = self.conv_first(x)
        return self.conv_after_body(self.forward_features(x, *context)) + x
