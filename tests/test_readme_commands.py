"""Every command line README.md shows (fenced ``bash``/plain code blocks and inline code spans starting with
``python``, ``python3``, ``torchrun``, ``make`` or ``.venv/bin/python``) is checked:

* the script, module, Makefile target or test file it runs exists;
* every file it reads (``--config``, ``--model``, ``--cmsr``, ``--input``, ``-opt``, positional inputs, and
  any word under ``configs/``, ``save/pretrained_models/`` or ``assets/``) exists, after the placeholders the
  README uses (``M.pth``, ``T.yaml``, ``IN``, ``photo.jpg``, ...) are replaced by bundled files;
* the script parses the arguments: it is run as ``python`` would run it (``runpy``, ``__main__``) until its
  first ``ArgumentParser.parse_args`` returns, so an unknown or misspelt flag or a bad value fails (argparse
  exits 2) and nothing is computed;
* the cheap ones run for real, on a small crop of the bundled image: one ``demo.py`` command in the default
  suite from the repository root and from another folder, every ``demo.py`` command and the ONNX export
  (slow).

The extraction is generic: commands other sessions add to the README are covered without changing this
file, unless they use a new placeholder (add it to ``PLACEHOLDERS``) or name a file that is made elsewhere
(``EXTERNAL``).
"""
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from argparse import ArgumentParser
from pathlib import Path

import pytest

from .conftest import ROOT

README = ROOT / 'README.md'
PROGRAMS = ('.venv/bin/python', 'python3', 'python', 'torchrun', 'make')
BUNDLED = 'save/pretrained_models/edsr-b_lm-liif.pth'
#: the README's placeholders for the user's files -> a file of the repository that stands in for them
PLACEHOLDERS = {
    'IN': 'assets/demo_lr.png', 'photo.jpg': 'assets/demo_lr.png', 'photo.png': 'assets/demo_lr.png',
    'big.png': 'assets/demo_lr.png', 'in.png': 'assets/demo_lr.png', 'demo.png': 'assets/demo_lr.png',
    'M.pth': BUNDLED, 'IN.pth': BUNDLED, 'M.safetensors': 'save/pretrained_models/edsr-b_lm-liif.safetensors',
    'T.yaml': 'save/pretrained_models/edsr-b_lm-liif_cmsr.yaml',
    'C.yaml': 'configs/train-lmf/train_edsr-baseline-lmliif.yaml',
    'photos/': 'assets/', 'photos': 'assets', 'in_dir/': 'assets/',
    'N': None,      # a number: NUMBERS by the flag it follows
}
#: what the placeholder ``N`` becomes after a flag (else 1)
NUMBERS = {'--bsize': '65536', '--tile': '64', '--threads': '1', '--stop-after': '1'}
#: placeholders for outputs (a real run needs the extension)
OUTPUT_PLACEHOLDERS = {'OUT': 'out.png', 'OUT.safetensors': 'out.safetensors'}
#: files the README names that come from elsewhere: a training run's output, the IGConv repository's BasicSR
#: option files and checkpoints (their commands are still parsed)
EXTERNAL = (re.compile(r'save/_train[^/]*/epoch-[a-z0-9]+\.pth$'), re.compile(r'^options/'),
            re.compile(r'^X\.ya?ml$'), re.compile(r'^EDSR_IGConvPlus_DIV2K\.pth$'))
#: flags whose value is a file the command reads / writes
INPUT_FLAGS = {'--config', '--model', '--cmsr', '--cmsr_path', '--input', '-opt', '--lmliif-checkpoint',
               '--lmliif-cmsr', '--lmlte-checkpoint', '--lmlte-cmsr', '--golden', '--from-dir'}
OUTPUT_FLAGS = {'--output', '--save-dir', '--save-path', '--save_path', '--out', '--results-dir'}
#: scripts whose positional arguments are (input, output) paths
POSITIONAL_IO = {'scripts.export_model', 'scripts.convert_basicsr'}
REPO_DIRS = ('configs/', 'save/pretrained_models/', 'assets/')
#: code spans that name a command form rather than a command
NOT_COMMANDS = {'python -m scripts.x', 'python3 -m venv'}


