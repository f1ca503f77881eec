"""IGConv: Implicit Grid Convolution (Lee, Yun & Ro, arXiv 2408.09674), the multi-scale sub-pixel upsampler.

IGConv keeps the computation of a sub-pixel convolution (SPConv: one k x k conv C -> 3r^2, then
PixelShuffle(r)) but *generates* its weight for any integer scale r with a small coordinate-based
hypernetwork queried at the r x r grid of sub-pixel positions.

Conventions
-----------
* Kernel elements ``e = (c', u, v)`` (input channel, tap row, tap column), ``E = C * k * k`` of them,
  c' outermost. Every element owns a frequency vector ``freq[e]`` (split into Z^x = first H/2 entries,
  Z^y = last H/2) and an amplitude vector ``amplitude[e]``; the MLP ``query_kernel`` is shared.
* Sub-pixel grid: ``t_n = -1 + (2n + 1) / r``; sub-pixel (i, j) (row, column) has x = t_j, y = t_i.
* Phase: ``phi(r) = phase(2 / min(r, max_s))`` (a 1 -> H/2 dense layer), added to every frequency.
* Features: ``amplitude[e] * [cos(pi theta), sin(pi theta)]`` with ``theta = Z^x x + Z^y y + phi``.
* Weight layout (PixelShuffle's): ``W[c * r^2 + i * r + j, c', u, v] = mlp(e, i, j)[c]``.
* FGRep (``geo_ensemble``): the weight is replaced by its average over the 8 symmetries of the k x k
  tap grid (D4), which equals the 8-way transform-feature / conv / inverse-transform ensemble.

State-dict keys are the official ones (``freq``, ``amplitude``, ``phase.*``, ``query_kernel.{0,2,..}.*``)
so that official weights load directly.
"""
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from utils.coords import coord_axis, traced_coord_axis

from ..registry import register

#: Floats per hidden activation above which kernel generation is split into chunks of kernel elements.
GENERATION_CHUNK = 1 << 24


class IntegerScaleError(ValueError):
    """A fixed-grid (IGConv) model was asked for a non-integer or asymmetric scale."""


def check_integer_scale(scale_h, scale_w=None, tol=1e-3):
    """Validate a scale for IGConv models and return it as a positive ``int``.

    Args:
        scale_h: scale along rows (int, float, 0-d tensor, or a tensor whose entries are all equal);
            a ``(scale_h, scale_w)`` pair is also accepted here.
        scale_w: scale along columns (default: ``scale_h``).
        tol: largest accepted distance from the nearest integer (cells computed in float32 are not
            exact).
    Raises:
        IntegerScaleError (a ``ValueError``) for non-integer, asymmetric or non-positive scales, with a
        message pointing to the implicit models that handle them.
    """
    if scale_w is None and isinstance(scale_h, (tuple, list)):
        if len(scale_h) != 2:
            raise IntegerScaleError(f'scale must be a number or a (rows, cols) pair, got {scale_h!r}')
        scale_h, scale_w = scale_h
    sh = _as_float(scale_h)
    sw = sh if scale_w is None else _as_float(scale_w)
    r = round(sh) if math.isfinite(sh) else 0
    ok = math.isfinite(sw) and r >= 1 and abs(sh - r) < tol and abs(sw - r) < tol
    if not ok:
        got = f'x{sh:g}' if sh == sw else f'x{sh:g} (rows) / x{sw:g} (cols)'
        raise IntegerScaleError(
            f'IGConv supports integer scales only (the same whole factor for rows and columns, >= 1); '
            f'got {got}. Use an implicit arbitrary-scale model such as lmliif, lmlte, liif or lte for '
            f'non-integer or asymmetric scales.')
    return int(r)


def _as_float(scale):
    if torch.is_tensor(scale):
        if scale.numel() == 0:
            raise IntegerScaleError('scale tensor is empty')
        flat = scale.detach().reshape(-1).double()
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            raise IntegerScaleError('IGConv supports integer scales only and one scale per batch; '
                                    f'got several scales {sorted(set(flat.tolist()))}')
        return float(flat[0])
    if isinstance(scale, numbers.Real):
        return float(scale)
    raise IntegerScaleError(f'scale must be a number, got {type(scale).__name__}')


