"""Kernels for the LM render MLP's narrow products, and the per-device choice between them.

Every kernel computes ``x @ wt`` for ``x`` (N, k) contiguous rows and ``wt`` (k, n) (the transposed layer
weight, contiguous), in ``x``'s dtype, and returns an (N, n) row-major tensor: ``out`` itself when the kernel
writes into it, else a new tensor. They differ only in the library and the summation order (results agree to
float rounding, ~1e-7 relative in float32; ``tests/test_render_kernels.py``):

* ``mm``: ``torch.mm(x, wt, out=out)`` (MKL on CPU, cuBLAS on CUDA), no allocation;
* ``linear``: ``torch.nn.functional.linear`` (MKL / oneDNN / cuBLAS as torch dispatches it);
* ``onednn``: oneDNN's inner product on dense tensors (``torch.ops.mkldnn._linear_pointwise``; CPU only);
* ``conv1x1``: a 1x1 convolution over the rows viewed as a channels-last (1, k, N, 1) map (oneDNN on CPU,
  cuDNN on CUDA).

``choose(device_type, dtype, width)`` times every kernel that runs on the device once per process (best of a
few calls on a (16384, width) x (width, width) product, about 50 ms in all) and returns the fastest; a kernel
that fails on the device (e.g. oneDNN's bf16 path on a CPU without AVX-512) is not a candidate. The choice is
made by measurement because it differs between machines: on a 2-core AMD EPYC (Zen 3, AVX2, MKL 2024.2,
oneDNN 3.12, one thread, loaded machine) the best-of-5 rates at (61440, 16) x (16, 16) were ``onednn`` 32.6,
``mm`` 31.0, ``linear`` 30.7, ``conv1x1`` 30.6 GMAC/s, within a few percent of each other, while a 2048^3
``torch.mm`` ran at 14 GMAC/s. ``set_render_mode(kernel=...)`` picks one for the unfused grid path ('auto', the
default, takes 'mm' wherever the fused C kernel, ``fused_render``, does not apply).
"""
import functools
import time

import torch
import torch.nn.functional as F


def _mm(x, wt, out):
    return torch.mm(x, wt, out=out)


def _linear(x, wt, out):
    return F.linear(x, wt.t())


def _onednn(x, wt, out):
    return torch.ops.mkldnn._linear_pointwise(x, wt.t(), None, 'none', [], '')


def _conv1x1(x, wt, out):
    N, k = x.shape
    n = wt.shape[1]
    y = F.conv2d(x.view(1, N, 1, k).permute(0, 3, 1, 2), wt.t().reshape(n, k, 1, 1))
    # channels-last input gives a channels-last output: (1, n, N, 1) whose memory is (N, n) row-major
    return y.permute(0, 2, 3, 1).reshape(N, n)


#: name -> kernel(x (N, k), wt (k, n), out (N, n)) -> (N, n)
KERNELS = {'mm': _mm, 'linear': _linear, 'onednn': _onednn, 'conv1x1': _conv1x1}
#: kernels tried per device type (the others do not exist there)
CANDIDATES = {'cpu': ('mm', 'linear', 'onednn', 'conv1x1'), 'cuda': ('mm', 'linear', 'conv1x1')}


def check(name):
    """``name`` if it is a kernel name, else a ValueError naming the known ones."""
    if name not in KERNELS:
        raise ValueError(f"render kernel must be one of {', '.join(KERNELS)} or 'auto', got {name!r}")
    return name


def runs_on(name, device_type, dtype, width=16):
    """Whether kernel ``name`` runs on ``device_type`` in ``dtype`` and gives the reference product."""
    if name not in CANDIDATES.get(device_type, ('mm',)):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(33, width, generator=g).to(device_type, dtype)
        wt = torch.randn(width, width, generator=g).to(device_type, dtype)
        ref = torch.mm(x.float(), wt.float())
        y = KERNELS[name](x, wt, torch.empty(33, width, device=device_type, dtype=dtype))
        tol = 1e-4 if dtype == torch.float32 else 0.25
        return tuple(y.shape) == (33, width) and y.is_contiguous() and (y.float() - ref).abs().max().item() <= tol
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


@functools.lru_cache(maxsize=None)
def choose(device_type, dtype, width, rows=16384, repeats=5):
    """The fastest kernel for (rows, width) x (width, width) products on this device, measured once per process
    (see the module docstring); 'mm' on device types without a measured choice."""
    names = [n for n in CANDIDATES.get(device_type, ()) if runs_on(n, device_type, dtype, width)]
    if len(names) <= 1:
        return names[0] if names else 'mm'
    x = torch.randn(rows, width).to(device_type, dtype)
    wt = torch.randn(width, width).to(device_type, dtype)
    out = torch.empty(rows, width, device=device_type, dtype=dtype)
    sync = torch.cuda.synchronize if device_type == 'cuda' else (lambda: None)
    best = {}
    with torch.no_grad():
        for _ in range(2):              # interleaved rounds: a busy machine slows every candidate alike
            for n in names:
                fn = KERNELS[n]
                fn(x, wt, out)
                for _ in range(repeats):
                    sync()
                    t = time.perf_counter()
                    fn(x, wt, out)
                    sync()
                    best[n] = min(best.get(n, float('inf')), time.perf_counter() - t)
    return min(names, key=best.get)
