"""One-call Python API: ``upscale(image, scale=None, size=None, model=None)``.

    >>> from api import upscale
    >>> big = upscale('photo.png', scale=3.5)                  # writes photo_x3.5.png, returns its path
    >>> upscale('photo.png', size=(1920, 1080), output='hd.png')        # (WIDTH, HEIGHT), or '1920x1080'
    >>> upscale('photo.png', size='1920x1080', keep_aspect=True)       # fit inside, keep the aspect ratio
    >>> pil_out = upscale(Image.open('photo.png'), scale=2)     # PIL in, PIL out
    >>> arr_out = upscale(np.asarray(img), scale=(3, 2))        # numpy in (rows x3, cols x2), numpy out
    >>> t = upscale(torch.rand(3, 40, 60), scale=4)             # float tensor (3, h, w) or (B, 3, h, w) in [0, 1]
    >>> summary = upscale('photos/', scale=2, output='out/', recursive=True)   # a folder -> FolderSummary

The result has the kind of the input:

* a path (str or ``os.PathLike``) to an image -> the path of the written image (``output``, default
  ``<input stem>_x<scale>.png`` (``_<W>x<H>`` with ``size``) beside the input). Identical to
  ``demo.py --input ... --output ...`` (same loading, EXIF orientation, gray / alpha / 16-bit handling,
  rendering and saving);
* a path to a folder -> ``engine.batch.FolderSummary`` (``upscaled``, ``skipped``, ``failed``, ``line()``);
  outputs go to ``output`` (default ``<folder>_x<scale>`` beside it) mirroring the input tree and names, as
  ``demo.py --input FOLDER`` does; ``recursive`` reads sub-folders, existing outputs are skipped unless
  ``overwrite``; ``progress`` shows a tqdm bar. If an image fails, the others are still written and
  ``UpscaleError`` is raised at the end with the summary line;
* a PIL image -> a PIL image (gray stays gray, alpha is upscaled with bicubic and kept, 16-bit gray
  stays 16-bit; palette and other modes become RGB(A));
* a numpy array (H, W), (H, W, 3) or (H, W, 4), uint8 / uint16 / float in [0, 1] -> an array of the same
  dtype and channel layout;
* a float tensor (3, h, w) or (B, 3, h, w) in [0, 1] -> a float tensor (3, H, W) / (B, 3, H, W) in [0, 1].

``scale``: a number >= 1, a (rows, cols) pair or a string ('3.5', '3,2'); ``size``: ``(width, height)`` in
pixels or a ``'WIDTHxHEIGHT'`` string (the one size convention, as ``demo.py --size``); ``keep_aspect``: fit
inside that size keeping the aspect ratio. Give exactly one of scale and size (the output size is
``floor(h * scale + 1e-9)``, as in ``demo.py``). ``model``: a checkpoint path (.pth or .safetensors; bare
names and relative bundled paths are found from any working directory, ``engine.inference.resolve_path``),
``'bicubic'``, a model object or a torch.hub model (``ImageUpscaler``); default the bundled LM-LIIF. Loaded
checkpoints are cached per (path, modification time, size, device): a changed file is read again.
``device``: None (CUDA, else MPS, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'. ``tile``: 'auto' (inputs above
512x512 with CNN encoders are encoded in exact tiles of 256 LR pixels), None / 0 (off) or a tile size.
``threads``: CPU threads for this call (default: ``OMP_NUM_THREADS`` if set, else the policy of every script,
``utils.resources.default_threads``, computed once per process), claimed in the machine-wide registry while
the call runs (runs started meanwhile count them); torch's setting is restored afterwards.

Every error is an ``UpscaleError`` (``engine.errors``; a ValueError) with a one-line message, raised before
anything is written; requests whose output cannot fit in memory are refused before allocating it.

Rendering goes through the inference session ``demo.py`` opens (``engine.inference.Session``; ``session_for``
returns it): the checkpoint's training scale, the encoder's window padding, the tile policy and the memory
check are the same, so a path in gives demo.py's file byte for byte.
"""
import math
import os

