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

Writes per_image.csv, per_image.json and summary.json to --results-dir, default
outputs/test/<protocol>/<config folder>_<config>/<checkpoint folder>_<checkpoint>[+options] (options that change
the result: --cmsr table and grid, --window, --tile, --tile-overlap, --scale-max, --no-cell-clip, --opt), so runs
of different protocols, configs, checkpoints (every run's epoch-best.pth) or options never share a folder. A folder
that already holds results is refused unless --overwrite. SR images are saved only with --save-dir, named after
their HR files (baby.png); a --save-dir that already holds files is refused unless --overwrite, and one inside a
dataset folder being read is refused. Results and images are written to temporary names and moved into place at
the end: a failed run leaves nothing behind.
"""
import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys

#: Files of a results folder (one evaluation).
RESULT_FILES = ('per_image.csv', 'per_image.json', 'summary.json')


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
    p.add_argument('--save-dir', help='also save the SR images here, named after their HR files (baby.png; 8-bit, '
                                      'rounded)')
    p.add_argument('--published-quantization', action='store_true',
                   help='--save-dir: truncate to 8 bits as the published test.py does (default: round)')
    p.add_argument('--results-dir', help='where the per-image CSV/JSON and summary.json go (default '
                                         'outputs/test/<protocol>/<config>/<checkpoint>[+options])')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the results of an earlier run in the results folder (and files in --save-dir); '
                        'without it such folders are refused')
    cli.add_device_args(p)
    p.add_argument('--workers', type=int, default=0, help='data-loading processes (default 0)')
    p.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE',
                   help='override config entries, e.g. test_dataset.dataset.args.root_path=/data/Set5/HR')
    p.add_argument('--quiet', action='store_true', help='only the result line (no per-image lines, no progress bar)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (it goes to stderr, one step per image)')
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


def _tag(text):
    """A file-name-safe component: characters other than letters, digits, '.', '-', '_' become '_'."""
    return re.sub(r'[^A-Za-z0-9._-]', '_', str(text)) or '_'


def _stem_with_folder(path):
    """``<folder>_<stem>`` of a file path (``configs/test-lmf/set5-x4.yaml`` -> ``test-lmf_set5-x4``)."""
    path = os.path.abspath(path)
    folder = os.path.basename(os.path.dirname(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    return _tag(f'{folder}_{stem}' if folder else stem)


def run_options(args):
    """The options that change a result, as short tags (the results folder name; ``summary.json``)."""
    from engine import cli
    tags = []
    table = cli.cmsr_table_path(args.cmsr, args.cmsr_path)
    if table is not None:
        grid = args.cmsr_grid or ('published' if cli.is_bool_word(args.cmsr) else 'exact')
        tags.append(f'cmsr-{os.path.splitext(os.path.basename(table))[0]}-{grid}')
    if args.window not in (0, None):
        tags.append(f'window{args.window}')
    if args.tile not in (0, None):
        tags.append(f'tile{args.tile}')
    if args.tile_overlap is not None:
        tags.append(f'overlap{args.tile_overlap}')
    if args.max_train_scale is not None:
        tags.append(f'scalemax{args.max_train_scale:g}')
    if args.no_cell_clip:
        tags.append('noclip')
    if args.opt:
        tags.append('opt-' + hashlib.sha1('\n'.join(args.opt).encode('utf-8')).hexdigest()[:8])
    return [_tag(t) for t in tags]


def default_results_folder(args, protocol):
    """``outputs/test/<protocol>/<config folder>_<config>/<checkpoint folder>_<checkpoint>[+option...]``: the
    checkpoint's run folder tells every run's ``epoch-best.pth`` apart; options that change results are in it."""
    from engine.inference import resolve_model_path
    model = 'bicubic' if args.model == 'bicubic' else _stem_with_folder(resolve_model_path(args.model))
    name = '+'.join([model] + run_options(args))
    return os.path.join('outputs', 'test', _tag(protocol), _stem_with_folder(args.config), name)


def dataset_folders(spec):
    """The folders a test dataset spec reads (``root_path``, ``root_path_1``, ``root_path_2``, ...)."""
    args = (spec.get('dataset') or {}).get('args') or {}
    return [v for k, v in args.items() if k.startswith('root_path') and isinstance(v, str) and v]


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def output_folders(args, spec, protocol):
    """The results folder (and --save-dir) checked before the evaluation: not an input, not inside a dataset
    folder being read, and holding no earlier results unless --overwrite."""
    from utils import validate
    model_name = 'bicubic' if args.model == 'bicubic' else os.path.splitext(os.path.basename(args.model))[0]
    config_name = os.path.splitext(os.path.basename(args.config))[0]
    folder = args.results_dir or default_results_folder(args, protocol)
    validate.output_folder(folder, '--results-dir', inputs=(args.config, args.model))
    for which, path in (('--results-dir', folder), ('--save-dir', args.save_dir)):
        for data in dataset_folders(spec) if path else ():
            if _inside(path, data):
                raise validate.InputError(f'{which} {path}: is inside the dataset folder {data} being read; '
                                          f'give a folder outside it')
    earlier = [f for f in RESULT_FILES if os.path.exists(os.path.join(folder, f))]
    if earlier and not args.overwrite:
        raise validate.InputError(f'results folder {folder} already holds the results of an earlier run '
                                  f'({earlier[0]}); pass --overwrite to replace them or --results-dir elsewhere')
    if args.save_dir:
        validate.output_folder(args.save_dir, '--save-dir', inputs=(args.config, args.model))
        if os.path.isdir(args.save_dir) and os.listdir(args.save_dir) and not args.overwrite:
            raise validate.InputError(f'--save-dir {args.save_dir}: already holds files; pass --overwrite to '
                                      f'replace images of the same names, or give an empty folder')
    return folder, model_name, config_name


def staging_folder(save_dir):
    """Where SR images are written during the run (next to --save-dir, hidden), moved into it at the end."""
    save_dir = os.path.abspath(save_dir)
    return os.path.join(os.path.dirname(save_dir), f'.{os.path.basename(save_dir)}.partial')


def publish_images(args):
    """Move the staged SR images into --save-dir (after every process has written its images)."""
    stage = staging_folder(args.save_dir)
    if not os.path.isdir(stage):
        return
    os.makedirs(args.save_dir, exist_ok=True)
    for f in sorted(os.listdir(stage)):
        os.replace(os.path.join(stage, f), os.path.join(args.save_dir, f))
    shutil.rmtree(stage, ignore_errors=True)


def open_session(args, cfg, device, table):
    """The inference session: published window padding (``--window``), cell clipping, CMSR, chunk size."""
    from engine import cli
    from engine.inference import Session, load_model
    model = load_model(args.model, device, 'test.py')
    fast = args.fast if args.fast is not None else model.capabilities.modulated
    chunk = args.eval_bsize or (None if fast else cfg.get('eval_bsize'))
    return Session(model, device, chunk=chunk, published_window=True, cmsr=table,
                   **cli.session_options(args, 'test.py'))


def evaluate_shard(args, session, spec, eval_type, protocol, cfg):
    """This process's images (every world-th under torchrun): the ``Evaluation`` and the dataset indices."""
    from torch.utils.data import DataLoader

    from datasets.build import build_dataset, image_names
    from datasets.image_folder import check_pair_scale
    from engine.distributed import Shard, distributed_env, init_process_group
    from engine.evaluation import NonFinitePrediction, evaluate, parse_eval_type
    ds = build_dataset(spec, args.config)
    check_pair_scale(ds, parse_eval_type(eval_type)[1], args.config)   # LR files of another scale: refused
    names = image_names(ds)
    rank, _, _ = distributed_env()
    world = init_process_group(session.device)
    shard = Shard(ds, rank, world) if world > 1 else None
    order = shard.indices if shard else list(range(len(ds)))
    loader = DataLoader(shard or ds, batch_size=1, shuffle=False, num_workers=args.workers)
    bar = None
    if not (args.quiet or args.no_progress) and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(order), desc=os.path.basename(args.config), unit='img', leave=False, dynamic_ncols=True)
    try:
        result = evaluate(session, loader, eval_type, names=[names[j] for j in order] if names else None,
                          save=image_saver(args, eval_type, order, names),
                          progress=(lambda i, r: bar.update(1)) if bar else None,
                          protocol=protocol, metrics=cfg.get('metrics'))
    except NonFinitePrediction as e:
        raise non_finite(args, session, e.name) from None
    finally:
        if bar:
            bar.close()
    for row in result.rows:                       # dataset-wide index (sharded runs take every world-th image)
        row['index'] = order[row['index'] - 1] + 1
    return result, world


