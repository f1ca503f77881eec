"""Convert a released BasicSR checkpoint of a published IGConv architecture into this code base's format.

    python -m scripts.convert_basicsr EDSR_IGConvPlus_DIV2K.pth save/pretrained_models/edsr_igplus.pth --arch EDSRIGPlus
    python -m scripts.convert_basicsr RCAN_IGConvPlus_DIV2K_S8.pth out.pth --options RCAN_IGConvPlus_DIV2K_S2348.yaml

The input is ``{'params_ema': sd, 'params': sd}`` or ``{'params': sd}`` (``params_ema`` preferred, or the
option file's ``path.param_key_g``), read with ``weights_only=True``; the architecture comes from
``--arch`` (published option arguments) or ``--options`` (the option file's ``network_g``). The output is
the self-describing ``{'model': {'name', 'args', 'sd'}}`` that test.py, demo.py and ``models.load_model``
read, written atomically. These models take [0, 1] inputs (``capabilities.input_range == 'unit'``).
"""
import argparse
import sys

if not __package__:   # run as a file: the project's packages are importable only from the repository root
    sys.exit('convert_basicsr.py: error: run it from the repository root as a module: '
             'python -m scripts.convert_basicsr ...')

try:
    from models.checkpoint import CheckpointError, load_model, save_checkpoint  # noqa: E402
    from utils.validate import InputError, input_file, output_file  # noqa: E402
except ImportError as _e:      # e.g. a Python without torch: one line, not a traceback
    sys.exit(f'convert_basicsr.py: error: {_e} (install the requirements: pip install -r requirements.txt)')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', help='BasicSR checkpoint (.pth)')
    p.add_argument('dst', help='output checkpoint (.pth, or .safetensors)')
    p.add_argument('--arch', help='architecture: EDSRIG, EDSRIGPlus, RDNIGPlus, RCANIGPlus, SwinIRMS')
    p.add_argument('--options', help='BasicSR option file whose network_g describes the architecture')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.arch is None and args.options is None:
            raise InputError('give --arch NAME or --options OPTION.yml (a BasicSR checkpoint does not name its '
                             'architecture)')
        input_file(args.src, 'source checkpoint')
        if args.options is not None:
            input_file(args.options, '--options')
        output_file(args.dst, 'destination', inputs=(args.src,))
        model = load_model(args.src, arch=args.arch, options=args.options)
        ckpt = {'model': {'name': model.spec['name'], 'args': model.spec['args'], 'sd': model.state_dict()},
                'converted_from': {'file': args.src, 'param_key': model.basicsr_param_key}}
        save_checkpoint(args.dst, ckpt)
    except (CheckpointError, InputError, OSError, ValueError) as e:
        print(f'convert_basicsr.py: error: {" ".join(str(e).split())}', file=sys.stderr)
        return 1
    print(f'{args.dst}: {model.spec["name"]} ({sum(p.numel() for p in model.parameters()):,} parameters, '
          f'weights from {model.basicsr_param_key!r})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