import numpy as np
import torch

from engine.errors import UpscaleError
from models.capabilities import SRModel

__all__ = ['upscale', 'load', 'session_for', 'ImageUpscaler', 'UpscaleError']

_CACHE = {}
_THREADS = []          # the default thread count, computed once per process


def _file_key(path):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def load(model=None, device='cpu'):
    """A model in eval mode on ``device`` for a path, a bare bundled name, 'bicubic' or None (the default
    model); cached per (path, modification time, size, device). Its ``capabilities`` carry the checkpoint's
    training scale."""
    from engine.inference import load_model, resolve_model_path
    with _translated():
        if model is not None and os.fspath(model) == 'bicubic':
            key = ('bicubic', str(device))
            path = 'bicubic'
        else:
            path = os.path.abspath(resolve_model_path(None if model is None else os.fspath(model)))
            key = _file_key(path) + (str(device),)
        if key not in _CACHE:
            for old in [k for k in _CACHE if k[0] == key[0] and k[-1] == key[-1]]:
                del _CACHE[old]                 # the file changed: drop its stale model
            _CACHE[key] = load_model(path, device, 'api')
        return _CACHE[key]


class ImageUpscaler(torch.nn.Module):
    """An SR model with the engine around it: call it on an image with a scale or a size.

    ``up(image, scale=None, size=None, **options)`` is ``upscale(image, scale, size, model=up.sr_model,
    **options)``: a float tensor (3, h, w) / (B, 3, h, w) in [0, 1], a PIL image, a numpy array or a path in,
    the same kind out (``up(x, 2)`` upscales by 2). ``sr_model`` is the network (``capabilities``,
    ``encode``/``query``); ``.to(device)`` moves it. What the torch.hub entries return.
    """

    def __init__(self, sr_model):
        super().__init__()
        self.sr_model = sr_model
        self.eval()

    @property
    def capabilities(self):
        return self.sr_model.capabilities

    def forward(self, image, scale=None, size=None, **options):
        return upscale(image, scale=scale, size=size, model=self.sr_model, **options)


def session_for(model=None, device=None, tile='auto'):
    """The inference session ``upscale`` renders with (``engine.inference.Session``, the one ``demo.py``
    opens): ``model`` a path, a bare bundled name, 'bicubic', None (the default) or a model object."""
    from engine import cli
    from engine.inference import Session
    with _translated():
        if tile is not None and tile != 'auto' and not (isinstance(tile, int) and not isinstance(tile, bool)
                                                        and tile >= 0):
            raise UpscaleError(f"upscale: tile must be 'auto', None/0 or a positive number of LR pixels, got "
                               f"{tile!r}")
        if isinstance(model, ImageUpscaler):
            model = model.sr_model
        if model is None or isinstance(model, (str, os.PathLike)):
            dev = cli.choose_device(device, None, 'api')
            return Session(load(model, dev), dev, tile=tile)
        if isinstance(model, SRModel):
            return Session(model, None if device is None else cli.choose_device(device, None, 'api'), tile=tile)
        raise UpscaleError(f'upscale: model must be a checkpoint path, "bicubic" or a model of this repository, '
                           f'got {type(model).__name__}')


