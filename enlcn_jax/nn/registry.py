"""Named, swappable functions: selectable in a config by name, with options, or as `MODULE:NAME`.

The model's kinds of swappable math each have one `Registry` (`features.FEATURE_MAPS`,
`features.PROJECTIONS`, `attention.ATTENTIONS`, `models.BLOCKS`, `losses.CONTRASTIVE_LOSSES`).
A config value (a *spec*) is

* a registered name (`'enla'`, `'softmax_kernel'`, ...; a name recorded by an older version is
  read with today's name where it is read back: `models.upgrade_recorded_config`),
* `MODULE:NAME`: attribute `NAME` of the importable module `MODULE`, e.g. `my_kernels:relu2`
  for a function `relu2` in `my_kernels.py` in the working directory or on `PYTHONPATH`
  (`research.kernels:relu2` for `research/kernels.py`),
* either of those with keyword options, as big_vision's `registry.lookup('name(kw=1)')`:
  `'softmax_kernel(eps=0.0)'`, `'my_kernels:favor_plus(rho=0.5, stabilize=True)'`. The options
  are Python literals bound as keyword arguments (`functools.partial`); an option the function
  does not take is an error naming the options it has.

In code, the function itself (or a `functools.partial` of it) may stand for a spec. A training
workdir records the spec as written in `model_config.json` (`spec_string` turns a function
into the `MODULE:NAME(...)` that imports it again), so evaluation resolves it again. Importing
a module runs it: a checkpoint's specs outside the package (`external_targets`) are imported
only when the user trusts its code (`checkpoints.load_model(trust_code=True)`), and the source
of each function it names is fingerprinted when it is saved and compared when it is loaded
(`code_fingerprints`, `changed_code`).
Every function is checked once (`check`), running it the way the model will, before a model
uses it: a wrong signature or a function that misbehaves where the model runs it is a one-line
error naming the config key, not a traceback from inside `jit` or a silently wrong number.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import os
import sys
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

Fn = TypeVar('Fn', bound=Callable)
Spec = str | Callable


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Splits `'target(kw=1, other="a")'` into `('target', {'kw': 1, 'other': 'a'})`.

    The target is a name or `MODULE:NAME`; the options are keyword arguments whose values are
    Python literals (numbers, strings, booleans, None, tuples, lists, dicts). A spec is one call:
    nothing may follow its closing parenthesis.

    Raises:
      ValueError: unbalanced parentheses, text after the call, positional options, a value that
        is not a literal, or options nested too deeply to read; the message echoes the spec (cut
        to `SHOWN_CHARACTERS`).
    """
    spec = spec.strip()
    shown = repr(describe(spec))
    if '(' not in spec:
        if ')' in spec:
            raise ValueError(f'unbalanced parentheses in {shown}')
        return spec, {}
    target, _, rest = spec.partition('(')
    source = f'f({rest}'
    try:
        expression = ast.parse(source, mode='eval').body
    except SyntaxError as e:
        raise ValueError(f'cannot read the options of {shown}: expected '
                         'NAME(option=value, ...)') from e
    except (MemoryError, RecursionError) as e:  # the parser's limit on nesting
        raise ValueError(f'the options of {shown} are nested too deeply to read') from e
    # The call that opens at the first '(' (the 'f' at offset 0); anything else wraps it.
    call = next(node for node in ast.walk(expression) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name) and node.func.col_offset == 0
                and node.func.lineno == 1)
    after = source[len(ast.get_source_segment(source, call)):].strip()
    if after:
        raise ValueError(f'{shown} is not one call NAME(option=value, ...): '
                         f'{describe(after)!r} follows its closing parenthesis')
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(f'options of {shown} must be keyword arguments: '
                         'NAME(option=value, ...)')
    options = {}
    for keyword in call.keywords:
        try:
            options[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError) as e:  # TypeError: an unhashable dict key
            value = describe(ast.get_source_segment(source, keyword.value) or '')
            raise ValueError(f'option {keyword.arg} of {shown} is not a Python literal '
                             f'({value})') from e
    return target.strip(), options


