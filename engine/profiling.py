"""Measuring models: counted MACs, latency and peak memory (used by scripts/benchmark.py).

* MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) on the ``meta`` device,
  so counting a x30 decode of a large input takes no time; only matrix products and convolutions
  count (the convention of the LMF paper).
* Latency: median wall time of ``repeats`` runs after ``warmup`` runs; on CUDA each run is bracketed by
  CUDA events (synchronised), on CPU by ``time.perf_counter``.
* Peak memory: CUDA ``max_memory_allocated`` above the memory already allocated before the run; on Linux
  CPUs the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set
  before the run, after returning freed heap memory to the OS (``malloc_trim``), so that reused memory
  counts. Elsewhere it is reported as unknown.
* Reference rates (``reference_rates``): the machine's best measured float32 rate in the same process, the
  maximum over a large GEMM, a oneDNN (cuDNN on CUDA) 3x3 convolution and the LM render / latent MLP
  linear layers on their fastest kernel; plus the bfloat16 rate where the device has native bf16.
"""

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_macs(fn):
    """MACs of the matrix products / convolutions ``fn()`` performs (run it on meta tensors)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def time_fn(fn, device='cpu', repeats=3, warmup=1):
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    dev = torch.device(device)
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if dev.type == 'cuda':
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def _proc_status(field):
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _trim_heap():
    """Return freed heap memory to the OS (glibc), so that the next peak shows as resident growth."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn, device='cpu'):
    """Peak bytes ``fn()`` adds on top of what is allocated before it (None where unmeasurable)."""
    dev = torch.device(device)
    with torch.no_grad():
        if dev.type == 'cuda':
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        _trim_heap()
        base = _proc_status('VmRSS')
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
        except OSError:
            return None
        fn()
        peak = _proc_status('VmHWM')
        return None if base is None or peak is None else max(peak - base, 0)


def matmul_rate(device='cpu', n=2048, dtype=torch.float32, repeats=5):
    """Measured dense matrix-product throughput in GMAC/s (n x n x n)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(lambda: a @ b, device, repeats=repeats, warmup=2)
    return n ** 3 / seconds / 1e9


def conv_rate(device='cpu', channels=64, size=96, dtype=torch.float32, repeats=5):
    """Measured 3x3 convolution throughput in GMAC/s: ``channels`` -> ``channels`` on a ``size`` x ``size`` map
    (an EDSR-baseline body layer), channels-last, so that the CPU runs it through oneDNN (cuDNN on CUDA)."""
    cl = torch.channels_last
    x = torch.randn(1, channels, size, size, device=device, dtype=dtype).contiguous(memory_format=cl)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype).contiguous(memory_format=cl)
    seconds = time_fn(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, repeats=repeats, warmup=2)
    return channels * channels * 9 * size * size / seconds / 1e9


def linear_rate(rows, in_features, out_features, device='cpu', dtype=torch.float32, repeats=5, kernel=None):
    """Measured (rows, in) x (in, out) linear-layer throughput in GMAC/s. ``kernel``: a render-product kernel
    name (``models.decoders.render_kernels``; default: ``torch.nn.functional.linear``, MKL / oneDNN)."""
    from models.decoders import render_kernels
    x = torch.randn(rows, in_features, device=device, dtype=dtype)
    w = torch.randn(out_features, in_features, device=device, dtype=dtype)
    if kernel is None:
        fn = lambda: torch.nn.functional.linear(x, w)  # noqa: E731
    else:
        product = render_kernels.KERNELS[kernel]
        wt, out = w.t().contiguous(), torch.empty(rows, out_features, device=device, dtype=dtype)
        fn = lambda: product(x, wt, out)  # noqa: E731
    seconds = time_fn(fn, device, repeats=repeats, warmup=2)
    return rows * in_features * out_features / seconds / 1e9


def native_bf16(device='cpu'):
    """(True/False, reason): whether ``device`` computes bfloat16 products natively. CUDA: compute capability
    8.0 or newer (``torch.cuda.is_bf16_supported``); CPU: oneDNN's run-time check (AVX-512 BF16 or AMX), with
    the CPU's flags from /proc/cpuinfo named in the reason."""
    dev = torch.device(device)
    if dev.type == 'cuda':
        ok = torch.cuda.is_bf16_supported()
        return ok, ('native (CUDA)' if ok else 'not native (GPU older than compute capability 8.0)')
    if dev.type != 'cpu':
        return False, f'not native (unknown for {dev.type})'
    try:
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        ok = False
    flags = set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    flags = set(line.split(':', 1)[1].split())
                    break
    except OSError:
        pass
    found = sorted(f for f in flags if f in ('avx512_bf16', 'amx_bf16', 'avx512f', 'avx2'))
    cap = torch.backends.cpu.get_cpu_capability()
    what = f"CPU capability {cap}{', flags ' + ' '.join(found) if found else ''}"
    return ok, (f'native ({what})' if ok else f'not native: emulated ({what})')


