"""Efficiency benchmark: parameters, MACs, latency and peak memory per model and scale.

    python -m scripts.benchmark                                   # 320x180 input, default rows, CPU
    python -m scripts.benchmark --input 160x90 --scales 2,4,8 --models liif,lmliif,lte,lmlte
    python -m scripts.benchmark --input 160x90 --scales 8 --models lmliif --demo       # + demo.py time in the model
    python -m scripts.benchmark --device cuda --render-mode compile
    python -m scripts.benchmark --input 160x90 --scales 2,4 --models lmliif,liif,igconv --onnx   # + ONNX Runtime rows

Every model uses the full EDSR-baseline encoder (random weights, which do not change the cost), except the
CMSR rows, which need a trained LM model and its Scale2Mod table (--lmliif-checkpoint / --lmliif-cmsr,
defaults: the bundled ones). Decoder = everything after the encoder; decoder time = the whole upscaling
through the rendering engine (engine.inference.Upscaler: the path demo.py and test.py take, with the
model's own chunk size, grid queries and CMSR) minus the encoder forward (medians) for implicit models,
the upsampler alone on the encoder's features for IGConv (folded with instantiate(scale)) and the sub-pixel
tail. MACs are counted (FlopCounterMode; implicit models on the meta device through the model's general
query path, which for LM models includes the published per-query layer-0 work that the engine's grid
path computes once per LR pixel) and, for implicit models, compared with the closed form of
models/complexity.py. The reference rates are measured at the start of the same run
(engine.profiling.reference_rates: a 2048^3 GEMM, a oneDNN 3x3 convolution of EDSR-baseline's shape, the
render-MLP layer on its chosen kernel and the latent-MLP layers; bf16 ones only where the device has native
bf16) and each decoder's GMAC/s is given as a share of the best float32 one, which the table names.
--bf16-rows adds, after each LM row, the same row in the bf16 render mode with its golden-case error
(marked 'emulated' on CPUs without native bf16). Writes benchmark.md, benchmark.csv and efficiency.png
to --out.
"""
import argparse
import csv
import math
import os
import shutil
import sys
import time

if not __package__:   # run as a file: the project's packages are importable only from the repository root
    sys.exit('benchmark.py: error: run it from the repository root as a module: python -m scripts.benchmark ...')

try:
    import torch  # noqa: E402

    import models  # noqa: E402
    from engine.cli import RENDER_KERNELS  # noqa: E402
    from engine.profiling import count_macs, native_bf16, peak_memory, reference_rates, time_fn  # noqa: E402
    from models.decoders import fused_render  # noqa: E402
    from models.complexity import decoder_macs  # noqa: E402
    from utils import validate  # noqa: E402
    from utils.config import load_config  # noqa: E402
    from utils.io import atomic_write  # noqa: E402
except ImportError as _e:      # e.g. a Python without torch: one line, not a traceback
    sys.exit(f'benchmark.py: error: {_e} (install the requirements: pip install -r requirements.txt)')

from engine.inference import BUNDLED_DIR, REPO_ROOT as ROOT  # noqa: E402  (the one repository root)
CONFIGS = {
    'liif': 'configs/train-original/train_edsr-baseline-liif.yaml',
    'lte': 'configs/train-original/train_edsr-baseline-lte.yaml',
    'metasr': 'configs/train-original/train_edsr-baseline-metasr.yaml',
    'lmliif': 'configs/train-lmf/train_edsr-baseline-lmliif.yaml',
    'lmlte': 'configs/train-lmf/train_edsr-baseline-lmlte.yaml',
    'ciaosr': 'configs/train-original/train_edsr-baseline-ciaosr.yaml',
    'lmciaosr': 'configs/train-lmf/train_edsr-baseline-lmciaosr.yaml',
    'lte-fast': 'configs/train-original/train_edsr-baseline-lte-fast.yaml',
}
GRID_MODELS = {'igconv': 'igconv-edsr-baseline', 'igconv+': 'igconv-plus-edsr-baseline'}
DEFAULT_MODELS = 'liif,lmliif,lte,lmlte,metasr,igconv,igconv+,subpixel,lmliif+cmsr,lmlte+cmsr'


def parse_size(text):
    w, h = (int(v) for v in text.lower().split('x'))
    return h, w


def n_params(module):
    return sum(p.numel() for p in module.parameters())


