"""Named, swappable functions: selectable in a config by name, or as `MODULE:NAME`.

The model's three kinds of swappable math each have one `Registry` (`features.FEATURE_MAPS`,
`features.PROJECTIONS`, `attention.ATTENTIONS`). A config value is either

* a registered name (`'enla'`, `'softmax_kernel'`, ...; old names stay accepted as aliases), or
* `MODULE:NAME`: attribute `NAME` of the importable module `MODULE`, e.g. `my_kernels:relu2`
  for a function `relu2` in `my_kernels.py` in the working directory or on `PYTHONPATH`.

A training workdir records the value in `model_config.json`, so evaluation resolves it again.
Every function is checked once on a small input (`check`) before a model uses it, so a wrong
signature is a one-line error naming the config key, not a traceback from inside `jit`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Generic, TypeVar

Fn = TypeVar('Fn', bound=Callable)


class Registry(Generic[Fn]):
    """Functions of one kind by name.

    Args:
      kind: what the functions are, for messages (`'feature map'`).
      key: the config key that selects one (`'model.feature_map'`), for messages.
      check: `check(fn)` raises (any exception; its message is shown) if `fn` does not behave
        like a function of this kind on a small input.
      aliases: old name -> registered name, accepted when resolving.
    """

    def __init__(self, kind: str, key: str, check: Callable[[Fn], None],
                 aliases: dict[str, str] | None = None):
        self.kind, self.key, self._check = kind, key, check
        self._fns: dict[str, Fn] = {}
        self._aliases = dict(aliases or {})
        self._checked: dict[str, Fn] = {}

    def names(self) -> list[str]:
        """Registered names (aliases excluded), sorted."""
        return sorted(self._fns)

    def register(self, name: str, fn: Fn, *, replace: bool = False) -> Fn:
        """Makes `fn` selectable as `name`; an existing name or alias needs `replace=True`."""
        if not callable(fn):
            raise TypeError(f'register {self.kind} {name!r}: {fn!r} is not callable')
        if ':' in name:
            raise ValueError(f"register {self.kind} {name!r}: ':' is reserved for MODULE:NAME")
        taken = name in self._fns or name in self._aliases
        if taken and not replace:
            raise ValueError(f'{self.kind} {name!r} is already registered; pass replace=True '
                             'to replace it, or choose another name')
        self._aliases.pop(name, None)
        self._fns[name] = fn
        self._checked.pop(name, None)
        return fn

    def unregister(self, name: str) -> None:
        """Removes a registered name (for tests and interactive sessions)."""
        self._fns.pop(name, None)
        self._checked.pop(name, None)

    def get(self, spec: str) -> Fn:
        """The function `spec` selects (a name, an alias or `MODULE:NAME`), checked once.

        Raises:
          ValueError: unknown name, unimportable module, missing attribute, or a function that
            fails `check`; the message names the config key and the value.
        """
        if spec in self._checked:
            return self._checked[spec]
        fn = self._import(spec) if ':' in spec else self._lookup(spec)
        try:
            self._check(fn)
        except Exception as e:  # pylint: disable=broad-except  # any failure is a bad function
            raise ValueError(f'{self.key}={spec!r}: not a valid {self.kind}: '
                             f'{type(e).__name__}: {e}') from e
        self._checked[spec] = fn
        return fn

    def _lookup(self, name: str) -> Fn:
        name = self._aliases.get(name, name)
        if name not in self._fns:
            raise ValueError(f'{self.key}={name!r}: unknown {self.kind}; known: {self.names()}, '
                             'or MODULE:NAME for a function NAME in an importable module MODULE')
        return self._fns[name]

    def _import(self, spec: str) -> Fn:
        module_name, _, attr = spec.partition(':')
        if not module_name or not attr:
            raise ValueError(f'{self.key}={spec!r}: expected MODULE:NAME')
        try:
            module = _import_module(module_name)
        except Exception as e:  # pylint: disable=broad-except  # ImportError, or its own error
            raise ValueError(f'{self.key}={spec!r}: cannot import module {module_name!r} '
                             f'({type(e).__name__}: {e}); put {module_name}.py in the working '
                             'directory or on PYTHONPATH') from e
        if not hasattr(module, attr):
            raise ValueError(f'{self.key}={spec!r}: module {module_name!r} '
                             f'({getattr(module, "__file__", "?")}) has no attribute {attr!r}')
        fn = getattr(module, attr)
        if not callable(fn):
            raise ValueError(f'{self.key}={spec!r}: {module_name}.{attr} is not callable')
        return fn


def _import_module(name: str):
    """`importlib.import_module`, also looking in the working directory (`python train.py` puts
    the script's folder, not the working directory, on `sys.path`)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != name.split('.')[0] or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)