class _translated:
    """Context manager: user-facing errors (``engine.errors.expected_errors``, out of memory) leave the API as
    ``UpscaleError`` with a one-line message."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, UpscaleError):
            return False
        from engine.errors import expected_errors, out_of_memory_errors
        from utils.validate import message, one_line
        if isinstance(error, out_of_memory_errors()):
            raise UpscaleError(f'upscale: out of memory ({one_line(error, 200) or "MemoryError"}); use tile=..., '
                               f'a smaller image or a smaller scale/size') from None
        if isinstance(error, expected_errors()):
            raise UpscaleError(message(error)) from None
        return False


def _parse_size(size):
    """``size`` as (H, W): a (width, height) pair or a 'WIDTHxHEIGHT' string."""
    from utils.validate import size_text
    if isinstance(size, str):
        return size_text(size, 'size')
    try:
        W, H = size
        W2, H2 = int(W), int(H)
    except (TypeError, ValueError):
        raise UpscaleError(f'upscale: size must be (width, height) in pixels or "WIDTHxHEIGHT", got '
                           f'{size!r:.60}') from None
    if isinstance(W, bool) or isinstance(H, bool) or W2 < 1 or H2 < 1 or (W2, H2) != (W, H):
        raise UpscaleError(f'upscale: size must be two positive integers (width, height), got {size!r:.60}')
    return H2, W2


def _target_size(h, w, scale, size, keep_aspect=False):
    from utils.coords import parse_scale
    from utils.validate import fit_size, output_size
    if (scale is None) == (size is None):
        raise UpscaleError('upscale: give exactly one of scale and size')
    if size is not None:
        (H, W), _ = fit_size((h, w), _parse_size(size), keep_aspect=keep_aspect, name='size')
        return output_size((h, w), size=(H, W))
    if keep_aspect:
        raise UpscaleError('upscale: keep_aspect is used with size only')
    if isinstance(scale, str):
        sy, sx = parse_scale(scale)
        text = scale
    else:
        try:
            sy, sx = (float(scale[0]), float(scale[1])) if isinstance(scale, (tuple, list)) else (float(scale),) * 2
        except (TypeError, ValueError, IndexError):
            raise UpscaleError(f'upscale: scale must be a number, a (rows, cols) pair or a string, got '
                               f'{scale!r:.60}') from None
        if isinstance(scale, (tuple, list)) and len(scale) != 2:
            raise UpscaleError(f'upscale: a scale pair must be (rows, cols), got {scale!r:.60}')
        if not (math.isfinite(sy) and math.isfinite(sx)):
            raise UpscaleError(f'upscale: scale must be finite, got {scale!r:.60}')
        text = f'{sy:g}' if sy == sx else f'{sy:g},{sx:g}'
    return output_size((h, w), scale=(sy, sx), scale_text=text)


def _render(img, size, session):
    """img (B, 3, h, w) in [0, 1] on the CPU -> (B, 3, H, W) in [0, 1] on the CPU; demo.py's rendering."""
    import torch
    session.check(tuple(img.shape[-2:]), tuple(size), batch=img.shape[0])
    out = session(img, size).cpu()
    if not bool(torch.isfinite(out).all()):
        raise UpscaleError('upscale: the model predicted non-finite values (NaN/inf); its weights are broken')
    return out


def _alpha(alpha, size):
    from utils.imresize import imresize
    return imresize(alpha.unsqueeze(0).double(), size=size)[0].float().clamp(0, 1)


def _gray(x):
    """(3, H, W) -> (1, H, W) as ``utils.image.save_image`` makes gray outputs."""
    import torch
    if torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]):
        return x[:1]
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def _quantise(x, bit_depth):
    """float (C, H, W) in [0, 1] -> uint array (H, W, C), as ``save_image`` rounds."""
    peak = (1 << bit_depth) - 1
    arr = x.clamp(0, 1).mul(peak).round().permute(1, 2, 0).numpy()
    return arr.astype(np.uint16 if bit_depth == 16 else np.uint8)


def upscale(image, scale=None, size=None, model=None, *, output=None, device=None, tile='auto', keep_aspect=False,
            threads=None, recursive=False, overwrite=False, progress=True):
    """Upscale ``image`` by ``scale`` or to ``size`` with ``model``; see the module docstring."""
    from utils.resources import choose_threads, threads_held
    with _translated():
        if (scale is None) == (size is None):
            raise UpscaleError('upscale: give exactly one of scale and size')
        if threads is None and not _THREADS:
            _THREADS.append(choose_threads(None))
        n = choose_threads(threads) if threads is not None else _THREADS[0]
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            with threads_held(n):
                return _upscale(image, scale, size, model, output, device, tile, keep_aspect, recursive,
                                overwrite, progress)
        finally:
            torch.set_num_threads(before)


