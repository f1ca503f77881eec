"""Upscale an image, or every image of a folder, by any factor (or to any size) with a trained model.

    python demo.py --input photo.png --output photo_x3.5.png --scale 3.5
    python demo.py --input photo.png --output wide.png --scale 3,2          # rows x3, columns x2
    python demo.py --input photo.png --output hd.png --size 1920x1080       # WIDTHxHEIGHT (stretches to 16:9)
    python demo.py --input photo.png --output hd.png --size 1920x1080 --keep-aspect   # fits inside 1920x1080
    python demo.py --input photos/ --output out/ --scale 2 --recursive      # a folder: the tree is mirrored
    python demo.py --input photo.png --output out.png --scale 8 --cmsr save/pretrained_models/edsr-b_lm-liif_cmsr.yaml
    python demo.py --input demo.png --scale 4 --output demo_x4.png --model edsr-b_lm-liif.pth --gpu 0 --fast True

Sizes are written WIDTHxHEIGHT, in flags and prints. Bundled files (the default model, bare checkpoint names
such as edsr-b_lm-liif.pth, save/pretrained_models/... paths, CMSR tables) are found from any working
directory; a path that exists relative to the working directory always wins (engine/inference.py,
resolve_path). Folders: outputs keep the input's sub-folders and file names; existing outputs are skipped
unless --overwrite; a failing image is reported and the others go on (exit status 1 if any failed).

The published LMF flag spellings work next to ours (--gpu N, --fast True/False, --cmsr True --cmsr_path T.yaml,
--cmsr_mse, --scale_max). 8-bit outputs are rounded to the nearest level; --published-quantization truncates as
the published scripts do (byte-identical PNGs; docs/deviations.md, B24).

Gray, RGBA (alpha upscaled separately with bicubic), palette and 16-bit images work; the output keeps the
input's bit depth (16-bit needs a .png output) and colour type; EXIF orientation is applied. On error the
script prints one line, exits with status 1 and writes nothing.
"""
import argparse
import os
import sys
import time

PROGRESS_AFTER = 2.0     # seconds: a run that takes longer shows a progress bar (tqdm's delay)


def build_parser():
    from engine import cli
    from engine.inference import DEFAULT_MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, help='input image (png, jpg, bmp, tif, webp, ...) or a folder of images')
    p.add_argument('--output', required=True,
                   help='output image (the format follows the extension), or a folder when --input is one')
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument('--scale', help="upscaling factor: '2.5', or 'ROWS,COLS' for different factors ('3,2')")
    target.add_argument('--size', help="output size WIDTHxHEIGHT in pixels, e.g. '1920x1080'")
    p.add_argument('--keep-aspect', action='store_true',
                   help='with --size: fit inside WIDTHxHEIGHT keeping the input\'s aspect ratio (default: exactly '
                        'that size; a note says when it changes the aspect ratio)')
    p.add_argument('--model', default=None,
                   help='checkpoint (a bare file name is also looked up in save/pretrained_models/ and save/, '
                        'relative paths also in the repository), or "bicubic" '
                        f'(default: {DEFAULT_MODEL} in the repository)')
    p.add_argument('--recursive', action='store_true', help='folder input: also the images of its sub-folders')
    p.add_argument('--overwrite', action='store_true',
                   help='folder input: replace existing outputs (default: skip the images whose output exists)')
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
    p.add_argument('--quiet', action='store_true', help='no progress bar, notes or summary')
    return p


def target_size(args, h, w, source=None, remark=True):
    """The output (H, W) of an (h, w) input: ``--scale``, or ``--size`` (WIDTHxHEIGHT) with ``--keep-aspect``."""
    from engine.errors import note
    from utils.coords import parse_scale
    from utils.validate import fit_size, output_size, size_text
    if args.size is not None:
        size, note_text = fit_size((h, w), size_text(args.size, '--size'), keep_aspect=args.keep_aspect)
        if note_text and remark and not args.quiet:
            note(note_text + (f' ({source})' if source else ''), 'demo.py')
        label = f'--size {args.size} --keep-aspect (fitted: {size[1]}x{size[0]})' if args.keep_aspect else None
        return output_size((h, w), size=size, size_label=label)
    try:
        scale = parse_scale(args.scale)
    except ValueError as e:
        raise ValueError(f'--scale: {e}') from None
    return output_size((h, w), scale=scale, scale_text=args.scale)


def resolve_files(args, table):
    """The model and CMSR table paths (bundled ones found from any working directory), checked; the table."""
    from engine.inference import resolve_model_path, resolve_path
    from utils import validate
    if args.keep_aspect and args.size is None:
        raise validate.InputError('--keep-aspect needs --size WIDTHxHEIGHT')
    if args.model != 'bicubic':
        args.model = resolve_model_path(args.model)
        validate.input_file(args.model, '--model')
    if table:
        table = resolve_path(table, 'CMSR table')
        validate.input_file(table, '--cmsr')
    return table


