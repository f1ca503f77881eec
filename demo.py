"""Upscale one image by any factor (or to any size) with a trained model.

    python demo.py --input photo.png --output photo_x3.5.png --scale 3.5
    python demo.py --input photo.png --output wide.png --scale 3,2          # rows x3, columns x2
    python demo.py --input photo.png --output hd.png --size 1080x1920       # HEIGHTxWIDTH
    python demo.py --input photo.png --output out.png --scale 8 --cmsr configs/cmsr/result/<table>.yaml
    python demo.py --input demo.png --scale 4 --output demo_x4.png --model edsr-b_lm-liif.pth --gpu 0 --fast True

The published LMF flag spellings work next to ours (--gpu N, --fast True/False, --cmsr True --cmsr_path T.yaml,
--cmsr_mse, --scale_max); a bare checkpoint name is looked up in save/pretrained_models/ (engine/inference.py).
8-bit outputs are rounded to the nearest level; --published-quantization truncates as the published scripts do
(byte-identical PNGs; docs/deviations.md, B24).

Gray, RGBA (alpha upscaled separately with bicubic), palette and 16-bit images work; the output keeps the
input's bit depth (16-bit needs a .png output) and colour type; EXIF orientation is applied. On error the
script prints one line, exits with status 1 and writes nothing.
"""
import argparse
import os
import sys
import time

DEFAULT_MODEL = os.path.join('save', 'pretrained_models', 'edsr-b_lm-liif.pth')
PROGRESS_ABOVE = 4_000_000      # output pixels above which a progress bar is shown


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
    cli.add_session_args(p, window_default='auto', tile_default='auto')
    p.add_argument('--bsize', type=int, default=None,
                   help="queries per decoder call (memory); default: the model's own chunk (LM models: sized from "
                        "this machine's caches)")
    cli.add_cmsr_args(p)
    cli.add_bool_flag(p, '--fast', help='published flag, accepted: the decoder always runs in chunks of --bsize '
                                        'queries here, which gives the same image as the published fast path')
    p.add_argument('--published-quantization', action='store_true',
                   help='truncate to 8 bits as the published demo.py does (default: round to the nearest level)')
    p.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    return p


def target_size(args, h, w):
    from utils.coords import parse_scale
    from utils.validate import output_size, size_text
    if args.size is not None:
        return output_size((h, w), size=size_text(args.size, '--size', order='HxW'))
    try:
        scale = parse_scale(args.scale)
    except ValueError as e:
        raise ValueError(f'--scale: {e}') from None
    return output_size((h, w), scale=scale, scale_text=args.scale)


def check_request(args, table):
    """Files, sizes and the output's memory, before the model is loaded or the image decoded:
    ((h, w), (H, W), device)."""
    from engine import cli
    from engine.memory import check as check_memory
    from utils import validate
    from utils.image import SAVE_FORMATS, read_size
    validate.input_file(args.input, '--input')
    if args.model == DEFAULT_MODEL and not os.path.exists(args.model):
        raise ValueError(f'default model {args.model} not found; pass --model PATH (see README, "Pretrained models")')
    if args.model != 'bicubic' and os.path.exists(args.model):
        validate.input_file(args.model, '--model')
    if table:
        validate.input_file(table, '--cmsr')
    validate.output_file(args.output, '--output', inputs=(args.input, args.model, table), extensions=tuple(SAVE_FORMATS))
    h, w = read_size(args.input)                     # from the header: sizes checked before decoding
    H, W = target_size(args, h, w)
    device = cli.choose_device(args.device, args.gpu, 'demo.py')
    check_memory(None, (h, w), (H, W), device=device)
    return (h, w), (H, W), device


def upscale(session, img, size, args):
    """(3, H, W) on the CPU and the seconds spent in the engine (encoder + decoder)."""
    import torch
    H, W = size
    bar = None
    if H * W > PROGRESS_ABOVE and not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=H * W, unit='px', unit_scale=True, desc='upscaling', dynamic_ncols=True)
    t = time.perf_counter()
    try:
        out = session(img.unsqueeze(0), size, progress=bar.update if bar else None)[0].cpu()
    finally:
        if bar:
            bar.close()
    if not bool(torch.isfinite(out).all()):
        from engine.inference import non_finite_error
        raise non_finite_error(session.model, args.model, args.input, f'{W / img.shape[-1]:.4g}')
    return out, time.perf_counter() - t


def save(args, out, info):
    """Write the output with the input's alpha, colour type and (PNG) bit depth."""
    from utils.image import save_image
    from utils.imresize import imresize
    H, W = out.shape[-2:]
    alpha = None
    if info.alpha is not None:
        alpha = imresize(info.alpha.unsqueeze(0).double(), size=(H, W))[0].float().clamp(0, 1)
    bit_depth = info.bit_depth
    if bit_depth == 16 and not args.output.lower().endswith('.png'):
        print(f'note: {os.path.splitext(args.output)[1]} cannot hold 16-bit data; writing 8-bit', file=sys.stderr)
        bit_depth = 8
    save_image(args.output, out, bit_depth=bit_depth, alpha=alpha, mode_hint=info.mode,
               quantization='truncate' if args.published_quantization else 'round')


def _main(argv):
    args = build_parser().parse_args(argv)
    from engine import cli
    from engine.inference import Session
    from utils import validate
    from utils.image import ImageError, load_image
    validate.cli_numbers(args, 'demo.py', {'max_train_scale': '--scale-max'})
    table = cli.cmsr_table_path(args.cmsr, args.cmsr_path)        # both spellings -> the table file or None
    (h, w), (H, W), device = check_request(args, table)
    img, info = load_image(args.input)
    if tuple(img.shape[-2:]) != (h, w):
        raise ImageError(f'{args.input}: decoded size {tuple(img.shape[-2:])} differs from its header ({h}, {w})')
    session = Session.open(args.model, device, 'demo.py', chunk=args.bsize, cmsr=table, **cli.session_options(args))
    session.check((h, w), (H, W), bit_depth=info.bit_depth)
    t = time.perf_counter()
    out, model_s = upscale(session, img, (H, W), args)
    save(args, out, info)
    if not args.quiet:
        tile = session.tile_for((h, w))
        print(f'{args.input} ({w}x{h}) -> {args.output} ({W}x{H}, x{H / h:.3g} rows, x{W / w:.3g} cols) on {device} '
              f'in {time.perf_counter() - t:.2f}s (model {model_s:.3f}s)' + (f', tiles of {tile}px' if tile else '')
              + (f'; {session.stats.summary()}' if session.tables is not None else ''))
    return 0


def main(argv=None):
    from engine.errors import run
    return run(_main, argv, 'demo.py')


if __name__ == '__main__':
    sys.exit(main())