def non_finite(args, session, name):
    """What is known when the model predicts NaN/inf: whether its weights are finite, their largest magnitude,
    and the options that change its inputs."""
    import torch
    params = [(n, p) for n, p in session.model.named_parameters() if p.is_floating_point()]
    bad = next((n for n, p in params if not bool(torch.isfinite(p).all())), None)
    if bad:
        cause = f'its weights hold NaN/inf (first: {bad}), e.g. from a diverged training run'
    else:
        largest = max((float(p.detach().abs().max()) for _, p in params if p.numel()), default=0.0)
        cause = f'its weights are finite (largest |weight| {largest:.3g}), so the computation overflowed'
        if args.max_train_scale is not None:
            cause += f'; --scale-max {args.max_train_scale:g} sets the cells it is given'
    return ValueError(f'{args.model}: the model predicted non-finite values (NaN/inf) for image {name}; {cause}; '
                      f'no result reported')


def image_saver(args, eval_type, order, names):
    """``save(i, name, pred)`` writing ``<name>.png`` (the HR file's stem; ``<eval_type>_<NNN>.png`` when the
    dataset has no file names or two share a stem) into the staging folder (``publish_images`` moves them into
    --save-dir at the end), or None."""
    if not args.save_dir:
        return None
    from utils.image import save_image
    by_name = names is not None and len(set(names)) == len(names)
    stage = staging_folder(args.save_dir)

    def save(i, name, pred):
        os.makedirs(stage, exist_ok=True)     # only once there is a valid image to write
        file = f'{name}.png' if by_name else f'{eval_type or "sr"}_{order[i] + 1:03d}.png'
        save_image(os.path.join(stage, file), pred.cpu(),
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


def finite_or_none(values):
    """Non-finite numbers as None (JSON null): e.g. the cell clipping scale of the bicubic baseline, which is
    infinite (never clips)."""
    import math
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def summarize(args, result, session, eval_type, protocol, world, table):
    """summary.json: means (None where no image has a value, e.g. SSIM below its 11x11 window), the session and
    the options that change results (``run_options``)."""
    summary = {'config': args.config, 'protocol': protocol, 'eval_type': eval_type, 'model': args.model,
               'images': len(result.rows), 'psnr': result.mean('psnr'), 'ssim': result.mean('ssim'),
               'seconds': sum(r['seconds'] for r in result.rows), **finite_or_none(session.describe()),
               'processes': world,
               'options': run_options(args)}
    if table is not None:
        stats = result.stats
        summary.update(cmsr_table=table, cmsr_grid='exact' if session.cmsr_exact_grid else 'published',
                       cmsr_rendered_fraction=stats.fraction, cmsr_render_share=stats.render_share,
                       cmsr_gmacs_saved=stats.macs_saved / 1e9)
        if args.cmsr_mse is not None:
            summary['cmsr_mse'] = args.cmsr_mse
    return summary


def write_results(folder, summary, rows):
    """The three result files, written to temporary files first and renamed into ``folder`` together at the
    end (a failure leaves the folder as it was). Values must be finite (``allow_nan=False``)."""
    import tempfile
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ['index'])
    writer.writeheader()
    writer.writerows(rows)
    texts = {'per_image.csv': buf.getvalue(), 'per_image.json': json.dumps(rows, indent=1, allow_nan=False),
             'summary.json': json.dumps(summary, indent=1, allow_nan=False)}
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    staged = {}
    try:
        for name, text in texts.items():
            fd, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix='.tmp', dir=folder)
            staged[name] = tmp
            with os.fdopen(fd, 'w') as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        for name, tmp in staged.items():
            os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        for tmp in staged.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        if created and not os.listdir(folder):
            os.rmdir(folder)
        raise


