"""pyproject.toml names every third-party package the code imports; requirements.txt installs it."""

import ast
import importlib.metadata
import re
import sys
import tomllib

from conftest import REPO

SOURCES = ['enlcn_jax', 'configs', 'tests', 'examples', 'train.py', 'eval.py']
OPTIONAL = {'torch'}  # only for importing PyTorch .pt checkpoints (convert.py says so)


def imported_top_level_modules() -> set[str]:
    names = set()
    for source in SOURCES:
        path = REPO / source
        for file in ([path] if path.is_file() else path.rglob('*.py')):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split('.')[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split('.')[0])
    local = {'enlcn_jax', 'configs', 'tests', 'conftest', 'mutants', 'research_kernels', 'examples'}
    local |= {p.stem for p in (REPO / 'tests').glob('*.py')} | {p.stem for p in REPO.glob('*.py')}
    return names - set(sys.stdlib_module_names) - local - OPTIONAL


def requirements() -> list[str]:
    """The dependencies and the `test` extra of pyproject.toml."""
    project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
    return project['dependencies'] + project['optional-dependencies']['test']


def requirement_names() -> set[str]:
    return {re.split(r'[<>=!~\[; ]', line)[0].lower().replace('_', '-') for line in requirements()}


def test_every_imported_package_is_a_requirement():
    distributions = importlib.metadata.packages_distributions()
    required = requirement_names()
    missing = {}
    for module in sorted(imported_top_level_modules()):
        dists = {d.lower().replace('_', '-') for d in distributions.get(module, [module])}
        if not dists & required:
            missing[module] = sorted(dists)
    assert not missing, f'imported but not in pyproject.toml: {missing}'


def test_installed_versions_meet_the_lower_bounds():
    for line in requirements():
        match = re.match(r'^([\w.-]+)>=([\d.]+)', line.strip())
        if match:
            installed = importlib.metadata.version(match.group(1))
            as_tuple = lambda v: tuple(int(p) for p in re.findall(r'\d+', v)[:3])
            assert as_tuple(installed) >= as_tuple(match.group(2)), (line, installed)


def test_requirements_install_this_package_with_its_test_extra():
    lines = [l.strip() for l in (REPO / 'requirements.txt').read_text().splitlines()
             if l.strip() and not l.startswith('#')]
    assert lines == ['-e .[test]']
