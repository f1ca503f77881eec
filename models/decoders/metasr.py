"""Meta-SR's meta-upscale module (Hu et al., CVPR 2019) in LIIF's continuous-query form."""
import torch

from .. import registry
from ..complexity import linear_macs
from ..registry import register
from .implicit import ImplicitDecoder, State, flat_index, gather, pixel_table
from .liif import unfold3x3


@register('metasr')
class MetaSR(ImplicitDecoder):
    """Per query, an MLP maps (offset to the top-left of its LR pixel, 2/scale) to a (9C x 3) weight
    matrix applied to the 3x3-unfolded feature of that pixel. The query is first moved by -cell/2."""

    eval_bsize = 30000
    traceable = True

    def __init__(self, encoder_spec, imnet_spec=None, cmsr_spec=None):
        super().__init__(encoder_spec)
        c9 = self.encoder.out_dim * 9
        if imnet_spec is None:
            imnet_spec = {'name': 'mlp', 'args': {'hidden_list': [256]}}
        self.imnet = registry.make(imnet_spec, args={'in_dim': 3, 'out_dim': c9 * 3})

    def decoder_macs(self):
        return 0, linear_macs(self.imnet.layers) + self.imnet.out_dim    # weight generation + (9C x 3) product

    def latent_state(self, inp, feat, grid, cell):
        return State(table=pixel_table(unfold3x3(feat)), grid=grid)

    def query(self, state, coord, cell):
        """The LR sizes enter through the grid's tensors (``inv`` = (1/h, 1/w), ``half`` = (h/2, w/2)), so the
        same code traces for ONNX."""
        grid = state.grid
        h, w = grid.size
        B, Q = coord.shape[:2]
        shifted = coord - cell / 2
        index, centre = grid.lookup(shifted, shift=(1e-6, 1e-6))
        top_left = torch.stack([centre[..., 0] - grid.inv[0], centre[..., 1] - grid.inv[1]], -1)
        rel = (shifted - top_left) * grid.half
        r = cell[..., :1] * grid.half[0]
        weights = self.imnet(torch.cat([rel, r], -1)).view(B * Q, -1, 3)
        feat = gather(state.table, flat_index(index, h * w)).view(B * Q, 1, -1)
        return torch.bmm(feat, weights).view(B, Q, 3)