def report(args, summary, result, folder, model_name, config_name):
    if not args.quiet:
        for r in result.rows:
            ssim = f"{r['ssim']:.4f}" if r['ssim'] is not None else 'n/a'
            psnr = f"{r['psnr']:.4f}" if r['psnr'] is not None else 'n/a'
            print(f"  {r['name']:>16s}  {r['lr_size']:>9s} -> {r['hr_size']:>9s}  PSNR {psnr}  "
                  f"SSIM {ssim}  {r['seconds']:.2f}s")
    extra = f', {result.stats.summary()}' if 'cmsr_table' in summary else ''
    fmt = lambda v: 'n/a' if v is None else f'{v:.4f}'     # noqa: E731
    print(f'result: PSNR {fmt(summary["psnr"])} dB, SSIM {fmt(summary["ssim"])} ({config_name}, protocol '
          f'{summary["protocol"]}, {summary["eval_type"]}, {len(result.rows)} images, model {model_name}{extra}); '
          f'per-image rows in {folder}')


def _main(argv=None):
    args = build_parser().parse_args(argv)
    from engine import cli
    from engine.distributed import distributed_env
    from utils import validate
    validate.cli_numbers(args, 'test.py', {'max_train_scale': '--scale-max'})
    cli.apply_threads(args)
    from engine.inference import resolve_path
    args.config = resolve_path(args.config, 'config')        # bundled configs from any working directory
    cfg, spec, eval_type, protocol = read_config(args)
    table = cli.cmsr_table_path(args.cmsr, args.cmsr_path)   # contradictory CMSR flags: refused before any work
    folder, model_name, config_name = output_folders(args, spec, protocol)
    rank = distributed_env()[0]
    if args.save_dir and rank == 0 and distributed_env()[1] == 1:
        shutil.rmtree(staging_folder(args.save_dir), ignore_errors=True)     # left by a killed run
    try:
        device = cli.choose_device(args.device, args.gpu, 'test.py')
        session = open_session(args, cfg, device, table)
        result, world = evaluate_shard(args, session, spec, eval_type, protocol, cfg)
        result = gather_results(result)
        if rank != 0:
            return 0
        summary = summarize(args, result, session, eval_type, protocol, world, table)
        write_results(folder, summary, result.rows)
        if args.save_dir:
            publish_images(args)
    except BaseException:
        if args.save_dir:
            shutil.rmtree(staging_folder(args.save_dir), ignore_errors=True)
        raise
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