# ---- extraction -----------------------------------------------------------------------------------------
def _is_command(text):
    return re.match(r'^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:' + '|'.join(map(re.escape, PROGRAMS)) + r')\s+\S',
                    text) is not None


def extract_commands(text):
    """[(line, command)] of the command lines shown in markdown ``text`` (comments and continuations
    removed; inline spans may wrap over lines)."""
    found = []
    blocks = list(re.finditer(r'^```([A-Za-z]*)[^\n]*\n(.*?)^```', text, re.S | re.M))
    for m in blocks:
        lang, body = m.groups()
        if lang.lower() not in ('', 'bash', 'sh', 'shell', 'console'):
            continue
        line = text[:m.start()].count('\n') + 2
        cur, first = '', None
        for i, raw in enumerate(body.splitlines()):
            s = raw.rstrip()
            first = i if first is None else first
            if s.endswith('\\'):
                cur += s[:-1] + ' '
                continue
            cmd = _strip_comment(cur + s).strip()
            if _is_command(cmd):
                found.append((line + first, cmd))
            cur, first = '', None
    prose = text
    for m in reversed(blocks):          # blank the blocks, keeping line numbers
        prose = prose[:m.start()] + '\n' * m.group(0).count('\n') + prose[m.end():]
    for m in re.finditer(r'`([^`]+)`', prose):
        cmd = ' '.join(m.group(1).split())
        if _is_command(cmd) and cmd not in NOT_COMMANDS:
            found.append((prose[:m.start()].count('\n') + 1, cmd))
    return found


def _strip_comment(line):
    try:
        lex = shlex.shlex(line, posix=True, punctuation_chars=False)
        lex.whitespace_split, lex.commenters = True, '#'
        return shlex.join(list(lex))
    except ValueError:
        return line


# ---- analysis ----------------------------------------------------------------------------------------------
class Command:
    """A README command split into: env, kind ('script', 'module', 'make', 'pytest', 'code', 'skip'), target
    (script path, module name, make target), args."""

    def __init__(self, line, text):
        self.line, self.text = line, text
        words = shlex.split(text)
        self.env = {}
        while words and re.match(r'^[A-Z_][A-Z0-9_]*=', words[0]):
            k, v = words.pop(0).split('=', 1)
            self.env[k] = v
        prog, rest = words[0], words[1:]
        self.kind, self.target, self.args = 'skip', None, rest
        if '...' in rest or any(w.endswith('...') for w in rest):
            self.why = 'abbreviated (...)'
            return
        if prog == 'make':
            self.kind, self.target = 'make', [w for w in rest if '=' not in w] or ['all']
            return
        if prog == 'torchrun' or rest[:2] == ['-m', 'torch.distributed.launch']:
            rest = rest[2:] if prog != 'torchrun' else rest
            while rest and not rest[0].endswith('.py'):
                rest = rest[1:]
            if not rest:
                self.why = 'no script'
                return
            self.kind, self.target, self.args = 'script', rest[0], rest[1:]
            return
        if rest[:2] == ['-m', 'pytest']:
            self.kind, self.args = 'pytest', rest[2:]
        elif rest[:1] == ['-c']:
            self.kind, self.target = 'code', rest[1]
        elif rest[:1] == ['-m']:
            self.kind, self.target, self.args = 'module', rest[1], rest[2:]
        elif rest and rest[0].endswith('.py'):
            self.kind, self.target, self.args = 'script', rest[0], rest[1:]
        else:
            self.why = 'not a script command'

    def __repr__(self):
        return f'README.md:{self.line}: {self.text}'

    @property
    def name(self):
        """'demo.py', 'scripts.export_onnx', ... (a script's path relative to the root)."""
        return self.target

    def file_args(self):
        """[(index in args, path, 'in' | 'out')] of the arguments that are files."""
        out, args = [], self.args
        for i, a in enumerate(args):
            flag, eq, val = a.partition('=')
            if eq and flag in INPUT_FLAGS | OUTPUT_FLAGS:
                out.append((i, val, 'in' if flag in INPUT_FLAGS else 'out', True))
            elif i > 0 and args[i - 1] in INPUT_FLAGS | OUTPUT_FLAGS:
                out.append((i, a, 'in' if args[i - 1] in INPUT_FLAGS else 'out', False))
        if self.target in POSITIONAL_IO:
            pos = [i for i, a in enumerate(args) if not a.startswith('-') and (i == 0 or not args[i - 1].startswith('-'))]
            for k, i in enumerate(pos[:2]):
                out.append((i, args[i], 'in' if k == 0 else 'out', False))
        return out


