"""Image files <-> tensors: one loader for every PIL mode and an atomic saver.

Conventions:

* An image is a float32 tensor (3, H, W), RGB, values in [0, 1]. An 8-bit sample k becomes
  ``float32(k) / 255``, exactly what torchvision's ``ToTensor`` computes, so the published ``resize_fn``
  round trip (``mul(255)`` then a truncating cast) gives k back. 16-bit samples are divided by 65535.
* Every PIL mode loads as RGB: gray ('1', 'L', 'I;16*', 'I', 'F') is repeated over three channels;
  palette, CMYK, YCbCr, ... are converted by PIL; alpha (LA, RGBA, PA, palette transparency) is split
  off into ``info.alpha``. The EXIF orientation is applied (``ImageOps.exif_transpose``).
* Mode 'I' (32-bit int, which some formats use for 16-bit gray) is read as 16-bit data clipped to
  [0, 65535]; mode 'F' as intensities clipped to [0, 1] and stored at 16-bit precision.
* PIL decodes 16-bit *colour* PNGs to 8 bits (it has no 48-bit mode), so they load as 8-bit data.
* Any problem reading or writing a file raises ``ImageError`` (a ValueError) whose one-line message
  names the path and the problem.
"""
import dataclasses
import io
import os
import struct
import zlib
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.io import atomic_write

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pnm', '.gif')
SAVE_FORMATS = {'.png': 'PNG', '.jpg': 'JPEG', '.jpeg': 'JPEG', '.bmp': 'BMP', '.tif': 'TIFF', '.tiff': 'TIFF',
                '.webp': 'WEBP', '.ppm': 'PPM'}
GRAY_MODES = frozenset({'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'})
_ALPHA_FORMATS = frozenset({'PNG', 'TIFF', 'WEBP'})
JPEG_QUALITY = 95


class ImageError(ValueError):
    """An image file is missing, empty, corrupt, truncated, unsupported or cannot be written."""


@dataclasses.dataclass
class ImageInfo:
    """What ``load_image`` learnt about a file besides its RGB values.

    ``mode`` is the PIL mode of the file, ``bit_depth`` the precision of the decoded samples (8 or 16),
    ``alpha`` the alpha channel as float (1, H, W) in [0, 1] (None without alpha).
    """
    mode: str
    bit_depth: int
    has_alpha: bool
    alpha: Optional[torch.Tensor] = dataclasses.field(default=None, repr=False)

    @property
    def is_gray(self):
        return self.mode in GRAY_MODES


def is_image_file(name):
    """True for a non-hidden file name with a known image extension (case-insensitive)."""
    base = os.path.basename(name)
    return not base.startswith('.') and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def _one_line(error):
    text = ' '.join(str(error).split()) or type(error).__name__
    return text[:300]


def _decode(im):
    """A loaded PIL image -> (numpy (H, W) or (H, W, 3) uint8/uint16, alpha array or None)."""
    mode = im.mode
    if mode in ('P', 'PA'):
        im = im.convert('RGBA' if mode == 'PA' or 'transparency' in im.info else 'RGB')
    elif mode == '1':
        im = im.convert('L')
    elif mode == 'La':
        im = im.convert('LA')
    elif mode == 'RGBa':
        im = im.convert('RGBA')
    elif mode not in ('L', 'LA', 'RGB', 'RGBA', 'I', 'F') and not mode.startswith('I;16'):
        im = im.convert('RGB')  # CMYK, YCbCr, RGBX, HSV, LAB, ...
    arr = np.array(im)  # a writable copy
    if im.mode == 'I':
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    elif im.mode == 'F':
        arr = np.round(np.clip(np.nan_to_num(arr), 0, 1) * 65535).astype(np.uint16)
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.uint16)  # 'I;16', 'I;16B' (big-endian) ...
    alpha = None
    if im.mode in ('LA', 'RGBA'):
        arr, alpha = arr[..., :-1], arr[..., -1]
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    return np.ascontiguousarray(arr), alpha


def load_array(path):
    """Decode an image file to a numpy array without converting to float.

    Returns:
        ``(array, info)``: array (H, W) for gray or (H, W, 3) for colour, dtype uint8 or uint16;
        ``info`` as in ``load_image`` (its alpha already a float tensor).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f'{path}: file not found')
    if os.path.isdir(path):
        raise ImageError(f'{path}: is a directory, not an image file')
    if os.path.getsize(path) == 0:
        raise ImageError(f'{path}: empty file')
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block should not make the pixels unreadable
                pass
            arr, alpha = _decode(im)
    except UnidentifiedImageError:
        raise ImageError(f'{path}: not a recognised image (corrupt file or unsupported format)') from None
    except Image.DecompressionBombError as e:
        raise ImageError(f'{path}: image too large ({_one_line(e)})') from None
    except OSError as e:
        if e.errno is not None:  # a file-system error (permissions, I/O), not a decoding one
            raise ImageError(f'{path}: cannot read ({e.strerror or _one_line(e)})') from None
        raise ImageError(f'{path}: cannot decode image ({_one_line(e)})') from None
    except (SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise ImageError(f'{path}: cannot decode image ({_one_line(e)})') from None
    bit_depth = 16 if arr.dtype == np.uint16 else 8
    alpha_t = None if alpha is None else array_to_tensor(alpha)[:1]
    return arr, ImageInfo(mode=mode, bit_depth=bit_depth, has_alpha=alpha is not None, alpha=alpha_t)


def array_to_tensor(arr):
    """uint8/uint16 array (H, W) or (H, W, C) -> float32 (3, H, W) in [0, 1] (gray repeated to RGB)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(arr)).float().div(255)
    elif arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.int32)).float().div(65535)
    else:
        raise TypeError(f'expected a uint8 or uint16 array, got {arr.dtype}')
    if t.dim() == 2:
        t = t.unsqueeze(-1)
    t = t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.contiguous()


