"""Benchmark a model: per-image PSNR and SSIM on a test set.

    python test.py --config configs/test/set5-x4.yaml --model save/pretrained_models/edsr-b_lm-liif.pth
    python test.py --config configs/test/set5-x4.yaml --model bicubic
    python test.py --config configs/test-lmf/set14-x8.yaml --model M.pth --cmsr configs/cmsr/result/T.yaml
    python test.py --config configs/test-lmf/test-set5.yaml --model edsr-b_lm-liif.pth --gpu 0 --fast True
    python test.py --config configs/test/set5-x4.yaml --model swinir_lm-liif.pth --window 8   # SwinIR protocol
    torchrun --nproc_per_node 2 test.py --config ...    # images sharded over processes, rows gathered on rank 0

The published LMF flag spellings work next to ours (--gpu N, --fast True/False, --cmsr True --cmsr_path T.yaml,
--cmsr_mse, --scale_max); a bare checkpoint name is looked up in save/pretrained_models/ (engine/inference.py).
As in the published test.py, inputs are not padded unless --window is given (--window 8, or 'auto' for the
encoder's own window, is the published SwinIR evaluation).

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
    cli.add_session_args(p, window_default=0)
    cli.add_bool_flag(p, '--fast',
                      help='--fast / --fast True: query in large chunks (the LM default); --no-fast / --fast False: '
                           'chunks of eval_bsize (the published default for LIIF/LTE/MetaSR). Results are '
                           'identical; only memory and speed differ')
    p.add_argument('--eval-bsize', '--eval_bsize', dest='eval_bsize', type=int, default=None,
                   help='queries per chunk (overrides the config)')
    cli.add_cmsr_args(p)
    p.add_argument('--cmsr-exact-grid', action='store_true',
                   help='CMSR levels on exact pixel grids instead of the published resized LR grid')
    p.add_argument('--save-dir', help='also save the SR images here (<eval_type>_<NNN>.png, 8-bit, rounded)')
    p.add_argument('--published-quantization', action='store_true',
                   help='--save-dir: truncate to 8 bits as the published test.py does (default: round)')
    p.add_argument('--results-dir', help='where the per-image CSV/JSON go (default outputs/test/<model>/<config>)')
    cli.add_device_args(p)
    p.add_argument('--workers', type=int, default=0, help='data-loading processes (default 0)')
    p.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE',
                   help='override config entries, e.g. test_dataset.dataset.args.root_path=/data/Set5/HR')
    p.add_argument('--quiet', action='store_true', help='only the result line')
    return p


def read_config(args):
    """(config, test_dataset spec, eval_type, protocol name) of ``--config`` with ``--opt``, validated."""
    from datasets.build import check_data_norm
    from engine.evaluation import check_protocol, parse_eval_type
    from utils import validate
    from utils.config import ConfigError, apply_overrides, load_config, require
    cfg = apply_overrides(load_config(args.config), args.opt)
    spec = require(cfg, 'test_dataset', where=args.config)
    if not isinstance(spec, dict):
        raise ConfigError(f'{args.config}: test_dataset must be a mapping {{dataset, wrapper, batch_size}}, got '
                          f'{type(spec).__name__}')
    if cfg.get('eval_bsize') is not None:
        validate.integer(cfg['eval_bsize'], f'{args.config}: eval_bsize', minimum=1)
    if validate.integer(spec.get('batch_size', 1), f'{args.config}: test_dataset.batch_size') != 1:
        raise ConfigError(f'{args.config}: test_dataset.batch_size must be 1 (images differ in size)')
    check_data_norm(cfg, args.config)
    protocol = cfg.get('protocol', 'unspecified')
    try:
        parse_eval_type(cfg.get('eval_type'))
        check_protocol(protocol, cfg.get('metrics'))      # scoring chosen by the config (engine/evaluation.py)
    except ValueError as e:
        raise ConfigError(f'{args.config}: {e}') from None
    return cfg, spec, cfg.get('eval_type'), protocol


def output_folders(args, spec=None):
    """The results folder (and --save-dir, never inside the data folders) checked before the evaluation."""
    from datasets.build import data_folders
    from utils import validate
    model_name = 'bicubic' if args.model == 'bicubic' else os.path.splitext(os.path.basename(args.model))[0]
    config_name = os.path.splitext(os.path.basename(args.config))[0]
    folder = args.results_dir or os.path.join('outputs', 'test', model_name, config_name)
    validate.output_folder(folder, '--results-dir', inputs=(args.config, args.model))
    if args.save_dir:
        validate.output_folder(args.save_dir, '--save-dir', inputs=(args.config, args.model), data=data_folders(spec))
    return folder, model_name, config_name


def open_session(args, cfg, device, table):
    """The inference session: published window padding (``--window``), cell clipping, CMSR, chunk size."""
    from engine import cli
    from engine.inference import Session, load_model
    model = load_model(args.model, device, 'test.py')
    fast = args.fast if args.fast is not None else model.capabilities.modulated
    chunk = args.eval_bsize or (None if fast else cfg.get('eval_bsize'))
    return Session(model, device, chunk=chunk, published_window=True, cmsr=table,
                   cmsr_exact_grid=args.cmsr_exact_grid, **cli.session_options(args))


def evaluate_shard(args, session, spec, eval_type, protocol, cfg):
    """This process's images (every world-th under torchrun): the ``Evaluation`` and the dataset indices."""
    from torch.utils.data import DataLoader

    from datasets.build import build_dataset, image_names
    from datasets.image_folder import check_pair_scale
    from engine.distributed import Shard, distributed_env, init_process_group
    from engine.evaluation import evaluate, parse_eval_type
    ds = build_dataset(spec, args.config)
    check_pair_scale(ds, parse_eval_type(eval_type)[1], args.config)   # LR files of another scale: refused
    names = image_names(ds)
    rank, _, _ = distributed_env()
    world = init_process_group(session.device)
    shard = Shard(ds, rank, world) if world > 1 else None
    order = shard.indices if shard else list(range(len(ds)))
    loader = DataLoader(shard or ds, batch_size=1, shuffle=False, num_workers=args.workers)
    bar = None
    if not args.quiet and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(order), desc=os.path.basename(args.config), leave=False, dynamic_ncols=True)
    try:
        result = evaluate(session, loader, eval_type, names=[names[j] for j in order] if names else None,
                          save=image_saver(args, eval_type, order), progress=progress_checker(args, bar),
                          protocol=protocol, metrics=cfg.get('metrics'))
    finally:
        if bar:
            bar.close()
    for row in result.rows:                       # dataset-wide index (sharded runs take every world-th image)
        row['index'] = order[row['index'] - 1] + 1
    return result, world


