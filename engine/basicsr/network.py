"""The network of an option file: ``network_g`` built through the model registry, BasicSR weights loaded as
BasicSR's ``load_network`` does, the test-time forward chosen by ``model_type``, and the datasets.

Any published architecture registered in ``models.zoo.PUBLISHED_ARCHS`` works; nothing here names one.
"""
import functools

import torch
from torch.utils.data import DataLoader

import datasets
from models.basicsr_checkpoint import pick_state_dict, read_checkpoint
from models.checkpoint import CheckpointError, _shape_mismatch, check_dtypes, check_finite, strip_prefix

from .options import TRAIN_TYPES, OptionError


def build_network(opts):
    """The model of ``network_g`` (type + constructor arguments), in train mode on the CPU."""
    from models import ModelSpecError, make
    from models.zoo import PUBLISHED_ARCHS
    kind, args = opts.network['type'], opts.network['args']
    if kind not in PUBLISHED_ARCHS:
        raise OptionError(f'{opts.file}: network_g.type: architecture {kind} is not registered (registered: '
                          f'{", ".join(sorted(PUBLISHED_ARCHS))})')
    try:
        return make({'name': kind, 'args': args})
    except (ModelSpecError, ValueError, TypeError) as e:
        raise OptionError(f'{opts.file}: network_g ({kind}): {" ".join(str(e).split())}') from None


def load_weights(model, path, param_key, strict, log):
    """Load ``ckpt[param_key]`` of a BasicSR file into ``model`` (``param_key`` None: the file is the state
    dict). As BasicSR: a missing ``param_key`` falls back to 'params'; ``strict`` False loads what fits and
    logs the missing, unexpected and differently shaped entries (those are skipped). Returns the key used."""
    ckpt = read_checkpoint(path)
    if param_key is not None and param_key not in ckpt and 'params' in ckpt:
        log(f'Loading: {param_key} does not exist, use params.')
        param_key = 'params'
    if param_key is None:
        sd = ckpt
        if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
            raise CheckpointError(f'{path}: param_key_g ~ needs a file holding one state dict')
    else:
        param_key, sd = pick_state_dict(ckpt, path, param_key)
    sd = strip_prefix(dict(sd))
    check_finite(sd, path)
    check_dtypes(model, sd, path)
    own = model.state_dict()
    if strict:
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            detail = _shape_mismatch(model, sd) or ' '.join(str(e).split())[:1000]
            raise CheckpointError(f'{path}: {param_key!r} weights do not fit {type(model).__name__}: {detail}') \
                from None
    else:
        skipped = sorted(k for k in sd if k in own and sd[k].shape != own[k].shape)
        result = model.load_state_dict({k: v for k, v in sd.items() if k not in skipped}, strict=False)
        for label, keys in (('missing', result.missing_keys), ('unexpected', result.unexpected_keys),
                            ('size different, ignored', skipped)):
            if keys:
                log(f'{path}: {len(keys)} {label} key(s): {", ".join(keys[:8])}{" ..." if len(keys) > 8 else ""}',
                    level='WARNING')
    log(f'Loading {type(model).__name__} model from {path}, with param key: [{param_key}].')
    return param_key


def test_forward(model, opts):
    """``forward(lq (1, 3, h, w), scale) -> SR`` of the option's ``model_type`` (``models.zoo.base.TEST_FORWARDS``:
    MSRModel the whole image, SwinIRMSModel reflect-padded to the window, MambaMSModel in tiles)."""
    from models.zoo.base import TEST_FORWARDS
    policy = opts.test_forward
    if policy == 'window_pad' and not model.window >= 1:
        raise OptionError(f'{opts.file}: model_type {opts.model_type} pads inputs to the attention window, but '
                          f'{opts.network["type"]} has none (use MSRModel)')
    return functools.partial(TEST_FORWARDS[policy], model)


def make_dataset(opts, spec):
    """The ``datasets`` registry object of one option entry (the training set draws from ``manual_seed``)."""
    args = dict(spec.args, seed=opts.seed) if spec.type in TRAIN_TYPES else spec.args
    try:
        return datasets.make({'name': spec.type, 'args': args})
    except ValueError as e:
        raise OptionError(f'{opts.file}: datasets.{spec.key} ({spec.name}): {" ".join(str(e).split())}') from None


def eval_loaders(opts):
    """[(dataset name, DataLoader of batch 1)] for the test / validation entries, in order."""
    return [(spec.name, DataLoader(make_dataset(opts, spec), batch_size=1, shuffle=False, num_workers=0))
            for spec in opts.datasets]
