"""The fused LM render kernel (``fused_render.c``): built with the machine's C compiler, called through ctypes.

``render_band`` in ``lmliif.py`` runs the render MLP of a query band as a few dense products with modulation and
ReLU as separate in-place passes over memory; the C kernel instead keeps each query's activations in registers
through layer 0, every modulated hidden layer, the output layer and the local-ensemble blend, and writes the
blended RGB straight into the output image. Its conventions are in the C file's header comment.

Building: the first use in a process compiles ``fused_render.c`` with ``$CC`` (default ``cc``) and ``FLAGS``
(``-O3 -march=native -ffp-contract=fast -fopenmp``: the products as FMAs) into the kernel cache, ``$ASSR_KERNEL_CACHE`` or ``$XDG_CACHE_HOME/assr/kernels`` (default
``~/.cache/assr/kernels``), under a name keyed by the source, the compiler's version, the flags and the CPU's
feature flags (a cache shared by different machines never loads a library built for another CPU). The file is
written atomically; a failed build leaves nothing behind and ``status()`` says why in one line.

Threads: ``torch.get_num_threads()`` OpenMP threads. The library is linked with ``-fopenmp`` and loaded into a
process where PyTorch has already loaded its libgomp, which it then shares (same soname): the kernel runs on
PyTorch's own thread team. (Measured on this project's 2-core machine, a pool of Python threads calling the kernel
instead ran about 1.7x slower inside the engine: PyTorch's OpenMP workers keep spinning for milliseconds after
each operator and took the second core.)

Only float32 on the CPU, render width 16, K in {1, 4} neighbours and at most 4 output channels (``supports``;
LM-LTE also needs ``mod_input``): ``set_render_mode(kernel='fused')`` refuses, with the reason, a model, precision
or machine it does not apply to; kernel 'auto' (what sessions use) takes it exactly where it applies.
"""
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name('fused_render.c')
FLAGS = ('-O3', '-march=native', '-ffp-contract=fast', '-fopenmp', '-std=c11', '-fPIC', '-shared')
#: the render width the kernel is written for
WIDTH = 16


def cache_dir():
    """Where built kernels live (see the module docstring)."""
    if os.environ.get('ASSR_KERNEL_CACHE'):
        return Path(os.environ['ASSR_KERNEL_CACHE'])
    root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(root) / 'assr' / 'kernels'


def _cpu_flags():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler():
    return os.environ.get('CC') or 'cc'


def _library_path(cc):
    try:
        version = subprocess.run([cc, '--version'], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f'no C compiler ({cc!r}: {e.strerror or e})') from None
    if version.returncode != 0:
        raise RuntimeError(f'the C compiler {cc!r} does not run ({version.stderr.strip()[:120]})')
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.stdout.encode(), ' '.join(FLAGS).encode(), _cpu_flags().encode(),
                 platform.machine().encode()):
        key.update(part)
        key.update(b'\0')
    return cache_dir() / f'fused_render-{key.hexdigest()[:16]}.so'


def _build(cc, path):
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix='.build-', suffix='.so', dir=path.parent)
    os.close(fd)
    try:
        run = subprocess.run([cc, *FLAGS, str(SOURCE), '-o', tmp, '-lm'], capture_output=True, text=True,
                             timeout=300)
        if run.returncode != 0:
            first = next((ln for ln in run.stderr.splitlines() if 'error' in ln), run.stderr.strip()[:200])
            raise RuntimeError(f'{cc} failed to build {SOURCE.name}: {first.strip()[:200]}')
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_P = ctypes.c_void_p


@functools.lru_cache(maxsize=None)
def _load():
    """(the library's ``render_units``, None) or (None, reason); built once per process at most."""
    cc = _compiler()
    try:
        path = _library_path(cc)
        if not path.exists():
            _build(cc, path)
        lib = ctypes.CDLL(str(path))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return None, str(e)
    fn = lib.render_units
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int] * 7 + [_P] * 19 + [ctypes.c_int64, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                                        ctypes.c_int64, ctypes.c_int64]
    return fn, None


def status():
    """(available, reason): whether the kernel builds and loads on this machine, and if not, why."""
    fn, why = _load()
    return fn is not None, why


def supports(width, out_dim):
    """Whether a render MLP of hidden width ``width`` with ``out_dim`` outputs fits the kernel."""
    return width == WIDTH and 1 <= out_dim <= 4


def _ptr(t):
    return None if t is None else t.data_ptr()