def check_request(args, table):
    """One image: files, sizes and the output's memory, before the model is loaded or the image decoded:
    ((h, w), (H, W), device)."""
    from engine import cli
    from engine.memory import check as check_memory
    from utils import validate
    from utils.image import SAVE_FORMATS, read_size
    validate.input_file(args.input, '--input')
    validate.output_file(args.output, '--output', inputs=(args.input, args.model, table), extensions=tuple(SAVE_FORMATS))
    h, w = read_size(args.input)                     # from the header: sizes checked before decoding
    H, W = target_size(args, h, w, remark=False)
    device = cli.choose_device(args.device, args.gpu, 'demo.py')
    check_memory(None, (h, w), (H, W), device=device)
    return (h, w), (H, W), device


def upscale(session, img, size, args, show_progress=True):
    """(3, H, W) on the CPU and the seconds spent in the engine (encoder + decoder). A progress bar over the
    output pixels appears when the run takes more than ``PROGRESS_AFTER`` seconds."""
    import torch
    H, W = size
    bar = None
    if show_progress and not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=H * W, unit='px', unit_scale=True, desc='upscaling', dynamic_ncols=True,
                   delay=PROGRESS_AFTER, file=sys.stderr)
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


def save(args, out, info, output=None):
    """Write the output with the input's alpha, colour type and (PNG) bit depth."""
    from utils.image import save_image
    from utils.imresize import imresize
    output = output or args.output
    H, W = out.shape[-2:]
    alpha = None
    if info.alpha is not None:
        alpha = imresize(info.alpha.unsqueeze(0).double(), size=(H, W))[0].float().clamp(0, 1)
    bit_depth = info.bit_depth
    if bit_depth == 16 and not output.lower().endswith('.png'):
        if not args.quiet:
            print(f'note: {os.path.splitext(output)[1]} cannot hold 16-bit data; writing 8-bit', file=sys.stderr)
        bit_depth = 8
    save_image(output, out, bit_depth=bit_depth, alpha=alpha, mode_hint=info.mode,
               quantization='truncate' if args.published_quantization else 'round')


def upscale_file(args, session, src, dst, show_progress=True):
    """The single-image pipeline (one image of a folder, or the image): ((h, w), (H, W), model seconds)."""
    from utils import validate
    from utils.image import ImageError, load_image, read_size
    validate.input_file(src, '--input')
    h, w = read_size(src)
    H, W = target_size(args, h, w, source=src if src != args.input else None)
    session.check((h, w), (H, W))
    img, info = load_image(src)
    if tuple(img.shape[-2:]) != (h, w):
        raise ImageError(f'{src}: decoded size {w}x{h} from its header differs from the image '
                         f'({img.shape[-1]}x{img.shape[-2]})')
    session.check((h, w), (H, W), bit_depth=info.bit_depth)
    out, model_s = upscale(session, img, (H, W), args, show_progress)
    save(args, out, info, dst)
    return (h, w), (H, W), model_s


def open_session(args, device, table):
    from engine import cli
    from engine.inference import Session
    return Session.open(args.model, device, 'demo.py', chunk=args.bsize, cmsr=table, **cli.session_options(args))


def run_folder(args, table, threads):
    from engine import batch, cli
    plan = batch.plan_folder(args.input, args.output, recursive=args.recursive, overwrite=args.overwrite)
    device = cli.choose_device(args.device, args.gpu, 'demo.py')
    session = open_session(args, device, table)
    t = time.perf_counter()
    summary = batch.run_folder(plan, lambda src, dst: upscale_file(args, session, src, dst, show_progress=False),
                               progress=not args.quiet, desc='upscaling')
    for src, reason in summary.failed:
        print(f'demo.py: error: {src}: {reason}', file=sys.stderr)
    if not args.quiet or summary.failed:
        print(f'{args.input} -> {args.output}: {summary.line()} on {device}'
              + (f' ({threads} thread{"s" * (threads > 1)})' if device == 'cpu' else '') + f' in {time.perf_counter() - t:.2f}s',
              file=sys.stderr if summary.failed else sys.stdout)
    return 1 if summary.failed else 0


def _main(argv):
    args = build_parser().parse_args(argv)
    from engine import cli
    from utils import validate
    validate.cli_numbers(args, 'demo.py', {'max_train_scale': '--scale-max'})
    threads = cli.apply_threads(args)
    table = cli.cmsr_table_path(args.cmsr, args.cmsr_path)        # both spellings -> the table file or None
    table = resolve_files(args, table)
    if os.path.isdir(args.input):
        return run_folder(args, table, threads)
    if args.recursive:
        raise validate.InputError(f'--recursive reads sub-folders of a folder --input; {args.input} is not a folder')
    (h, w), (H, W), device = check_request(args, table)
    session = open_session(args, device, table)
    t = time.perf_counter()
    _, _, model_s = upscale_file(args, session, args.input, args.output)
    if not args.quiet:
        tile = session.tile_for((h, w))
        print(f'{args.input} ({w}x{h}) -> {args.output} ({W}x{H}, x{W / w:.3g} cols, x{H / h:.3g} rows) on {device}'
              + (f' ({threads} thread{"s" * (threads > 1)})' if device == 'cpu' else '')
              + f' in {time.perf_counter() - t:.2f}s (model {model_s:.3f}s)' + (f', tiles of {tile}px' if tile else '')
              + (f'; {session.stats.summary()}' if session.tables is not None else ''))
    return 0


def main(argv=None):
    from engine.errors import run
    return run(_main, argv, 'demo.py')


if __name__ == '__main__':
    sys.exit(main())
