"""Build Scale2Mod tables for CMSR (Controllable Multi-Scale Rendering) of a trained LM-LIIF / LM-LTE.

    python init_cmsr.py --model save/pretrained_models/edsr-b_lm-liif.pth --config configs/cmsr/init-div2k.yaml \\
        --scales 2,3,4,6,12,18 --mse-threshold 2e-5 --save-path save/pretrained_models/edsr-b_lm-liif_cmsr.yaml

For each target scale S, every image of the config's dataset is downscaled by S (PIL bicubic) and
rendered at the full target resolution; then, decode scale by decode scale, the largest modulation
intensity whose pixels can be rendered at the lower scale and bilinearly upsampled with an MSE of at
most the threshold is recorded, as a running minimum over images (the published algorithm, spec §4.2).

The threshold is an MSE in the models' normalised output space, [-1, 1]: 2e-5 (the published value)
equals 5e-6 in [0, 1] pixel units, i.e. about 53 dB PSNR, or an RMS error of 0.57 grey levels out of 255.

The YAML at --save-path is read, updated for the given scales and written back (atomically), so tables
for more scales can be added later. Use it with test.py / demo.py --cmsr.
"""
import argparse
import math
import sys


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='trained LM-LIIF or LM-LTE checkpoint')
    p.add_argument('--config', required=True,
                   help="YAML with a 'dataset' spec of HR images (e.g. configs/cmsr/init-div2k.yaml)")
    p.add_argument('--scales', default='6,12,18', help='target scales to build, comma-separated integers')
    p.add_argument('--mse-threshold', type=float, default=2e-5,
                   help='largest MSE in normalised [-1, 1] units (default 2e-5 = 5e-6 in [0, 1] units)')
    p.add_argument('--save-path', required=True, help='YAML file to create or update')
    p.add_argument('--trained-scale', type=float, default=4,
                   help='largest training scale: cells are clipped by max(S / trained_scale, 1) (default 4)')
    p.add_argument('--window', type=int, default=None,
                   help='pad inputs like the published SwinIR evaluation (default: 8 for SwinIR encoders)')
    p.add_argument('--first-k', type=int, default=None, help='use only the first k images')
    p.add_argument('--prune', action='store_true',
                   help='drop decode scales whose threshold stayed at 1 (the published algorithm keeps them, and '
                        'CMSR then renders every remaining pixel at that lower scale; see models/cmsr.py)')
    p.add_argument('--device', choices=['cpu', 'cuda', 'mps'], default=None, help='default: cuda if available')
    p.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE', help='override config entries')
    p.add_argument('--quiet', action='store_true')
    return p


def parse_scales(text):
    try:
        scales = [int(s) for s in text.split(',')]
    except ValueError:
        raise ValueError(f'--scales {text!r}: give integers such as 2,3,4,6,12,18') from None
    if any(s < 1 for s in scales):
        raise ValueError(f'--scales {text!r}: scales must be >= 1')
    return sorted(set(scales))


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import os

        import torch

        import datasets
        import models
        from engine.inference import normalise, window_pad
        from models import cmsr
        from utils.config import ConfigError, apply_overrides, load_config, require
        from utils.image import ImageError

        scales = parse_scales(args.scales)
        if not (args.mse_threshold > 0 and math.isfinite(args.mse_threshold)):
            raise ValueError('--mse-threshold must be a positive number')
        cfg = apply_overrides(load_config(args.config), args.opt)
        device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
        model = models.load_model(args.model, map_location=device).eval()
        if not hasattr(model, 'set_cmsr'):
            raise ValueError(f'{args.model} is a {model.spec["name"]} model; CMSR tables are for lmliif / lmlte')
        window = args.window if args.window is not None else getattr(model.encoder, 'window_size', 0)
        tables = cmsr.load_tables(args.save_path) if os.path.exists(args.save_path) else {}
        base_spec = dict(require(cfg, 'dataset', where=args.config))
        if args.first_k:
            base_spec['args'] = dict(base_spec.get('args') or {}, first_k=args.first_k)
        base = datasets.make(base_spec)
        bar = None
        if not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=len(scales) * len(base), unit='img', dynamic_ncols=True)
        for S in scales:
            table = tables.get(S) or cmsr.initial_table(S)
            data = datasets.make({'name': 'sr-implicit-downsampled', 'args': {'scale_min': S, 'scale_max': S}},
                                 args={'dataset': base})
            for i in range(len(data)):
                inp = normalise(data[i]['inp'].unsqueeze(0).to(device))
                if window:
                    inp = window_pad(inp, window, published=True)
                cmsr.update_table(model, inp, table, args.mse_threshold, S,
                                  cell_clip=max(S / args.trained_scale, 1))
                if bar:
                    bar.set_description(f'x{S}')
                    bar.update(1)
            tables[S] = cmsr.prune_unvalidated(table) if args.prune else table
            tables = dict(sorted(tables.items()))
            cmsr.save_tables(args.save_path, tables)     # after every scale: nothing lost if interrupted
        if bar:
            bar.close()
        if not args.quiet:
            for S in scales:
                print(f'x{S}: ' + ', '.join(f'{s}: {t:g}' for s, t in tables[S].items()))
            print(f'wrote {args.save_path} (MSE threshold {args.mse_threshold:g} normalised = '
                  f'{args.mse_threshold / 4:g} in [0, 1] units)')
    except (ValueError, ConfigError, ImageError, cmsr.CMSRError, models.CheckpointError,
            models.ModelSpecError) as e:
        print(f'init_cmsr.py: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
