"""Shared test helpers: where the test data lives, the PyTorch reference outputs, comparisons.

Data that ships with the repository (`tests/fixtures/`): both PyTorch fixture files (see
`tests/fixtures/FIXTURES.md`) and Set5. The larger benchmark and training images (Set14, B100,
Sun-Hays 80) are read from `../shared/data` (or `$ENLCN_SHARED/data`) when it is there. A test
whose data is missing is skipped and listed at the end of the run; with `CI=true` it fails
instead, so CI cannot pass on tests that did not run.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import hypothesis
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TEST_DATA = TESTS / 'fixtures'
SHARED = Path(os.environ.get('ENLCN_SHARED', REPO.parent / 'shared'))  # Set14, B100, ...
FIXTURE = TEST_DATA / 'pytorch_reference.npz'
FIXTURE_EXTRA = TEST_DATA / 'pytorch_reference_extra.npz'
SHARED_BENCHMARK = SHARED / 'data' / 'benchmark'
TRAIN_IMAGES = SHARED / 'data' / 'train'

_MISSING_DATA: list[str] = []

# Property tests (hypothesis) draw the same few examples on every run, without a time limit per
# example (the first call of a function may compile) and without an example database on disk; a
# test may ask for more examples with its own `@hypothesis.settings(max_examples=...)`.
hypothesis.settings.register_profile('pinned', derandomize=True, deadline=None, database=None,
                                     max_examples=25)
hypothesis.settings.load_profile('pinned')

# One persistent compilation cache for the test run: the many tiny trainings compile the same
# programs again under new `jax.jit` objects. pytest-xdist's workers and the tests' subprocesses
# (`env`) inherit it from the environment, set here in the first process that imports this file.
# (A worker that reads an entry another one is still writing gets JAX's warning and compiles.)
COMPILATION_CACHE = Path(os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                                               tempfile.mkdtemp(prefix='enlcn_jax_cache_')))
jax.config.update('jax_compilation_cache_dir', str(COMPILATION_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
# XLA's optimisation passes cost more compile time than the tests' tiny programs save in run
# time (the model, precision and parity tests take 37 % less CPU time without them); every
# tolerance, parity at 1e-6 included, holds either way. The `slow` quickstart runs optimised.
jax.config.update('jax_disable_most_optimizations', True)


def assert_replaced_only_when_asked(register, get, registry, first, second) -> None:
    """`register(name, fn, replace=False)` of a registry's module makes `fn` selectable by
    `get(name)`, refuses a registered name in one line, and replaces it with `replace=True`."""
    name = f"contract_{registry.kind.replace(' ', '_')}"
    try:
        register(name, first)
        assert error_message(lambda: register(name, first)).startswith(
            f"{registry.kind} '{name}' is already registered; pass replace=True")
        register(name, second, replace=True)
        assert get(name) is second
    finally:
        registry.unregister(name)


# The slowest test files, started first: xdist (`--dist loadfile`) hands files to whichever
# worker is free in collection order, so a slow file collected last would run alone at the end.
SLOW_FILES = ('train/test_train.py', 'test_readme.py', 'train/test_workdir.py',
              'train/test_distributed.py', 'storage/test_damage.py', 'research/test_ablation.py')


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """The figures `research.plots.save_figure` saves during the test, in order (still saved)."""
    from enlcn_jax.research import plots  # pylint: disable=import-outside-toplevel
    figures = []
    save = plots.save_figure

    def keep(fig, out):
        figures.append(fig)
        return save(fig, out)

    monkeypatch.setattr(plots, 'save_figure', keep)
    return figures


def pytest_collection_finish(session):
    """Under mutmut (tools/mutation.sh): a mutated Flax Module keeps each method's versions in a
    module-level `mutants_x...` dict filled from the class body, where Flax has wrapped every
    method, so a version of `__post_init__` would run inside its own module's context (`self.scope
    is not None` fails). The dicts get the plain functions; the trampoline stays wrapped once."""
    for module in list(sys.modules.values()):
        if not getattr(module, '__name__', '').startswith('enlcn_jax'):
            continue
        for name, versions in list(vars(module).items()):
            if name.startswith('mutants_x') and isinstance(versions, dict):
                for key, fn in list(versions.items()):
                    if getattr(fn, 'method_handler_wrapped', False):
                        versions[key] = fn.__wrapped__


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(TESTS).as_posix(), len(rank)))


def error_message(call, error: type[Exception] = ValueError) -> str:
    """The message of the `error` that `call()` raises; the test fails if it raises none."""
    with pytest.raises(error) as raised:
        call()
    return str(raised.value)


def delete_array_data(directory: Path) -> None:
    """Deletes the array data (orbax's `d/` files) under `directory` (a step or one of its
    items), keeping the metadata; fails if there is none to delete."""
    data = [p for p in directory.rglob('*') if p.is_file() and p.parent.name == 'd']
    assert data
    for path in data:
        path.unlink()


def require_data(path: Path) -> Path:
    """`path` if it exists; else skips the test (fails it under `CI=true`), naming the path."""
    if not Path(path).exists():
        message = f'test data not found: {path}'
        _MISSING_DATA.append(message)
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(f'{message} (CI=true: missing data fails the run)')
        pytest.skip(message)
    return Path(path)


def benchmark_root(name: str) -> Path:
    """The folder that holds `<name>/HR`: `tests/fixtures/benchmark` for Set5, else ../shared."""
    local = TEST_DATA / 'benchmark'
    root = local if (local / name).is_dir() else SHARED_BENCHMARK
    require_data(root / name / 'HR')
    return root


def benchmark_images(name: str) -> list[Path]:
    """Sorted HR image paths of a benchmark set (skips or fails when it is missing)."""
    return sorted((benchmark_root(name) / name / 'HR').glob('*.png'))


def pytest_terminal_summary(terminalreporter):
    if _MISSING_DATA:
        terminalreporter.section('tests skipped for missing data')
        for line in sorted(set(_MISSING_DATA)):
            terminalreporter.write_line(line)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(require_data(path)) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope='session')
def reference():
    """The authors' PyTorch outputs, x2 / x4 ENLCN and one ENLCA (tests/fixtures/FIXTURES.md)."""
    return _load_npz(FIXTURE)


@pytest.fixture(scope='session')
def reference_extra():
    """A scale-3 ENLCN at rgb_range 255 and an ENLCA with active hinge rows (FIXTURES.md)."""
    return _load_npz(FIXTURE_EXTRA)


def state_dict(reference, prefix):
    """The PyTorch state_dict stored under `<prefix>/param/`."""
    head = f'{prefix}/param/'
    return {k[len(head):]: v for k, v in reference.items() if k.startswith(head)}


def save_fixture_model(reference, directory: Path, scale: int = 2) -> Path:
    """The authors' small x2/x4 ENLCN (8 blocks, 32 features), converted, as a model directory."""
    from enlcn_jax import convert
    from enlcn_jax.storage import checkpoints
    config, variables = convert.convert_state_dict(state_dict(reference, f'x{scale}'), scale)
    return checkpoints.save_model(directory, config, variables)


def nhwc(x) -> jax.Array:
    """NCHW numpy -> NHWC jax array."""
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def nchw(x) -> np.ndarray:
    """NHWC -> NCHW numpy array."""
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def unit(x):
    """`x [..., d]` with every row divided by its L2 norm (a NumPy or a JAX array, kept so)."""
    xp = jnp if isinstance(x, jax.Array) else np
    return x / xp.linalg.norm(x, axis=-1, keepdims=True)


def unit_embeddings(key, shape, amplification=6.0):
    """Two arrays of `shape` `[..., d]`: Gaussian rows normalised to norm sqrt(amplification)."""
    kq, kk = jax.random.split(key)
    s = np.sqrt(amplification)
    return s * unit(jax.random.normal(kq, shape)), s * unit(jax.random.normal(kk, shape))


def batched_contrastive_loss(q, k, loss='code', **options):
    """The contrastive loss `loss` (a spec of `train.contrastive.loss`; one image) with `options`,
    batched as training batches it: the mean over `jax.vmap` of `[B, N, d]` inputs."""
    from enlcn_jax.nn import losses  # pylint: disable=import-outside-toplevel
    per_image = jax.vmap(functools.partial(losses.get_contrastive_loss(loss), **options))
    return jnp.mean(per_image(q, k))


# --- tiny training runs, in process and as subprocesses -----------------------------------------

# The tiny network of the model-level tests: a flat model config (`models.from_config`), 3 ENLCA
# modules with 4-dimensional embeddings.
# The example contrastive loss with an option, as the README's command gives it.
INFO_NCE = 'examples.contrastive_losses:info_nce(temperature=0.2)'

TINY_MODEL = dict(scale=2, n_resblocks=2, n_feats=16, attention_every=1, num_random_features=16)

# Overrides of configs/quickstart.py shared by the in-process and the subprocess runs.
TINY = {
    'model.n_resblocks': TINY_MODEL['n_resblocks'], 'model.n_feats': TINY_MODEL['n_feats'],
    'model.num_random_features': TINY_MODEL['num_random_features'],
    'data.photos': ('coffee',), 'data.lr_patch': 12, 'data.batch_size': 4,
    'train.epochs': 2, 'train.steps_per_epoch': 3, 'train.lr_decay_epochs': (1,),
    'train.contrastive.start_epoch': 1, 'train.log_every': 1,
    'train.checkpoint_every_steps': 3, 'train.eval_every_epochs': 1,
}


def tiny_config(**overrides):
    """configs/quickstart.py with TINY and `overrides` ('train__epochs' for 'train.epochs')."""
    from configs import quickstart  # pylint: disable=import-outside-toplevel
    config = quickstart.get_config()
    config.update_from_flattened_dict(
        {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}})
    return config


def short_config(**overrides):
    """`tiny_config` for one epoch (3 steps, a checkpoint at 3) without validation."""
    return tiny_config(**{'train__epochs': 1, 'data__val_source': 'none', **overrides})


def cli_overrides(**overrides) -> list[str]:
    flat = {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}}
    return [f'--config.{k}={v!r}' if isinstance(v, tuple) else f'--config.{k}={v}'
            for k, v in flat.items()]


def load_config(path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """`path`'s config with `--config.KEY=VALUE` overrides applied by ml_collections, as train.py
    does (`lock_config=True`: an unknown key raises), in a fresh FlagValues."""
    argv = ['train.py', '--config', str(REPO / path), *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


@pytest.fixture(scope='module')
def env():
    """Environment of the subprocesses: repo importable, the test process's compilation cache."""
    # tests/ too: subprocess scripts import conftest's helpers.
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), str(REPO / 'tests')]),
            'JAX_COMPILATION_CACHE_DIR': str(COMPILATION_CACHE),
            'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PLATFORMS': 'cpu',
            'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}


def run(args: list[str], env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    if check and result.returncode:
        raise AssertionError(f'{args[:3]} failed:\n{result.stderr[-3000:]}')
    return result


# --- a full disk ---------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(directory: Path, size: str):
    """A tmpfs of `size` (e.g. `'300K'`) mounted at `directory` (created) for the block; skips
    the test where mounting is not permitted (not root, no CAP_SYS_ADMIN, no `mount`)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs',
                                  str(directory)], capture_output=True, text=True, check=False)
    except OSError as e:
        pytest.skip(f'cannot mount a tmpfs: {e}')
    if mounted.returncode:
        pytest.skip(f'cannot mount a tmpfs: {mounted.stderr.strip()}')
    try:
        yield directory
    finally:
        # A checkpoint writer's background thread may still hold a file open there: detach the
        # mount now (`--lazy`); the kernel frees it when the last file is closed.
        subprocess.run(['umount', '--lazy', str(directory)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs at `tmp_path / 'disk'` (see `tmpfs`)."""
    with tmpfs(tmp_path / 'disk', '300K') as disk:
        yield disk


def fill(disk):
    """Writes `disk/filler` until the file system is full."""
    with open(disk / 'filler', 'wb', buffering=0) as f:
        with pytest.raises(OSError) as full:
            while True:
                f.write(bytes(4096))
    assert full.value.errno == errno.ENOSPC


# --- the authors' fixture models, saved once per session -------------------------------------

@pytest.fixture(scope='session')
def x2_model_dir(reference, tmp_path_factory) -> Path:
    """The authors' x2 ENLCN as a model directory (`save_fixture_model`); tests only read it."""
    return save_fixture_model(reference, tmp_path_factory.mktemp('x2_model'))


@pytest.fixture(scope='session')
def x4_model_dir(reference, tmp_path_factory) -> Path:
    """The authors' x4 ENLCN as a model directory (`save_fixture_model`); tests only read it."""
    return save_fixture_model(reference, tmp_path_factory.mktemp('x4_model'), scale=4)


def random_variables(model, seed: int = 0) -> dict:
    """Variables of a Flax `model` drawn in NumPy on the shapes of `models.init_variables`:
    standard normal, divided by the square root of the fan-in (every axis but the last).
    Flax's initialisers take seconds to compile on a small CPU; tracing their shapes does not."""
    from enlcn_jax.nn import models  # pylint: disable=import-outside-toplevel
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    draw = lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    return jax.tree_util.tree_map(draw, shapes)


# --- subprocesses started early, beside the tests of this process ------------------------------

class Started:
    """`python ARGS` started now in the repository, its output collected later (`finish`): the
    process runs beside whatever this process does meanwhile. Its stdout and stderr go to
    temporary files, so that it never waits on a full pipe."""

    def __init__(self, args: list[str], env: dict):
        self.args = args
        self._out, self._err = tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')
        self.process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                                        stdout=self._out, stderr=self._err)

    def finish(self, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Waits for the process: its `CompletedProcess`; with `check`, a failure raises."""
        returncode = self.process.wait(timeout=timeout)
        self._out.seek(0)
        self._err.seek(0)
        result = subprocess.CompletedProcess(self.args, returncode, self._out.read(),
                                             self._err.read())
        if check and returncode:
            raise AssertionError(f'{self.args[:3]} failed:\n{result.stderr[-3000:]}')
        return result

    def kill(self) -> None:
        """Ends the process if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope='module', autouse=True)
def start_early(request):
    """Sets up, before a module's first test, the fixtures its `START_EARLY` names that a
    selected test uses: the processes they start (`Started`) run beside the module's tests."""
    names = getattr(request.module, 'START_EARLY', ())
    used = {name for item in request.session.items if item.module is request.module
            for name in item.fixturenames}
    for name in names:
        if name in used:
            request.getfixturevalue(name)
