"""The plain MLP (``mlp``) and LMF's modulated render MLP (``lmmlp``)."""
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register


@register('mlp')
class MLP(nn.Module):
    """[Linear -> ReLU] per hidden size, then a final Linear; keys ``layers.{0,2,4,...}``.

    ``forward`` accepts any leading shape (..., in_dim) and returns (..., out_dim).
    """

    def __init__(self, in_dim, out_dim, hidden_list, use_conv=False):
        super().__init__()
        if use_conv:
            raise NotImplementedError('mlp(use_conv=True) is not used by any published config')
        layers, last = [], in_dim
        for hidden in hidden_list:
            layers += [nn.Linear(last, hidden), nn.ReLU()]
            last = hidden
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x):
        shape = x.shape[:-1]
        return self.layers(x.reshape(-1, x.shape[-1])).view(*shape, -1)

    def forward_unfold3x3(self, feat, extra=None):
        """``forward(cat([unfold3x3(feat), extra]))`` at every pixel, without building the 9C-channel unfold.

        feat (B, C, h, w); extra (B, e) per-image channels appended after the 9C (e.g. a cell) or None
        -> (B, h, w, out_dim). The first layer over the zero-padded 3x3 neighbourhood (channel order
        ``c*9 + ky*3 + kx``) is exactly a 3x3 convolution, and ``extra`` only shifts its bias; equal to
        the unfolded form up to float summation order (~1e-6 relative).
        """
        B = feat.shape[0]
        first = self.layers[0]
        C = first.in_features // 9      # from the weights (not feat's traced shape), so that the graph exports
        if first.in_features % 9 != (0 if extra is None else extra.shape[-1]):
            raise ValueError(f'forward_unfold3x3: {first.in_features} input features are not 9 x channels + '
                             f'{0 if extra is None else extra.shape[-1]} extra')
        kernel = first.weight[:, :9 * C].reshape(-1, C, 3, 3)
        bias = first.bias.view(1, -1)
        if extra is not None:
            bias = bias + extra.to(first.weight.dtype) @ first.weight[:, 9 * C:].t()
        # CPU inference (not traced: a graph must not fix the batch of a per-image bias): channels-last convolution
        # (oneDNN without layout reorders; its (B, h, w, out) view is already contiguous rows for the next layers),
        # a batch-independent bias inside it, ReLUs in place; equal to the NCHW form to float rounding (1.4e-6 on
        # outputs of magnitude 4 for the bundled LM-LIIF)
        fast = not (torch.is_grad_enabled() or feat.device.type != 'cpu' or torch.jit.is_tracing()
                    or torch.onnx.is_in_onnx_export())
        if fast:
            feat, kernel = (t.contiguous(memory_format=torch.channels_last) for t in (feat, kernel))
        if fast and bias.shape[0] == 1:
            y = F.conv2d(feat, kernel, bias.view(-1), padding=1)
        else:
            y = F.conv2d(feat, kernel, padding=1).add_(bias.view(B if extra is not None else 1, -1, 1, 1))
        y = y.permute(0, 2, 3, 1)
        x = y.reshape(-1, y.shape[-1])
        if not fast:
            return self.layers[1:](x).view(*y.shape[:3], -1)
        for layer in self.layers[1:]:
            x = torch.relu_(x) if isinstance(layer, nn.ReLU) else layer(x)
        return x.view(*y.shape[:3], -1)