class Row(dict):
    pass


#: Scale2Mod tables of the '+cmsr' rows (an argument of the engine's CMSR strategy, not model state)
CMSR_TABLES = {}


def build(name, args):
    """(model, kind) for a row name; kind is 'implicit', 'grid' or 'subpixel'."""
    base = name.split('+cmsr')[0]
    if name.endswith('+cmsr'):
        ckpt = getattr(args, f'{base}_checkpoint')
        table = getattr(args, f'{base}_cmsr')
        if not (ckpt and os.path.exists(ckpt) and table and os.path.exists(table)):
            return None, f'needs a trained {base} checkpoint and its CMSR table (--{base}-checkpoint, --{base}-cmsr)'
        from engine import cmsr
        model = models.load_model(ckpt)
        CMSR_TABLES[name] = cmsr.load_tables(table, model.capabilities)
        return model, 'implicit'
    if base in CONFIGS:
        return models.make(load_config(os.path.join(ROOT, CONFIGS[base]))['model']), 'implicit'
    if base in GRID_MODELS:
        return models.make({'name': GRID_MODELS[base], 'args': {}}), 'grid'
    if base == 'subpixel':
        return None, 'subpixel'
    raise SystemExit(f'benchmark.py: error: unknown model row {name!r}; known: {DEFAULT_MODELS}')


def subpixel_model(scale):
    return models.make({'name': 'edsr-baseline', 'args': {'scale': scale}})


def _subpixel_case(row, scale, inp, device):
    """(full, enc, dec) callables of the EDSR-baseline sub-pixel tail at ``scale``; fills params and GMACs."""
    h, w = inp.shape[-2:]
    model = subpixel_model(scale).to(device).eval()
    encoder = models.make({'name': 'edsr-baseline', 'args': {'no_upsampling': True}}).to(device).eval()
    row['enc_params'] = n_params(encoder)
    row['dec_params'] = n_params(model) - n_params(encoder)
    meta = subpixel_model(scale).to('meta')
    minp = torch.empty(1, 3, h, w, device='meta')
    row['enc_gmacs'] = count_macs(lambda: meta.body(meta.head(minp))) / 1e9
    row['dec_gmacs'] = count_macs(lambda: meta(minp)) / 1e9 - row['enc_gmacs']
    feat = encoder(inp).detach()
    return (lambda: model(inp)), (lambda: encoder(inp)), (lambda: model.tail(feat))


def _igconv_case(row, model, scale, inp, device):
    """(full, enc, dec) of an IGConv model folded at ``scale`` (its deployment form)."""
    h, w = inp.shape[-2:]
    folded = model.instantiate(scale).to(device).eval()
    row['dec_params'] = n_params(folded) - row['enc_params']
    meta = models.make(model.spec).to('meta').instantiate(scale)
    minp = torch.empty(1, 3, h, w, device='meta')
    row['enc_gmacs'] = count_macs(lambda: meta.encoder(minp)) / 1e9
    row['dec_gmacs'] = count_macs(lambda: meta(minp, scale)) / 1e9 - row['enc_gmacs']
    with torch.no_grad():
        feat = model.encoder(inp)

    def dec():
        out = folded.upsampler(feat)
        return out if folded.skip is None else out + folded.skip(inp, feat)
    return (lambda: folded(inp, scale)), (lambda: model.encoder(inp)), dec