def split_specs(text: str, separator: str = ',') -> list[str]:
    """A list of specs, split at the separators outside parentheses and brackets (empty items
    dropped):
    `'relu,my:favor(rho=0.5, s=1)'` -> `['relu', 'my:favor(rho=0.5, s=1)']`."""
    specs, depth, start = [], 0, 0
    for at, char in enumerate(text + separator):
        depth += {'(': 1, '[': 1, ')': -1, ']': -1}.get(char, 0)
        if char == separator and depth == 0:
            specs.append(text[start:at].strip())
            start = at + 1
    return [spec for spec in specs if spec]


def spec_string(spec: Spec) -> str:
    """The config string of a spec: a string as is; a function (or a `functools.partial` of one
    with keyword options) as the `MODULE:NAME(...)` that imports it again.

    Raises:
      ValueError: a function that cannot be imported back by name (a lambda, a nested function,
        a partial with positional arguments): register it, or put it in a module; or an option
        whose value `parse_spec` could not read back.
    """
    if isinstance(spec, str):
        return spec
    fn, options = spec, {}
    if isinstance(spec, functools.partial):
        if spec.args:
            raise ValueError(f'cannot record {spec!r} by name: a partial with positional '
                             'arguments (give the options as keywords)')
        fn, options = spec.func, spec.keywords
    module, name = getattr(fn, '__module__', None), getattr(fn, '__qualname__', '')
    try:
        importable = getattr(sys.modules[module], name) is fn
    except (KeyError, AttributeError):
        importable = False
    if not importable:
        raise ValueError(f'cannot record {fn!r} by name: it is not a module-level attribute; '
                         'register it, or define it in a module and pass "MODULE:NAME"')
    for key, value in options.items():
        try:
            readable = ast.literal_eval(repr(value)) == value
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            readable = False
        if not readable:
            raise ValueError(f'cannot record option {key}={value!r} of {module}:{name}: its value '
                             'is not a Python literal that reads back (inf, nan and NumPy scalars '
                             'are not); give a plain number, string, bool, None or container')
    arguments = ', '.join(f'{key}={value!r}' for key, value in options.items())
    return f'{module}:{name}' + (f'({arguments})' if options else '')


