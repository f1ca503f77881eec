"""LTE-fast (``lte-fast``, "LTEP"/"LTE+"): LTE evaluated as 1x1 convolutions over a whole target grid
(the published ``lte-fast``).

Conventions: inputs/outputs normalised ``(x - 0.5) / 0.5``; ``coord`` is a grid (B, H, W, 2) of target
pixel centres ordered (row, col) in (-1, 1) (``make_coord((H, W), flatten=False)``); ``cell`` is one
cell per image (B, 2) = (2/H, 2/W) (times the test-time clip factor). Output (B, 3, H, W).

Per target pixel and local-ensemble neighbour (LIIF local ensemble, shift ``v / h + 1e-6``, clamp, nearest LR pixel p):
``g_j = F_j(p) rel_y + F_{K/2+j}(p) rel_x + phase(rel_cell)_j`` (first half of the frequency channels
pairs with rows, second half with columns: unlike ``lte``'s interleaved pairs), input
``A(p) * [cos(pi g), sin(pi g)]``, then ``layers`` (1x1 convs); area-weighted blend, plus the bilinear
(border) LR skip.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.coords import make_coord

from .. import registry
from ..capabilities import Capabilities, SRModel, encoder_traits
from ..complexity import conv_macs_per_pixel
from ..registry import register
from .implicit import CLAMP, ENSEMBLE_OFFSETS, EPS_SHIFT, LRGrid, flat_index, gather, pixel_table


@register('lte-fast')
class LTEFast(SRModel):
    """Arguments (published): ``encoder_spec``, ``num_layer`` (1x1 conv + ReLU layers, 3),
    ``hidden_dim`` (coef/freq channels, 256), ``out_dim`` (3). Keys: ``encoder.*``, ``coef``, ``freq``,
    ``phase`` (Linear 2 -> hidden_dim/2, no bias), ``layers.{0,2,...,2 num_layer}``."""

    #: Largest training scale (``models.load_model`` sets it from the checkpoint): the engine's plan clips the
    #: cells it passes to ``upscale_grid`` with it; the model itself never clips.
    max_train_scale = 4
    #: target pixels per band in ``upscale_grid`` (memory stays bounded; results do not depend on it)
    band_pixels = 1 << 16

    def __init__(self, encoder_spec, num_layer=3, hidden_dim=256, out_dim=3, cmsr_spec=None):
        super().__init__()
        # cmsr_spec: injected into every model by the published scripts (docs/deviations.md, B2); no effect here.
        if hidden_dim % 2:
            raise ValueError(f'lte-fast: hidden_dim must be even, got {hidden_dim}')
        self.encoder = registry.make(encoder_spec)
        c = self.encoder.out_dim
        self.coef = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        layers = []
        for _ in range(num_layer):
            layers += [nn.Conv2d(hidden_dim, hidden_dim, 1), nn.ReLU()]
        layers.append(nn.Conv2d(hidden_dim, out_dim, 1))
        self.layers = nn.Sequential(*layers)

    @property
    def capabilities(self):
        window, radius = encoder_traits(self.encoder)
        return Capabilities(kind='grid', window=window, receptive_radius=radius, decoder_reach=3,
                            max_train_scale=self.max_train_scale, name='lte-fast')

    def decoder_macs(self):
        """(MACs per LR pixel, MACs per HR pixel): coef/freq convs; 4 x the 1x1 conv stack (the phase of
        the one cell per image is computed once per image: not counted)."""
        per_lr = conv_macs_per_pixel(self.coef) + conv_macs_per_pixel(self.freq)
        per_hr = 4 * sum(conv_macs_per_pixel(m) for m in self.layers if isinstance(m, nn.Conv2d))
        return per_lr, per_hr

    # -- published interface ----------------------------------------------------------------------
    def forward(self, inp, coord=None, cell=None):
        """inp (B, 3, h, w); coord (B, H, W, 2); cell (B, 2) -> (B, 3, H, W). Without coord and cell:
        the encoder features."""
        if coord is None and cell is None:
            return self.encoder(inp)
        _check(inp, coord, cell)
        return self.decode_grid(self.prepare(inp), coord, cell)

    def prepare(self, inp):
        feat = self.encoder(inp)
        return {'inp': inp, 'coef': pixel_table(self.coef(feat)), 'freq': pixel_table(self.freq(feat)),
                'grid': LRGrid(feat.shape[-2:], feat)}

    def decode_grid(self, state, coord, cell):
        """The whole grid ``coord`` (B, H, W, 2) with cell (B, 2) -> (B, 3, H, W)."""
        B, H, W, _ = coord.shape
        grid = state['grid']
        h, w = grid.size
        q = coord.reshape(B, H * W, 2)
        rel_cell = grid.relative_cell(cell)                                   # (B, 2)
        phase = self.phase(rel_cell).view(B, 1, -1)                           # (B, 1, K/2)
        preds, areas = [], []
        for vy, vx in ENSEMBLE_OFFSETS:
            shifted = (q + q.new_tensor([vy / h + EPS_SHIFT, vx / w + EPS_SHIFT])).clamp_(-CLAMP, CLAMP)
            idx, centre = grid.pixels(shifted)
            rel = (q - centre) * grid.scale                                   # (B, HW, 2)
            fidx = flat_index(idx, h * w)
            amp = gather(state['coef'], fidx).view(B, H * W, -1)
            freq = gather(state['freq'], fidx).view(B, H * W, -1)
            n = freq.shape[-1] // 2
            g = freq[..., :n] * rel[..., :1] + freq[..., n:] * rel[..., 1:] + phase
            g = g * math.pi
            x = amp * torch.cat([torch.cos(g), torch.sin(g)], dim=-1)
            x = x.view(B, H, W, -1).permute(0, 3, 1, 2)
            preds.append(self.layers(x))
            areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
        tot = torch.stack(areas).sum(0)
        out = 0
        for pred, area in zip(preds, areas[::-1]):
            out = out + pred * (area / tot).view(B, 1, H, W)
        skip = F.grid_sample(state['inp'], coord.flip(-1), mode='bilinear', padding_mode='border',
                             align_corners=False)
        return out + skip

    # -- engine entry (grid protocol) ---------------------------------------------------------------
    def upscale_grid(self, inp, size, cell):
        """Render the whole (H, W) target grid of ``inp`` (B, 3, h, w) -> (B, 3, H, W), in row bands.

        ``cell`` (cy, cx): the cell of every target pixel in the units of ``inp``'s frame, as the engine's
        plan computes it (``QueryPlan.cell``: (2/H, 2/W), clipped per axis by ``max(scale / max_train_scale,
        1)`` unless cell clipping is off); the model never decides the clipping."""
        H, W = (int(s) for s in size)
        if H < 1 or W < 1:
            raise ValueError(f'lte-fast: target size must be positive, got {size}')
        _check(inp)
        B = inp.shape[0]
        cell = inp.new_tensor([float(c) for c in cell]).expand(B, 2)
        coord = make_coord((H, W), flatten=False, device=inp.device).to(inp.dtype)
        state = self.prepare(inp)
        rows = max(1, self.band_pixels // W)
        out = [self.decode_grid(state, coord[r:r + rows].unsqueeze(0).expand(B, -1, -1, -1), cell)
               for r in range(0, H, rows)]
        return torch.cat(out, dim=2)


def _check(inp, coord=None, cell=None):
    if not torch.is_tensor(inp) or inp.dim() != 4 or inp.shape[1] != 3:
        raise ValueError(f'lte-fast: inp must be a (B, 3, h, w) tensor, got '
                         f'{tuple(inp.shape) if torch.is_tensor(inp) else type(inp).__name__}')
    if coord is None:
        return
    B = inp.shape[0]
    if not torch.is_tensor(coord) or coord.dim() != 4 or coord.shape[0] != B or coord.shape[-1] != 2:
        raise ValueError(f'lte-fast: coord must be a (B, H, W, 2) grid with B={B}, got '
                         f'{tuple(coord.shape) if torch.is_tensor(coord) else type(coord).__name__}')
    if not torch.is_tensor(cell) or tuple(cell.shape) != (B, 2):
        raise ValueError(f'lte-fast: cell must be one (2,) cell per image, shape ({B}, 2), got '
                         f'{tuple(cell.shape) if torch.is_tensor(cell) else type(cell).__name__}')
