"""The package's layout rules: subpackages are layers (each imports only the ones before it),
no library module imports the repository's `configs/`, and nothing but `enlcn_jax` is installed
at the top level."""

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'enlcn_jax'
# In the order of the package docstring: each may import only those before it.
LAYERS = ('nn', 'storage', 'data', 'evaluation', 'train', 'bench', 'research')


def _imports(path: Path) -> set[str]:
    """The absolute module names `path` imports (top-level and nested imports alike)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f'{node.module}.{alias.name}' for alias in node.names)
    return names


def _library_modules():
    return sorted(PACKAGE.rglob('*.py'))


def test_the_package_docstring_lists_the_layers_in_this_order():
    import enlcn_jax  # pylint: disable=import-outside-toplevel
    listed = [line.split()[0] for line in enlcn_jax.__doc__.splitlines()
              if line.startswith('    ') and line.split()]
    assert tuple(listed) == LAYERS


@pytest.mark.parametrize('path', _library_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_each_layer_imports_only_the_layers_before_it(path):
    relative = path.relative_to(PACKAGE).parts
    if len(relative) == 1:
        return  # a command: it may use every layer
    layer = LAYERS.index(relative[0])
    for name in _imports(path):
        parts = name.split('.')
        if parts[0] == 'enlcn_jax' and len(parts) > 1 and parts[1] in LAYERS:
            assert LAYERS.index(parts[1]) <= layer, (
                f'{path.relative_to(REPO)} (layer {relative[0]}) imports {name}, a later layer')


@pytest.mark.parametrize('path', _library_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_library_module_imports_the_repository_configs(path):
    configs = [name for name in _imports(path) if name.split('.')[0] == 'configs']
    assert not configs, f'{path.relative_to(REPO)} imports {configs}: library code never does'



def test_only_the_package_is_installed_at_the_top_level():
    project = tomllib.loads((REPO / 'pyproject.toml').read_text())
    assert project['tool']['setuptools']['packages']['find']['include'] == ['enlcn_jax*']
