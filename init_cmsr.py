"""Build Scale2Mod tables for CMSR (Controllable Multi-Scale Rendering) of a trained LM-LIIF / LM-LTE.

    python init_cmsr.py --model save/pretrained_models/edsr-b_lm-liif.pth --config configs/cmsr/init-div2k.yaml \\
        --scales 2,3,4,6,12,18 --mse-threshold 2e-5 --save-path save/pretrained_models/edsr-b_lm-liif_cmsr.yaml

For each target scale S, every image of the config's dataset is downscaled by S (PIL bicubic) and
rendered at the full target resolution; then, decode scale by decode scale, the largest modulation
intensity whose pixels can be rendered at the lower scale and bilinearly upsampled with an MSE of at
most the threshold is recorded, as a running minimum over images (the published algorithm; docs/deviations.md, B9).

The threshold is an MSE in the models' normalised output space, [-1, 1]: 2e-5 (the published value)
equals 5e-6 in [0, 1] pixel units, i.e. about 53 dB PSNR, or an RMS error of 0.57 grey levels out of 255.

The YAML at --save-path is read, updated for the given scales and written back (atomically), so tables
for more scales can be added later. Use it with test.py / demo.py --cmsr. The model kind is recorded in a
first-line comment (# model: lmliif), so the published test.py / init_cmsr.py read the file too. As in the
published script, inputs are not padded unless --window is given (SwinIR encoders: --window 8).

The published spelling works as well (flags --mse_threshold, --save_path, --trained_scale, --gpu; a bare
checkpoint name is looked up in save/pretrained_models/; the target scale comes from the config's eval_type):

    python init_cmsr.py --config configs/cmsr/init-div2k-x2.yaml --model edsr-b_lm-liif.pth --gpu 0 \\
        --mse_threshold 0.00002 --save_path configs/cmsr/result/edsr-b_lm-liif_2e-5.yaml
"""
import argparse
import math
import sys


def build_parser():
    from engine import cli
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True,
                   help='trained LM checkpoint (a bare file name is also looked up in save/pretrained_models/)')
    p.add_argument('--config', required=True,
                   help="YAML with a 'dataset' spec of HR images (e.g. configs/cmsr/init-div2k.yaml), or a "
                        "published init config (test_dataset + eval_type div2k-S, e.g. "
                        "configs/cmsr/init-div2k-x2.yaml)")
    p.add_argument('--scales', default=None,
                   help="target scales to build, comma-separated integers (default: the config's eval_type scale for "
                        "published init configs, else 6,12,18)")
    p.add_argument('--mse-threshold', '--mse_threshold', dest='mse_threshold', type=float, default=2e-5,
                   help='largest MSE in normalised [-1, 1] units (default 2e-5 = 5e-6 in [0, 1] units)')
    p.add_argument('--save-path', '--save_path', dest='save_path', required=True,
                   help='YAML file to create or update')
    p.add_argument('--trained-scale', '--trained_scale', dest='max_train_scale', type=float, default=None,
                   help="largest training scale: cells are clipped by max(S / trained_scale, 1) (default: the "
                        "checkpoint's training config, else 4)")
    p.add_argument('--window', type=cli.parse_window, default=0, metavar='N|auto',
                   help="pad inputs like the published SwinIR evaluation (8, or 'auto': the encoder's window); "
                        "default 0 (none), as published")
    p.add_argument('--first-k', type=int, default=None, help='use only the first k images')
    p.add_argument('--prune', action='store_true',
                   help='drop decode scales whose threshold stayed at 1 (the published algorithm keeps them, and '
                        'CMSR then renders every remaining pixel at that lower scale; see engine/cmsr.py)')
    cli.add_device_args(p)
    p.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE', help='override config entries')
    p.add_argument('--quiet', action='store_true', help='no progress bar, no table lines')
    p.add_argument('--no-progress', action='store_true',
                   help='no progress bar (it goes to stderr, one step per image and target scale)')
    return p


def dataset_and_scales(cfg, where, scales_text):
    """(HR dataset spec, scales) from our format (``dataset:``) or a published init config
    (``test_dataset: {dataset, wrapper sr-implicit-downsampled}`` and ``eval_type: div2k-S``)."""
    from engine.evaluation import parse_eval_type
    from utils.config import ConfigError, require
    if 'dataset' in cfg:
        return dict(require(cfg, 'dataset', where=where)), parse_scales(scales_text or '6,12,18')
    spec = require(cfg, 'test_dataset', where=where)
    wrapper = (spec.get('wrapper') or {}).get('name')
    if wrapper not in (None, 'sr-implicit-downsampled'):
        raise ConfigError(f"{where}: test_dataset.wrapper {wrapper!r}: CMSR tables are built from HR images "
                          f"downscaled on the fly (sr-implicit-downsampled)")
    if scales_text:
        return dict(require(spec, 'dataset', where=where)), parse_scales(scales_text)
    _, S = parse_eval_type(require(cfg, 'eval_type', where=where))
    if not float(S).is_integer():
        raise ConfigError(f'{where}: eval_type scale {S} must be an integer for table building')
    return dict(require(spec, 'dataset', where=where)), [int(S)]


def parse_scales(text):
    from utils.validate import scales_list
    return scales_list(text, '--scales', integers=True, minimum=1)