class Registry(Generic[Fn]):
    """Functions of one kind by name.

    Args:
      kind: what the functions are, for messages (`'feature map'`).
      key: the config key that selects one (`'model.feature_map'`), for messages.
      check: `check(fn)` raises (any exception; its message is shown) if `fn` does not behave
        like a function of this kind on a small input.
    """

    def __init__(self, kind: str, key: str, check: Callable[..., None]):
        self.kind, self.key, self._check = kind, key, check
        self._fns: dict[str, Fn] = {}
        # (spec (a string, or a callable's id), sizes) -> (the spec, the checked function).
        self._checked: dict[tuple[str | int, tuple], tuple[Spec, Fn]] = {}
        self._trusted: set[int] = set()  # ids of the package's own functions

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._fns)

    def register(self, name: str, fn: Fn, *, replace: bool = False, trusted: bool = False) -> Fn:
        """Makes `fn` selectable as `name`; an existing name needs `replace=True`.

        `trusted`: one of the package's own functions, which its tests check
        (`tests/nn/test_research_api.py`); `get` then skips the check for it, though not for
        it with options.
        """
        if not callable(fn):
            raise TypeError(f'register {self.kind} {name!r}: {fn!r} is not callable')
        if any(c in name for c in ':()'):
            raise ValueError(f"register {self.kind} {name!r}: ':' and parentheses are reserved "
                             'for MODULE:NAME(options)')
        if name in self._fns and not replace:
            raise ValueError(f'{self.kind} {name!r} is already registered; pass replace=True '
                             'to replace it, or choose another name')
        self._fns[name] = fn
        if trusted:
            self._trusted.add(id(fn))
        self._checked.clear()
        return fn

    def unregister(self, name: str) -> None:
        """Removes a registered name (for tests and interactive sessions)."""
        self._fns.pop(name, None)
        self._checked.clear()

    def get(self, spec: Spec, **sizes: int) -> Fn:
        """The function `spec` selects (see the module docstring), options bound, checked once
        per `sizes`.

        Args:
          spec: a name, `MODULE:NAME`, either with `(option=value, ...)`, or a callable
            (used as is).
          sizes: the sizes the function will run at, passed to `check` (`m` and `d` for the
            model's functions, `models.from_config`); none: any sizes it was checked at
            already, else the check's own small sizes.
        Raises:
          ValueError: unknown name, unimportable module, missing attribute, an option the
            function does not take, or a function that fails `check`; the message names the
            config key, the value and the sizes.
        """
        cache_key = (spec if isinstance(spec, str) else id(spec), tuple(sorted(sizes.items())))
        if cache_key in self._checked and (isinstance(spec, str)
                                           or self._checked[cache_key][0] is spec):
            return self._checked[cache_key][1]
        if isinstance(spec, str):
            fn = self._resolve(spec)
        elif callable(spec):
            fn = spec
        else:
            raise ValueError(f'{self.key}={spec!r}: expected a name, MODULE:NAME or a callable')
        try:
            if id(fn) not in self._trusted:
                self._check(fn, **sizes)
        except Exception as e:  # pylint: disable=broad-except  # any failure is a bad function
            first_line = (str(e).strip().splitlines() or [''])[0]
            shown_sizes = ', '.join(f'{key}={size}' for key, size in sizes.items())
            at = f' (checked at {shown_sizes})' if sizes else ''
            raise ValueError(f'{self.key}={describe(spec)!r}: not a valid {self.kind}: '
                             f'{type(e).__name__}: {first_line}{at}') from e
        self._checked[cache_key] = (spec, fn)
        self._checked.setdefault((cache_key[0], ()), (spec, fn))  # for a get without sizes
        return fn

    def _resolve(self, spec: str) -> Fn:
        try:
            target, options = parse_spec(spec)
        except ValueError as e:
            raise ValueError(f'{self.key}: {e}') from e
        fn = self._import(target, spec) if ':' in target else self._lookup(target)
        if not options:
            return fn
        try:
            inspect.signature(fn).bind_partial(**options)
        except TypeError as e:
            raise ValueError(f'{self.key}={describe(spec)!r}: {target} takes no option(s) '
                             f'{sorted(set(options) - set(option_names(fn)))}; its options: '
                             f'{option_names(fn)}') from e
        return functools.partial(fn, **options)

    def _lookup(self, name: str) -> Fn:
        if name not in self._fns:
            raise ValueError(f'{self.key}={describe(name)!r}: unknown {self.kind}; known: '
                             f'{self.names()}, or MODULE:NAME for a function NAME in an '
                             'importable module MODULE')
        return self._fns[name]

    def _import(self, target: str, spec: str) -> Fn:
        module_name, _, attr = target.partition(':')
        if not module_name or not attr:
            raise ValueError(f'{self.key}={describe(spec)!r}: expected MODULE:NAME')
        try:
            module = _import_module(module_name)
        except Exception as e:  # pylint: disable=broad-except  # ImportError, or its own error
            raise ValueError(f'{self.key}={describe(spec)!r}: cannot import module '
                             f'{module_name!r} ({type(e).__name__}: {e}); put '
                             f'{module_name.replace(".", "/")}.py in the working directory or on '
                             'PYTHONPATH') from e
        if not hasattr(module, attr):
            raise ValueError(f'{self.key}={describe(spec)!r}: module {module_name!r} '
                             f'({getattr(module, "__file__", "?")}) has no attribute {attr!r}')
        fn = getattr(module, attr)
        if not callable(fn):
            raise ValueError(f'{self.key}={describe(spec)!r}: {module_name}.{attr} is not '
                             'callable')
        return fn


def with_option(fn: Callable, option: str, value: Any, *, spec: Spec, key: str,
                shorthand: str) -> Callable:
    """`fn` with `option=value` bound, for a config key that is a shorthand for one option
    (`model.kernel_eps` for `eps`, `train.contrastive.margin` for `margin`); `value` None: `fn`.

    Args:
      fn: the resolved function of `spec`, the value of config key `key`.
      shorthand: the shorthand's config key, for messages.
    Raises:
      ValueError: `fn` has no such option, or `spec` sets it too.
    """
    if value is None:
        return fn
    if option in getattr(fn, 'keywords', {}):
        raise ValueError(f'{shorthand}={value} and {key}={describe(spec)!r} both set {option}: '
                         f'leave {shorthand} unset (None)')
    if option not in option_names(fn):
        raise ValueError(f'{shorthand}={value} sets the {option} option, and {key}='
                         f'{describe(spec)!r} has none: leave {shorthand} unset (None)')
    return functools.partial(fn, **{option: value})