def _engine_case(row, name, model, scale, inp, args):
    """(full, enc, None) of an implicit (or whole-grid) model through the engine, as demo.py / test.py run it
    (the model's chunking, grid queries, CMSR); the decoder is the whole upscaling minus the encoder."""
    from engine.inference import Upscaler
    h, w = inp.shape[-2:]
    H, W = h * scale, w * scale
    closed = decoder_macs(model, (h, w), (H, W))
    whole_grid = model.capabilities.kind == 'grid'     # LTE-fast: renders whole target grids
    if whole_grid:
        per_lr, per_hr = model.decoder_macs()
        closed = per_lr * h * w + per_hr * H * W
    row['closed_gmacs'] = None if closed is None else closed / 1e9
    tables = CMSR_TABLES.get(name)
    up = Upscaler(model, bsize=args.bsize, cmsr_tables=tables)
    img = inp.clamp(-1, 1) * 0.5 + 0.5
    row['chunk'] = args.bsize or model.capabilities.chunk
    if tables is None:   # counted on the meta device through the model's general query path
        meta = models.make(model.spec).to('meta').eval()
        minp = torch.empty(1, 3, h, w, device='meta')
        mc, mcell = torch.empty(1, H * W, 2, device='meta'), torch.empty(1, H * W, 2, device='meta')
        row['enc_gmacs'] = count_macs(lambda: meta.encoder(minp)) / 1e9
        dec_fn = (lambda: meta.upscale_grid(minp, (H, W), (2 / H, 2 / W))) if whole_grid \
            else (lambda: meta(minp, mc, mcell))
        row['dec_gmacs'] = count_macs(dec_fn) / 1e9 - row['enc_gmacs']
    else:   # data-dependent: count on the real run, through the unfused path (the fused C kernel's products
        # are invisible to FlopCounterMode; both paths do the same products)
        options = model.render_options() if model.capabilities.modulated else None
        if options is not None:
            model.set_render_mode(**{**options, 'kernel': 'mm'})
        try:
            row['enc_gmacs'] = count_macs(lambda: model.encoder(inp)) / 1e9
            row['dec_gmacs'] = count_macs(lambda: up(img, (H, W))) / 1e9 - row['enc_gmacs']
        finally:
            if options is not None:
                model.set_render_mode(**options)
        row['rendered_fraction'] = up.stats.fraction
    return (lambda: up(img, (H, W))), (lambda: model.encoder(inp)), None


def _time_row(row, full, enc, dec, args, device):
    """Encoder, whole and decoder medians, the decoder rate and the peak memory, into ``row``."""
    row['enc_s'] = time_fn(enc, device, args.repeats, args.warmup)
    row['total_s'] = time_fn(full, device, args.repeats, args.warmup)
    if dec is not None:   # upsampler tails: timed directly on the encoder's features
        row['dec_s'] = time_fn(dec, device, args.repeats, args.warmup)
    elif row['total_s'] > row['enc_s']:
        row['dec_s'] = row['total_s'] - row['enc_s']
    else:     # the medians contradict each other: a busy machine; no decoder rate rather than a made-up one
        row['note'] = 'decoder not timed: encoder median >= whole-upscaling median (busy machine?), rerun'
    if row.get('dec_s') is not None:
        row['dec_gmac_per_s'] = row['dec_gmacs'] / row['dec_s']
    mem = peak_memory(full, device)
    row['peak_mb'] = None if mem is None else mem / 2 ** 20


def measure(name, model, kind, scale, lr, args, device, previous, label=None):
    """One row: model ``name`` (its CMSR tables, if a '+cmsr' row) at ``scale``, shown as ``label`` (default
    ``name``; the bf16 rows add ' bf16')."""
    h, w = lr
    H, W = h * scale, w * scale
    row = Row(model=label or name, scale=scale, input=f'{w}x{h}', output=f'{W}x{H}')
    inp = torch.randn(1, 3, h, w, device=device)
    if kind == 'subpixel':
        if scale not in (2, 3, 4, 8):
            row['note'] = 'sub-pixel tail exists for x2, x3, x4, x8 only'
            return row
        full, enc, dec = _subpixel_case(row, scale, inp, device)
    else:
        model = model.to(device).eval()
        row['enc_params'] = n_params(model.encoder)
        row['dec_params'] = n_params(model) - row['enc_params']
        if kind == 'grid':
            full, enc, dec = _igconv_case(row, model, scale, inp, device)
        else:
            full, enc, dec = _engine_case(row, name, model, scale, inp, args)
    row['_q'] = H * W
    # latency, unless the previous scale predicts it would take too long
    if previous is not None and previous.get('total_s') is not None:
        est = previous['total_s'] * (H * W) / previous['_q']
        if est > args.max_seconds:
            row['note'] = f'not timed (estimated {est:.0f} s > --max-seconds {args.max_seconds:g})'
            return row
    _time_row(row, full, enc, dec, args, device)
    return row


