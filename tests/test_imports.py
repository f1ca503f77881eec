"""The module structure: no import cycle between the project's modules (every import statement counts, including
the ones inside functions), and entry points whose functions stay short (they parse flags, open an inference
session and report)."""
import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGES = ('engine', 'models', 'datasets', 'utils')
ENTRY_POINTS = ('demo.py', 'test.py', 'init_cmsr.py', 'train.py', 'api.py', 'hubconf.py', 'scripts/export_onnx.py',
                'scripts/cmsr_eval.py')
MAX_FUNCTION_LINES = 60


def project_modules():
    """{dotted module name: path} of every module of the project's packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob('*.py')):
            parts = list(path.relative_to(ROOT).with_suffix('').parts)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            mods['.'.join(parts)] = path
    return mods


def imported_modules(name, path, mods):
    """Project modules that ``name`` imports anywhere in its file (module level or inside functions).

    ``from pkg import x`` counts as an import of ``pkg.x`` when that is a module, else of ``pkg``; importing a
    submodule does not count as importing its parent packages (they are initialised first, whatever imports
    them)."""
    is_package = path.name == '__init__.py'
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split('.') if is_package else name.split('.')[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                full = f'{module}.{alias.name}'
                if full in mods:
                    out.add(full)
                elif module in mods:
                    out.add(module)
    out.discard(name)
    return out


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_finds_a_cycle_through_a_function_local_import(tmp_path):
    """The check can fail: a cycle closed by an import inside a function is found."""
    (tmp_path / 'a.py').write_text('import b\n')
    (tmp_path / 'b.py').write_text('def f():\n    from a import x\n')
    mods = {'a': tmp_path / 'a.py', 'b': tmp_path / 'b.py'}
    graph = {name: imported_modules(name, path, mods) for name, path in mods.items()}
    assert cycles(graph) == [['a', 'b']]


def test_no_import_cycles_between_project_modules():
    mods = project_modules()
    assert 'engine.inference' in mods and 'models.decoders.implicit' in mods
    graph = {name: imported_modules(name, path, mods) for name, path in mods.items()}
    assert graph['engine.render'] >= {'engine.cmsr', 'models.decoders.implicit'}      # the walk sees imports
    found = cycles(graph)
    assert not found, 'import cycles: ' + '; '.join(' -> '.join(c) for c in found)


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_entry_point_functions_are_short(entry):
    tree = ast.parse(Path(ROOT / entry).read_text())
    long = [f'{node.name} ({node.end_lineno - node.lineno + 1} lines)' for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f'{entry}: functions over {MAX_FUNCTION_LINES} lines: {", ".join(long)}'