@register('lmmlp')
class LMMLP(nn.Module):
    """Render MLP of LMF whose hidden layers are modulated per LR pixel.

    ``layers.0`` is Linear(in_dim -> hd), ``layers.2, ..., layers.2(D-1)`` are Linear(hd -> hd), each
    followed by a ReLU, and ``layers.2D`` is Linear(hd -> out_dim). Hidden layer k computes::

        a_k = (W_k x + b_k) * (1 + s_k) + t_k ;  x = relu(a_k)

    with the scale modulation s_k and shift modulation t_k (hd values each) of the query's LR pixel.
    Modulation vector layout (length ``mod_dim`` = M): ``[s_0 .. s_{D-1} | t_0 .. t_{D-1}]`` when both
    are enabled; a disabled kind is simply absent.

    Two equivalent ways to evaluate it:

    * ``forward(x, mod)``: explicit modulations, one row per row of ``x`` (training path).
    * ``forward_gathered(x, tables, index)``: per-layer tables of the modulations of every LR pixel are
      gathered layer by layer with ``index`` (the fast path); the (N x M) tensor is never built.
    """

    def __init__(self, in_dim, out_dim, hidden_dim, hidden_depth, mod_scale=True, mod_shift=True,
                 mod_up_merge=False, use_conv=False):
        super().__init__()
        if use_conv:
            raise NotImplementedError('lmmlp(use_conv=True) is not used by any published config')
        if not (mod_scale or mod_shift):
            raise ValueError('lmmlp: mod_scale and mod_shift are both off, so nothing modulates the render MLP '
                             '(a plain render MLP is the mlp model)')
        # mod_up_merge is forced False by every LM model; its published variant drops the "+1" (docs/deviations.md, B6).
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden_dim, self.hidden_depth = hidden_dim, hidden_depth
        self.mod_scale, self.mod_shift = mod_scale, mod_shift
        self.mod_dim = hidden_dim * hidden_depth * (int(mod_scale) + int(mod_shift))
        layers, last = [], in_dim
        for _ in range(hidden_depth):
            layers += [nn.Linear(last, hidden_dim), nn.ReLU(inplace=True)]
            last = hidden_dim
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    # -- modulation layout -------------------------------------------------------------------------
    def scale_slice(self, k):
        hd = self.hidden_dim
        return slice(k * hd, (k + 1) * hd) if self.mod_scale else None

    def shift_slice(self, k):
        hd, off = self.hidden_dim, self.hidden_dim * self.hidden_depth * int(self.mod_scale)
        return slice(off + k * hd, off + (k + 1) * hd) if self.mod_shift else None

    def hidden(self, k):
        return self.layers[2 * k]

    # -- explicit modulations -----------------------------------------------------------------------
    def forward(self, x, mod):
        """x: (..., in_dim); mod: (..., >= mod_dim), row-aligned with x (extra channels ignored)."""
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        mod = mod.reshape(-1, mod.shape[-1])
        # one split into hd-wide views (the layout above): its backward is a single concatenation, where
        # one slice per layer and kind would build a full-size zero gradient each (same values either way)
        parts = mod.split(self.hidden_dim, dim=1)
        D = self.hidden_depth
        scales = parts[:D] if self.mod_scale else None
        shifts = parts[D * int(self.mod_scale):D * int(self.mod_scale) + D] if self.mod_shift else None
        for k in range(D):
            x = self.hidden(k)(x)
            if self.mod_scale:
                x = x * (1 + scales[k])
            if self.mod_shift:
                x = x + shifts[k]
            x = torch.relu(x)
        return self.layers[-1](x).view(*shape, -1)

    # -- gathered modulations -----------------------------------------------------------------------
    def modulation_tables(self, mod):
        """Split a per-pixel modulation table (P, >= M) into contiguous per-layer tables.

        Returns a list of D tensors (P, c) holding ``[1 + s_k | t_k]`` (c = 2hd with both kinds, hd
        with one), so that each layer needs a single gather of one contiguous row per query.
        """
        tables = []
        for k in range(self.hidden_depth):
            parts = []
            if self.mod_scale:
                parts.append(1 + mod[:, self.scale_slice(k)])
            if self.mod_shift:
                parts.append(mod[:, self.shift_slice(k)])
            tables.append(torch.cat(parts, dim=1).contiguous())
        return tables

    def forward_gathered(self, x, tables, index, skip_layer0=False):
        """x: (N, in_dim); tables: from ``modulation_tables``; index: (N,) rows of the tables.

        With ``skip_layer0``, ``x`` is already the pre-activation of ``layers.0`` (N, hd); its
        modulation is still applied (the published mode (d)). Runs in ``x``'s dtype (weights are cast).
        """
        hd = self.hidden_dim
        for k in range(self.hidden_depth):
            layer = self.hidden(k)
            a = x if (k == 0 and skip_layer0) else F.linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))
            m = tables[k].index_select(0, index)
            if self.mod_scale and self.mod_shift:
                x = torch.addcmul(m[:, hd:], a, m[:, :hd])
            elif self.mod_scale:
                x = a * m
            elif self.mod_shift:
                x = a + m
            else:
                x = a
            x = torch.relu_(x)
        out = self.layers[-1]
        return F.linear(x, out.weight.to(x.dtype), out.bias.to(x.dtype))
