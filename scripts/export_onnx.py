"""Export a model to ONNX and check it with ONNX Runtime (CPU) against PyTorch before writing it.

    # image to image at a fixed scale, any input size (what ONNX upscalers such as chaiNNer load)
    python -m scripts.export_onnx --model save/pretrained_models/edsr-b_lm-liif.pth --form fixed --scale 4 \\
        --output lm-liif_x4.onnx
    # arbitrary scale: inputs image, coord and cell (any size, scale and query set)
    python -m scripts.export_onnx --model edsr-b_lm-liif.safetensors --form arbitrary --output lm-liif.onnx

Forms (engine/export.py):
  fixed      image (B, 3, h, w) float32 in [0, 1] -> output (B, 3, floor(h*sy), floor(w*sx)) in [0, 1].
             Implicit models (LIIF, LTE, MetaSR, LM-LIIF, LM-LTE) at any scale >= 1 ('3.5', rows,cols '3,2');
             IGConv SR models at integer scales.
  arbitrary  implicit models: image (B, 3, h, w) in [0, 1], coord (B, Q, 2), cell (B, Q, 2) -> rgb (B, Q, 3)
             in [0, 1]; coord = target pixel centres (row, col) in (-1, 1), cell = (2/H, 2/W) times the
             clipping factor max(scale / max_train_scale, 1) (engine.export.grid_inputs computes both).
             IGConv SR models: image, scale (int64 scalar, an integer >= 1) -> output (B, 3, r*h, r*w): the
             kernels are generated in the graph for the scale given at run time.
Batch and sizes are dynamic in both forms, the channel dimension is 3. The fixed form of implicit models
queries the output in an ONNX Loop of --chunk queries per iteration, so its memory does not grow with the
output (the bundled LM-LIIF: 234 MB peak in ONNX Runtime for a 512x600 output, README "ONNX"); the
arbitrary form answers the queries it is given (render large outputs in tiles: engine.export.run_tiled).
Before writing, the export is run in ONNX Runtime and compared with the PyTorch model (the engine for the
fixed form, prepare/query for the arbitrary form) on --check-sizes (and --check-scales for the arbitrary
form); the script says which inputs and sizes it verified and writes nothing if any difference exceeds
--tol (default half an 8-bit level, engine.export.DEFAULT_TOL).
"""
import argparse
import os
import sys
import time

if not __package__:   # run as a file: the project's packages are importable only from the repository root
    sys.exit('export_onnx.py: error: run it from the repository root as a module: python -m scripts.export_onnx ...')

SCRIPT = 'export_onnx.py'
#: output pixels of one check (--check-sizes times the scale): a chunked fixed graph's memory does not grow with
#: them (only the time does); a graph that answers every query at once (the arbitrary form, --chunk 0) needs
#: about 7.5 KB per pixel for LM-LIIF and several times that for LIIF
MAX_CHECK_PIXELS = 16 << 20
MAX_CHECK_QUERIES_AT_ONCE = 1 << 18


def parse_sizes(text, name='--check-sizes'):
    """'20x24,17x13' (WIDTHxHEIGHT each, the project's size convention) -> [(24, 20), (13, 17)] as (h, w)."""
    from utils.validate import InputError, size_text
    parts = [p for p in str(text).split(',') if p.strip()]
    if not parts:
        raise InputError(f'{name}: give at least one size WIDTHxHEIGHT')
    sizes = [size_text(p.strip(), name, order='WxH') for p in parts]
    for h, w in sizes:
        if h > 512 or w > 512:
            raise InputError(f'{name}: {w}x{h} is larger than the 512x512 a check allows (it runs on the CPU)')
    return sizes


