"""The mutation list of tests/mutants.py still finds what it mutates and the tests it runs."""

import ast
import re

import pytest

import mutants
from conftest import REPO


def test_every_mutant_finds_its_target_and_its_tests(tmp_path):
    problems = []
    for mutant in mutants.MUTANTS:
        try:
            path, start, end = mutants.locate(mutant, REPO)
            for arg in mutants.test_paths(mutant.tests, REPO):
                file, _, name = arg.partition('::')
                if name and not re.search(rf'^def {re.escape(name)}\(',
                                          (REPO / file).read_text(), re.MULTILINE):
                    problems.append(f'{mutant.name}: no test {arg}')
        except ValueError as error:
            problems.append(str(error))
            continue
        mutated = path.read_text()
        mutated = mutated[:start] + mutated[start:end].replace(mutant.old, mutant.new) + mutated[end:]
        try:
            ast.parse(mutated)
        except SyntaxError as error:
            problems.append(f'{mutant.name}: the mutant does not parse ({error})')
    assert not problems, '\n'.join(problems)
    assert len({m.name for m in mutants.MUTANTS}) == len(mutants.MUTANTS), 'duplicate names'


def test_a_target_is_found_after_its_function_moves_to_another_package(tmp_path):
    (tmp_path / 'enlcn_jax' / 'new_home').mkdir(parents=True)
    (tmp_path / 'enlcn_jax' / 'new_home' / 'moved.py').write_text(
        'X = 1\n\n\nclass A:\n    def f(self):\n        return X + 2\n')
    mutant = mutants.Mutant('m', 'A.f', 'X + 2', 'X - 2', ('test_x.py',))
    path, original = mutants.apply(mutant, tmp_path)
    assert path == tmp_path / 'enlcn_jax' / 'new_home' / 'moved.py'
    assert 'return X - 2' in path.read_text() and 'return X + 2' in original
    (tmp_path / 'eval.py').write_text('class A:\n    def f(self):\n        return X + 2\n')
    with pytest.raises(ValueError, match='defined 2 times'):
        mutants.locate(mutant, tmp_path)
    assert mutants.locate(mutants.Mutant('m', 'eval:A.f', 'X + 2', '', ()), tmp_path)[0] == (
        tmp_path / 'eval.py')
    with pytest.raises(ValueError, match='occurs 0 times'):
        mutants.locate(mutants.Mutant('m', 'X', 'X = 2', '', ()), tmp_path)