def _upscale(image, scale, size, model, output, device, tile, keep_aspect, recursive, overwrite, progress):
    from utils.image import ImageError
    is_path = isinstance(image, (str, os.PathLike))
    if is_path and os.path.isdir(image):
        return _upscale_folder(os.fspath(image), scale, size, model, output, device, tile, keep_aspect, recursive,
                               overwrite, progress)
    if recursive or overwrite:
        raise UpscaleError('upscale: recursive and overwrite are used with a folder input only')
    if is_path:
        from utils.validate import input_file
        input_file(os.fspath(image), 'image')          # before the model is loaded
    session = session_for(model, device, tile)
    with torch.no_grad():
        if is_path:
            return _upscale_file(os.fspath(image), scale, size, session, output, keep_aspect)
        if output is not None:
            raise UpscaleError('upscale: output is only used with a path input')
        if isinstance(image, torch.Tensor):
            return _upscale_tensor(image, scale, size, session, keep_aspect)
        if isinstance(image, np.ndarray):
            return _upscale_array(image, scale, size, session, keep_aspect)
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow is a requirement
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            return _upscale_pil(image, scale, size, session, keep_aspect)
    raise ImageError(f'upscale: image must be a path, a PIL image, a numpy array or a tensor, '
                     f'got {type(image).__name__}')


def _tag(scale, size):
    if size is not None:
        if isinstance(size, str):
            return size.lower().replace(' ', '')
        return f'{size[0]}x{size[1]}'
    if isinstance(scale, (tuple, list)):
        return 'x' + ','.join(f'{float(s):g}' for s in scale)
    return f'x{scale}' if isinstance(scale, str) else f'x{float(scale):g}'


def _default_output(path, scale, size):
    return f'{os.path.splitext(path)[0]}_{_tag(scale, size)}.png'


def _upscale_folder(folder, scale, size, model, output, device, tile, keep_aspect, recursive, overwrite, progress):
    from engine import batch
    output = os.fspath(output) if output is not None else os.path.normpath(folder) + '_' + _tag(scale, size)
    plan = batch.plan_folder(folder, output, recursive=recursive, overwrite=overwrite, input_name='image',
                             output_name_flag='output')
    session = session_for(model, device, tile)

    def one(src, dst):
        with torch.no_grad():
            _upscale_file(src, scale, size, session, dst, keep_aspect)

    summary = batch.run_folder(plan, one, progress=progress)
    if summary.failed:
        raise UpscaleError(f'upscale: {folder} -> {output}: {summary.line("overwrite=True")}')
    return summary


def _upscale_file(path, scale, size, session, output, keep_aspect=False):
    from utils.image import load_image, save_image
    from utils.validate import input_file, output_file
    input_file(path, 'image')
    output = _default_output(path, scale, size) if output is None else os.fspath(output)
    output_file(output, 'output', inputs=(path,))
    from utils.image import SAVE_FORMATS
    ext = os.path.splitext(output)[1].lower()
    if ext not in SAVE_FORMATS:
        raise UpscaleError(f'upscale: output {output}: unsupported extension {ext or "(none)"!r}; use one of '
                         f'{", ".join(SAVE_FORMATS)}')
    img, info = load_image(path)
    h, w = img.shape[-2:]
    H, W = _target_size(h, w, scale, size, keep_aspect)
    out = _render(img.unsqueeze(0), (H, W), session)[0]
    alpha = _alpha(info.alpha, (H, W)) if info.alpha is not None else None
    bit_depth = info.bit_depth if ext == '.png' else 8
    save_image(output, out, bit_depth=bit_depth, alpha=alpha, mode_hint=info.mode)
    return output