def render(out_plane, plane, rows, pix, ry, rx, depth, scale, shift, wt, wout, bout, *, l0tab=None, wx=None,
           wy=None, cterm=None, basis=None, cphase=None, w0t=None, b0=None, s0=None, t0=None):
    """Blended predictions of a band written into ``out_plane`` (a contiguous (c, n, m) float32 image; see
    the C header for every argument's layout). Mode 0 (linear layer 0) when ``l0tab`` is given, else mode 1
    (LM-LTE). Every tensor must be contiguous float32 (int64 for ``pix``, ``rows``) and stay alive during the call."""
    fn, why = _load()
    if fn is None:
        raise RuntimeError(f'the fused render kernel is not available: {why}')
    K, G, m = pix.shape
    r = ry.shape[2]
    cout = bout.shape[0]
    mode = 0 if l0tab is not None else 1
    tables = [l0tab if mode == 0 else basis, s0, t0, *scale, *shift]
    P = tables[0].shape[0]
    _check(pix, rows, ry, rx, wt, wout, bout, out_plane, plane, depth, scale, shift, tables, P, mode,
           dict(wx=wx, wy=wy, cterm=cterm, cphase=cphase, w0t=w0t, b0=b0))
    ptrs = (_P * depth)(*[_ptr(t) for t in scale]), (_P * depth)(*[_ptr(t) for t in shift])
    units = G * m
    args = (mode, K, G, r, m, depth, cout, _ptr(pix), _ptr(ry), _ptr(rx), _ptr(l0tab), _ptr(wx), _ptr(wy),
            _ptr(cterm), _ptr(basis), _ptr(cphase), _ptr(w0t), _ptr(b0), _ptr(s0), _ptr(t0),
            ctypes.cast(ptrs[0], _P), ctypes.cast(ptrs[1], _P), _ptr(wt), _ptr(wout), _ptr(bout), _ptr(out_plane),
            plane, _ptr(rows))
    threads = max(1, min(torch.get_num_threads(), units // 64 or 1))
    code = fn(*args, 0, units, threads, P, out_plane.shape[1])
    if code == -2:
        raise ValueError('fused render: a pixel index or output row outside its table (nothing was read there)')
    if code:
        raise ValueError(f'fused render: a band the kernel does not handle (K={K}, outputs={cout}, depth={depth})')


def _check(pix, rows, ry, rx, wt, wout, bout, out_plane, plane, depth, scale, shift, tables, P, mode, vectors):
    """Every shape, dtype, device and layout the C kernel relies on (it reads raw pointers); one ValueError."""
    K, G, m = pix.shape
    r = ry.shape[-1]
    widths = {0: WIDTH, 1: 2 * WIDTH}
    expect = [(pix, torch.int64, (K, G, m)), (rows, torch.int64, (G * r,)), (ry, torch.float32, (K, G, r)),
              (rx, torch.float32, (K, m)), (wt, torch.float32, (max(depth - 1, 0), WIDTH, WIDTH) if depth > 1 else None),
              (wout, torch.float32, (4, WIDTH)), (bout, torch.float32, (bout.shape[0],)),
              (out_plane, torch.float32, (out_plane.shape[0], out_plane.shape[1], m))]
    expect += [(t, torch.float32, (P, widths[mode] if i == 0 else WIDTH)) for i, t in enumerate(tables) if t is not None]
    sizes = dict(wx=WIDTH, wy=WIDTH, cterm=WIDTH, cphase=WIDTH // 2, w0t=(WIDTH, WIDTH), b0=WIDTH)
    expect += [(t, torch.float32, sizes[k] if isinstance(sizes[k], tuple) else (sizes[k],))
               for k, t in vectors.items() if t is not None]
    for t, dtype, shape in expect:
        if not (t.device.type == 'cpu' and t.dtype == dtype and t.is_contiguous()
                and (shape is None or tuple(t.shape) == tuple(shape))):
            raise ValueError(f'fused render: an argument of shape {tuple(t.shape)} / {t.dtype} is not the contiguous '
                             f'CPU {dtype} {shape} the kernel reads')
    if not (K in (1, 4) and len(scale) == len(shift) == depth >= 1 and 1 <= bout.shape[0] <= 4
            and out_plane.shape[0] >= bout.shape[0] and plane == out_plane.shape[1] * m):
        raise ValueError(f'fused render: a band the kernel does not handle (K={K}, outputs={bout.shape[0]}, '
                         f'depth={depth})')
    if mode == 0 and (vectors['wx'] is None or vectors['wy'] is None):
        raise ValueError('fused render: mode 0 needs wx and wy')
    if mode == 1 and (tables[0] is None or vectors['w0t'] is None or vectors['b0'] is None):
        raise ValueError('fused render: mode 1 needs basis, w0t and b0')
