"""Console commands of an installed copy (``pip install .``, pyproject.toml): ``lmf-demo``, ``lmf-test``,
``lmf-train``, ``lmf-init-cmsr`` run ``demo.py``, ``test.py``, ``train.py`` and ``init_cmsr.py`` with the same
arguments, exit status and one-line errors as ``python demo.py ...`` from the repository root.

The four scripts are top-level modules next to the packages (the repository root of a checkout,
site-packages of an install: :func:`root`). They are loaded from that folder by file path, not imported by
name, because ``test`` is also the name of Python's own regression-test package, which comes first on
``sys.path``.
"""
import importlib.util
import os
import sys

SCRIPTS = {'demo': 'demo.py', 'test': 'test.py', 'train': 'train.py', 'init_cmsr': 'init_cmsr.py'}


def root():
    """The folder that holds the top-level packages (``engine``, ``models``, ...), the four scripts and the
    data an install ships (``save/pretrained_models/``, ``configs/``): the repository root of a checkout
    (also under ``pip install -e .``), site-packages of ``pip install .``."""
    from engine.inference import REPO_ROOT
    return REPO_ROOT


def bundled(name):
    """Path of a bundled file of ``save/pretrained_models/`` (e.g. ``'edsr-b_lm-liif.pth'``) in :func:`root`."""
    from engine.inference import BUNDLED_DIR
    return os.path.join(BUNDLED_DIR, name)


def load_script(name):
    """The module of script ``name`` ('demo', 'test', 'train', 'init_cmsr') loaded from :func:`root`, under a
    private module name (``lmf_cli_<name>``)."""
    path = os.path.join(root(), SCRIPTS[name])
    spec = importlib.util.spec_from_file_location(f'lmf_cli_{name}', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(name):
    module = load_script(name)
    sys.argv[0] = SCRIPTS[name]          # usage lines and error prefixes name the script, as from a checkout
    sys.exit(module.main())


def demo():
    _run('demo')


def test():
    _run('test')


def train():
    _run('train')


def init_cmsr():
    _run('init_cmsr')
