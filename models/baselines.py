"""Non-learned baselines, registered like models so that test.py and demo.py report them the same way."""
import torch

from utils.imresize import imresize

from .capabilities import Capabilities, SRModel
from .registry import register


@register('bicubic')
class Bicubic(SRModel):
    """MATLAB-style bicubic interpolation (``imresize(lr, [H W], 'bicubic')``) to any output size.

    Works on normalised images ((x - 0.5) / 0.5) like every model. With ``quantize`` (default) the LR
    is taken as 8-bit and each 1-D pass is rounded to 8 bits, as MATLAB does on uint8 images, which
    reproduces the classic bicubic benchmark numbers.
    """

    def __init__(self, quantize=True):
        super().__init__()
        self.quantize = quantize

    @property
    def capabilities(self):
        # no cells, so no cell clipping; imresize is exact per output pixel, so tiling is never needed
        return Capabilities(kind='image', max_train_scale=float('inf'), name='bicubic')

    def upscale_to(self, inp, size):
        """inp (B, 3, h, w) normalised -> (B, 3, H, W) normalised."""
        x = inp.detach().cpu() * 0.5 + 0.5      # imresize works in float64, which MPS lacks
        if self.quantize:
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            x = imresize(x, size=size).to(inp.dtype) / 255
        else:
            x = imresize(x, size=size)
        return ((x - 0.5) / 0.5).to(inp.device)

    def forward(self, inp, size):
        return self.upscale_to(inp, size)