def parse_scales(text, name='--check-scales'):
    from utils.validate import InputError
    out = []
    for p in str(text).split(','):
        p = p.strip()
        try:
            v = float(p)
        except ValueError:
            raise InputError(f'{name}: {p!r} is not a number') from None
        if not (v >= 1 and v < 1e3):
            raise InputError(f'{name}: {p} must be >= 1 (and below 1000)')
        out.append(v)
    if not out:
        raise InputError(f'{name}: give at least one scale')
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True,
                   help='checkpoint (.pth or .safetensors; a bare file name is also looked up in save/pretrained_models/)')
    p.add_argument('--output', required=True, help='the .onnx file to write')
    p.add_argument('--form', choices=('fixed', 'arbitrary'), default='fixed', help='graph form (default: fixed)')
    p.add_argument('--scale', help="fixed form: the scale, '4', '3.5' or rows,cols '3,2'")
    p.add_argument('--opset', type=int, default=17, help='ONNX opset, 17 to the highest this torch exports (default 17)')
    p.add_argument('--chunk', type=int, default=None,
                   help='fixed form of implicit models: queries per graph loop iteration, bounding its memory '
                        '(default 16384, about 120 MB of working set for LM-LIIF); 0: every query at once')
    p.add_argument('--scale-max', '--scale_max', dest='max_train_scale', type=float, default=None,
                   help="largest training scale for cell clipping (default: the checkpoint's, else the model's)")
    p.add_argument('--check-sizes', default='20x24,17x13,9x31',
                   help='LR sizes WIDTHxHEIGHT the export is checked on (default: 20x24,17x13,9x31; the export '
                        'itself traces 20x24, so the others check that sizes are dynamic)')
    p.add_argument('--check-scales', default=None,
                   help='arbitrary form: scales checked (default 2,3.5,6; IGConv models 2,3,4)')
    p.add_argument('--tol', type=float, default=None,
                   help='largest accepted |ONNX Runtime - PyTorch| in [0, 1] image units (default 0.5/255 = '
                        '1.96e-3: half an 8-bit level, so a saved 8-bit image moves by at most one level; float32 '
                        'reordering and one-ulp coordinate differences give about 1e-6 to 1e-4)')
    p.add_argument('--quiet', action='store_true', help='only errors')
    from engine import cli
    cli.add_threads_arg(p)
    return p


def check_args(args):
    """The numbers and the form's options, before anything is loaded: (fixed-form scale or None, sizes)."""
    from engine import export
    from utils.validate import InputError, cli_numbers
    if not 17 <= args.opset <= export.max_opset():
        raise InputError(f'--opset must be from 17 to {export.max_opset()} (what torch {torch_version()} exports), '
                         f'got {args.opset}')
    if args.tol is None:
        args.tol = export.DEFAULT_TOL
    if not (0 < args.tol <= 0.5):
        raise InputError(f'--tol must be in (0, 0.5] (image units, [0, 1]), got {args.tol}')
    if args.chunk is not None and not 0 <= args.chunk <= 1 << 24:
        raise InputError(f'--chunk must be 0 (no loop) or a number of queries up to {1 << 24}, got {args.chunk}')
    if args.chunk is not None and args.form != 'fixed':
        raise InputError('--chunk is for --form fixed (the arbitrary form answers the queries it is given)')
    cli_numbers(args, SCRIPT, {'max_train_scale': '--scale-max'})
    if args.form == 'fixed' and args.scale is None:
        raise InputError('--form fixed needs --scale')
    if args.form == 'arbitrary' and args.scale is not None:
        raise InputError('--scale is for --form fixed; the arbitrary form takes the scale at run time')
    if args.form == 'fixed' and args.check_scales is not None:
        raise InputError('--check-scales is for --form arbitrary (the fixed form is checked at --scale)')
    scale = export.parse_export_scale(args.scale) if args.form == 'fixed' else None
    sizes = parse_sizes(args.check_sizes)
    if scale is not None:
        check_outputs(sizes, [args.scale], MAX_CHECK_PIXELS if args.chunk != 0 else MAX_CHECK_QUERIES_AT_ONCE,
                      '--scale', '' if args.chunk != 0 else ' with --chunk 0')
    if args.form == 'arbitrary' and args.check_scales is not None:
        check_outputs(sizes, parse_scales(args.check_scales), MAX_CHECK_QUERIES_AT_ONCE, '--check-scales',
                      ' (the arbitrary form answers every query of a check at once)')
    return scale, sizes


def check_outputs(sizes, scales, limit, flag, why=''):
    """Refuse scales whose check outputs (--check-sizes times each scale) exceed ``limit`` pixels."""
    from engine import export
    from utils.validate import InputError
    for s in scales:
        for h, w in sizes:     # the checks render these in PyTorch and ONNX Runtime on the CPU
            H, W = export.output_size((h, w), s)
            if H * W > limit:
                raise InputError(f'{flag} {s}: the check of {h}x{w} would render {H}x{W}, more than the '
                                 f'{limit:,} pixels a check allows{why} (a smaller {flag} or --check-sizes)')


def torch_version():
    import torch
    return torch.__version__


