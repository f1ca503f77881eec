"""Upscale one image by any factor (or to any size) with a trained model.

    python demo.py --input photo.png --output photo_x3.5.png --scale 3.5
    python demo.py --input photo.png --output wide.png --scale 3,2          # rows x3, columns x2
    python demo.py --input photo.png --output hd.png --size 1080x1920       # HEIGHTxWIDTH
    python demo.py --input photo.png --output out.png --scale 8 --cmsr configs/cmsr/result/<table>.yaml
    python demo.py --input demo.png --scale 4 --output demo_x4.png --model edsr-b_lm-liif.pth --gpu 0 --fast True

The published LMF flag spellings work next to ours (--gpu N, --fast True/False, --cmsr True --cmsr_path T.yaml,
--cmsr_mse); a bare checkpoint name is looked up in save/pretrained_models/ (engine/cli.py).

Gray, RGBA (alpha upscaled separately with bicubic), palette and 16-bit images work; the output keeps the
input's bit depth (16-bit needs a .png output) and colour type; EXIF orientation is applied. On error the
script prints one line, exits with status 1 and writes nothing.
"""
import argparse
import os
import sys
import time

DEFAULT_MODEL = os.path.join('save', 'pretrained_models', 'edsr-b_lm-liif.pth')


def parse_size(text):
    from utils.validate import size_text
    return size_text(text, '--size', order='HxW')


def parse_tile(text):
    if text == 'auto':
        return 'auto'
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile must be 'auto', 0 (off) or a size in LR pixels, got {text!r}")
    return value     # range checked with the other numbers (utils.validate.cli_numbers): one line, exit 1


def build_parser():
    from engine import cli
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, help='input image (png, jpg, bmp, tif, webp, ...)')
    p.add_argument('--output', required=True, help='output image; the format follows the extension')
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument('--scale', help="upscaling factor: '2.5', or 'ROWS,COLS' for different factors ('3,2')")
    target.add_argument('--size', help="output size HEIGHTxWIDTH in pixels, e.g. '1080x1920'")
    p.add_argument('--model', default=DEFAULT_MODEL,
                   help=f'checkpoint (a bare file name is also looked up in save/pretrained_models/), or "bicubic" '
                        f'(default: {DEFAULT_MODEL})')
    cli.add_device_args(p)
    p.add_argument('--tile', type=parse_tile, default='auto',
                   help="encode the input in tiles of this many LR pixels to bound memory; 'auto' (default) tiles "
                        "inputs above 512x512 with CNN encoders, where tiling is exact; 0 disables it. With "
                        "SwinIR (window attention) tiled results are only approximately equal")
    p.add_argument('--tile-overlap', type=int, default=None,
                   help='LR pixels of context around each tile (default: exact for the encoder, e.g. 37 for '
                        'EDSR-baseline models)')
    p.add_argument('--bsize', type=int, default=None,
                   help="queries per decoder call (memory); default: the model's own chunk (LM models: sized from "
                        "this machine's caches)")
    p.add_argument('--window', type=int, default=None,
                   help='pad the input to a multiple of this (default: 8 for SwinIR encoders, else 0)')
    cli.add_cmsr_args(p)
    cli.add_bool_flag(p, '--fast', help='published flag, accepted: the decoder always runs in chunks of --bsize '
                                        'queries here, which gives the same image as the published fast path')
    p.add_argument('--scale-max', '--scale_max', dest='scale_max', type=cli.positive_float, default=None,
                   help="largest training scale for cell clipping (default: the checkpoint's, else 4)")
    p.add_argument('--no-cell-clip', action='store_true',
                   help='do not clip cells to the largest training scale (clipping is the published default)')
    p.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    return p


def target_size(args, h, w):
    from utils.coords import parse_scale
    from utils.validate import output_size
    if args.size is not None:
        return output_size((h, w), size=parse_size(args.size))
    try:
        scale = parse_scale(args.scale)
    except ValueError as e:
        raise ValueError(f'--scale: {e}') from None
    return output_size((h, w), scale=scale, scale_text=args.scale)


