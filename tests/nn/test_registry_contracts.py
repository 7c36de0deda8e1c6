"""The registry's documented contracts that the spec and model tests leave open: removing a name,
fingerprints of a researcher's code, the default separator of a spec list (no JAX: milliseconds)."""

import functools
import hashlib
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
    with pytest.raises(ValueError, match=r"^model.thing='double': unknown thing; known: \[\]"):
        kinds.get('double')
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
