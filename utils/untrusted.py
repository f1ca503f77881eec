"""Bounds on content read from files (configs, checkpoints, tables, metadata) before anything uses it.

Every structured value that comes from a file passes :func:`check_tree` once, where it is read
(``utils.config.load_yaml``, ``models.checkpoint.load_checkpoint``, ``models.weights.load``): a bounded
walk (an explicit stack, no recursion) that refuses

* nesting deeper than ``max_depth`` (a recursion bomb for every later recursive walk or ``repr``),
* more than ``max_nodes`` visited values, counting a shared object (a YAML alias, a pickle memo
  reference) once per reference, i.e. the size of the expanded value (an alias "billion laughs" bomb,
  whose ``repr`` alone would take minutes and gigabytes),
* strings longer than ``max_string``, and container types other than dict / list / tuple.

Tensors are leaves (their sizes are checked where they are used). After this check, every ``repr`` of the
value is bounded, and error messages show at most an :func:`excerpt`.
"""
import reprlib

MAX_DEPTH = 48
MAX_NODES = 1_000_000
MAX_STRING = 1 << 20


class ContentError(ValueError):
    """Content of a file is too deep, too large or of an unexpected type."""


_LEAVES = (str, bytes, int, float, bool, type(None))


def check_tree(value, where, max_depth=MAX_DEPTH, max_nodes=MAX_NODES, max_string=MAX_STRING, leaf_types=()):
    """Refuse ``value`` (see the module docstring) with a one-line :class:`ContentError` naming ``where``.

    ``leaf_types``: further accepted leaf types (e.g. ``torch.Tensor`` for checkpoints)."""
    leaves = _LEAVES + tuple(leaf_types)
    stack = [(value, 0)]
    visited = 0
    while stack:
        item, depth = stack.pop()
        visited += 1
        if visited > max_nodes:
            raise ContentError(f'{where}: more than {max_nodes:,} values once expanded (a YAML alias or pickle '
                               f'reference bomb?); refusing it')
        if isinstance(item, leaves):
            if isinstance(item, (str, bytes)) and len(item) > max_string:
                raise ContentError(f'{where}: a string of {len(item):,} characters (limit {max_string:,})')
            continue
        if isinstance(item, dict):
            children = [c for kv in item.items() for c in kv]
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            raise ContentError(f'{where}: unexpected value of type {type(item).__name__}')
        if depth >= max_depth:
            raise ContentError(f'{where}: nested more than {max_depth} levels deep; refusing it')
        if len(children) > max_nodes:
            raise ContentError(f'{where}: a container of {len(children):,} entries (limit {max_nodes:,})')
        stack.extend((c, depth + 1) for c in children)
    return value


def json_depth(text, max_depth=MAX_DEPTH):
    """The nesting depth of a JSON text, or ``max_depth + 1`` as soon as it is exceeded (so that
    ``json.loads`` never recurses past it). Brackets inside strings are skipped."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == '\\':
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in '[{':
            depth += 1
            if depth > max_depth:
                return depth
            deepest = max(deepest, depth)
        elif ch in ']}':
            depth -= 1
    return deepest


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6


def excerpt(value, limit=80):
    """A short ``repr`` of ``value`` for messages: bounded in depth, entries and length whatever ``value``
    holds (never the full repr of user data)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'
