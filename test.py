"""Benchmark a model: per-image PSNR and SSIM on a test set.

    python test.py --config configs/test/set5-x4.yaml --model save/pretrained_models/edsr-b_lm-liif.pth
    python test.py --config configs/test/set5-x4.yaml --model bicubic
    python test.py --config configs/test-lmf/set14-x8.yaml --model M.pth --cmsr configs/cmsr/result/T.yaml
    python test.py --config configs/test-lmf/test-set5.yaml --model edsr-b_lm-liif.pth --gpu 0 --fast True
    torchrun --nproc_per_node 2 test.py --config ...    # images sharded over processes, rows gathered on rank 0

The published LMF flag spellings work next to ours (--gpu N, --fast True/False, --cmsr True --cmsr_path T.yaml,
--cmsr_mse, --scale_max); a bare checkpoint name is looked up in save/pretrained_models/ (engine/cli.py).

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
    from engine import cli
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='test config (configs/test/*.yaml or configs/test-lmf/*.yaml)')
    p.add_argument('--model', required=True,
                   help='checkpoint (.pth; a bare file name is also looked up in save/pretrained_models/), or '
                        '"bicubic" for the MATLAB bicubic baseline')
    p.add_argument('--window', type=int, default=None,
                   help='pad inputs to a multiple of this, as the published SwinIR evaluation (default: 8 for '
                        'SwinIR encoders, else 0)')
    cli.add_bool_flag(p, '--fast',
                      help='--fast / --fast True: query in large chunks (the LM default); --no-fast / --fast False: '
                           'chunks of eval_bsize (the published default for LIIF/LTE/MetaSR). Results are '
                           'identical; only memory and speed differ')
    p.add_argument('--eval-bsize', '--eval_bsize', dest='eval_bsize', type=int, default=None,
                   help='queries per chunk (overrides the config)')
    p.add_argument('--scale-max', '--scale_max', dest='scale_max', type=cli.positive_float, default=None,
                   help='largest training scale: cells are clipped by max(scale / scale_max, 1) (default: from '
                        "the checkpoint's training config, else the model's default, 4)")
    p.add_argument('--no-cell-clip', action='store_true',
                   help='do not clip cells (the LIIF repository protocol; clipping is the LTE/LMF default)')
    p.add_argument('--tile', type=int, default=None, help='encode inputs in tiles of this many LR pixels')
    p.add_argument('--tile-overlap', type=int, default=None, help='LR pixels of context around each tile')
    cli.add_cmsr_args(p)
    p.add_argument('--cmsr-exact-grid', action='store_true',
                   help='CMSR levels on exact pixel grids instead of the published resized LR grid')
    p.add_argument('--save-dir', help='also save the SR images here (<eval_type>_<NNN>.png, 8-bit, rounded)')
    p.add_argument('--results-dir', help='where the per-image CSV/JSON go (default outputs/test/<model>/<config>)')
    cli.add_device_args(p)
    p.add_argument('--workers', type=int, default=0, help='data-loading processes (default 0)')
    p.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE',
                   help='override config entries, e.g. test_dataset.dataset.args.root_path=/data/Set5/HR')
    p.add_argument('--quiet', action='store_true', help='only the result line')
    return p


def image_names(ds):
    """File stems of the HR images behind a (wrapped) test dataset, in order."""
    from engine.cli import image_names as names
    return names(ds)


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
    from engine import cli
    from engine.basicsr.cli import is_option_command, main as option_main
    if is_option_command(sys.argv[1:] if argv is None else argv):      # BasicSR: test.py -opt X.yml
        return option_main(argv, 'test', 'test.py')
    return cli.run(_main, argv, 'test.py')


def _main(argv=None):
    args = build_parser().parse_args(argv)
    import torch
    from torch.utils.data import DataLoader

    from engine import cli
    from engine.evaluation import evaluate, parse_eval_type
    from utils.config import ConfigError, apply_overrides, load_config, require
    from utils.image import save_image

    from datasets.image_folder import check_pair_scale
    from utils import validate
    validate.cli_numbers(args, 'test.py')
    args.tile = args.tile or None          # --tile 0: no tiling (as demo.py)
    cfg = apply_overrides(load_config(args.config), args.opt)
    spec = require(cfg, 'test_dataset', where=args.config)
    if not isinstance(spec, dict):
        raise ConfigError(f'{args.config}: test_dataset must be a mapping {{dataset, wrapper, batch_size}}, got '
                          f'{type(spec).__name__}')
    if cfg.get('eval_bsize') is not None:
        validate.integer(cfg['eval_bsize'], f'{args.config}: eval_bsize', minimum=1)
    cli.check_data_norm(cfg, args.config)
    eval_type = cfg.get('eval_type')
    try:
        eval_scale = parse_eval_type(eval_type)[1]
    except ValueError as e:
        raise ConfigError(f'{args.config}: {e}') from None
    model_name = 'bicubic' if args.model == 'bicubic' else os.path.splitext(os.path.basename(args.model))[0]
    config_name = os.path.splitext(os.path.basename(args.config))[0]
    folder = args.results_dir or os.path.join('outputs', 'test', model_name, config_name)
    validate.output_folder(folder, '--results-dir', inputs=(args.config, args.model))   # before the evaluation
    if args.save_dir:
        validate.output_folder(args.save_dir, '--save-dir', inputs=(args.config, args.model))
    protocol = cfg.get('protocol', 'unspecified')
    from engine.evaluation import check_protocol
    try:                                              # scoring chosen by the config (engine/evaluation.py)
        check_protocol(protocol, cfg.get('metrics'))
    except ValueError as e:
        raise ConfigError(f'{args.config}: {e}') from None
    table_path = cli.cmsr_table_path(args.cmsr, args.cmsr_path)
    device = cli.choose_device(args.device, args.gpu, 'test.py')
    rank, world, _ = cli.distributed_env()
    if validate.integer(spec.get('batch_size', 1), f'{args.config}: test_dataset.batch_size') != 1:
        raise ConfigError(f'{args.config}: test_dataset.batch_size must be 1 (images differ in size)')
    ds = cli.build_dataset(spec, args.config)
    check_pair_scale(ds, eval_scale, args.config)     # LR files of another scale are not scored under this label
    names = image_names(ds)
    model, ckpt = cli.load_model(args.model, device, 'test.py')
    scale_max = cli.max_train_scale(model, ckpt, args.scale_max)
    tables = None
    if table_path:
        from engine import cmsr
        if not model.capabilities.modulated:
            raise ValueError(f'--cmsr needs an LM model (lmliif, lmlte, lmciaosr), not {model.spec["name"]}')
        tables = cmsr.load_tables(table_path, model.capabilities)
    window = args.window if args.window is not None else model.capabilities.window
    fast = args.fast if args.fast is not None else model.capabilities.modulated
    bsize = args.eval_bsize or (None if fast else cfg.get('eval_bsize'))

    world = cli.init_process_group(device)
    shard = cli.Shard(ds, rank, world) if world > 1 else None
    order = shard.indices if shard else list(range(len(ds)))
    loader = DataLoader(shard or ds, batch_size=1, shuffle=False, num_workers=args.workers)

    def check_finite(i, name, pred):
        if not bool(torch.isfinite(pred).all()):
            raise ValueError(f'{args.model}: the model predicted non-finite values (NaN/inf) for image {name} '
                             f'(a diverged run?); no result reported')

    def progress(i, r):
        row = r.rows[-1]
        if not all(v is None or v == v and abs(v) != float('inf') for v in (row['psnr'], row['ssim'])):
            check_finite(i, row['name'], torch.tensor(float('nan')))
        if bar:
            bar.update(1)

    save = None
    if args.save_dir:
        def save(i, name, pred):
            check_finite(i, name, pred)
            os.makedirs(args.save_dir, exist_ok=True)     # only once there is a valid image to write
            save_image(os.path.join(args.save_dir, f'{eval_type or "sr"}_{order[i] + 1:03d}.png'), pred.cpu())

    bar = None
    if not args.quiet and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(order), desc=os.path.basename(args.config), leave=False, dynamic_ncols=True)
    try:
        result = evaluate(model, loader, eval_type, names=[names[j] for j in order] if names else None,
                          bsize=bsize, window=window, tile=args.tile, tile_overlap=args.tile_overlap, device=device,
                          save=save, progress=progress, clip_cells=not args.no_cell_clip,
                          max_train_scale=scale_max, cmsr_tables=tables, cmsr_exact_grid=args.cmsr_exact_grid,
                          protocol=protocol, metrics=cfg.get('metrics'))
    finally:
        if bar:
            bar.close()
    for row in result.rows:                       # dataset-wide index (sharded runs take every world-th image)
        row['index'] = order[row['index'] - 1] + 1
    stats = result.stats if tables else None
    rows = [r for part in cli.gather(result.rows) for r in part]
    stats_parts = cli.gather((stats.rendered, stats.queries, stats.renders) if stats else None)
    if rank != 0:
        return 0
    rows.sort(key=lambda r: r['index'])
    result.rows = rows
    if stats is not None:
        stats.rendered = sum(p[0] for p in stats_parts)
        stats.queries = sum(p[1] for p in stats_parts)
        stats.renders = sum(p[2] for p in stats_parts)
    summary = {'config': args.config, 'protocol': protocol, 'eval_type': eval_type, 'model': args.model,
               'images': len(result.rows), 'psnr': result.mean('psnr'), 'ssim': result.mean('ssim'),
               'seconds': sum(r['seconds'] for r in result.rows), 'window': window, 'device': device,
               'cell_clip': None if args.no_cell_clip else scale_max, 'processes': world}
    if tables:
        summary['cmsr_table'] = table_path
        if args.cmsr_mse is not None:
            summary['cmsr_mse'] = args.cmsr_mse
        summary['cmsr_rendered_fraction'] = stats.fraction
        summary['cmsr_render_share'] = stats.render_share
        summary['cmsr_gmacs_saved'] = stats.macs_saved / 1e9
    write_results(folder, summary, result.rows)
    if not args.quiet:
        for r in result.rows:
            ssim = f"{r['ssim']:.4f}" if r['ssim'] is not None else 'n/a'
            psnr = f"{r['psnr']:.4f}" if r['psnr'] is not None else 'n/a'
            print(f"  {r['name']:>16s}  {r['lr_size']:>9s} -> {r['hr_size']:>9s}  PSNR {psnr}  "
                  f"SSIM {ssim}  {r['seconds']:.2f}s")
    extra = f', {stats.summary()}' if tables else ''
    print(f'result: PSNR {summary["psnr"]:.4f} dB, SSIM {summary["ssim"]:.4f} ({config_name}, protocol {protocol}, '
          f'{eval_type}, {len(result.rows)} images, model {model_name}{extra}); per-image rows in {folder}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