def load_image(path):
    """Load any image file as RGB.

    Returns:
        ``(img, info)``: img float32 (3, H, W) in [0, 1]; info an ``ImageInfo``.
    Raises:
        ImageError: the file is missing, empty, corrupt, truncated or not an image.
    """
    arr, info = load_array(path)
    return array_to_tensor(arr), info


def quantize(img, bit_depth=8):
    """Clamp to [0, 1] and round to the nearest value representable with ``bit_depth`` bits (as float)."""
    peak = (1 << bit_depth) - 1
    return img.clamp(0, 1).mul(peak).round().div(peak)


def to_uint8_tensor(img):
    """Float image in [0, 1] -> uint8 tensor (clamp, x255, round half to even)."""
    return img.clamp(0, 1).mul(255).round().to(torch.uint8)


def _to_int_array(x, bit_depth, band=256):
    """(H, W, C) floats in [0, 1] -> integer array (clamp, scale, round), converted in bands of rows so that
    no full-size float temporary is made (outputs can be gigabytes)."""
    peak = (1 << bit_depth) - 1
    out = np.empty(tuple(x.shape), dtype=np.uint16 if bit_depth == 16 else np.uint8)
    for r in range(0, x.shape[0], band):
        part = x[r:r + band].detach().float().cpu().clamp(0, 1)
        out[r:r + band] = part.mul_(peak).round_().numpy()
    return out


def _png16(arr):
    """Encode a uint16 array (H, W, C), C = 1..4, as a 16-bit PNG (PIL cannot write 16-bit colour)."""
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.zeros((h, 1 + w * c * 2), dtype=np.uint8)  # filter byte 0 (None) before every row
    rows[:, 1:] = arr.astype('>u2').reshape(h, -1).view(np.uint8)

    def chunk(tag, data):
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack('>IIBBBBB', w, h, 16, color_type, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(rows.tobytes(), 6))
            + chunk(b'IEND', b''))


def save_image(path, rgb, bit_depth=8, alpha=None, mode_hint=None):
    """Write an image atomically (the file appears complete or not at all).

    Args:
        path: output file; the format follows the extension (png, jpg/jpeg (quality 95), bmp, tif/tiff,
            webp (lossless), ppm).
        rgb: float (3, H, W) in [0, 1] (clamped, then rounded); (1, H, W) or (H, W) is gray.
        bit_depth: 8, or 16 (PNG only; gray 16-bit also for TIFF).
        alpha: optional float (1, H, W) or (H, W) alpha, re-attached where the format has alpha
            (dropped for JPEG, BMP and PPM).
        mode_hint: the source's PIL mode (``info.mode``); a gray mode writes a gray image
            (luma 0.299 R + 0.587 G + 0.114 B, as PIL's 'L' conversion; three equal channels are kept as
            they are).
    Raises:
        ImageError: unsupported extension or depth, bad shapes, or the file cannot be written.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = SAVE_FORMATS.get(ext)
    if fmt is None:
        raise ImageError(f'{path}: unsupported image extension {ext or "(none)"!r}; '
                         f'use one of {", ".join(SAVE_FORMATS)}')
    if bit_depth not in (8, 16):
        raise ImageError(f'{path}: bit_depth must be 8 or 16, got {bit_depth}')
    x = rgb if rgb.dim() == 3 else rgb.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ImageError(f'{path}: expected an image (3, H, W) or (1, H, W), got shape {tuple(rgb.shape)}')
    gray = x.shape[0] == 1 or mode_hint in GRAY_MODES
    if gray and x.shape[0] == 3:
        if torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]):
            x = x[:1]  # already gray: keep the samples exactly (float luma weights do not sum to exactly 1)
        else:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
    if bit_depth == 16 and not (fmt == 'PNG' or (fmt == 'TIFF' and gray and alpha is None)):
        raise ImageError(f'{path}: 16-bit output is supported for PNG (and gray TIFF) only')
    channels = [x]
    if alpha is not None and fmt in _ALPHA_FORMATS:
        a = alpha if alpha.dim() == 3 else alpha.unsqueeze(0)
        if a.shape != (1,) + tuple(x.shape[1:]):
            raise ImageError(f'{path}: alpha of shape {tuple(alpha.shape)} does not match the image {tuple(x.shape)}')
        channels.append(a.to(x.device, x.dtype))
    arr = _to_int_array((channels[0] if len(channels) == 1 else torch.cat(channels)).permute(1, 2, 0), bit_depth)
    if bit_depth == 16 and fmt == 'PNG':
        data = _png16(arr)
    else:
        if bit_depth == 16:
            im = Image.frombytes('I;16', (arr.shape[1], arr.shape[0]), arr[..., 0].astype('<u2').tobytes())
        else:
            im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        buf = io.BytesIO()
        options = {'JPEG': {'quality': JPEG_QUALITY}, 'WEBP': {'lossless': True}}.get(fmt, {})
        im.save(buf, format=fmt, **options)
        data = buf.getvalue()
    try:
        with atomic_write(path) as f:
            f.write(data)
    except OSError as e:
        raise ImageError(f'{path}: cannot write ({e.strerror or _one_line(e)})') from None