def written_by(commands):
    """The files the commands write (their outputs): a later command may read them."""
    return {path for c in commands if c.kind in ('script', 'module') for _, path, io, _ in c.file_args()
            if io == 'out'}


def resolve_input(path, root=ROOT, made=()):
    """A file a command reads -> the repository file that stands for it, None when it is external (or written
    by a README command: ``made``), or raises AssertionError naming what is missing."""
    if path in made or any('/' not in path and os.path.basename(m) == path for m in made):
        return None
    if any(p.search(path) for p in EXTERNAL) or re.fullmatch(r'\d+x\d+', path):   # external; a size WxH
        return None
    path = PLACEHOLDERS.get(path) or path
    if path in ('bicubic', 'True', 'False', 'true', 'false', 'auto'):
        return path
    candidates = [root / path]
    if '/' not in path:          # a bare checkpoint name is looked up in save/pretrained_models and save
        candidates += [root / 'save' / 'pretrained_models' / path, root / 'save' / path]
    for c in candidates:
        if c.exists():
            return str(c.relative_to(root)) if c.is_relative_to(root) else str(c)
    raise AssertionError(f'names a file that does not exist: {path}')


def problems(cmd, root=ROOT, made=()):
    """What is wrong with a README command, without running it: a list of messages (empty: fine). ``made``:
    files that README commands write."""
    out = []
    if cmd.kind == 'make':
        makefile = (root / 'Makefile').read_text()
        for t in cmd.target:
            if not re.search(rf'^{re.escape(t)}\s*:', makefile, re.M):
                out.append(f'make target {t!r} is not in the Makefile')
        return out
    if cmd.kind == 'pytest':
        for a in cmd.args:
            if a.startswith('tests/') and not (root / a.split('::')[0]).exists():
                out.append(f'test file {a} does not exist')
        return out
    if cmd.kind == 'code':
        try:
            compile(cmd.target, '<README>', 'exec')
        except SyntaxError as e:
            out.append(f'python -c code does not compile: {e}')
        return out
    if cmd.kind == 'script' and not (root / cmd.target).is_file():
        out.append(f'script {cmd.target} does not exist')
    if cmd.kind == 'module':
        if not (root / (cmd.target.replace('.', '/') + '.py')).is_file():
            out.append(f'module {cmd.target} does not exist')
    ios = cmd.file_args()
    read = {i for i, _, io, _ in ios if io == 'in'}
    written = {i for i, _, io, _ in ios if io == 'out'}
    for i, path, io, _ in ios:
        if io == 'in':
            try:
                resolve_input(path, root, made)
            except AssertionError as e:
                out.append(str(e))
    for i, a in enumerate(cmd.args):         # any other word naming a repository file
        word = a.partition('=')[2] if a.startswith('-') else a
        if i in read or i in written or not word.startswith(REPO_DIRS):
            continue
        if not (root / word).exists():
            out.append(f'names a file that does not exist: {word}')
    return out


