"""Window attention (Swin and its descendants: SwinIR, HAT, SRFormer, ATD).

Conventions: maps are (B, H, W, C); ``window_partition`` cuts them into ws x ws windows, numbered row-major
with the images outermost (window tensors are (B * nW, ws*ws, C)), tokens inside a window row-major too.
Attention tensors are (B * nW, heads, N_query, N_key). Relative position biases come from a learned table
``relative_position_bias_table`` ((number of offsets), heads) read through an integer index (N_query, N_key).
Shifted windows: the map is rolled by ``-shift`` along H and W; tokens of different *regions* of the rolled
map (3 x 3 regions, cut at ``-ws`` and ``-shift`` along each axis) must not attend to each other, which an
additive mask of -100 enforces (0 inside a region).
"""
import torch
from torch import nn


def window_partition(x, ws):
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows, ws, H, W):
    """(B * nW, ws*ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def _grid(n):
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing='ij')
    return torch.stack([ys.flatten(), xs.flatten()])          # (2, n*n), (row, col)


def relative_position_index(ws):
    """(ws*ws, ws*ws) index into the (2ws-1)^2 bias table for each (query, key) pair of a window."""
    pos = _grid(ws)
    rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def relative_position_bias(table, index):
    """(heads, N_query, N_key) bias: ``table[index]`` (non-negative indices) with the heads first."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, -1).permute(2, 0, 1)


def shifted_window_labels(H, W, ws, shift, device=None):
    """(nW, ws*ws) region label (0..8) of every token of every window of a rolled H x W map."""
    region = torch.zeros(1, H, W, 1, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            region[:, hs, wsl, :] = label
            label += 1
    return window_partition(region, ws).squeeze(-1)


def region_mask(query_labels, key_labels):
    """(nW, N_query, N_key) additive mask: 0 where query and key share a region label, -100 elsewhere."""
    diff = query_labels.unsqueeze(2) - key_labels.unsqueeze(1)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def shifted_window_mask(H, W, ws, shift, device=None):
    """Attention mask (nW, N, N) for shifted windows: 0 within a region, -100 across regions."""
    labels = shifted_window_labels(H, W, ws, shift, device)
    return region_mask(labels, labels)


def split_heads(x, heads):
    """(Bw, N, C) -> (Bw, heads, N, C / heads)."""
    Bw, N, C = x.shape
    return x.view(Bw, N, heads, C // heads).transpose(1, 2)


def window_attention(q, k, v, bias=None, mask=None):
    """Softmax attention inside windows.

    q (Bw, heads, Nq, d), already scaled; k, v (Bw, heads, Nk, d); ``bias`` (heads, Nq, Nk) is added in every
    window; ``mask`` (nW, Nq, Nk) is added per window position (Bw = B * nW, images outermost).
    Returns (Bw, Nq, heads * d).
    """
    attn = q @ k.transpose(-2, -1)
    Bw, heads, Nq, Nk = attn.shape
    if bias is not None:
        attn.add_(bias)
    if mask is not None:
        nW = mask.shape[0]
        attn.view(Bw // nW, nW, heads, Nq, Nk).add_(mask.unsqueeze(1))
    return (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(Bw, Nq, -1)


class WindowSelfAttention(nn.Module):
    """Multi-head self-attention in a ws x ws window with a learned relative position bias, the index given to
    ``forward`` (HAT keeps one index for the whole model). State-dict names: ``relative_position_bias_table``,
    ``qkv``, ``proj``."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, index, mask=None):
        """x (B*nW, N, C), index (N, N), mask (nW, N, N) or None -> (B*nW, N, C)."""
        Bw, N, C = x.shape
        qkv = self.qkv(x).reshape(Bw, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = relative_position_bias(self.relative_position_bias_table, index)
        return self.proj(window_attention(qkv[0] * self.scale, qkv[1], qkv[2], bias, mask))


class WindowAttention(WindowSelfAttention):
    """SwinIR's window attention: the relative position index is the module's own buffer
    ``relative_position_index``."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True):
        super().__init__(dim, window_size, num_heads, qkv_bias)
        self.register_buffer('relative_position_index', relative_position_index(window_size))

    def forward(self, x, mask=None):
        """x: (B*nW, N, C); mask: (nW, N, N) or None."""
        return super().forward(x, self.relative_position_index, mask)