def non_finite(args, name):
    return ValueError(f'{args.model}: the model predicted non-finite values (NaN/inf) for image {name} '
                      f'(a diverged run?); no result reported')


def progress_checker(args, bar):
    import math

    def progress(i, result):
        row = result.rows[-1]
        if any(isinstance(v, float) and not math.isfinite(v) for v in row.values()):
            raise non_finite(args, row['name'])
        if bar:
            bar.update(1)
    return progress


def image_saver(args, eval_type, order):
    """``save(i, name, pred)`` writing ``<save-dir>/<eval_type>_<NNN>.png`` (the published names), or None."""
    if not args.save_dir:
        return None
    import torch

    from utils.image import save_image

    def save(i, name, pred):
        if not bool(torch.isfinite(pred).all()):
            raise non_finite(args, name)
        os.makedirs(args.save_dir, exist_ok=True)     # only once there is a valid image to write
        save_image(os.path.join(args.save_dir, f'{eval_type or "sr"}_{order[i] + 1:03d}.png'), pred.cpu(),
                   quantization='truncate' if args.published_quantization else 'round')
    return save


def gather_results(result):
    """Every process's rows (sorted by image) and CMSR statistics (summed), on every process."""
    from engine.distributed import gather
    stats = result.stats
    result.rows = sorted((r for part in gather(result.rows) for r in part), key=lambda r: r['index'])
    parts = gather((stats.rendered, stats.queries, stats.renders))
    stats.rendered, stats.queries, stats.renders = (sum(p[k] for p in parts) for k in range(3))
    return result


def summarize(args, result, session, eval_type, protocol, world, table):
    summary = {'config': args.config, 'protocol': protocol, 'eval_type': eval_type, 'model': args.model,
               'images': len(result.rows), 'psnr': result.mean('psnr'), 'ssim': result.mean('ssim'),
               'seconds': sum(r['seconds'] for r in result.rows), **session.describe(), 'processes': world}
    if table is not None:
        stats = result.stats
        summary.update(cmsr_table=table, cmsr_rendered_fraction=stats.fraction, cmsr_render_share=stats.render_share,
                       cmsr_gmacs_saved=stats.macs_saved / 1e9)
        if args.cmsr_mse is not None:
            summary['cmsr_mse'] = args.cmsr_mse
    return summary


def write_results(folder, summary, rows):
    from utils.io import atomic_write
    os.makedirs(folder, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ['index'])
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(os.path.join(folder, 'per_image.csv'), 'w') as f:
        f.write(buf.getvalue())
    with atomic_write(os.path.join(folder, 'per_image.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    with atomic_write(os.path.join(folder, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)


def report(args, summary, result, folder, model_name, config_name):
    if not args.quiet:
        for r in result.rows:
            ssim = f"{r['ssim']:.4f}" if r['ssim'] is not None else 'n/a'
            psnr = f"{r['psnr']:.4f}" if r['psnr'] is not None else 'n/a'
            print(f"  {r['name']:>16s}  {r['lr_size']:>9s} -> {r['hr_size']:>9s}  PSNR {psnr}  "
                  f"SSIM {ssim}  {r['seconds']:.2f}s")
    extra = f', {result.stats.summary()}' if 'cmsr_table' in summary else ''
    print(f'result: PSNR {summary["psnr"]:.4f} dB, SSIM {summary["ssim"]:.4f} ({config_name}, protocol '
          f'{summary["protocol"]}, {summary["eval_type"]}, {len(result.rows)} images, model {model_name}{extra}); '
          f'per-image rows in {folder}')


def _main(argv=None):
    args = build_parser().parse_args(argv)
    from engine import cli
    from engine.distributed import distributed_env
    from utils import validate
    validate.cli_numbers(args, 'test.py', {'max_train_scale': '--scale-max'})
    cfg, spec, eval_type, protocol = read_config(args)
    folder, model_name, config_name = output_folders(args, spec)
    table = cli.cmsr_table_path(args.cmsr, args.cmsr_path)   # contradictory CMSR flags: refused before any work
    device = cli.choose_device(args.device, args.gpu, 'test.py')
    session = open_session(args, cfg, device, table)
    result, world = evaluate_shard(args, session, spec, eval_type, protocol, cfg)
    result = gather_results(result)
    if distributed_env()[0] != 0:
        return 0
    summary = summarize(args, result, session, eval_type, protocol, world, table)
    write_results(folder, summary, result.rows)
    report(args, summary, result, folder, model_name, config_name)
    return 0


def main(argv=None):
    from engine.basicsr.cli import is_option_command, main as option_main
    if is_option_command(sys.argv[1:] if argv is None else argv):      # BasicSR: test.py -opt X.yml
        return option_main(argv, 'test', 'test.py')
    from engine.errors import run
    return run(_main, argv, 'test.py')


if __name__ == '__main__':
    sys.exit(main())
