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
* 16-bit *colour* PNGs (RGB / RGBA, 48 / 64 bits per pixel), which PIL can only decode to 8 bits, are
  decoded here (``_read_png16``: zlib + the five PNG row filters) and keep their 16 bits (non-interlaced
  files; an Adam7-interlaced one falls back to PIL's 8 bits).
* Any problem reading or writing a file raises ``ImageError`` (a ValueError) whose one-line message
  names the path and the problem.
"""
import dataclasses
import io
import os
import struct
import warnings
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


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _png16_header(path):
    """(width, height, colour type) of a non-interlaced 16-bit RGB/RGBA PNG, else None (cheap: 33 bytes)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(33)
    except OSError:
        return None
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b'IHDR':
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack('>IIBBBBB', head[16:29])
    if depth != 16 or ctype not in (2, 6) or interlace != 0:
        return None
    return w, h, ctype


def _unfilter(raw, h, stride, bpp):
    """Undo the PNG row filters of ``raw`` (h rows of 1 + stride bytes) -> uint8 array (h, stride)."""
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, stride + 1)
    out = np.zeros((h, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        f, x = rows[y, 0], rows[y, 1:].astype(np.int32)
        if f == 0:
            cur = x
        elif f == 1:      # Sub: running sum along each byte lane of a pixel
            cur = np.cumsum(x.reshape(-1, bpp), axis=0).reshape(-1)
        elif f == 2:      # Up
            cur = x + prior
        elif f in (3, 4):
            cur = np.empty(stride, dtype=np.int32)
            left = np.zeros(bpp, dtype=np.int32)
            up_left = np.zeros(bpp, dtype=np.int32)
            for i in range(0, stride, bpp):
                up = prior[i:i + bpp]
                if f == 3:       # Average
                    v = (x[i:i + bpp] + (left + up) // 2) & 255
                else:            # Paeth
                    p = left + up - up_left
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
                    v = (x[i:i + bpp] + pred) & 255
                cur[i:i + bpp] = v
                left, up_left = v, up
        else:
            raise ImageError(f'invalid PNG filter type {f} in row {y}')
        cur = cur & 255
        out[y] = cur
        prior = cur.astype(np.int32)
    return out


def _read_png16(path, w, h, ctype):
    """Decode a non-interlaced 16-bit RGB (ctype 2) or RGBA (6) PNG -> (uint16 (H, W, 3), alpha or None)."""
    channels = 3 if ctype == 2 else 4
    if w < 1 or h < 1:
        raise ImageError(f'{path}: invalid PNG size {w}x{h}')
    limit = Image.MAX_IMAGE_PIXELS
    if limit and w * h > 2 * limit:
        raise ImageError(f'{path}: image too large ({w * h} pixels, more than twice the decompression-bomb '
                         f'limit of {limit})')
    with open(path, 'rb') as f:
        data = f.read()
    pos, idat = 8, []
    while pos + 8 <= len(data):
        length, tag = struct.unpack('>I4s', data[pos:pos + 8])
        if pos + 12 + length > len(data):
            raise ImageError(f'{path}: truncated PNG (chunk {tag!r} cut off)')
        if tag == b'IDAT':
            idat.append(data[pos + 8:pos + 8 + length])
        elif tag == b'IEND':
            break
        pos += 12 + length
    else:
        raise ImageError(f'{path}: truncated PNG (no IEND chunk)')
    stride = w * channels * 2
    expected = h * (stride + 1)
    try:
        d = zlib.decompressobj()
        raw = d.decompress(b''.join(idat), expected)
    except zlib.error as e:
        raise ImageError(f'{path}: cannot decode image (corrupt PNG data: {e})') from None
    if len(raw) < expected:
        raise ImageError(f'{path}: truncated PNG image data ({len(raw)} of {expected} bytes)')
    try:
        flat = _unfilter(raw[:expected], h, stride, channels * 2)
    except ImageError as e:
        raise ImageError(f'{path}: cannot decode image ({e})') from None
    arr = flat.view('>u2').reshape(h, w, channels).astype(np.uint16)
    if channels == 4:
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])
    return arr, None


#: EXIF orientation -> the numpy transform of an (H, W[, C]) array that ``ImageOps.exif_transpose`` applies.
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(im):
    """The EXIF orientation tag (1..8) of an open PIL image, 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112)
    except Exception:   # noqa: BLE001  a broken EXIF block: the pixels are still used, unrotated
        return 1
    return value if value in _ORIENT else 1


def orient(arr, orientation):
    """Apply an EXIF orientation to an (H, W[, C]) array (the same result as ``ImageOps.exif_transpose``)."""
    return np.ascontiguousarray(_ORIENT[orientation](arr)) if orientation in _ORIENT else arr


def read_size(path):
    """(rows, cols) of an image file from its header, EXIF orientation applied, without decoding the pixels
    (so that sizes can be checked before a large image is loaded). Raises ImageError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f'{path}: file not found' if not os.path.exists(path) else f'{path}: not a regular file')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if exif_orientation(im) in (5, 6, 7, 8):    # rotated by 90 degrees
                    w, h = h, w
    except UnidentifiedImageError:
        raise ImageError(f'{path}: not a recognised image (corrupt file or unsupported format)') from None
    except Image.DecompressionBombError as e:
        raise ImageError(f'{path}: image too large ({_one_line(e)})') from None
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise ImageError(f'{path}: cannot read the image header ({_one_line(e)})') from None
    return h, w


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
    png16 = _png16_header(path)
    if png16 is not None:        # 16-bit colour PNG: PIL would give 8 bits
        arr, alpha = _read_png16(path, *png16)
        with Image.open(path) as im:       # the header only: the eXIf chunk's orientation, as for 8 bits
            orientation = exif_orientation(im)
        arr = orient(arr, orientation)
        alpha = None if alpha is None else orient(alpha, orientation)
        alpha_t = None if alpha is None else array_to_tensor(alpha)[:1]
        return arr, ImageInfo(mode='RGBA' if alpha is not None else 'RGB', bit_depth=16,
                              has_alpha=alpha is not None, alpha=alpha_t)
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            # sizes are checked against the available memory by the callers; PIL still refuses
            # decompression bombs (DecompressionBombError) above twice its limit
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
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


