"""Upscale one image by any factor (or to any size) with a trained model.

    python demo.py --input photo.png --output photo_x3.5.png --scale 3.5
    python demo.py --input photo.png --output wide.png --scale 3,2          # rows x3, columns x2
    python demo.py --input photo.png --output hd.png --size 1080x1920       # HEIGHTxWIDTH
    python demo.py --input photo.png --output out.png --scale 8 --cmsr configs/cmsr/result/<table>.yaml

Gray, RGBA (alpha upscaled separately with bicubic), palette and 16-bit images work; the output keeps the
input's bit depth (16-bit needs a .png output) and colour type; EXIF orientation is applied. On error the
script prints one line, exits with status 1 and writes nothing.
"""
import argparse
import math
import os
import sys
import time

DEFAULT_MODEL = os.path.join('save', 'pretrained_models', 'edsr-b_lm-liif.pth')


def parse_size(text):
    parts = text.lower().replace(' ', '').split('x')
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--size {text!r} must be HEIGHTxWIDTH in pixels, e.g. 1080x1920")
    H, W = int(parts[0]), int(parts[1])
    if H < 1 or W < 1:
        raise ValueError(f'--size {text!r} must be positive')
    return H, W


def parse_tile(text):
    if text == 'auto':
        return 'auto'
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile must be 'auto', 0 (off) or a size in LR pixels, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError('--tile must be >= 0')
    return value


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, help='input image (png, jpg, bmp, tif, webp, ...)')
    p.add_argument('--output', required=True, help='output image; the format follows the extension')
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument('--scale', help="upscaling factor: '2.5', or 'ROWS,COLS' for different factors ('3,2')")
    target.add_argument('--size', help="output size HEIGHTxWIDTH in pixels, e.g. '1080x1920'")
    p.add_argument('--model', default=DEFAULT_MODEL, help=f'checkpoint, or "bicubic" (default: {DEFAULT_MODEL})')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda', 'mps'], default='auto',
                   help='default: cuda if available, else mps, else cpu')
    p.add_argument('--tile', type=parse_tile, default='auto',
                   help="encode the input in tiles of this many LR pixels to bound memory; 'auto' (default) tiles "
                        "inputs above 512x512 with CNN encoders, where tiling is exact; 0 disables it. With "
                        "SwinIR (window attention) tiled results are only approximately equal")
    p.add_argument('--tile-overlap', type=int, default=None,
                   help='LR pixels of context around each tile (default: exact for the encoder, e.g. 37 for '
                        'EDSR-baseline models)')
    p.add_argument('--bsize', type=int, default=None, help='queries per decoder call (memory), default 65536')
    p.add_argument('--window', type=int, default=None,
                   help='pad the input to a multiple of this (default: 8 for SwinIR encoders, else 0)')
    p.add_argument('--cmsr', metavar='TABLE.yaml', help='render with CMSR using this Scale2Mod table (LM models; '
                                                        'applies to scales beyond the training range)')
    p.add_argument('--no-cell-clip', action='store_true',
                   help='do not clip cells to the largest training scale (clipping is the published default)')
    p.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    return p


def pick_device(name):
    import torch
    if name == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            return 'mps'
        return 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda: CUDA is not available on this machine')
    if name == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise ValueError('--device mps: MPS is not available on this machine')
    return name


def check_output_path(path):
    from utils.image import SAVE_FORMATS
    ext = os.path.splitext(path)[1].lower()
    if ext not in SAVE_FORMATS:
        raise ValueError(f'{path}: unsupported output extension {ext or "(none)"!r}; use one of '
                         f'{", ".join(SAVE_FORMATS)}')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f'{path}: output folder {folder} does not exist')
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f'{path}: not writable')
    if os.path.isdir(path):
        raise ValueError(f'{path}: is a directory')


