"""pyproject.toml: ``pip install .`` / ``pip install -e .`` give the library, the bundled data and the four
console commands (``lmf-demo``, ``lmf-test``, ``lmf-train``, ``lmf-init-cmsr``; ``scripts/console.py``).

The installs go into fresh virtual environments without pip access to a registry: the environment reuses
this interpreter's site-packages through a ``.pth`` file (torch and the requirements are not downloaded)
and installs with ``--no-deps --no-build-isolation``, from a copy of the tracked files (the build writes
``build/`` and ``*.egg-info`` next to the sources). The console command's image is compared byte for byte
with ``python demo.py`` run from the repository root.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

from .conftest import ROOT

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH='')
COMMANDS = ('lmf-demo', 'lmf-test', 'lmf-train', 'lmf-init-cmsr')


def test_pyproject_declares_the_commands_and_torch_unpinned_to_a_cuda_build():
    tomllib = pytest.importorskip('tomllib')
    meta = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    scripts = meta['project']['scripts']
    assert sorted(scripts) == sorted(COMMANDS)
    from scripts import console
    for target in scripts.values():
        module, func = target.split(':')
        assert module == 'scripts.console' and callable(getattr(console, func))
    # one source for the dependencies: requirements.txt, whose torch line is a lower bound only
    assert meta['tool']['setuptools']['dynamic']['dependencies'] == {'file': ['requirements.txt']}
    torch_lines = [line.split('#')[0].strip() for line in (ROOT / 'requirements.txt').read_text().splitlines()
                   if line.strip().startswith('torch')]
    assert torch_lines == ['torch>=2.1']


def test_console_root_and_bundled_models_in_a_checkout():
    from scripts import console
    assert os.path.samefile(console.root(), ROOT)
    assert os.path.isfile(console.bundled('edsr-b_lm-liif.pth'))
    assert console.load_script('test').__name__ == 'lmf_cli_test'      # not Python's own ``test`` package


def _venv(path):
    venv.EnvBuilder(with_pip=False).create(path)
    bindir = path / ('Scripts' if os.name == 'nt' else 'bin')
    py = bindir / ('python.exe' if os.name == 'nt' else 'python')
    site = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    # this interpreter's packages (torch, pip, setuptools, ...) after the venv's own
    with open(os.path.join(site, '_reuse_site.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    return py, bindir, site


def _source_copy(dst):
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split('\0')):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _install(py, src, editable=False):
    cmd = [str(py), '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '--no-index']
    out = subprocess.run(cmd + (['-e', str(src)] if editable else [str(src)]), capture_output=True, text=True,
                         env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_pip_install_gives_console_commands_that_upscale_like_demo(tmp_path):
    if shutil.which('git') is None or not (ROOT / '.git').exists():
        pytest.skip('needs a git checkout (the install copies the files git tracks or does not ignore)')
    py, bindir, site = _venv(tmp_path / 'venv')
    _install(py, _source_copy(tmp_path / 'src'))
    shutil.rmtree(tmp_path / 'src')                         # the install must not need the sources
    for name in ('engine', 'models', 'datasets', 'utils', 'scripts', 'demo.py', 'test.py', 'api.py',
                 'save/pretrained_models/edsr-b_lm-liif.pth', 'configs/test/set5-x4.yaml',
                 'models/decoders/fused_render.c'):     # the fused render kernel's source (built on first use)
        assert os.path.exists(os.path.join(site, name)), name
    work = tmp_path / 'elsewhere'
    work.mkdir()
    for cmd in COMMANDS:
        out = subprocess.run([str(bindir / cmd), '--help'], capture_output=True, text=True, cwd=work, env=ENV)
        assert out.returncode == 0 and out.stdout.startswith('usage:'), (cmd, out.stderr)
    # the modules and the API from any folder
    out = subprocess.run([str(py), '-m', 'scripts.export_onnx', '--help'], capture_output=True, text=True, cwd=work,
                         env=ENV)
    assert out.returncode == 0 and 'usage:' in out.stdout, out.stderr
    out = subprocess.run([str(py), '-c', 'import api, hubconf; from scripts import console; print(console.root())'],
                         capture_output=True, text=True, cwd=work, env=ENV)
    assert out.returncode == 0 and os.path.samefile(out.stdout.strip(), site), out.stderr
    model = os.path.join(site, 'save', 'pretrained_models', 'edsr-b_lm-liif.pth')
    args = ['--input', str(ROOT / 'assets' / 'demo_lr.png'), '--scale', '2', '--model']
    out = subprocess.run([str(bindir / 'lmf-demo')] + args + [model, '--output', str(work / 'x2.png')],
                         capture_output=True, text=True, cwd=work, env=ENV)
    assert out.returncode == 0, out.stderr
    ref = subprocess.run([sys.executable, 'demo.py'] + args + [str(ROOT / 'save/pretrained_models/edsr-b_lm-liif.pth'),
                         '--output', str(tmp_path / 'ref.png')], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert ref.returncode == 0, ref.stderr
    assert (work / 'x2.png').read_bytes() == (tmp_path / 'ref.png').read_bytes()
    # errors stay one line, named after the script
    bad = subprocess.run([str(bindir / 'lmf-test'), '--config', 'missing.yaml', '--model', model],
                         capture_output=True, text=True, cwd=work, env=ENV)
    assert bad.returncode == 1 and bad.stderr.strip().startswith('test.py: error:') \
        and '\n' not in bad.stderr.strip(), bad.stderr


@pytest.mark.slow
def test_editable_install_runs_from_the_checkout(tmp_path):
    if shutil.which('git') is None or not (ROOT / '.git').exists():
        pytest.skip('needs a git checkout')
    src = _source_copy(tmp_path / 'src')
    py, bindir, site = _venv(tmp_path / 'venv')
    _install(py, src, editable=True)
    out = subprocess.run([str(py), '-c', 'import engine, scripts.console as c; print(engine.__file__); print(c.root())'],
                         capture_output=True, text=True, cwd=tmp_path, env=ENV)
    assert out.returncode == 0, out.stderr
    engine_file, root = out.stdout.split()
    assert engine_file.startswith(str(src)) and os.path.samefile(root, src)
    out = subprocess.run([str(bindir / 'lmf-demo'), '--help'], capture_output=True, text=True, cwd=tmp_path,
                         env=ENV)
    assert out.returncode == 0 and 'usage: demo.py' in out.stdout, out.stderr


@pytest.mark.slow
def test_installed_demo_finds_the_default_model_from_another_folder(tmp_path):
    py, bindir, site = _venv(tmp_path / 'venv')
    _install(py, _source_copy(tmp_path / 'src'))
    out = subprocess.run([str(bindir / 'lmf-demo'), '--input', str(ROOT / 'assets' / 'demo_lr.png'), '--scale',
                          '2', '--output', str(tmp_path / 'x2.png')], capture_output=True, text=True, cwd=tmp_path,
                         env=ENV)
    assert out.returncode == 0, out.stderr