#: How floats in [0, 1] become integers when saving: ``'round'`` (ours: to the nearest level) or
#: ``'truncate'`` (the published LIIF / LTE / LMF scripts: torchvision's ``ToPILImage``, ``mul(255).byte()``).
QUANTIZATIONS = ('round', 'truncate')


def _to_int_array(x, bit_depth, band=256, quantization='round'):
    """(H, W, C) floats in [0, 1] -> integer array (clamp, scale by the peak in float32, then round or
    truncate), converted in bands of rows so that no full-size float temporary is made (outputs can be
    gigabytes)."""
    out = np.empty(tuple(x.shape), dtype=np.uint16 if bit_depth == 16 else np.uint8)
    for r, block in _int_blocks(lambda a, b: x[a:b], x.shape[0], bit_depth, band, quantization):
        out[r:r + len(block)] = block
    return out


def _quantise(part, bit_depth, quantization):
    """A float block in [0, 1] (any shape) -> uint8/uint16 numpy (clamp, times the peak in float32, round
    or truncate)."""
    part = part.detach().float().cpu().clamp(0, 1).mul_((1 << bit_depth) - 1)
    part = part.round_() if quantization == 'round' else part.trunc_()
    return part.numpy().astype(np.uint16 if bit_depth == 16 else np.uint8)


def _int_blocks(rows, height, bit_depth, band, quantization):
    """Yield (first row, integer block (rows, W, C)) for ``rows(a, b)`` -> float (b - a, W, C) blocks."""
    if quantization not in QUANTIZATIONS:
        raise ImageError(f'quantization must be one of {", ".join(QUANTIZATIONS)}, got {quantization!r}')
    for r in range(0, height, band):
        yield r, _quantise(rows(r, min(r + band, height)), bit_depth, quantization)


def _band(width, channels):
    """Rows per conversion block: about 16 MB of float32 (at least one row)."""
    return max(1, (16 << 20) // max(1, width * channels * 4))


def _png_chunk(tag, data):
    return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data) & 0xFFFFFFFF)


def _write_png16(f, blocks, h, w, c):
    """Stream a 16-bit PNG of ``blocks`` (uint16 (rows, W, C), C = 1..4, top to bottom) into the seekable
    binary file ``f``: one IDAT chunk (its length written once known), deflate level 6 with filter 0 on
    every row. Memory: one block and the compressor's window."""
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    f.write(_PNG_SIGNATURE + _png_chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, color_type, 0, 0, 0)))
    start = f.tell()
    f.write(b'\0\0\0\0IDAT')
    comp, crc, size = zlib.compressobj(6), zlib.crc32(b'IDAT'), 0
    for _, block in blocks:
        rows = np.zeros((len(block), 1 + w * c * 2), dtype=np.uint8)   # filter byte 0 (None) before every row
        rows[:, 1:] = block.astype('>u2').reshape(len(block), -1).view(np.uint8)
        data = comp.compress(rows.tobytes())
        f.write(data)
        crc, size = zlib.crc32(data, crc), size + len(data)
    data = comp.flush()
    f.write(data)
    crc, size = zlib.crc32(data, crc), size + len(data)
    f.write(struct.pack('>I', crc & 0xFFFFFFFF))
    end = f.tell()
    f.seek(start)
    f.write(struct.pack('>I', size))
    f.seek(end)
    f.write(_png_chunk(b'IEND', b''))