def phase_input(scale, max_s):
    """The cell fed to the phase layer: ``2 / min(r, max_s)`` (scales above ``max_s`` reuse its value)."""
    return 2.0 / min(int(scale), int(max_s))


def d4_transforms(weight):
    """The 8 images of a (..., k, k) kernel under the symmetries of the square tap grid (flips x transpose)."""
    out = []
    for w in (weight, weight.transpose(-1, -2)):
        out += [w, w.flip(-1), w.flip(-2), w.flip(-2, -1)]
    return out


def d4_average(weight):
    """FGRep: average of a (..., k, k) kernel over the 8 symmetries of its tap grid."""
    ts = d4_transforms(weight)
    acc = ts[0]
    for t in ts[1:]:
        acc = acc + t
    return acc / 8


class ImplicitKernelGenerator(nn.Module):
    """Hypernetwork that maps the r x r implicit grid to a conv weight (out_per_pos * r^2, C, k, k).

    Args:
        dim: C, channels of the feature map the generated conv reads.
        kernel_size: k.
        width: H, width of the Fourier features and of the MLP (even).
        latent_layers: number of hidden H -> H layers (each followed by ReLU).
        out_per_pos: values the MLP outputs per kernel element and sub-pixel (3 for RGB).
        groups: the MLP's 1x1 convs are grouped (IGSample uses 2); with groups > 1 the Fourier features
            are interleaved first so that group g sees cos/sin of frequencies g, g + groups, ...
        last_bias: whether the output layer has a bias.
        geo_ensemble: FGRep (D4 kernel average) on/off.
        max_s: clamp of the scale fed to the phase layer.

    ``kernel(scale)`` returns the (FGRep-averaged) weight; in eval mode with gradients off it is cached
    per scale, and the cache is dropped on ``train()`` and whenever a parameter changes (in-place update,
    ``load_state_dict``, device or dtype move).
    """

    def __init__(self, dim, kernel_size, width, latent_layers, out_per_pos, groups=1, last_bias=True,
                 geo_ensemble=False, max_s=4):
        super().__init__()
        if width % (2 * groups):
            raise ValueError(f'implicit width {width} must be divisible by {2 * groups}')
        self.dim, self.kernel_size, self.width = dim, kernel_size, width
        self.latent_layers, self.out_per_pos, self.groups = latent_layers, out_per_pos, groups
        self.geo_ensemble, self.max_s = bool(geo_ensemble), max_s
        n_elem = dim * kernel_size * kernel_size
        self.freq = nn.Parameter(torch.randn(n_elem, width, 1, 1) * 0.02)
        self.amplitude = nn.Parameter(torch.randn(n_elem, width, 1, 1) * 0.02)
        self.phase = nn.Conv2d(1, width // 2, 1)
        layers = []
        for _ in range(latent_layers):
            layers += [nn.Conv2d(width, width, 1, groups=groups), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, out_per_pos, 1, groups=groups, bias=last_bias))
        self.query_kernel = nn.Sequential(*layers)
        self._cache, self._cache_key = {}, None

    # ---- generation ----
    def fourier_features(self, axis, phase_in, elements=slice(None)):
        """Amplitude-modulated Fourier features of the sub-pixel grid, (E', r, r, H) for the selected
        elements. ``axis`` (r,): the grid's cell centres (``coord_axis(r)``); ``phase_in``: the phase
        layer's input ``2 / min(r, max_s)`` (a number, or a 0-d tensor in traced form)."""
        half = self.width // 2
        freq = self.freq[elements, :, 0, 0]
        y, x = torch.meshgrid(axis, axis, indexing='ij')
        r = axis.shape[0]
        phi = self.phase.weight.view(half) * phase_in + self.phase.bias
        theta = (freq[:, None, None, :half] * x[..., None] + freq[:, None, None, half:] * y[..., None]) + phi
        theta = theta * math.pi
        feats = torch.cat([torch.cos(theta), torch.sin(theta)], dim=-1)
        if self.groups > 1:
            # new channel d * (H / groups) + g <- old channel groups * g + d
            E = feats.shape[0]
            feats = feats.reshape(E, r, r, self.width // self.groups, self.groups).transpose(-1, -2)
            feats = feats.reshape(E, r, r, self.width)
        return feats * self.amplitude[elements, None, None, :, 0, 0]

    def mlp(self, x):
        """The shared 1x1-conv MLP applied to the last axis of ``x`` (..., H)."""
        for layer in self.query_kernel:
            if isinstance(layer, nn.Conv2d):
                x = _grouped_linear(x, layer.weight, layer.bias, layer.groups)
            else:
                x = layer(x)
        return x

    def generate(self, scale):
        """Raw (no FGRep) weight (out_per_pos * r^2, C, k, k) for integer scale r, with autograd."""
        r = check_integer_scale(scale)
        E = self.freq.shape[0]
        axis = coord_axis(r, device=self.freq.device, dtype=self.freq.dtype)
        phase_in = phase_input(r, self.max_s)
        step = max(1, GENERATION_CHUNK // (r * r * self.width))
        parts = [self.mlp(self.fourier_features(axis, phase_in, slice(s, s + step))) for s in range(0, E, step)]
        return self._weight(parts[0] if len(parts) == 1 else torch.cat(parts, 0), r)

    def _weight(self, out, r):
        """MLP outputs (E, r, r, O) -> the weight (O r^2, C, k, k) in PixelShuffle's layout."""
        k, O = self.kernel_size, self.out_per_pos
        out = out.reshape(self.dim, k, k, r, r, O).permute(5, 3, 4, 0, 1, 2)
        return out.reshape(O * r * r, self.dim, k, k)

    def traced_kernel(self, r):
        """``kernel`` in traceable form for a 0-d int64 tensor ``r`` (ONNX: the scale given at run time): the
        same Fourier features and MLP with the grid axis and phase input computed from the tensor, no
        chunking over kernel elements, FGRep applied."""
        axis = traced_coord_axis(r, self.freq)
        phase_in = (2.0 / torch.clamp(r.to(torch.float64), max=float(int(self.max_s)))).to(self.freq.dtype)
        w = self._weight(self.mlp(self.fourier_features(axis, phase_in)), r)
        return d4_average(w) if self.geo_ensemble else w

    def kernel(self, scale):
        """The weight used in ``forward``: ``generate(scale)``, D4-averaged when ``geo_ensemble``."""
        r = check_integer_scale(scale)
        if not self._cacheable():
            return self._final_kernel(r)
        key = self._param_key()
        if key != self._cache_key:
            self._cache, self._cache_key = {}, key
        if r not in self._cache:
            with torch.no_grad():
                self._cache[r] = self._final_kernel(r)
        return self._cache[r]

    def _final_kernel(self, r):
        w = self.generate(r)
        return d4_average(w) if self.geo_ensemble else w

    # ---- cache ----
    def _cacheable(self):
        if self.training:
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def _param_key(self):
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())

    def clear_cache(self):
        self._cache, self._cache_key = {}, None

    def train(self, mode=True):
        self.clear_cache()
        return super().train(mode)

    def extra_repr(self):
        return (f'dim={self.dim}, kernel_size={self.kernel_size}, width={self.width}, '
                f'latent_layers={self.latent_layers}, out_per_pos={self.out_per_pos}, groups={self.groups}, '
                f'geo_ensemble={self.geo_ensemble}, max_s={self.max_s}')


def traced_conv_same(feat, weight, k):
    """``F.conv2d(feat, weight, padding=k // 2)`` as unfold + matmul, for traced graphs: the ONNX exporter
    cannot export a convolution whose weight has a run-time shape. Channel order of ``unfold``:
    ``c * k * k + u * k + v``, the row-major flattening of a (C, k, k) kernel."""
    B, C, h, w = feat.shape
    cols = F.unfold(feat, k, padding=k // 2)                        # (B, C k k, h w)
    out = torch.matmul(weight.reshape(weight.shape[0], -1), cols)   # (B, out, h w)
    return out.reshape(B, -1, h, w)


def traced_pixel_shuffle(y, r):
    """``F.pixel_shuffle(y, r)`` for a run-time ``r`` (a 0-d tensor; ONNX DepthToSpace needs a constant block
    size)."""
    B, C, h, w = y.shape
    c = C // (r * r)
    return y.reshape(B, c, r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, c, h * r, w * r)


def _grouped_linear(x, weight, bias, groups):
    """A grouped 1x1 conv (weight (O, I/groups, 1, 1)) applied to the last axis of x (..., I)."""
    w = weight.flatten(1)
    if groups == 1:
        return F.linear(x, w, bias)
    lead = x.shape[:-1]
    xg = x.reshape(-1, groups, x.shape[-1] // groups)
    wg = w.view(groups, w.shape[0] // groups, w.shape[1])
    y = torch.einsum('ngi,goi->ngo', xg, wg).reshape(*lead, w.shape[0])
    return y if bias is None else y + bias


@register('igconv')
class IGConv(ImplicitKernelGenerator):
    """IGConv upsampler: feature map (B, C, h, w) and integer r -> (B, 3, r*h, r*w).

    ``forward = PixelShuffle_r(conv2d(feat, kernel(r), padding=k // 2))`` (no bias). Constructor
    arguments use the official names. Parameters (C = 64, defaults): 559,107.
    """

    def __init__(self, dim, kernel_size=3, implicit_dim=256, latent_layers=4, geo_ensemble=False, max_s=4):
        super().__init__(dim, kernel_size, implicit_dim, latent_layers, out_per_pos=3, groups=1, last_bias=True,
                         geo_ensemble=geo_ensemble, max_s=max_s)

    def forward(self, feat, scale, add_val=None):
        """feat (B, C, h, w) -> (B, 3, r*h, r*w); ``add_val`` (B, 3r^2, h, w) is added before the shuffle."""
        r = check_integer_scale(scale)
        y = F.conv2d(feat, self.kernel(r), padding=self.kernel_size // 2)
        if add_val is not None:
            y = y + add_val
        return F.pixel_shuffle(y, r)

    def traced_forward(self, feat, r):
        """``forward(feat, r)`` in traceable form for a 0-d int64 tensor ``r`` (``traced_kernel``)."""
        return traced_pixel_shuffle(traced_conv_same(feat, self.traced_kernel(r), self.kernel_size), r)

    @torch.no_grad()
    def instantiate(self, scale):
        """A plain SPConv for one scale: bias-free ``Conv2d(C, 3r^2, k)`` + ``PixelShuffle(r)``.

        The result is a new module (this one is left untouched) holding only the generated weight
        (``3 r^2 C k^2`` numbers, FGRep already folded in); its output equals ``self(feat, r)``.
        """
        r = check_integer_scale(scale)
        weight = self._final_kernel(r)
        return InstantiatedIGConv(weight, r)


def fixed_conv(weight):
    """A bias-free 'same' Conv2d holding a generated kernel (out, in, k, k) as its weight."""
    out_ch, dim, k, _ = weight.shape
    conv = nn.Conv2d(dim, out_ch, k, padding=k // 2, bias=False, device=weight.device, dtype=weight.dtype)
    conv.weight = nn.Parameter(weight.detach().clone())
    return conv


class InstantiatedIGConv(nn.Module):
    """IGConv folded at one scale: ``shuffle(conv(feat))``; ``forward(feat, scale=None)`` checks the scale."""

    def __init__(self, weight, scale):
        super().__init__()
        self.scale = int(scale)
        self.conv = fixed_conv(weight)
        self.shuffle = nn.PixelShuffle(self.scale)

    def forward(self, feat, scale=None, add_val=None):
        if scale is not None and check_integer_scale(scale) != self.scale:
            raise ValueError(f'this IGConv was instantiated for x{self.scale}, got x{scale}')
        y = self.conv(feat)
        if add_val is not None:
            y = y + add_val
        return self.shuffle(y)
