"""A name -> constructor registry, shared by ``models`` and ``datasets``.

``Registry.build(spec, args)`` turns ``{'name': ..., 'args': {...}}`` into an object: ``args`` are merged
over a deep copy of ``spec['args']``, and unknown or missing constructor arguments are reported in one
line naming them (before the constructor runs).
"""
import copy
import difflib
import inspect

from utils.untrusted import excerpt

class Registry:
    """Args:
        kind: what the entries are, for messages ('model', 'dataset').
        error: exception class raised for bad specs.
    """

    def __init__(self, kind, error):
        self.kind, self.error = kind, error
        self.entries = {}

    def register(self, name):
        """Decorator that registers a class or factory function under ``name``."""
        def decorator(cls):
            if name in self.entries:
                raise KeyError(f'{self.kind} name {name!r} is registered twice')
            self.entries[name] = cls
            cls.registry_name = name
            return cls
        return decorator

    def names(self):
        return sorted(self.entries)

    def __contains__(self, name):
        return name in self.entries

    def get(self, name):
        if name not in self.entries:
            hint = difflib.get_close_matches(str(name), self.entries, n=1)
            hint = f' (did you mean {hint[0]!r}?)' if hint else ''
            raise self.error(f'unknown {self.kind} {name!r}{hint}; registered {self.kind}s: {", ".join(self.names())}')
        return self.entries[name]

    def check_args(self, cls, name, args):
        params = inspect.signature(cls).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return
        unknown = sorted(set(args) - set(params))
        if unknown:
            raise self.error(f'{self.kind} {name!r} does not take argument(s) {", ".join(map(repr, unknown))}; '
                             f'it takes: {", ".join(params)}')
        missing = [k for k, p in params.items() if p.default is p.empty and k not in args
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            raise self.error(f'{self.kind} {name!r} needs argument(s) {", ".join(map(repr, missing))}')

    def build(self, spec, args=None):
        """Instantiate ``spec``; returns (object, name)."""
        if not isinstance(spec, dict) or 'name' not in spec:
            raise self.error(f'a {self.kind} spec must be a dict with a "name" key, got {excerpt(spec, 200)}')
        name = spec['name']
        cls = self.get(name)
        merged = copy.deepcopy(spec.get('args') or {})
        if not isinstance(merged, dict):
            raise self.error(f'{self.kind} {name!r}: "args" must be a mapping, got {type(merged).__name__}')
        merged.update(args or {})
        self.check_args(cls, name, merged)
        try:
            return cls(**merged)
        except (KeyError, IndexError, AttributeError, TypeError, ZeroDivisionError, RuntimeError) as e:
            # a constructor tripping over a value it did not expect (torch: a negative size...): name the
            # object, one line; running out of memory stays what it is
            if isinstance(e, RuntimeError) and 'OutOfMemory' in type(e).__name__:
                raise
            detail = ' '.join(str(e).split())[:200]
            raise self.error(f'{self.kind} {name!r} cannot be built from these args ({type(e).__name__}: '
                             f'{detail})') from None
