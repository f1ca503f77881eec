"""Small building blocks shared by the CNN encoders."""
import math

import torch
from torch import nn


def cpu_inference(module, x):
    """Whether ``module(x)`` is a CPU float32 inference call that ``channels_last_call`` may run: eval mode, no
    autograd, a 4-D CPU float32 input, not while tracing / exporting, not already inside the channels-last call."""
    return (not module.training and not torch.is_grad_enabled() and x.dim() == 4 and x.device.type == 'cpu'
            and x.dtype == torch.float32 and not module.__dict__.get('_channels_last_active', False)
            and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export())


def channels_last_call(module, x):
    """``module(x)`` with the input and every 4-D weight in channels-last (NHWC) layout, so that each
    convolution runs in oneDNN without per-layer layout reorders; the output comes back contiguous (NCHW).

    The channels-last copies of the weights are made once and kept in ``module.__dict__`` (not in the
    state dict), renewed when a parameter changes (its storage or version); the module's own parameters are
    untouched. Values equal the NCHW path to float rounding (4.6e-6 for EDSR-baseline at 320x180,
    ``tests/test_encoders_layout.py``). Measured at 320x180 on a 2-core AMD EPYC (one thread, loaded
    machine, best of 3): EDSR-baseline 13.4 s NCHW, 9.8 s channels-last input only, 6.0 s with channels-last
    weights too.
    """
    params = dict(module.named_parameters())
    key = tuple((p.data_ptr(), p._version) for p in params.values())
    cache = module.__dict__.get('_channels_last_params')
    if cache is None or cache[0] != key:
        cl = {n: (p.detach().contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p.detach())
              for n, p in params.items()}
        cache = module.__dict__['_channels_last_params'] = (key, cl)
    module.__dict__['_channels_last_active'] = True
    try:
        out = torch.func.functional_call(module, cache[1], (x.contiguous(memory_format=torch.channels_last),))
    finally:
        module.__dict__['_channels_last_active'] = False
    return out.contiguous()


def conv3x3(in_ch, out_ch, kernel_size=3, bias=True):
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding ``sign * rgb_range * mean`` (kept for state-dict compatibility).

    The LIIF family never calls it in ``forward``; the keys ``sub_mean.*`` / ``add_mean.*`` must still
    exist so that official checkpoints load strictly.
    """

    def __init__(self, rgb_range=1, rgb_mean=(0.4488, 0.4371, 0.4040), rgb_std=(1.0, 1.0, 1.0), sign=-1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean) / std)
        for p in self.parameters():
            p.requires_grad = False


class SubPixelUpsampler(nn.Sequential):
    """Conv + PixelShuffle stages: one x3 stage, or log2(scale) x2 stages for powers of two."""

    def __init__(self, scale, n_feats, out_feats=None):
        out_feats = n_feats if out_feats is None else out_feats
        layers = []
        if scale == 3:
            layers += [conv3x3(n_feats, 9 * out_feats), nn.PixelShuffle(3)]
        elif scale >= 2 and (scale & (scale - 1)) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv3x3(n_feats, 4 * out_feats), nn.PixelShuffle(2)]
        else:
            raise ValueError(f'sub-pixel upsampler supports scale 3 or a power of two, got {scale!r}')
        super().__init__(*layers)
