"""``igconv/test.py -opt X.yml``: every test dataset of an option file, as BasicSR's ``test_pipeline``.

The network is built from ``network_g``, ``path.pretrain_network_g`` (required) is loaded with
``param_key_g`` / ``strict_load_g``, and each dataset (``test_<n>`` by n) is evaluated with the
``model_type``'s test-time forward (``evaluation.evaluate``); its metric lines are logged (stdout and
``results/<name>/test_<name>_<time>.log``), the SR images saved to ``results/<name>/visualization/<dataset>/``
when ``val.save_img``; ``results/<name>/metrics.json`` holds every dataset's means at full precision. Under
``--launcher pytorch`` the first process tests, as BasicSR's model classes do.
"""
import json
import os

import yaml

from utils.io import atomic_write

from . import evaluation
from .folders import Log, prepare
from .launch import setup
from .network import build_network, eval_loaders, load_weights, test_forward
from .options import OptionError


def test(opts, args):
    log = Log(main=int(os.environ.get('RANK', 0)) == 0)
    dd = setup(opts, args, log)
    if not opts.pretrain:
        raise OptionError(f'{opts.file}: path.pretrain_network_g is required to test (the weights to evaluate)')
    loaders = eval_loaders(opts)
    model = build_network(opts)
    load_weights(model, opts.pretrain, opts.param_key, opts.strict_load, log)
    model = model.to(dd.device).eval()
    forward = test_forward(model, opts)
    if not dd.main:
        return
    prepare(opts, log, resume=False)
    log(yaml.safe_dump(opts.raw, sort_keys=False), echo=False)
    if opts.print_network:
        log(f'Network: {type(model).__name__}, with parameters: {sum(p.numel() for p in model.parameters()):,d}\n'
            f'{model}', echo=False)
    evaluation.note_crop_border(opts.val.metrics, log)
    best, results = evaluation.Best(), {}
    for name, loader in loaders:
        log(f'Number of test images in {name}: {len(loader.dataset)}')
    for name, loader in loaders:
        log(f'Testing {name}...')
        save = None
        if opts.val.save_img:
            save = evaluation.image_saver(os.path.join(opts.folder, 'visualization', name),
                                          opts.val.suffix or opts.name)
        values = evaluation.evaluate(forward, loader, opts.val.metrics, dd.device, save, opts.val.pbar)
        if opts.val.metrics:
            evaluation.report(name, values, opts.val.metrics, best, opts.name, log)
        results[name] = values
    with atomic_write(os.path.join(opts.folder, 'metrics.json'), 'w') as f:
        json.dump(results, f, indent=1)