def _png16(arr):
    """Encode a uint16 array (H, W, C), C = 1..4, as a 16-bit PNG (PIL cannot write 16-bit colour)."""
    h, w, c = arr.shape
    buf = io.BytesIO()
    _write_png16(buf, ((r, arr[r:r + 256]) for r in range(0, h, 256)), h, w, c)
    return buf.getvalue()


def _pil_image(blocks, h, w, c, bit_depth):
    """A PIL image filled block by block (no full-size intermediate array besides PIL's own storage)."""
    mode = 'I;16' if bit_depth == 16 else {1: 'L', 2: 'LA', 3: 'RGB', 4: 'RGBA'}[c]
    im = Image.new(mode, (w, h))
    for r, block in blocks:
        if bit_depth == 16:
            part = Image.frombytes('I;16', (w, len(block)), block[..., 0].astype('<u2').tobytes())
        else:
            part = Image.fromarray(np.ascontiguousarray(block[..., 0] if c == 1 else block))
        im.paste(part, (0, r))
    return im


def save_image(path, rgb, bit_depth=8, alpha=None, mode_hint=None, quantization='round'):
    """Write an image atomically (the file appears complete or not at all).

    Args:
        path: output file; the format follows the extension (png, jpg/jpeg (quality 95), bmp, tif/tiff,
            webp (lossless), ppm).
        rgb: float (3, H, W) in [0, 1] (clamped, then quantised); (1, H, W) or (H, W) is gray.
        quantization: ``'round'`` (default: the nearest level) or ``'truncate'`` (the published scripts'
            ``ToPILImage``; an 8-bit RGB PNG is then byte-identical to theirs, PIL writing both).
        bit_depth: 8, or 16 (PNG only; gray 16-bit also for TIFF).
        alpha: optional float (1, H, W) or (H, W) alpha, re-attached where the format has alpha
            (dropped for JPEG, BMP and PPM).
        mode_hint: the source's PIL mode (``info.mode``); a gray mode writes a gray image
            (luma 0.299 R + 0.587 G + 0.114 B, as PIL's 'L' conversion; three equal channels are kept as
            they are).
    Memory: the floats are converted in blocks of rows (about 16 MB) and encoded straight into the file:
    16-bit PNG streams (one block at a time); other formats hold PIL's image (about the output's size)
    and one block; nothing of the input's size is copied.
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
    if quantization not in QUANTIZATIONS:
        raise ImageError(f'quantization must be one of {", ".join(QUANTIZATIONS)}, got {quantization!r}')
    x = rgb if rgb.dim() == 3 else rgb.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ImageError(f'{path}: expected an image (3, H, W) or (1, H, W), got shape {tuple(rgb.shape)}')
    gray = x.shape[0] == 1 or mode_hint in GRAY_MODES
    if bit_depth == 16 and not (fmt == 'PNG' or (fmt == 'TIFF' and gray and alpha is None)):
        raise ImageError(f'{path}: 16-bit output is supported for PNG (and gray TIFF) only')
    h, w = x.shape[1:]
    band = _band(w, 4)
    luma = False
    if gray and x.shape[0] == 3:     # already gray (three equal channels): the samples are kept exactly
        luma = not all(torch.equal(x[0, r:r + band], x[1, r:r + band]) and torch.equal(x[1, r:r + band],
                                                                                       x[2, r:r + band])
                       for r in range(0, h, band))
    a = None
    if alpha is not None and fmt in _ALPHA_FORMATS:
        a = alpha if alpha.dim() == 3 else alpha.unsqueeze(0)
        if a.shape != (1,) + tuple(x.shape[1:]):
            raise ImageError(f'{path}: alpha of shape {tuple(alpha.shape)} does not match the image '
                             f'{tuple((1 if gray else 3,) + tuple(x.shape[1:]))}')

    def rows(r0, r1):
        """Rows r0:r1 as float (rows, W, C): gray/luma, then alpha, as the whole image would be."""
        part = x[:, r0:r1]
        if gray and x.shape[0] == 3:
            part = (0.299 * part[0] + 0.587 * part[1] + 0.114 * part[2]).unsqueeze(0) if luma else part[:1]
        if a is not None:
            part = torch.cat([part, a[:, r0:r1].to(part.device, part.dtype)])
        return part.permute(1, 2, 0)

    c = (1 if gray else 3) + (a is not None)
    blocks = _int_blocks(rows, h, bit_depth, band, quantization)
    options = {'JPEG': {'quality': JPEG_QUALITY}, 'WEBP': {'lossless': True}}.get(fmt, {})
    try:
        with atomic_write(path) as f:
            if bit_depth == 16 and fmt == 'PNG':
                _write_png16(f, blocks, h, w, c)
            else:
                _pil_image(blocks, h, w, c, bit_depth).save(f, format=fmt, **options)
    except OSError as e:
        raise ImageError(f'{path}: cannot write ({e.strerror or _one_line(e)})') from None
