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
    """Measured dense matrix-product throughput in GMAC/s (n x n x n), the machine's practical limit."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(lambda: a @ b, device, repeats=repeats, warmup=2)
    return n ** 3 / seconds / 1e9