#: The reference measurements: name -> (description, function(device, dtype, repeats) -> GMAC/s)
REFERENCES = {
    'gemm': ('2048^3 matrix product (torch.mm: MKL / cuBLAS)',
             lambda device, dtype, repeats: matmul_rate(device, 2048, dtype, repeats)),
    'conv3x3': ('3x3 convolution 64->64 on 96x96, channels-last (oneDNN / cuDNN)',
                lambda device, dtype, repeats: conv_rate(device, 64, 96, dtype, repeats)),
    'render16': ('render-MLP layer (65536, 16) x (16, 16) on the chosen render kernel',
                 lambda device, dtype, repeats: linear_rate(65536, 16, 16, device, dtype, repeats,
                                                            kernel=_render_kernel(device, dtype))),
    'latent208': ('latent-MLP layer (14400, 208) x (208, 208) (torch.nn.functional.linear)',
                  lambda device, dtype, repeats: linear_rate(14400, 208, 208, device, dtype, repeats)),
    'latent288': ('latent-MLP layer (14400, 128) x (128, 288) (LM-LTE, torch.nn.functional.linear)',
                  lambda device, dtype, repeats: linear_rate(14400, 128, 288, device, dtype, repeats)),
}


def _render_kernel(device, dtype):
    from models.decoders import render_kernels
    return render_kernels.choose(torch.device(device).type, dtype, 16)


class ReferenceRates:
    """Measured reference rates of one run: ``float32`` {name: GMAC/s}, ``best`` (name, GMAC/s) the fastest
    float32 one, ``bf16`` {name: GMAC/s} (empty when not native), ``bf16_native`` and ``bf16_note``."""

    def __init__(self, float32, bf16, bf16_native, bf16_note):
        self.float32, self.bf16, self.bf16_native, self.bf16_note = float32, bf16, bf16_native, bf16_note
        name = max(float32, key=float32.get)
        self.best = (name, float32[name])

    @staticmethod
    def describe(name):
        return REFERENCES[name][0]

    def lines(self):
        """Markdown table of every reference (the table the benchmark prints)."""
        out = ['| reference | what | float32 GMAC/s | bf16 GMAC/s |', '|---|---|---|---|']
        for name, rate in self.float32.items():
            star = ' (best)' if name == self.best[0] else ''
            bf = f'{self.bf16[name]:.1f}' if name in self.bf16 else ('—' if self.bf16_native else 'not native')
            out.append(f'| {name}{star} | {self.describe(name)} | {rate:.1f} | {bf} |')
        return out


def reference_rates(device='cpu', repeats=5, names=None, bf16=True):
    """The machine's reference rates measured now (``REFERENCES``, or the subset ``names``), see
    ``ReferenceRates``; bfloat16 ones only where ``native_bf16(device)``."""
    names = list(REFERENCES) if names is None else list(names)
    unknown = [n for n in names if n not in REFERENCES]
    if unknown or not names:
        raise ValueError(f'unknown reference rate(s) {unknown}; known: {", ".join(REFERENCES)}')
    f32 = {n: REFERENCES[n][1](device, torch.float32, repeats) for n in names}
    native, note = native_bf16(device)
    b16 = {n: REFERENCES[n][1](device, torch.bfloat16, repeats) for n in names} if (bf16 and native) else {}
    return ReferenceRates(f32, b16, native, note)