def substituted_args(cmd, tmp, root=ROOT):
    """The command's arguments with placeholders replaced by repository files (absolute: they stand for the
    user's files, wherever the command runs) and outputs put under ``tmp``; paths the README writes as
    repository paths are kept."""
    args = [NUMBERS.get(cmd.args[i - 1] if i else None, '1') if a == 'N' else a for i, a in enumerate(cmd.args)]
    for i, path, io, joined in cmd.file_args():
        if io == 'out':
            new = str(Path(tmp) / Path(OUTPUT_PLACEHOLDERS.get(path, path).rstrip('/')).name)
        else:
            found = resolve_input(path, root, MADE)
            # placeholders stand for the user's own files: absolute; repository paths stay as the README
            # writes them, so that a run from another folder checks that they resolve against the repository
            new = str(root / found) if path in PLACEHOLDERS and found is not None else path
        args[i] = f'{args[i].partition("=")[0]}={new}' if joined else new
    return args


# ---- the dry parse ----------------------------------------------------------------------------------------
class Parsed(BaseException):
    """Raised by the patched ``ArgumentParser.parse_args`` once the command line has parsed (a
    BaseException, so that no ``except Exception`` of the scripts takes it for an error)."""


def dry_parse(cmd, monkeypatch, tmp):
    """Run the command's script as ``__main__`` until it has parsed its arguments. Returns None when they
    parse, else the argparse message."""
    original = ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        ns = original(self, args, namespace)
        raise Parsed(ns)

    argv = substituted_args(cmd, tmp)
    monkeypatch.setattr(ArgumentParser, 'parse_args', parse_then_stop)
    for k, v in cmd.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(ROOT)
    saved_path = list(sys.path)
    try:
        if cmd.kind == 'module':
            monkeypatch.setattr(sys, 'argv', [cmd.target] + argv)
            runpy.run_module(cmd.target, run_name='__main__', alter_sys=True)
        else:
            monkeypatch.setattr(sys, 'argv', [str(ROOT / cmd.target)] + argv)
            sys.path.insert(0, str((ROOT / cmd.target).parent))
            runpy.run_path(str(ROOT / cmd.target), run_name='__main__')
    except Parsed:
        return None
    except SystemExit as e:
        return f'exit {e.code} before its arguments parsed'
    finally:
        sys.path[:] = saved_path
    return 'finished without parsing any arguments'


# ---- the tests ----------------------------------------------------------------------------------------------
COMMANDS = [Command(line, text) for line, text in extract_commands(README.read_text(encoding='utf-8'))]
CHECKED = [c for c in COMMANDS if c.kind != 'skip']
MADE = written_by(COMMANDS)


def test_the_readme_shows_commands():
    """The extraction finds the README's commands (a change that breaks it must not pass silently)."""
    kinds = {c.kind for c in CHECKED}
    assert len(CHECKED) >= 40 and {'script', 'module', 'make'} <= kinds, COMMANDS
    skipped = [c for c in COMMANDS if c.kind == 'skip']
    assert len(skipped) <= 10, skipped         # abbreviated forms only ('torchrun ... test.py --config ...')


@pytest.mark.parametrize('cmd', CHECKED, ids=lambda c: f'L{c.line}')
def test_readme_command_names_existing_files_and_parses(cmd, monkeypatch, tmp_path):
    assert problems(cmd, made=MADE) == [], cmd
    if cmd.kind in ('script', 'module') and cmd.args:     # `python -m scripts.export_onnx` alone names the command
        err = dry_parse(cmd, monkeypatch, tmp_path)
        assert err is None, f'{cmd}: {err}'


SYNTHETIC = """
Some text with `python demo.py --input IN --output OUT --scale 2 --no-such-flag` inline.

```bash
python test.py --config configs/test-lmf/div2k-x9.yaml --model M.pth
python demo.py --input photo.jpg --output o.png --scale 3 \\
    --model save/pretrained_models/missing.pth   # a comment
make no-such-target
python -m scripts.no_such_module --help
python demo.py --input photo.jpg --output o.png --scale 2   # fine
```
"""