def merge_image_table(table, own, S):
    """Apply one image's effect to ``table`` as ``cmsr.update_table`` would have, in place.

    ``own`` is ``update_table`` of that image on a table of the same keys set to infinity: the per-scale
    candidates after the downward minimum, and at ``S`` the published final overwrite (infinite: none).
    For a table whose thresholds do not decrease with the decode scale (every table the algorithm
    produces), ``min(table, own)`` below ``S`` and the overwrite at ``S`` equal the in-place update, so
    images measured on several processes and merged here in image order give the single-process table.
    """
    for s, value in own.items():
        if s < S:
            table[s] = min(table[s], value)
    if math.isfinite(own.get(S, math.inf)):
        table[S] = own[S]
        for s in table:
            if s < S:
                table[s] = min(table[s], table[S])
    return table


def build_tables(session, base, scales, tables, args, bar=None):
    """Update ``tables`` for every target scale from the images of ``base`` (sharded under torchrun, merged
    on rank 0 in image order); the file is written after every scale on rank 0 (nothing lost)."""
    import datasets
    from engine import cmsr
    from engine.distributed import distributed_env, gather, init_process_group
    from engine.inference import normalise
    from utils.coords import cell_clip_factor
    rank = distributed_env()[0]
    world = init_process_group(session.device)
    for S in scales:
        table = tables.get(S) or cmsr.initial_table(S)
        data = datasets.make({'name': 'sr-implicit-downsampled', 'args': {'scale_min': S, 'scale_max': S}},
                             args={'dataset': base})
        clip = cell_clip_factor(S, session.max_train_scale)
        mine = []                                    # sharded: (index, the image's own effect on a table)
        for i in range(rank, len(data), world):
            inp = session.pad(normalise(data[i]['inp'].unsqueeze(0).to(session.device)))
            if world == 1:
                cmsr.update_table(session.model, inp, table, args.mse_threshold, S, cell_clip=clip)
            else:
                own = cmsr.update_table(session.model, inp, {s: math.inf for s in table}, args.mse_threshold, S,
                                        cell_clip=clip)
                mine.append((i, own))
            if bar:
                bar.set_description(f'x{S}')
                bar.update(min(world, len(data) - i))
        for _, own in sorted(p for part in gather(mine) for p in part):
            merge_image_table(table, own, S)
        if rank == 0:
            tables[S] = cmsr.prune_unvalidated(table) if args.prune else table
            tables = dict(sorted(tables.items()))
            cmsr.save_tables(args.save_path, tables, session.model.capabilities.name)
    return tables


def _main(argv=None):
    args = build_parser().parse_args(argv)
    import os

    import datasets
    from datasets.build import check_data_norm
    from engine import cli, cmsr
    from engine.distributed import distributed_env
    from engine.inference import Session
    from utils import validate
    from utils.config import apply_overrides, load_config
    if not (args.mse_threshold > 0 and math.isfinite(args.mse_threshold)):
        raise ValueError('--mse-threshold must be a positive number')
    validate.cli_numbers(args, 'init_cmsr.py', {'max_train_scale': '--trained-scale'})
    cli.apply_threads(args)
    from engine.inference import resolve_path
    args.config = resolve_path(args.config, 'config')        # bundled configs from any working directory
    validate.output_file(args.save_path, '--save-path', inputs=(args.config, args.model), create_parent=True,
                         extensions=('.yaml', '.yml'))  # before any compute
    cfg = apply_overrides(load_config(args.config), args.opt)
    check_data_norm(cfg, args.config)
    base_spec, scales = dataset_and_scales(cfg, args.config, args.scales)
    device = cli.choose_device(args.device, args.gpu, 'init_cmsr.py')
    session = Session.open(args.model, device, 'init_cmsr.py', window=args.window, published_window=True,
                           max_train_scale=args.max_train_scale)
    caps = session.model.capabilities
    if not caps.modulated:
        raise ValueError(f'{args.model} is a {caps.name} model; CMSR tables are for LM models (lmliif, lmlte, lmciaosr)')
    tables = cmsr.load_tables(args.save_path, caps) if os.path.exists(args.save_path) else {}
    if args.first_k:
        base_spec['args'] = dict(base_spec.get('args') or {}, first_k=args.first_k)
    base = datasets.make(base_spec)
    os.makedirs(os.path.dirname(os.path.abspath(args.save_path)), exist_ok=True)
    bar = None
    if not (args.quiet or args.no_progress) and distributed_env()[0] == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(scales) * len(base), unit='img', dynamic_ncols=True)
    try:
        tables = build_tables(session, base, scales, tables, args, bar)
    finally:
        if bar:
            bar.close()
    if distributed_env()[0] == 0 and not args.quiet:
        for S in scales:
            print(f'x{S}: ' + ', '.join(f'{s}: {t:g}' for s, t in tables[S].items()))
        print(f'wrote {args.save_path} (MSE threshold {args.mse_threshold:g} normalised = '
              f'{args.mse_threshold / 4:g} in [0, 1] units)')
    return 0


def main(argv=None):
    from engine.errors import run
    return run(_main, argv, 'init_cmsr.py')


if __name__ == '__main__':
    sys.exit(main())
