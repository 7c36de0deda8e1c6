"""The mutation list of tests/mutants.py still applies to the code it mutates."""

import re

import pytest

import mutants
from conftest import REPO


@pytest.mark.parametrize('mutant', mutants.MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_once_and_names_existing_tests(mutant, tmp_path):
    source = REPO / mutant.path
    (tmp_path / mutant.path).parent.mkdir(parents=True, exist_ok=True)  # eval.py: tmp_path
    (tmp_path / mutant.path).write_text(source.read_text())
    original = mutants.apply(mutant, tmp_path)
    assert original == source.read_text()
    assert (tmp_path / mutant.path).read_text() != original
    files = [t.split('::')[0] for t in mutant.tests if t.startswith('tests/')]
    assert files and all((REPO / f).is_file() for f in files)
    for test in mutant.tests:
        if '::' in test:
            name = test.split('::')[1]
            assert re.search(rf'^def {re.escape(name)}\(', (REPO / test.split('::')[0]).read_text(),
                             re.MULTILINE), test


def test_mutant_names_are_unique():
    names = [m.name for m in mutants.MUTANTS]
    assert len(names) == len(set(names))