def test_the_checks_fail_on_a_bad_readme(monkeypatch, tmp_path):
    """A missing config, checkpoint, make target or module, and an unknown flag are each reported."""
    cmds = [Command(line, text) for line, text in extract_commands(SYNTHETIC)]
    assert [c.line for c in cmds] == [5, 6, 8, 9, 10, 2]
    report = {c.line: problems(c) for c in cmds}
    assert report[5] == ['names a file that does not exist: configs/test-lmf/div2k-x9.yaml']
    assert report[6] == ['names a file that does not exist: save/pretrained_models/missing.pth']
    assert report[8] == ["make target 'no-such-target' is not in the Makefile"]
    assert report[9] == ['module scripts.no_such_module does not exist']
    assert report[10] == [] and report[2] == []
    assert 'exit 2' in dry_parse(cmds[-1], monkeypatch, tmp_path)        # --no-such-flag
    assert dry_parse(cmds[-2], monkeypatch, tmp_path) is None


# ---- real runs --------------------------------------------------------------------------------------------
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


@pytest.fixture(scope='module')
def small_image(tmp_path_factory):
    """A 24x20 crop of the bundled image: the README's demo commands at every scale in seconds."""
    from PIL import Image
    path = tmp_path_factory.mktemp('img') / 'small.png'
    Image.open(ROOT / 'assets' / 'demo_lr.png').convert('RGB').crop((40, 50, 60, 74)).save(path)
    return path


def run_for_real(cmd, cwd, tmp, image):
    """Run a script command with ``python`` from ``cwd``: placeholders replaced, outputs under ``tmp``, the
    input image replaced by ``image``; the script path as a user in ``cwd`` would give it."""
    args = substituted_args(cmd, tmp)
    for i, path, io, joined in cmd.file_args():
        if io == 'in' and args[i - 1] == '--input':
            args[i] = str(image)
            if path.endswith('/'):          # a folder input (photos/): a tree holding the image
                folder = tmp / 'input_folder'
                (folder / 'sub').mkdir(parents=True, exist_ok=True)
                shutil.copy(image, folder / 'sub' / image.name)
                args[i] = str(folder) + '/'
    if cmd.kind == 'module':
        pre = ['-m', cmd.target]
        env = dict(ENV, PYTHONPATH=str(ROOT))     # `python -m scripts.x` from elsewhere: the checkout on the path
    else:
        pre = [os.path.relpath(ROOT / cmd.target, cwd)]
        env = ENV
    out = subprocess.run([sys.executable] + pre + args, cwd=cwd, capture_output=True, text=True, env=env,
                         timeout=600)
    return out


def runnable(cmd):
    """Whether a command can run here for real: it has arguments and reads only repository files."""
    try:
        return bool(cmd.args) and all(resolve_input(path) is not None for _, path, io, _ in cmd.file_args()
                                      if io == 'in')
    except AssertionError:
        return False


DEMOS = [c for c in CHECKED if c.kind == 'script' and c.target == 'demo.py' and runnable(c)]


def _check_real(cmd, where, tmp_path, image):
    cwd = ROOT if where == 'root' else tmp_path
    out = run_for_real(cmd, cwd, tmp_path, image)
    assert out.returncode == 0, f'{cmd} (from {where}): {out.stderr.strip()}'
    written = [p for p in tmp_path.rglob('*') if p.suffix in ('.png', '.onnx', '.jpg')    # folder outputs too
               and 'input_folder' not in p.relative_to(tmp_path).parts]
    assert written, f'{cmd}: nothing written'


@pytest.mark.parametrize('where', ['root', 'elsewhere'])
def test_first_readme_demo_runs(where, tmp_path, small_image):
    _check_real(DEMOS[0], where, tmp_path, small_image)


@pytest.mark.slow
@pytest.mark.parametrize('where', ['root', 'elsewhere'])
@pytest.mark.parametrize('cmd', DEMOS[1:] + [c for c in CHECKED if c.target == 'scripts.export_onnx' and runnable(c)],
                         ids=lambda c: f'L{c.line}' if isinstance(c, Command) else c)
def test_readme_cheap_commands_run(cmd, where, tmp_path, small_image):
    _check_real(cmd, where, tmp_path, small_image)
