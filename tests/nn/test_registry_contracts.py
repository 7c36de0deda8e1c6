"""The registry's documented contracts that the spec and model tests leave open: removing a name,
fingerprints of a researcher's code, the default separator of a spec list (no JAX: milliseconds)."""

import functools
import hashlib
import operator
import sys

import pytest

from enlcn_jax.nn import registry


def sha16(data: bytes) -> str:
    """The first 16 hex digits of SHA-256: the fingerprint `source_fingerprint` documents."""
    return hashlib.sha256(data).hexdigest()[:16]


def double(x):
    return 2 * x


def triple(x):
    return 3 * x


def fresh_registry() -> registry.Registry:
    """A registry whose check records every function it is asked to check."""
    checked = []
    kinds = registry.Registry('thing', 'model.thing', check=checked.append)
    kinds.checked = checked
    return kinds


@pytest.fixture(name='researcher_module')
def fixture_researcher_module(tmp_path, monkeypatch):
    """`lab_kernels.py` (two functions) in a fresh working directory that is not on sys.path."""
    path = tmp_path / 'lab_kernels.py'
    path.write_text('def relu2(x):\n    return x * x\n\n\ndef other(x):\n    return x\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if p not in ('', '.', str(tmp_path))])
    yield path
    sys.modules.pop('lab_kernels', None)


def test_a_list_of_specs_splits_at_commas_by_default():
    assert registry.split_specs('relu, my:favor(rho=0.5, s=1);x') == [
        'relu', 'my:favor(rho=0.5, s=1);x']


def test_an_unregistered_name_is_unknown_even_after_it_was_checked():
    kinds = fresh_registry()
    kinds.register('double', double)
    assert kinds.get('double') is double and kinds.checked == [double]
    kinds.unregister('double')
    assert kinds.names() == []
    with pytest.raises(ValueError) as info:
        kinds.get('double')
    assert str(info.value) == ("model.thing='double': unknown thing; known: [], or MODULE:NAME for "
                               'a function NAME in an importable module MODULE')
    kinds.unregister('never_registered')  # removing an absent name is no error
    kinds.register('double', triple)
    assert kinds.get('double') is triple


def test_the_fingerprint_of_a_function_is_the_hash_of_its_source_file(researcher_module):
    module = registry._import_module('lab_kernels')  # pylint: disable=protected-access
    expected = sha16(researcher_module.read_bytes())
    assert registry.source_fingerprint(module.relu2) == expected
    assert registry.source_fingerprint(module.other) == expected  # the file, not the function
    assert registry.source_fingerprint(functools.partial(module.relu2)) == expected
    assert registry.source_fingerprint(double) == sha16(open(__file__, 'rb').read())


def test_a_function_without_a_source_file_is_fingerprinted_by_its_qualified_name():
    assert registry.source_fingerprint(len) == sha16(b'builtins.len')
    assert registry.source_fingerprint(functools.partial(len)) == sha16(b'builtins.len')
    # Without a module or a qualified name, '?' and the repr stand in.
    assert registry.source_fingerprint((1).__add__) == sha16(b'?.int.__add__')
    get_first = operator.itemgetter(0)
    assert registry.source_fingerprint(get_first) == sha16(f'operator.{get_first!r}'.encode())


def test_code_fingerprints_import_the_external_targets_from_the_working_directory(
        researcher_module):
    specs = ['lab_kernels:relu2(eps=1)', 'lab_kernels:relu2', 'relu',
             'enlcn_jax.nn.features:relu_features', None, double]
    fingerprint = sha16(researcher_module.read_bytes())
    assert registry.code_fingerprints(specs) == {'lab_kernels:relu2': fingerprint}
    researcher_module.write_text(researcher_module.read_text() + '\n# edited\n')
    current = {'lab_kernels:relu2': sha16(researcher_module.read_bytes())}
    assert registry.changed_code({'lab_kernels:relu2': fingerprint}, current) == [
        'lab_kernels:relu2']


def test_a_target_the_record_lacks_is_not_counted_as_changed():
    assert registry.changed_code({}, {'lab:f': 'a' * 16}) == []
    assert registry.changed_code({'lab:g': 'b' * 16}, {'lab:f': 'a' * 16}) == []


class Scale:
    """A callable object: it has a module but no name of its own to be imported by."""

    def __call__(self, x):
        return x


SCALE = Scale()


def with_options(x, projection, eps=1.0, *, flag, **rest):
    del projection, eps, flag, rest
    return x


def test_a_function_without_options_is_recorded_without_parentheses():
    assert registry.spec_string(double) == f'{__name__}:double'
    assert registry.spec_string(functools.partial(double)) == f'{__name__}:double'


def test_what_cannot_be_imported_back_by_name_is_refused_when_recorded():
    def nested(x):
        return x

    for fn in (nested, SCALE, (1).__add__):  # a local, an object without a name, no module
        with pytest.raises(ValueError) as info:
            registry.spec_string(fn)
        assert str(info.value) == (f'cannot record {fn!r} by name: it is not a module-level '
                                   'attribute; register it, or define it in a module and pass '
                                   '"MODULE:NAME"')
    positional = functools.partial(double, 2)
    with pytest.raises(ValueError) as info:
        registry.spec_string(positional)
    assert str(info.value) == (f'cannot record {positional!r} by name: a partial with positional '
                               'arguments (give the options as keywords)')
    with pytest.raises(ValueError) as info:
        registry.spec_string(functools.partial(double, eps=float('inf')))
    assert str(info.value) == (
        f'cannot record option eps=inf of {__name__}:double: its value is not a Python literal '
        'that reads back (inf, nan and NumPy scalars are not); give a plain number, string, '
        'bool, None or container')


def test_the_options_of_a_function_are_its_parameters_with_defaults_and_keyword_only():
    assert registry.option_names(with_options) == ['eps', 'flag']


def test_a_module_in_a_package_in_the_working_directory_is_imported(tmp_path, monkeypatch):
    (tmp_path / 'lab_package').mkdir()
    (tmp_path / 'lab_package' / '__init__.py').write_text('')
    (tmp_path / 'lab_package' / 'kernels.py').write_text('def relu2(x):\n    return x * x\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if p not in ('', '.', str(tmp_path))])
    try:
        module = registry._import_module('lab_package.kernels')  # pylint: disable=protected-access
        assert module.relu2(3) == 9
    finally:
        sys.modules.pop('lab_package.kernels', None)
        sys.modules.pop('lab_package', None)


def test_a_missing_dependency_of_an_importable_module_is_raised_as_is(tmp_path, monkeypatch):
    """The module is found (on sys.path), its own import fails: the working directory, where
    nothing was missing, is not added to sys.path."""
    found, cwd = tmp_path / 'found', tmp_path / 'cwd'
    found.mkdir()
    cwd.mkdir()
    (found / 'lab_needs_dep.py').write_text('import lab_no_such_dependency\n')
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'path', [str(found)] + [p for p in sys.path if p not in ('', '.')])
    path = list(sys.path)
    with pytest.raises(ModuleNotFoundError) as info:
        registry._import_module('lab_needs_dep')  # pylint: disable=protected-access
    assert info.value.name == 'lab_no_such_dependency' and sys.path == path
    sys.modules.pop('lab_needs_dep', None)


def test_a_name_is_registered_once_unless_replaced_and_only_callables_with_plain_names():
    kinds = fresh_registry()
    for name in ('double', 'Xformer', 'relu_2.x'):  # only ':' and parentheses are reserved
        kinds.register(name, double)
    with pytest.raises(ValueError, match=r"^thing 'double' is already registered; pass "
                                         r'replace=True to replace it, or choose another name$'):
        kinds.register('double', triple)
    assert kinds.get('double') is double
    for name in ('lab:double', 'double(eps=1)', 'f)'):
        with pytest.raises(ValueError) as info:
            kinds.register(name, triple)
        assert str(info.value) == (f"register thing {name!r}: ':' and parentheses are reserved "
                                   'for MODULE:NAME(options)')
    with pytest.raises(TypeError) as info:
        kinds.register('three', 3)
    assert str(info.value) == "register thing 'three': 3 is not callable"
    assert kinds.names() == ['Xformer', 'double', 'relu_2.x']


@pytest.mark.parametrize('spec, message', [
    (':double', "model.thing=':double': expected MODULE:NAME"),
    ('lab_package.missing:f', "model.thing='lab_package.missing:f': cannot import module "
                              "'lab_package.missing' (ModuleNotFoundError: No module named "
                              "'lab_package'); put lab_package/missing.py in the working "
                              'directory or on PYTHONPATH'),
    ('sys:no_such_name', "model.thing='sys:no_such_name': module 'sys' (?) has no attribute "
                         "'no_such_name'"),
    ('lab_kernels:relu2:x', "model.thing='lab_kernels:relu2:x': module 'lab_kernels' ({file}) "
                            "has no attribute 'relu2:x'"),
    ('math:pi', "model.thing='math:pi': math.pi is not callable"),
])
def test_a_target_that_cannot_be_imported_is_one_line_naming_the_key_and_the_spec(
        researcher_module, spec, message):
    with pytest.raises(ValueError) as info:
        fresh_registry().get(spec)
    assert str(info.value) == message.format(file=researcher_module)


def test_a_trusted_function_is_not_checked_but_with_options_it_is():
    kinds = fresh_registry()
    kinds.register('with_options', with_options, trusted=True)
    assert kinds.get('with_options') is with_options and kinds.checked == []
    bound = kinds.get('with_options(eps=2.0)')
    assert bound.keywords == {'eps': 2.0} and kinds.checked == [bound]


def test_an_option_the_function_does_not_take_is_named_with_the_options_it_has():
    def two_options(x, eps=1.0, *, flag=False):
        del eps, flag
        return x

    kinds = fresh_registry()
    kinds.register('two', two_options)
    with pytest.raises(ValueError) as info:
        kinds.get('two(eps=2.0, scale=3, flag=1)')
    assert str(info.value) == ("model.thing='two(eps=2.0, scale=3, flag=1)': two takes no "
                               "option(s) ['scale']; its options: ['eps', 'flag']")


def test_a_closing_parenthesis_without_an_opening_one_is_unbalanced():
    with pytest.raises(ValueError) as info:
        registry.parse_spec(' relu) ')
    assert str(info.value) == "unbalanced parentheses in 'relu)'"


def test_options_that_do_not_parse_are_named_with_the_form_they_need():
    with pytest.raises(ValueError) as info:
        registry.parse_spec('relu(eps=')
    assert str(info.value) == ("cannot read the options of 'relu(eps=': expected "
                               'NAME(option=value, ...)')


class Recorder:
    """A `check` that records `(fn, sizes)` and raises `error` if one is set."""

    def __init__(self, error: Exception | None = None):
        self.calls, self.error = [], error

    def __call__(self, fn, **sizes):
        self.calls.append((fn, sizes))
        if self.error is not None:
            raise self.error


class Unhashable:
    """A callable that defines `__eq__` and so is not hashable."""

    def __eq__(self, other):
        return self is other

    __hash__ = None

    def __call__(self, x):
        return x


def test_get_checks_once_per_spec_and_sizes_and_a_get_without_sizes_takes_any_checked():
    check = Recorder()
    things = registry.Registry('thing', 'model.thing', check=check)
    things.register('double', double)
    assert things.get('double', m=4, d=2) is double
    assert check.calls == [(double, {'m': 4, 'd': 2})]
    assert things.get(''.join(['dou', 'ble']), d=2, m=4) is double   # an equal string, any order
    assert things.get('double') is double                            # any sizes checked already
    assert len(check.calls) == 1
    assert things.get('double', m=8, d=2) is double and len(check.calls) == 2


def test_a_callable_is_used_as_is_checked_once_and_told_from_another():
    check = Recorder()
    things = registry.Registry('thing', 'model.thing', check=check)
    first, second, odd = (lambda x: x), (lambda x: 2 * x), Unhashable()
    assert things.get(first, m=4) is first and things.get(first, m=4) is first
    assert things.get(second, m=4) is second and things.get(first, m=4) is first
    assert [fn for fn, _ in check.calls] == [first, second]
    assert things.get(odd, m=4) is odd and things.get(odd, m=4) is odd   # no hash needed
    assert len(check.calls) == 3
    with pytest.raises(ValueError) as raised:
        things.get(3)
    assert str(raised.value) == 'model.thing=3: expected a name, MODULE:NAME or a callable'


@pytest.mark.parametrize('sizes, at', [({'m': 4, 'd': 2}, ' (checked at m=4, d=2)'), ({}, '')])
@pytest.mark.parametrize('error, shown', [(ZeroDivisionError('first\nsecond'), 'first'),
                                          (ValueError(''), '')])
def test_a_function_that_fails_its_check_is_one_line_naming_the_key_error_and_sizes(
        sizes, at, error, shown):
    things = registry.Registry('thing', 'model.thing', check=Recorder(error))
    things.register('double', double)
    with pytest.raises(ValueError) as raised:
        things.get('double', **sizes)
    assert str(raised.value) == (f"model.thing='double': not a valid thing: "
                                 f'{type(error).__name__}: {shown}{at}')
    assert raised.value.__cause__ is error


@pytest.mark.parametrize('spec, message', [
    ('relu(1)', "options of 'relu(1)' must be keyword arguments: NAME(option=value, ...)"),
    ('relu(eps=1, **o)', "options of 'relu(eps=1, **o)' must be keyword arguments: "
                         'NAME(option=value, ...)'),
    ('relu(eps=x + 1)', "option eps of 'relu(eps=x + 1)' is not a Python literal (x + 1)"),
])
def test_positional_options_and_values_that_are_not_literals_are_refused_in_one_line(
        spec, message):
    with pytest.raises(ValueError) as raised:
        registry.parse_spec(spec)
    assert str(raised.value) == message


def test_a_shorthand_refuses_an_option_the_spec_already_sets():
    fn = functools.partial(double)
    set_by_spec = functools.partial(lambda x, eps=0.0: x + eps, eps=1.0)
    with pytest.raises(ValueError) as raised:
        registry.with_option(set_by_spec, 'eps', 2.0, spec='relu(eps=1.0)',
                             key='model.feature_map', shorthand='model.kernel_eps')
    assert str(raised.value) == ("model.kernel_eps=2.0 and model.feature_map='relu(eps=1.0)' "
                                 'both set eps: leave model.kernel_eps unset (None)')
    assert registry.with_option(fn, 'eps', None, spec='double', key='k', shorthand='s') is fn


def test_a_callable_without_a_signature_accepts_no_keyword():
    assert registry.accepts(max, 'key') is False      # inspect.signature(max) raises


@pytest.mark.parametrize('length', [registry.SHOWN_CHARACTERS, registry.SHOWN_CHARACTERS + 1])
def test_describe_cuts_strings_after_the_shown_characters_and_names_functions(length):
    text = 'a' * length
    cut = length > registry.SHOWN_CHARACTERS
    assert registry.describe(text) == (text[:registry.SHOWN_CHARACTERS] + '...' if cut else text)
    assert registry.describe(double) == 'double'
    assert registry.describe(functools.partial(double)) == 'double'
    odd = Unhashable()
    assert registry.describe(odd) == repr(odd)                      # no __qualname__
    assert registry.describe(functools.partial(odd)) == repr(functools.partial(odd))