def load_any_model(spec, device):
    """(model in eval mode on ``device``, checkpoint or None); see ``engine.cli.load_model``."""
    from engine import cli
    if spec == DEFAULT_MODEL and not os.path.exists(spec):
        raise ValueError(f'default model {spec} not found; pass --model PATH (see README, "Pretrained models")')
    return cli.load_model(spec, device, 'demo.py')


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import torch
        from engine import cli
        from engine.inference import Upscaler, exact_overlap
        from engine.memory import check as check_memory
        from models import CheckpointError, ModelSpecError
        from engine.cmsr import CMSRError
        from utils import validate
        from utils.image import SAVE_FORMATS, ImageError, load_image, read_size, save_image
        from utils.imresize import imresize
    except ImportError as e:     # e.g. a Python without torch: say so in one line
        from engine import cli
        return cli.missing_requirements(e, 'demo.py')
    try:
        validate.cli_numbers(args, 'demo.py')
        args.cmsr = cli.cmsr_table_path(args.cmsr, args.cmsr_path)     # both spellings -> the table file or None
        validate.input_file(args.input, '--input')
        if args.model != 'bicubic' and os.path.exists(args.model):
            validate.input_file(args.model, '--model')
        if args.cmsr:
            validate.input_file(args.cmsr, '--cmsr')
        validate.output_file(args.output, '--output', inputs=(args.input, args.model, args.cmsr),
                             extensions=tuple(SAVE_FORMATS))
        h, w = read_size(args.input)                     # from the header: sizes checked before decoding
        H, W = target_size(args, h, w)
        device = cli.choose_device(args.device, args.gpu, 'demo.py')
        check_memory(None, (h, w), (H, W), device=device)   # before decoding the image and loading the model
        img, info = load_image(args.input)
        if tuple(img.shape[-2:]) != (h, w):
            raise ImageError(f'{args.input}: decoded size {tuple(img.shape[-2:])} differs from its header ({h}, {w})')
        model, ckpt = load_any_model(args.model, device)
        from engine.render import check_target
        check_target(model.capabilities, (h, w), (H, W))
        tables = None
        if args.cmsr:
            from engine import cmsr
            if not model.capabilities.modulated:
                raise ValueError(f'--cmsr needs an LM model (lmliif, lmlte, lmciaosr); {args.model} is '
                                 f'{model.capabilities.name or type(model).__name__}')
            tables = cmsr.load_tables(args.cmsr, model.capabilities)
        caps = model.capabilities
        window = args.window if args.window is not None else caps.window
        tile, overlap = args.tile, args.tile_overlap
        if tile == 'auto':
            exact = exact_overlap(model) if caps.kind != 'image' else None
            tile = 256 if (h * w > 512 * 512 and exact is not None and not args.cmsr) else None
        elif tile == 0:
            tile = None
        check_memory(model, (h, w), (H, W), device=device, bsize=args.bsize, tile=tile,
                     tile_overlap=overlap if overlap is not None else (exact_overlap(model) if tile else None),
                     bit_depth=info.bit_depth)
        big = H * W > 4_000_000
        bar = None
        if big and not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=H * W, unit='px', unit_scale=True, desc='upscaling', dynamic_ncols=True)
        upscaler = Upscaler(model, bsize=args.bsize, tile=tile, tile_overlap=overlap, window=window,
                            clip_cells=not args.no_cell_clip, progress=bar.update if bar else None,
                            cmsr_tables=tables, max_train_scale=cli.max_train_scale(model, ckpt, args.scale_max))
        t = time.perf_counter()
        try:
            out = upscaler(img.unsqueeze(0).to(device), (H, W))[0].cpu()
        finally:
            if bar:
                bar.close()
        model_s = time.perf_counter() - t       # encoder + decoder through the engine (what the benchmark times)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f'{args.model}: the model predicted non-finite values (NaN/inf) for {args.input}; '
                             f'its weights are broken (a diverged run?); nothing written')
        alpha = None
        if info.alpha is not None:
            alpha = imresize(info.alpha.unsqueeze(0).double(), size=(H, W))[0].float().clamp(0, 1)
        bit_depth = info.bit_depth
        if bit_depth == 16 and not args.output.lower().endswith('.png'):
            print(f'note: {os.path.splitext(args.output)[1]} cannot hold 16-bit data; writing 8-bit',
                  file=sys.stderr)
            bit_depth = 8
        save_image(args.output, out, bit_depth=bit_depth, alpha=alpha, mode_hint=info.mode)
        if not args.quiet:
            extra = ''
            if tables is not None:
                extra = f'; {upscaler.stats.summary()}'
            print(f'{args.input} ({w}x{h}) -> {args.output} ({W}x{H}, x{H / h:.3g} rows, x{W / w:.3g} cols) '
                  f'on {device} in {time.perf_counter() - t:.2f}s (model {model_s:.3f}s)'
                  + (f', tiles of {tile}px' if upscaler.tile else '') + extra)
    except (ValueError, ImageError, CheckpointError, ModelSpecError, CMSRError, OSError) as e:
        print(f'demo.py: error: {e}', file=sys.stderr)
        return 1
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(f'demo.py: error: out of memory ({validate.one_line(e, 200) or "MemoryError"}); use --tile, a smaller '
              f'--bsize or a smaller --size/--scale; nothing written', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('demo.py: interrupted; nothing written', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
