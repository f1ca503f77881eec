"""Benchmark a model: per-image PSNR and SSIM on a test set.

    python test.py --config configs/test/set5-x4.yaml --model save/pretrained_models/edsr-b_lm-liif.pth
    python test.py --config configs/test/set5-x4.yaml --model bicubic
    python test.py --config configs/test-lmf/set14-x8.yaml --model M.pth --cmsr configs/cmsr/result/T.yaml

configs/test/ follow the LIIF/LTE protocol ('test-original': published MATLAB-bicubic LR for x2-x4 where
the set has them, on-the-fly downscaling beyond); configs/test-lmf/ follow the LMF repository
('test-lmf': on-the-fly PIL-bicubic LR at every scale). Benchmarks are scored on Y with a border of
`scale` pixels removed, DIV2K validation on RGB with scale + 6 removed (see engine/evaluation.py).

Writes per_image.csv, per_image.json and summary.json to --results-dir (default
outputs/test/<model>/<config>/). SR images are saved only with --save-dir.
"""
import argparse
import csv
import io
import json
import os
import sys


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='test config (configs/test/*.yaml or configs/test-lmf/*.yaml)')
    p.add_argument('--model', required=True, help='checkpoint (.pth), or "bicubic" for the MATLAB bicubic baseline')
    p.add_argument('--window', type=int, default=None,
                   help='pad inputs to a multiple of this, as the published SwinIR evaluation (default: 8 for '
                        'SwinIR encoders, else 0)')
    p.add_argument('--fast', action=argparse.BooleanOptionalAction, default=None,
                   help='--fast: query in large chunks (the LM default); --no-fast: chunks of eval_bsize (the '
                        'published default for LIIF/LTE/MetaSR). Results are identical; only memory and speed differ')
    p.add_argument('--eval-bsize', type=int, default=None, help='queries per chunk (overrides the config)')
    p.add_argument('--tile', type=int, default=None, help='encode inputs in tiles of this many LR pixels')
    p.add_argument('--tile-overlap', type=int, default=None, help='LR pixels of context around each tile')
    p.add_argument('--cmsr', metavar='TABLE.yaml', help='render with CMSR (LM models, scales beyond x4)')
    p.add_argument('--cmsr-exact-grid', action='store_true',
                   help='CMSR levels on exact pixel grids instead of the published resized LR grid')
    p.add_argument('--save-dir', help='also save the SR images here (<eval_type>_<NNN>.png, 8-bit, rounded)')
    p.add_argument('--results-dir', help='where the per-image CSV/JSON go (default outputs/test/<model>/<config>)')
    p.add_argument('--device', choices=['cpu', 'cuda', 'mps'], default=None, help='default: cuda if available')
    p.add_argument('--workers', type=int, default=0, help='data-loading processes (default 0)')
    p.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE',
                   help='override config entries, e.g. test_dataset.dataset.args.root_path=/data/Set5/HR')
    p.add_argument('--quiet', action='store_true', help='only the result line')
    return p


def image_names(ds):
    """File stems of the HR images behind a (wrapped) test dataset, in order."""
    base = getattr(ds, 'dataset', ds)
    folder = getattr(base, 'dataset_2', base)
    files = getattr(folder, 'files', None)
    if not files:
        return None
    return [os.path.splitext(os.path.basename(f))[0] for f in files] * getattr(folder, 'repeat', 1)