def export_graph(session, args, scale, path):
    """(ONNX bytes with the metadata, the graph, metadata dict) of the session's model in ``args.form``."""
    import onnx

    from engine import export
    model, kind = session.model, session.model.capabilities.kind
    graph = export.make_graph(model, args.form, scale, max_train_scale=session.max_train_scale)
    example = export.example_inputs(args.form, (24, 20), scale or 2.0, max_train_scale=session.max_train_scale,
                                    kind=kind)
    chunk = export.DEFAULT_CHUNK if args.chunk is None else (args.chunk or None)
    proto = onnx.load_from_string(export.export_onnx(graph, args.form, args.opset, example, chunk=chunk))
    onnx.checker.check_model(proto)
    meta = {'assr.model': model.capabilities.name or type(model).__name__, 'assr.form': args.form,
            'assr.input': 'image: float32 RGB (B, 3, h, w) in [0, 1]',
            'assr.max_train_scale': f'{session.max_train_scale:g}', 'assr.source': os.path.basename(path)}
    if scale is not None:
        meta['assr.scale'] = f'{graph.scale[0]:g},{graph.scale[1]:g}'
        if kind == 'implicit' and chunk:
            meta['assr.chunk'] = f'{chunk} queries per loop iteration'
    elif kind == 'grid':
        meta['assr.scale'] = 'input "scale": int64 scalar, an integer >= 1'
    else:
        meta['assr.coords'] = ('coord: (row, col) target pixel centres in (-1, 1); cell: (2/H, 2/W) * '
                               'max(scale / max_train_scale, 1) per axis')
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto.SerializeToString(), graph, meta


def check_lines(results, tol):
    """One line per ONNX Runtime check; a ValueError (nothing written) when one exceeds ``tol``."""
    lines = []
    for r in results:
        h, w = r['size']
        sy, sx = r['scale']
        out = r['out']
        osize = f'{out[3]}x{out[2]}' if len(out) == 4 else f'{out[1]} queries'
        lines.append(f'  input {w}x{h}, x{sy:g}' + (f',{sx:g}' if sx != sy else '')
                     + f' -> {osize}: max |ONNX Runtime - PyTorch| = {r["max_diff"]:.2e}'
                     + ('' if r['ok'] else f'  > {tol:g}'))
    bad = [r for r in results if not r['ok']]
    if bad:
        raise ValueError(f'the ONNX export differs from PyTorch by more than {tol:g} on '
                         f'{len(bad)} of {len(results)} checks; nothing written:\n' + '\n'.join(lines))
    return lines


def main(argv=None):
    args = build_parser().parse_args(argv)
    from utils.validate import InputError, input_file, output_file
    try:
        import onnxruntime
    except ImportError as e:
        raise InputError(f'{e}; install the requirements (pip install -r requirements.txt: onnx, onnxruntime)') \
            from None
    import torch
    from engine import export
    from engine.inference import Session, resolve_model_path
    scale, sizes = check_args(args)
    from engine import cli
    cli.apply_threads(args)
    path = resolve_model_path(args.model)
    input_file(path, '--model')
    output_file(args.output, '--output', inputs=(path,), extensions=('.onnx',))
    session = Session.open(path, 'cpu', SCRIPT, max_train_scale=args.max_train_scale)
    kind = session.model.capabilities.kind
    scales = None
    if args.form == 'arbitrary':
        scales = parse_scales(args.check_scales or ('2,3,4' if kind == 'grid' else '2,3.5,6'))
        check_outputs(sizes, scales, MAX_CHECK_QUERIES_AT_ONCE, '--check-scales',
                      ' (the arbitrary form answers every query of a check at once)')
        for s in scales if kind == 'grid' else ():     # refused before any export work
            export.example_inputs('arbitrary', (1, 1), s, kind='grid')
    t = time.perf_counter()
    data, graph, meta = export_graph(session, args, scale, path)
    from tqdm import tqdm          # the parity checks, one size at a time (stderr; --quiet: none)
    results = [r for size in tqdm(sizes, desc='ONNX Runtime checks', unit='size', leave=False, disable=args.quiet)
               for r in export.verify(session.model, data, args.form, graph.scale if scale is not None else None,
                                      [size], scales, args.tol, max_train_scale=session.max_train_scale)]
    lines = check_lines(results, args.tol)
    from utils.io import atomic_write
    with atomic_write(args.output, 'wb') as f:
        f.write(data)
    if not args.quiet:
        what = f'x{args.scale}' if scale is not None else \
            ('run-time integer scale' if kind == 'grid' else 'arbitrary scale')
        print(f'{path} ({meta["assr.model"]}) -> {args.output} (form {args.form}, {what}, opset {args.opset}, '
              f'{len(data) / 2**20:.1f} MiB, {time.perf_counter() - t:.1f}s)')
        print(f'verified with ONNX Runtime {onnxruntime.__version__} (CPU) against PyTorch {torch.__version__}, '
              f'tolerance {args.tol:.3g} = {args.tol * 255:.2g} of an 8-bit level (traced at 20x24):')
        print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    from engine.errors import run
    sys.exit(run(main, script=SCRIPT))