def target_size(args, h, w):
    from utils.coords import parse_scale
    if args.size is not None:
        H, W = parse_size(args.size)
    else:
        sy, sx = parse_scale(args.scale)
        if sy < 1 or sx < 1:
            raise ValueError(f'--scale {args.scale}: this upscales; factors must be >= 1')
        H, W = int(math.floor(h * sy + 1e-9)), int(math.floor(w * sx + 1e-9))
    if H < h or W < w or (H, W) == (h, w):
        raise ValueError(f'--size {H}x{W} is not larger than the input {h}x{w}')
    return H, W


def load_any_model(spec, device):
    import models
    if spec == 'bicubic':
        return models.make({'name': 'bicubic'})
    if not os.path.exists(spec):
        if spec == DEFAULT_MODEL:
            raise ValueError(f'default model {spec} not found; pass --model PATH (see README, "Pretrained models")')
        raise ValueError(f'model file not found: {spec}')
    return models.load_model(spec, map_location=device)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import torch
        from engine.inference import Upscaler, exact_overlap
        from models import CheckpointError, ModelSpecError
        from models.cmsr import CMSRError
        from utils.image import ImageError, load_image, save_image
        from utils.imresize import imresize

        check_output_path(args.output)
        img, info = load_image(args.input)
        h, w = img.shape[-2:]
        H, W = target_size(args, h, w)
        device = pick_device(args.device)
        model = load_any_model(args.model, device).to(device).eval()
        check = getattr(model, 'check_scale', None)
        if check is not None:
            check(H / h, W / w)
        if args.cmsr:
            if not hasattr(model, 'set_cmsr'):
                raise ValueError(f'--cmsr needs an LM model (lmliif, lmlte); {args.model} is '
                                 f'{getattr(model, "registry_name", type(model).__name__)}')
            model.set_cmsr(args.cmsr)
        encoder = getattr(model, 'encoder', None)
        window = args.window if args.window is not None else getattr(encoder, 'window_size', 0)
        tile, overlap = args.tile, args.tile_overlap
        if tile == 'auto':
            exact = exact_overlap(model) if encoder is not None else None
            tile = 256 if (h * w > 512 * 512 and exact is not None and not args.cmsr) else None
        elif tile == 0:
            tile = None
        big = H * W > 4_000_000
        bar = None
        if big and not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=H * W, unit='px', unit_scale=True, desc='upscaling', dynamic_ncols=True)
        upscaler = Upscaler(model, bsize=args.bsize, tile=tile, tile_overlap=overlap, window=window,
                            clip_cells=not args.no_cell_clip, progress=bar.update if bar else None)
        t = time.perf_counter()
        out = upscaler(img.unsqueeze(0).to(device), (H, W))[0].cpu()
        alpha = None
        if info.alpha is not None:
            alpha = imresize(info.alpha.unsqueeze(0).double(), size=(H, W))[0].float().clamp(0, 1)
        if bar:
            bar.close()
        bit_depth = info.bit_depth
        if bit_depth == 16 and not args.output.lower().endswith('.png'):
            print(f'note: {os.path.splitext(args.output)[1]} cannot hold 16-bit data; writing 8-bit',
                  file=sys.stderr)
            bit_depth = 8
        save_image(args.output, out, bit_depth=bit_depth, alpha=alpha, mode_hint=info.mode)
        if not args.quiet:
            extra = ''
            if args.cmsr and getattr(model, 'cmsr_stats', None) is not None:
                extra = f'; {model.cmsr_stats.summary()}'
            print(f'{args.input} ({w}x{h}) -> {args.output} ({W}x{H}, x{H / h:.3g} rows, x{W / w:.3g} cols) '
                  f'on {device} in {time.perf_counter() - t:.2f}s'
                  + (f', tiles of {tile}px' if upscaler.tile else '') + extra)
    except (ValueError, ImageError, CheckpointError, ModelSpecError, CMSRError, OSError) as e:
        print(f'demo.py: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('demo.py: interrupted; nothing written', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