def write_results(folder, summary, rows):
    from utils.io import atomic_write
    os.makedirs(folder, exist_ok=True)
    fields = ['index', 'name', 'lr_size', 'hr_size', 'psnr', 'ssim', 'seconds']
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(os.path.join(folder, 'per_image.csv'), 'w') as f:
        f.write(buf.getvalue())
    with atomic_write(os.path.join(folder, 'per_image.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    with atomic_write(os.path.join(folder, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import torch
        from torch.utils.data import DataLoader

        import datasets
        import models
        from engine.evaluation import evaluate, parse_eval_type
        from models.cmsr import CMSRError
        from utils.config import ConfigError, apply_overrides, load_config, require
        from utils.image import ImageError, save_image

        cfg = apply_overrides(load_config(args.config), args.opt)
        spec = require(cfg, 'test_dataset', where=args.config)
        eval_type = cfg.get('eval_type')
        parse_eval_type(eval_type)
        protocol = cfg.get('protocol', 'unspecified')
        device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
        if args.model == 'bicubic':
            model = models.make({'name': 'bicubic'})
        else:
            model = models.load_model(args.model, map_location=device)
        model = model.to(device).eval()
        if args.cmsr:
            if not hasattr(model, 'set_cmsr'):
                raise ValueError(f'--cmsr needs an LM model (lmliif, lmlte), not {model.spec["name"]}')
            model.set_cmsr(args.cmsr, exact_grid=args.cmsr_exact_grid)
        encoder = getattr(model, 'encoder', None)
        window = args.window if args.window is not None else getattr(encoder, 'window_size', 0)
        is_lm = hasattr(model, 'set_cmsr')
        fast = args.fast if args.fast is not None else is_lm
        bsize = args.eval_bsize or (None if fast else cfg.get('eval_bsize'))

        ds = datasets.make(require(spec, 'dataset', where=args.config))
        if spec.get('wrapper'):
            ds = datasets.make(spec['wrapper'], args={'dataset': ds})
        if int(spec.get('batch_size', 1)) != 1:
            raise ConfigError(f'{args.config}: test_dataset.batch_size must be 1 (images differ in size)')
        loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=args.workers)
        names = image_names(ds)

        save = None
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)

            def save(i, name, pred):
                save_image(os.path.join(args.save_dir, f'{eval_type or "sr"}_{i + 1:03d}.png'), pred.cpu())

        bar = None
        if not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=len(ds), desc=os.path.basename(args.config), leave=False, dynamic_ncols=True)
        result = evaluate(model, loader, eval_type, names=names, bsize=bsize, window=window, tile=args.tile,
                          tile_overlap=args.tile_overlap, device=device, save=save,
                          progress=(lambda i, r: bar.update(1)) if bar else None)
        if bar:
            bar.close()
        model_name = 'bicubic' if args.model == 'bicubic' else os.path.splitext(os.path.basename(args.model))[0]
        config_name = os.path.splitext(os.path.basename(args.config))[0]
        summary = {'config': args.config, 'protocol': protocol, 'eval_type': eval_type, 'model': args.model,
                   'images': len(result.rows), 'psnr': result.mean('psnr'), 'ssim': result.mean('ssim'),
                   'seconds': sum(r['seconds'] for r in result.rows), 'window': window, 'device': device}
        if args.cmsr:
            summary['cmsr_table'] = args.cmsr
            summary['cmsr_rendered_fraction'] = model.cmsr_stats.fraction
            summary['cmsr_render_share'] = model.cmsr_stats.render_share
            summary['cmsr_gmacs_saved'] = model.cmsr_stats.macs_saved / 1e9
        folder = args.results_dir or os.path.join('outputs', 'test', model_name, config_name)
        write_results(folder, summary, result.rows)
        if not args.quiet:
            for r in result.rows:
                ssim = f"{r['ssim']:.4f}" if r['ssim'] is not None else 'n/a'
                print(f"  {r['name']:>16s}  {r['lr_size']:>9s} -> {r['hr_size']:>9s}  PSNR {r['psnr']:.4f}  "
                      f"SSIM {ssim}  {r['seconds']:.2f}s")
        extra = ''
        if args.cmsr:
            extra = f', {model.cmsr_stats.summary()}'
        print(f'result: PSNR {summary["psnr"]:.4f} dB, SSIM {summary["ssim"]:.4f} ({config_name}, protocol {protocol}, '
              f'{eval_type}, {len(result.rows)} images, model {model_name}{extra}); per-image rows in {folder}')
    except (ValueError, ConfigError, ImageError, CMSRError, models.CheckpointError, models.ModelSpecError,
            FileNotFoundError) as e:
        print(f'test.py: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