def demo_check(args, scales, rows, device):
    """``demo.py --scale S`` on a random image of the --input size with the bundled LM-LIIF: the model seconds it
    reports (encoder + decoder through the engine, median of --repeats runs after --warmup) next to the lmliif
    row's enc + dec seconds of this run. Returns [(scale, demo seconds, benchmark seconds)]."""
    import re
    import tempfile
    from contextlib import redirect_stdout
    from io import StringIO

    import demo
    from PIL import Image
    h, w = parse_size(args.input)
    by = {(r['model'], r['scale']): r for r in rows}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'in.png')
        Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()).save(src)
        for s in scales:
            row = by.get(('lmliif', s))
            if row is None or row.get('total_s') is None:
                continue
            times = []
            for i in range(args.warmup + args.repeats):
                buf = StringIO()
                with redirect_stdout(buf):
                    code = demo.main(['--input', src, '--output', os.path.join(tmp, 'out.png'), '--scale', str(s),
                                      '--model', args.lmliif_checkpoint, '--device', device, '--tile', '0',
                                      '--threads', str(torch.get_num_threads())]
                                     + (['--bsize', str(args.bsize)] if args.bsize else []))
                found = re.search(r'\(model ([0-9.]+)s\)', buf.getvalue())
                if code != 0 or not found:
                    raise RuntimeError(f'demo.py failed: {buf.getvalue().strip()}')
                if i >= args.warmup:
                    times.append(float(found.group(1)))
            out.append((s, sorted(times)[len(times) // 2], row['total_s']))
    return out


def golden_check(args, mode=None):
    """Max |diff| of the LM golden cases in render mode ``mode`` (default --render-mode; None if ../shared is
    absent)."""
    from utils.coords import make_cell, make_coord
    folder = args.golden
    if not folder or not os.path.isdir(folder):
        return None
    worst = {}
    for name in ('lmliif_edsr', 'lmlte_edsr'):
        case = torch.load(os.path.join(folder, f'{name}.pt'), weights_only=True)
        model = models.make(case['model'], load_sd=True).eval()
        apply_render_mode(model, args, mode)
        diff = 0.0
        for q in case['queries']:
            H, W = q['size']
            with torch.no_grad():
                pred = model(case['inp'], make_coord((H, W)).unsqueeze(0), make_cell((H, W)).unsqueeze(0) * q['cell_clip'])
            diff = max(diff, (pred - q['pred']).abs().max().item())
        worst[name] = diff
    return worst


def apply_render_mode(model, args, mode=None):
    """Put an LM model in render mode ``mode`` (default --render-mode) with --render-kernel."""
    mode = mode or args.render_mode
    if model.capabilities.modulated:
        model.set_render_mode('bfloat16' if mode == 'bf16' else 'float32', compile=mode == 'compile',
                              kernel=args.render_kernel)


def fmt(v, digits=3):
    if v is None:
        return '—'
    if isinstance(v, float):
        if v == 0:
            return '0'
        if abs(v) >= 100:
            return f'{v:,.0f}'
        return f'{v:.{digits}g}'
    if isinstance(v, int):
        return f'{v:,}'
    return str(v)


def share(rate, refs):
    """``rate`` (GMAC/s) as a percentage of the best float32 reference rate."""
    return 100 * rate / refs.best[1]


def kernel_text(args):
    """--render-kernel as used on the CPU (what 'auto' resolves to, and why not 'fused' where it does not)."""
    if args.render_kernel != 'auto':
        return args.render_kernel
    ok, why = fused_render.status()
    return 'auto (fused C kernel for float32 LM rows)' if ok else f'auto (mm: the fused kernel is unavailable: {why})'


def markdown(rows, args, refs, golden, device_name, demo_rows=()):
    h, w = parse_size(args.input)
    best, best_rate = refs.best
    lines = [f'Input {w}x{h}, device {device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, '
             f'render mode {args.render_mode}, render kernel {kernel_text(args)}. Reference rates measured at the start of this run (medians); every '
             f'share is of the best float32 one, **{best}** ({refs.describe(best)}): {best_rate:.1f} GMAC/s. '
             f'bf16: {refs.bf16_note}.', '', *refs.lines(), '',
             '| model | scale | output | enc params | dec params | enc GMACs | dec GMACs (counted) | dec GMACs '
             f'(closed form) | enc s | dec s | dec GMAC/s (% of {best}) | peak MB | note |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        rate_s = '—' if r.get('dec_gmac_per_s') is None else \
            f"{r['dec_gmac_per_s']:.1f} ({share(r['dec_gmac_per_s'], refs):.0f}%)"
        note = r.get('note', '')
        if r.get('rendered_fraction') is not None:
            frac = r['rendered_fraction']
            note = (note + ' ' if note else '') + ('CMSR not used (within the training scales)' if math.isnan(frac)
                                                   else f'CMSR rendered fraction {frac:.3f}')
        lines.append(f"| {r['model']} | x{r['scale']} | {r['output']} | {fmt(r.get('enc_params'))} | "
                     f"{fmt(r.get('dec_params'))} | {fmt(r.get('enc_gmacs'))} | {fmt(r.get('dec_gmacs'))} | "
                     f"{fmt(r.get('closed_gmacs'))} | {fmt(r.get('enc_s'))} | {fmt(r.get('dec_s'))} | {rate_s} | "
                     f"{fmt(r.get('peak_mb'))} | {note} |")
    by = {(r['model'], r['scale']): r for r in rows}
    pairs = [('liif', 'lmliif'), ('lte', 'lmlte'), ('lmliif', 'lmliif+cmsr'), ('lmlte', 'lmlte+cmsr')]
    scales = sorted({r['scale'] for r in rows})
    ratio_lines = ['', '| ratio | ' + ' | '.join(f'x{s}' for s in scales) + ' |',
                   '|---|' + '---|' * len(scales)]
    for a, b in pairs:
        if not any((a, s) in by and (b, s) in by for s in scales):
            continue
        for what, key in (('MACs', 'dec_gmacs'), ('time', 'dec_s')):
            cells = []
            for s in scales:
                ra, rb = by.get((a, s)), by.get((b, s))
                if ra and rb and ra.get(key) and rb.get(key):
                    cells.append(f'{ra[key] / rb[key]:.1f}x')
                else:
                    cells.append('—')
            ratio_lines.append(f'| {a} / {b} decoder {what} | ' + ' | '.join(cells) + ' |')
    lines += ratio_lines
    for s, demo_s, bench_s in demo_rows:
        lines += ['', f'demo.py --scale {s} on a {w}x{h} image (bundled LM-LIIF): {demo_s:.3f} s in the model, '
                      f'benchmark lmliif x{s} enc + dec {bench_s:.3f} s ({100 * (demo_s / bench_s - 1):+.1f}%).']
    if golden:
        lines += ['', 'Golden cases in this render mode, max |diff|: ' +
                  ', '.join(f'{k} {v:.2e}' for k, v in golden.items())]
    return '\n'.join(lines) + '\n'


def plot(rows, path, title):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib not installed: no plot', file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r['model'] for r in rows):
        rs = [r for r in rows if r['model'] == name]
        for ax, key in zip(axes, ('dec_gmacs', 'dec_s')):
            pts = [(r['scale'], r[key]) for r in rs if r.get(key)]
            if pts:
                ax.plot(*zip(*pts), marker='o', label=name)
    for ax, label in zip(axes, ('decoder GMACs', 'decoder time (s)')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('scale')
        ax.set_ylabel(label)
        ax.grid(True, which='both', alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    return True


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', default='320x180', help='LR input WIDTHxHEIGHT (default 320x180, as the LMF figure)')
    p.add_argument('--scales', default='2,4,8,12,30', help='comma-separated integer scales')
    p.add_argument('--models', default=DEFAULT_MODELS, help=f'rows (default {DEFAULT_MODELS})')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    from engine import cli
    cli.add_threads_arg(p)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--max-seconds', type=float, default=120,
                   help='skip timing a row whose whole forward is predicted to take longer (default 120)')
    p.add_argument('--bsize', type=int, default=None,
                   help='queries per decoder chunk for implicit models (default: each model\'s eval_bsize)')
    p.add_argument('--render-mode', choices=['float32', 'compile', 'bf16'], default='float32',
                   help='LM render path: default float32, torch.compile, or bfloat16')
    p.add_argument('--render-kernel', choices=RENDER_KERNELS, default='auto',
                   help="LM render kernel (default auto, what demo.py and test.py use: the fused C kernel where it "
                        'applies, else mm; models/decoders/fused_render.py, render_kernels.py)')
    p.add_argument('--bf16-rows', action='store_true',
                   help='after each LM row, the same row in the bf16 render mode with its golden-case error '
                        "(marked 'emulated' where the device has no native bf16)")
    p.add_argument('--lmliif-checkpoint', default=os.path.join(BUNDLED_DIR, 'edsr-b_lm-liif.pth'))
    p.add_argument('--lmliif-cmsr', default=os.path.join(BUNDLED_DIR, 'edsr-b_lm-liif_cmsr.yaml'))
    p.add_argument('--lmlte-checkpoint', default=os.path.join(BUNDLED_DIR, 'edsr-b_lm-lte.pth'))
    p.add_argument('--lmlte-cmsr', default=os.path.join(BUNDLED_DIR, 'edsr-b_lm-lte_cmsr.yaml'))
    p.add_argument('--golden', default=os.path.join(os.path.dirname(ROOT), 'shared', 'golden'),
                   help='folder of golden cases to re-check in the benchmarked render mode')
    p.add_argument('--out', default=None, help='output folder (default outputs/benchmark/<device>_<input>)')
    p.add_argument('--onnx', action='store_true',
                   help='also export each implicit / IGConv row as a fixed-scale ONNX graph and time it in ONNX Runtime '
                        '(CPU), next to the same graph in PyTorch (engine/export.py benchmark_row)')
    p.add_argument('--demo', action='store_true',
                   help="also run demo.py --scale S (bundled LM-LIIF, --lmliif-checkpoint) on an image of the --input "
                        "size and report the seconds it spends in the model next to the lmliif row's enc + dec")
    return p


def check_options(args, parser):
    """Every option checked before any compute or write: ((h, w), scales, device, output folder)."""
    h, w = validate.size_text(args.input, '--input', order='WxH')
    scales = validate.scales_list(args.scales, '--scales', integers=True, minimum=2)
    validate.cli_numbers(args, 'benchmark.py')
    from engine import cli
    cli.apply_threads(args)
    device = cli.choose_device(args.device, None, 'benchmark.py')
    if args.render_kernel == 'fused' and (args.render_mode != 'float32' or args.bf16_rows):
        raise validate.InputError('--render-kernel fused renders in float32 only: drop --render-mode '
                                  f'{args.render_mode}' + (' and --bf16-rows' if args.bf16_rows else '')
                                  if args.render_mode != 'float32' else
                                  '--render-kernel fused renders in float32 only: drop --bf16-rows or use auto')
    names = [n.strip() for n in args.models.split(',')]
    known = set(CONFIGS) | set(GRID_MODELS) | {'subpixel'}
    cmsr_rows = {f'{b}+cmsr' for b in CONFIGS if f'--{b}-checkpoint' in parser._option_string_actions}
    unknown = [n for n in names if n not in known and n not in cmsr_rows]
    if unknown:
        raise validate.InputError(f'--models: unknown row(s) {", ".join(map(repr, unknown))}; known: {DEFAULT_MODELS}')
    for n in names:           # the trained rows' files, read now rather than after the first rows ran
        base = n.split('+cmsr')[0]
        if n in cmsr_rows:
            ckpt, table = getattr(args, f'{base}_checkpoint'), getattr(args, f'{base}_cmsr')
            if ckpt and os.path.exists(ckpt) and table and os.path.exists(table):
                from engine import cmsr
                cmsr.load_tables(table, models.load_model(ckpt).capabilities)
    out = args.out or os.path.join(ROOT, 'outputs', 'benchmark', f'{torch.device(device).type}_{args.input}')
    validate.output_folder(out, '--out')
    check_memory((h, w), scales, device, args)
    return (h, w), scales, device, out


def check_memory(lr, scales, device, args):
    """Refuse, before any compute, an input or largest scale whose images alone cannot fit in memory
    (``engine.memory``'s estimate of the input and output buffers; rows too slow to time are skipped later by
    --max-seconds, not refused here)."""
    from engine import memory
    h, w = lr
    s = max(scales)
    try:
        memory.check(None, (h, w), (h * s, w * s), device, what=f'x{s}: the output')
    except memory.MemoryEstimateError as e:
        raise validate.InputError(f'--input {args.input} --scales {args.scales}: {e}') from None


def run_rows(args, lr, scales, device):
    """The benchmark rows of every model and scale (plus the ONNX rows with ``--onnx`` and the bf16 rows of
    LM models with ``--bf16-rows``)."""
    rows = []
    bf16_golden = golden_check(args, 'bf16') if args.bf16_rows else None
    bf16_note = 'bf16 render' + ('' if native_bf16(device)[0] else ' emulated (no native bf16)')
    for name in args.models.split(','):
        model, kind = build(name.strip(), args)
        if model is None and kind != 'subpixel':
            print(f'skipping {name}: {kind}', file=sys.stderr)
            continue
        if model is not None:
            apply_render_mode(model, args)
        previous = previous_bf16 = None
        for s in scales:
            t = time.perf_counter()
            row = measure(name, model, kind, s, lr, args, device, previous)
            if row.get('total_s') is not None:
                previous = row
            rows.append(row)
            print(f"{name:>12s} x{s:<3d} dec {fmt(row.get('dec_gmacs'))} GMACs, {fmt(row.get('dec_s'))} s "
                  f"{row.get('note', '')} ({time.perf_counter() - t:.0f}s)", flush=True)
            if args.bf16_rows and model is not None and model.capabilities.modulated and args.render_mode != 'bf16' \
                    and row.get('total_s') is not None:
                rows.append(bf16_row(name, model, kind, s, lr, args, device, bf16_note, bf16_golden, previous_bf16))
                if rows[-1].get('total_s') is not None:
                    previous_bf16 = rows[-1]
            if args.onnx and kind != 'subpixel' and not name.endswith('+cmsr'):
                from engine.export import benchmark_row
                orow = benchmark_row(name, model, s, lr, args.repeats, args.warmup)
                rows.append(orow)
                print(f"{orow['model']:>12s} x{s:<3d} {orow['note']}", flush=True)
    return rows


def bf16_row(name, model, kind, scale, lr, args, device, note, golden, previous=None):
    """The row of ``name`` at ``scale`` in the bf16 render mode (the model is put back in --render-mode after);
    ``previous``: its bf16 row at the previous scale, for --max-seconds (bf16 rows are skipped by their own time)."""
    apply_render_mode(model, args, 'bf16')
    try:
        row = measure(name, model, kind, scale, lr, args, device, previous, label=f'{name} bf16')
    finally:
        apply_render_mode(model, args)
    base = name.split('+cmsr')[0]
    err = (golden or {}).get({'lmliif': 'lmliif_edsr', 'lmlte': 'lmlte_edsr'}.get(base))
    row['note'] = ' '.join(filter(None, [row.get('note'), note,
                                         None if err is None else f'(golden max |diff| {err:.1e})']))
    print(f"{row['model']:>12s} x{scale:<3d} dec {fmt(row.get('dec_s'))} s {row['note']}", flush=True)
    return row


def write_outputs(out, text, rows, lr, device_name):
    with atomic_write(os.path.join(out, 'benchmark.md'), 'w') as f:
        f.write(text)
    keys = ['model', 'scale', 'input', 'output', 'enc_params', 'dec_params', 'enc_gmacs', 'dec_gmacs', 'closed_gmacs',
            'enc_s', 'total_s', 'dec_s', 'dec_gmac_per_s', 'peak_mb', 'rendered_fraction', 'note']
    with atomic_write(os.path.join(out, 'benchmark.csv'), 'w') as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    h, w = lr
    if plot(rows, os.path.join(out, 'efficiency.png'), f'Decoder cost vs scale, {w}x{h} input ({device_name})'):
        print(f'wrote {out}/benchmark.md, benchmark.csv, efficiency.png')


def main(argv=None):
    """Errors are one line (``engine.errors.run``); the output folder is made only when the results are written,
    and removed again if writing them fails and it did not exist before."""
    from engine.errors import run
    return run(_main, argv, 'benchmark.py')


def _main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    lr, scales, device, out = check_options(args, parser)
    device_name = torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'
    torch.manual_seed(0)
    refs = reference_rates(device)
    print('\n'.join(refs.lines()), flush=True)
    rows = run_rows(args, lr, scales, device)
    demo_rows = demo_check(args, scales, rows, device) if args.demo else ()
    for s, demo_s, bench_s in demo_rows:
        print(f'demo.py --scale {s}: model {demo_s:.3f} s vs benchmark enc + dec {bench_s:.3f} s', flush=True)
    text = markdown(rows, args, refs, golden_check(args), device_name, demo_rows)
    print('\n' + text)
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        write_outputs(out, text, rows, lr, device_name)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return 0


if __name__ == '__main__':
    sys.exit(main())
