"""LIIF: Local Implicit Image Function (Chen et al., CVPR 2021)."""
import torch
import torch.nn.functional as F

from .. import registry
from ..complexity import linear_macs
from ..registry import register
from .implicit import ImplicitDecoder, State, blend, flat_index, gather, pixel_table


def unfold3x3(feat):
    """(B, C, h, w) -> (B, 9C, h, w); channel ``c*9 + ky*3 + kx``, zero padding (LIIF's feat_unfold)."""
    B, C, h, w = feat.shape
    return F.unfold(feat, 3, padding=1).view(B, C * 9, h, w)


@register('liif')
class LIIF(ImplicitDecoder):
    """RGB(query) = imnet([feat(p), (query - centre(p)) * (h, w), cell * (h, w)]), 4-neighbour blend.

    Without ``imnet_spec`` (the fixed-scale baselines whose encoder upsamples) the query returns the
    nearest encoder output pixel.
    """

    eval_bsize = 30000
    traceable = True

    def __init__(self, encoder_spec, imnet_spec=None, local_ensemble=True, feat_unfold=True, cell_decode=True,
                 cmsr_spec=None):
        super().__init__(encoder_spec)
        self.local_ensemble, self.feat_unfold, self.cell_decode = local_ensemble, feat_unfold, cell_decode
        # cmsr_spec: injected into every model by the published scripts (docs/deviations.md, B2); no effect here.
        if imnet_spec is not None:
            in_dim = self.encoder.out_dim * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
            self.imnet = registry.make(imnet_spec, args={'in_dim': in_dim})
        else:
            self.imnet = None

    def decoder_macs(self):
        if self.imnet is None:
            return 0, 0
        return 0, (4 if self.local_ensemble else 1) * linear_macs(self.imnet.layers)

    def latent_state(self, inp, feat, grid, cell):
        if self.imnet is not None and self.feat_unfold:
            feat = unfold3x3(feat)
        return State(table=pixel_table(feat), grid=grid)

    def query(self, state, coord, cell):
        grid = state.grid
        h, w = grid.size
        if self.imnet is None:
            index, _ = grid.lookup(coord)
            return gather(state.table, flat_index(index, h * w)).view(*coord.shape[:2], -1)
        nb = grid.neighbours(coord, self.local_ensemble)
        K, B, Q = nb.index.shape
        parts = [gather(state.table, flat_index(nb.index, h * w)).view(K, B, Q, -1), nb.rel_coord]
        if self.cell_decode:
            parts.append(grid.relative_cell(cell).unsqueeze(0).expand(K, B, Q, 2))
        preds = self.imnet(torch.cat(parts, dim=-1))
        return blend(preds, nb.weight)