def _upscale_tensor(t, scale, size, session, keep_aspect=False):
    import torch
    if not t.is_floating_point() or t.dim() not in (3, 4) or t.shape[-3] != 3:
        raise UpscaleError(f'upscale: a tensor image must be float (3, h, w) or (B, 3, h, w) in [0, 1], got '
                         f'{t.dtype} {tuple(t.shape)}')
    if not bool(torch.isfinite(t).all()):
        raise UpscaleError('upscale: the image tensor holds NaN or infinite values')
    x = t.detach().float().cpu()
    x = x.unsqueeze(0) if x.dim() == 3 else x
    H, W = _target_size(*x.shape[-2:], scale, size, keep_aspect)
    out = _render(x, (H, W), session).to(t.dtype)
    return out[0] if t.dim() == 3 else out


def _upscale_array(arr, scale, size, session, keep_aspect=False):
    import torch
    from utils.image import array_to_tensor
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise UpscaleError(f'upscale: an array image must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}')
    kind = arr.dtype
    if kind == np.uint8 or kind == np.uint16:
        ints = arr if arr.flags.writeable else arr.copy()
    elif np.issubdtype(kind, np.floating):
        if not np.isfinite(arr).all():
            raise UpscaleError('upscale: the array holds NaN or infinite values')
        ints = None
    else:
        raise UpscaleError(f'upscale: array dtype must be uint8, uint16 or float (in [0, 1]), got {kind}')
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    has_alpha = channels == 4
    if ints is not None:
        x = array_to_tensor(ints[..., :3] if has_alpha else ints)
        a = array_to_tensor(ints[..., 3])[:1] if has_alpha else None
    else:
        f = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).clamp(0, 1)
        f = f.unsqueeze(-1) if f.dim() == 2 else f
        x = f[..., :3].permute(2, 0, 1).expand(3, -1, -1).contiguous()
        a = f[..., 3].unsqueeze(0) if has_alpha else None
    h, w = x.shape[-2:]
    H, W = _target_size(h, w, scale, size, keep_aspect)
    out = _render(x.unsqueeze(0), (H, W), session)[0]
    if channels == 1 or arr.ndim == 2:
        out = _gray(out)
    if a is not None:
        out = torch.cat([out, _alpha(a, (H, W))])
    if ints is not None:
        res = _quantise(out, 16 if kind == np.uint16 else 8)
    else:
        res = out.permute(1, 2, 0).numpy().astype(kind)
    if arr.ndim == 2:
        res = res[..., 0]
    return res


def _upscale_pil(im, scale, size, session, keep_aspect=False):
    from PIL import Image
    from utils.image import GRAY_MODES, _decode, array_to_tensor
    mode = im.mode
    arr, alpha = _decode(im)
    x = array_to_tensor(arr)
    h, w = x.shape[-2:]
    H, W = _target_size(h, w, scale, size, keep_aspect)
    out = _render(x.unsqueeze(0), (H, W), session)[0]
    gray = mode in GRAY_MODES
    bits = 16 if (gray and arr.dtype.itemsize == 2) else 8     # PIL has no 16-bit colour mode
    if gray:
        out = _gray(out)
    q = _quantise(out, bits)
    if alpha is not None:        # 'LA' / 'RGBA' (8-bit: PIL has no 16-bit mode with alpha)
        a = _quantise(_alpha(array_to_tensor(alpha)[:1], (H, W)), 8)
        return Image.fromarray(np.concatenate([q, a], axis=-1), 'LA' if gray else 'RGBA')
    if bits == 16:
        return Image.frombytes('I;16', (W, H), q[..., 0].astype('<u2').tobytes())
    return Image.fromarray(q[..., 0] if gray else q, 'L' if gray else 'RGB')