def option_names(fn: Callable) -> list[str]:
    """The keyword arguments `fn` can take (its parameters with defaults, or keyword-only)."""
    parameters = inspect.signature(fn).parameters.values()
    return [p.name for p in parameters
            if p.default is not p.empty or p.kind is p.KEYWORD_ONLY]


def accepts(fn: Callable, keyword: str) -> bool:
    """Whether `fn` takes the keyword argument `keyword` (by name or through `**kwargs`).

    The model passes some keywords only to functions that take them: `is_query` to feature maps,
    `mask` and `spatial_shape` to attention functions.
    """
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature: give it nothing extra
        return False
    if keyword in parameters:
        return parameters[keyword].kind is not inspect.Parameter.POSITIONAL_ONLY
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


# Spec strings longer than this are cut in messages ('...' marks the cut).
SHOWN_CHARACTERS = 80


def describe(spec: Spec) -> str:
    """A spec for messages and logs: a string as is (cut after `SHOWN_CHARACTERS`), a function by
    its name."""
    if isinstance(spec, str):
        return spec if len(spec) <= SHOWN_CHARACTERS else spec[:SHOWN_CHARACTERS] + '...'
    fn = spec.func if isinstance(spec, functools.partial) else spec
    return getattr(fn, '__qualname__', None) or repr(spec)


PACKAGE = __name__.split('.', maxsplit=1)[0]  # 'enlcn_jax': its own modules need no trust


def external_targets(specs: Iterable[Any]) -> list[str]:
    """The `MODULE:NAME` targets among `specs` whose MODULE lies outside this package (its
    top-level package is not `enlcn_jax`), sorted, once each: the code resolving them would
    import and so run. Reads the strings only, nothing is imported; values that are not strings
    (None, a function given in code) are skipped.

    Raises:
      ValueError: a spec that does not parse (`parse_spec`).
    """
    targets = set()
    for spec in specs:
        if isinstance(spec, str):
            target, _ = parse_spec(spec)
            if ':' in target and target.split(':')[0].split('.')[0] != PACKAGE:
                targets.add(target)
    return sorted(targets)


def code_fingerprints(specs: Iterable[Any]) -> dict[str, str]:
    """`{MODULE:NAME: source_fingerprint}` of the `external_targets` of `specs`, each imported
    (a module is imported once; the hash reads its source file). Built-in names cost nothing.

    Raises:
      ImportError, AttributeError: a target that cannot be imported (its registry, resolving
        the spec, names it in one line first).
    """
    fingerprints = {}
    for target in external_targets(specs):
        module, _, name = target.partition(':')
        fingerprints[target] = source_fingerprint(getattr(_import_module(module), name))
    return fingerprints


def changed_code(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The `MODULE:NAME` targets whose fingerprint in `current` (`code_fingerprints` now) is not
    the one in `recorded` (when the specs were used); a target `recorded` lacks is not compared."""
    return [target for target, fingerprint in current.items()
            if recorded.get(target, fingerprint) != fingerprint]


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


def source_fingerprint(fn: Callable) -> str:
    """A fingerprint of the code `fn` runs: the SHA-256 (first 16 hex digits) of the source file
    that defines it (a partial's function, a class's module), so an edit anywhere in that file,
    helpers included, changes it. A callable without a source file (a builtin) gives its
    qualified name instead."""
    fn = fn.func if isinstance(fn, functools.partial) else fn
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        path = None
    if path is None or not os.path.exists(path):
        text = f'{getattr(fn, "__module__", "?")}.{getattr(fn, "__qualname__", repr(fn))}'
        return hashlib.sha256(text.encode()).hexdigest()[:16]
    with open(path, 'rb') as source:
        return hashlib.sha256(source.read()).hexdigest()[:16]
