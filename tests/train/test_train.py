"""Training: schedules, the train step, data parallelism, checkpoints, failures, the CLI.

Everything runs a tiny ENLCN (2 blocks, 16 features, 12x12 LR patches) on one skimage photo.
Subprocesses (a fresh process to resume in, forced host devices, the CLI) share a persistent
compilation cache with this process; those that need nothing from it start with the module
(`START_EARLY`) and run beside its tests.
"""

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from conftest import (Started, batched_contrastive_loss, benchmark_images, cli_overrides, run,
                      tiny_config)
from configs import default, quickstart
from enlcn_jax.data import input_pipeline, sources
from enlcn_jax.evaluation import evaluator, inference
from enlcn_jax.nn import losses, models
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import config_check, loop, recipe
from enlcn_jax.train import workdir as workdir_lib

START_EARLY = ('straight_cli_process', 'data_parallel_process', 'killed_save_process')


def train_cli_args(workdir, **overrides) -> list[str]:
    """The arguments of `python train.py` on the tiny config in `workdir`."""
    return ['train.py', '--config', 'configs/quickstart.py', '--workdir', str(workdir),
            *cli_overrides(**overrides)]


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def train_losses(workdir) -> dict[int, float]:
    return {m['step']: m['train/loss'] for m in read_metrics(workdir) if 'train/loss' in m}


def assert_trees_close(a, b, rtol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=0)


def flatten(tree) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


# --- schedules -------------------------------------------------------------------------------

def test_learning_rate_halves_at_the_first_step_of_each_decay_epoch():
    lr_fn = recipe.create_learning_rate_fn(default.get_config())
    steps = [0, 199_999, 200_000, 399_999, 400_000, 600_000, 800_000, 999_999]
    expected = [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 1.25e-5, 6.25e-6, 6.25e-6]
    np.testing.assert_allclose([float(lr_fn(s)) for s in steps], expected, rtol=1e-6)


def test_contrastive_weight_is_off_before_the_warm_up_epoch_and_on_from_it():
    config = default.get_config()
    weight_fn = recipe.create_contrastive_weight_fn(config)
    start = 100 * 1000
    assert [float(weight_fn(s)) for s in (0, start - 1, start, 10 * start)] == \
        [0.0, 0.0, pytest.approx(1e-3), pytest.approx(1e-3)]


def test_redraw_schedule():
    config = tiny_config()  # 3 steps per epoch
    assert [recipe.redraw_index(s, config) for s in range(7)] == \
        [0, None, None, 1, None, None, 2]
    config.train.redraw.every, config.train.redraw.steps = 'steps', 2
    assert [recipe.redraw_index(s, config) for s in range(5)] == [0, None, 1, None, 2]
    config.train.redraw.every = 'never'
    assert {recipe.redraw_index(s, config) for s in range(5)} == {None}


# --- the train step --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_setup():
    # A contrastive weight other than the configs' 1e-3: a step that ignores it is caught.
    config = tiny_config(train__contrastive__weight=0.02)
    model = recipe.create_model(config)
    state = recipe.create_train_state(config, model, jax.random.PRNGKey(0))
    mesh = recipe.create_mesh(jax.devices()[:1])
    dataset = sources.load_skimage_photos(config.data.photos, config.model.scale)
    batch = input_pipeline.PatchLoader(dataset, 4, config.data.lr_patch, num_workers=1).batch(0)
    return config, state, mesh, batch


@pytest.fixture(scope='module')
def tiny_step(tiny_setup):
    """The tiny config's train step, compiled once for the module."""
    config, _, mesh, _ = tiny_setup
    return recipe.compile_train_step(config, mesh)


def initial_state_at(tiny_setup, step: int) -> recipe.TrainState:
    """A copy of the initial state (the step donates its input) at `step`, placed on the mesh as
    the step returns states, so that feeding them back does not compile the step again."""
    _, state, mesh, _ = tiny_setup
    state = jax.tree.map(jnp.copy, state.replace(step=jnp.int32(step)))
    return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))


@pytest.fixture(scope='module')
def around_contrastive_start(tiny_setup, tiny_step):
    """`[(metrics, gradient)]` of the first Adam step from the initial parameters, taken at the
    step before the contrastive loss starts and at its start step.

    The gradient is read back from Adam's first moment, `(1 - b1) g` after a first step.
    """
    config, _, _, batch = tiny_setup
    start = config.train.contrastive.start_epoch * config.train.steps_per_epoch
    results = []
    for step in (start - 1, start):
        new_state, metrics = tiny_step(initial_state_at(tiny_setup, step), batch)
        mu = optax.tree_utils.tree_get(new_state.opt_state, 'mu')
        results.append((jax.device_get(metrics), flatten(mu) / (1 - config.train.betas[0])))
    return results


@pytest.fixture(scope='module')
def direct_losses(tiny_setup):
    """`(per-module contrastive losses, gradient of L1, gradient of their mean)` on the batch,
    from `losses` and `jax.jacrev` of `model.apply` directly, not through `recipe`'s step."""
    config, state, _, batch = tiny_setup
    model = recipe.create_model(config)
    lr_images = batch['lr'].astype(np.float32) / 255
    hr_images = batch['hr'].astype(np.float32) / 255

    def l1_and_contrastive(params):
        sr, embeddings = model.apply({**state.variables, 'params': params}, lr_images,
                                     return_embeddings=True)
        per_module = jnp.stack([batched_contrastive_loss(q, k, 'code') for q, k in embeddings])
        return jnp.stack([losses.l1_loss(sr, hr_images), jnp.mean(per_module)]), per_module

    jacobian, per_module = jax.jit(jax.jacrev(l1_and_contrastive, has_aux=True))(state.params)
    grad_l1, grad_contrastive = (flatten(jax.tree.map(lambda j: j[i], jacobian)) for i in (0, 1))
    return np.asarray(per_module), grad_l1, grad_contrastive


def test_train_step_adds_the_contrastive_loss_from_its_start_epoch(tiny_setup,
                                                                   around_contrastive_start):
    (before, _), (after, _) = around_contrastive_start
    weight = tiny_setup[0].train.contrastive.weight
    assert before['contrastive_weight'] == 0 and before['contrastive'] == 0
    assert before['loss'] == before['l1']
    assert after['contrastive_weight'] == pytest.approx(weight) and after['contrastive'] > 0
    assert after['loss'] == pytest.approx(after['l1'] + weight * after['contrastive'], rel=1e-6)
    assert after['l1'] == pytest.approx(before['l1'], rel=1e-6)


def test_train_steps_on_a_fixed_batch_lower_the_l1_loss(tiny_setup, tiny_step):
    """Five steps from initialisation: every step lowers L1, by more than 20 % in all."""
    state, batch = initial_state_at(tiny_setup, 0), tiny_setup[3]
    l1 = []
    for _ in range(5):
        state, metrics = tiny_step(state, batch)
        l1.append(float(metrics['l1']))  # before the step's update
    assert np.all(np.diff(l1) < 0) and l1[-1] < 0.8 * l1[0], l1


def test_train_step_gradient_is_l1_plus_weight_times_mean_contrastive(
        tiny_setup, around_contrastive_start, direct_losses):
    """The step's gradient is the gradient of L1 before the contrastive start step, and from it
    that plus `weight` times the gradient of the mean over modules of `contrastive_loss`."""
    config = tiny_setup[0]
    (_, grad_before), (_, grad_after) = around_contrastive_start
    _, grad_l1, grad_contrastive = direct_losses
    np.testing.assert_allclose(grad_before, grad_l1, rtol=0, atol=1e-5 * np.abs(grad_l1).max())
    # Weighted, the contrastive gradient is a few % of the L1 one in norm: compare it alone.
    expected = config.train.contrastive.weight * grad_contrastive
    error = np.linalg.norm(grad_after - grad_before - expected)
    assert error < 0.01 * np.linalg.norm(expected), (error, np.linalg.norm(expected))


def test_logged_contrastive_loss_is_the_mean_over_enlca_modules(around_contrastive_start,
                                                                 direct_losses):
    _, (after, _) = around_contrastive_start
    per_module = direct_losses[0]
    # Both modules have active hinge rows and losses far apart: a mean over part of them fails.
    assert len(per_module) == 2 and 0 < per_module.min() < per_module.max() / 2, per_module
    assert after['contrastive'] == pytest.approx(per_module.mean(), rel=1e-5)


def test_redraw_is_deterministic_and_changes_every_module(tiny_setup):
    config, state, mesh, _ = tiny_setup
    redraw = recipe.compile_redraw(config, mesh)
    first, again, second = (redraw(state, i).random_features for i in (1, 1, 2))
    assert len(jax.tree.leaves(first)) == 2  # ENLCA modules
    assert_trees_close(first, again, rtol=0)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        assert a.shape == b.shape and not np.allclose(a, b)


# --- data parallelism ------------------------------------------------------------------------

DATA_PARALLEL = """
import sys
import jax, numpy as np
from conftest import tiny_config
from enlcn_jax.data import input_pipeline, sources
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import loop, recipe
assert jax.device_count() == 4, jax.devices()
config = tiny_config(data__batch_size=8, train__contrastive__start_epoch=0)
model = recipe.create_model(config)
dataset = sources.load_skimage_photos(config.data.photos, config.model.scale)
loader = input_pipeline.PatchLoader(dataset, 8, config.data.lr_patch, num_workers=1)
params, losses = [], []
for devices in (jax.devices()[:1], jax.devices()):
    mesh = recipe.create_mesh(devices)
    state = jax.device_put(recipe.create_train_state(config, model, jax.random.PRNGKey(0)),
                           jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    step_fn = recipe.compile_train_step(config, mesh)
    state = recipe.compile_redraw(config, mesh)(state, 0)
    for step in range(3):
        batch = recipe.shard_batch(loader.batch(step), mesh)
        assert {s.data.shape[0] for s in batch['lr'].addressable_shards} == {8 // len(devices)}
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics['loss']))
    leaves = jax.tree.leaves(jax.device_get(state.params))
    params.append(np.concatenate([p.ravel() for p in leaves]))
print('LOSSES', losses)
print('MAXREL', float(np.max(np.abs(params[0] - params[1])) / np.max(np.abs(params[0]))))
manager = checkpoints.latest_manager(sys.argv[1])
checkpoints.save_checkpoint(manager, int(state.step), state.checkpoint_items())
manager.wait_until_finished()
"""


@pytest.fixture(scope='module')
def data_parallel_process(tmp_path_factory, env):
    """`(DATA_PARALLEL on 4 CPU devices, started (START_EARLY), its workdir)`."""
    workdir = tmp_path_factory.mktemp('data_parallel')
    process = Started(['-c', DATA_PARALLEL, str(workdir)],
                      {**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
    yield process, workdir
    process.kill()


def test_four_devices_match_one_device(data_parallel_process):
    process, tmp_path = data_parallel_process
    result = process.finish()
    # Max |difference| over all parameters, relative to the largest parameter. (Per tensor, a
    # zero-initialised bias that Adam moved by ~2e-3 differs by up to ~1e-5 of itself.)
    max_rel = float(result.stdout.split('MAXREL')[-1])
    assert max_rel < 1e-5
    losses = json.loads(result.stdout.split('LOSSES')[-1].split('MAXREL')[0])
    np.testing.assert_allclose(losses[:3], losses[3:], rtol=1e-5)
    # A checkpoint of the 4-device run loads in this 1-device process.
    (tmp_path / checkpoints.MODEL_CONFIG).write_text(json.dumps(tiny_config().model.to_dict()))
    _, variables, _ = checkpoints.load_model(tmp_path)
    assert variables['params']['head']['kernel'].shape == (3, 3, 3, 16)


# --- checkpoints, resume, failures -----------------------------------------------------------

@pytest.fixture(scope='module')
def straight_cli_process(tmp_path_factory, env):
    """`(train.py on the tiny config, steps 1-6, started (START_EARLY), its workdir)`."""
    workdir = tmp_path_factory.mktemp('straight')
    process = Started(train_cli_args(workdir), env)
    yield process, workdir
    process.kill()


@pytest.fixture(scope='module')
def cli_runs(straight_cli_process, tmp_path_factory, env):
    """`(straight, resumed, the resumed run's step after its first part)`: workdirs of the tiny
    config, steps 1-6 by `train.py`, and steps 1-3 in this process then 4-6 by `train.py`."""
    resumed = tmp_path_factory.mktemp('resumed')
    loop.train_and_evaluate(tiny_config(train__epochs=1), resumed)
    first_part = checkpoints.latest_manager(resumed, read_only=True).latest_step()
    run(train_cli_args(resumed), env)
    process, straight = straight_cli_process
    process.finish()
    return straight, resumed, first_part


def test_resume_in_a_new_process_repeats_a_straight_run(cli_runs):
    straight, resumed, first_part = cli_runs
    assert first_part == 3
    assert train_losses(resumed) == train_losses(straight)
    assert sorted(train_losses(straight)) == list(range(1, 7))
    for which in ('latest', 'best'):
        model_a, variables_a, _ = checkpoints.load_model(straight, which)
        model_b, variables_b, _ = checkpoints.load_model(resumed, which)
        assert model_a == model_b
        assert_trees_close(variables_a, variables_b, rtol=1e-6)


def test_quickstart_cli_end_to_end(cli_runs):
    workdir = cli_runs[0]
    assert json.loads((workdir / 'config.json').read_text())['train']['epochs'] == 2
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['3', '6']
    records = read_metrics(workdir)
    evals = [r for r in records if 'val/psnr_y' in r]
    assert [r['step'] for r in evals] == [3, 6]
    assert all(r['val/bicubic_psnr_y'] > 30 and np.isfinite(r['val/psnr_y']) for r in evals)
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
    model, variables, _ = checkpoints.load_model(workdir)
    sr = model.apply(variables, jnp.zeros((1, 8, 8, 3)))
    assert sr.shape == (1, 16, 16, 3)
    # Random features: the epoch-1 draw, made at step 3.
    config = tiny_config()
    state = recipe.create_train_state(config, recipe.create_model(config),
                                         jax.random.PRNGKey(config.train.seed))
    expected = recipe.draw_random_features(recipe.create_model(config), state.random_features,
                                           state.rng, 1)
    assert_trees_close(variables[models.RANDOM_FEATURES], expected, rtol=1e-6)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    config = tiny_config(train__lr=1e30, train__checkpoint_every_steps=1, train__epochs=1,
                         train__contrastive__start_epoch=5)
    with pytest.raises(FloatingPointError, match=r'at step 2\b.*step 1 in') as info:
        loop.train_and_evaluate(config, tmp_path)
    # Run again, the checkpoint's own network overflows: no configured function is blamed.
    assert str(info.value).endswith(
        'Run again on the last finite state (the checkpoint of step 1) with the batch of step 2: '
        'the embeddings of module body_0 are non-finite before any configured function runs on '
        "them: the network's parameters diverged; try a lower train.lr.")
    manager = checkpoints.latest_manager(tmp_path, read_only=True)
    assert manager.all_steps() == [1]
    _, variables, _ = checkpoints.load_model(tmp_path)
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(variables))


KILLED_SAVE = """
import os, signal, sys
import jax
from orbax.checkpoint._src.path import atomicity
from conftest import tiny_config
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import loop, recipe
config = tiny_config()
state = recipe.create_train_state(config, recipe.create_model(config), jax.random.PRNGKey(0))
manager = checkpoints.latest_manager(sys.argv[1])
checkpoints.save_checkpoint(manager, 1, state.replace(step=1).checkpoint_items())
manager.wait_until_finished()

async def killed(self):  # everything is written, the commit (rename) never happens
    os.kill(os.getpid(), signal.SIGKILL)

atomicity.AtomicRenameTemporaryPath.finalize = killed
changed = jax.tree.map(lambda p: p + 1, state.params)
checkpoints.save_checkpoint(manager, 2, state.replace(step=2, params=changed).checkpoint_items())
manager.wait_until_finished()
"""


@pytest.fixture(scope='module')
def killed_save_process(tmp_path_factory, env):
    """`(KILLED_SAVE, started (START_EARLY), its workdir)`."""
    workdir = tmp_path_factory.mktemp('killed_save')
    process = Started(['-c', KILLED_SAVE, str(workdir)], env)
    yield process, workdir
    process.kill()


def test_a_save_killed_midway_leaves_the_previous_checkpoint(killed_save_process):
    process, tmp_path = killed_save_process
    result = process.finish(check=False)
    assert result.returncode == -9, result.stderr[-2000:]
    assert any('tmp' in p.name for p in (tmp_path / 'checkpoints').iterdir())  # the partial save
    config = tiny_config()
    state = recipe.create_train_state(config, recipe.create_model(config),
                                         jax.random.PRNGKey(0))
    manager = checkpoints.latest_manager(tmp_path)
    assert manager.all_steps() == [1]
    restored = state.from_checkpoint_items(
        checkpoints.restore_latest(manager, state.checkpoint_items()))
    manager.close()
    assert int(restored.step) == 1
    assert_trees_close(restored.params, state.params, rtol=0)
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1']  # cleaned up


def test_best_checkpoint_tracks_the_highest_validation_psnr(tmp_path):
    config = tiny_config()
    state = recipe.create_train_state(config, recipe.create_model(config),
                                         jax.random.PRNGKey(0))
    (tmp_path / checkpoints.MODEL_CONFIG).write_text(json.dumps(config.model.to_dict()))
    latest = checkpoints.latest_manager(tmp_path, keep=2)
    best = checkpoints.best_manager(tmp_path)
    for step, psnr in zip(range(1, 5), (20.0, 25.0, 22.0, 24.0)):
        stepped = state.replace(step=step, params=jax.tree.map(lambda p: p + step, state.params))
        checkpoints.save_checkpoint(latest, step, stepped.checkpoint_items())
        checkpoints.save_best(best, step, stepped.variables, psnr)
    for manager in (latest, best):
        manager.wait_until_finished()
        manager.close()
    assert checkpoints.latest_manager(tmp_path, read_only=True).all_steps() == [3, 4]
    assert checkpoints.best_manager(tmp_path, read_only=True).all_steps() == [2]
    head = state.params['head']['bias']
    _, best_variables, _ = checkpoints.load_model(tmp_path, 'best')
    _, latest_variables, _ = checkpoints.load_model(tmp_path, 'latest')
    np.testing.assert_allclose(best_variables['params']['head']['bias'], head + 2)
    np.testing.assert_allclose(latest_variables['params']['head']['bias'], head + 4)


def test_validation_psnr_is_eval_py_s_on_the_same_checkpoint_and_images(tmp_path):
    """Training validates with eval.py's evaluator: the final validation PSNR-Y of a run equals
    eval.py's scoring of that workdir's latest checkpoint on the same folder, same bucket."""
    hr_dir = tmp_path / 'val'
    hr_dir.mkdir()
    for path in benchmark_images('Set5')[:2]:
        shutil.copy(path, hr_dir / path.name)
    config = tiny_config(data__val_source='folder', data__val_hr_dir=str(hr_dir),
                         data__val_limit=0, train__eval_bucket=20)
    loop.train_and_evaluate(config, tmp_path / 'run')
    records = [json.loads(line) for line in
               (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    final = [r for r in records if 'val/psnr_y' in r][-1]
    assert final['step'] == config.train.epochs * config.train.steps_per_epoch
    source = sources.find_dataset(str(hr_dir), 2)
    scores = {}
    for bucket in (20, 1):  # LR 256 and 144 pixels: padded to 260 and 160 with bucket 20
        upscaler = inference.load_upscaler(tmp_path / 'run', bucket=bucket)
        scores[bucket] = evaluator.evaluate_dataset(source, upscaler, progress=False).summary()
        assert scores[bucket]['images'] == 2 and len(upscaler.compiled_shapes) == 2
    assert scores[20]['psnr'] == pytest.approx(final['val/psnr_y'], abs=1e-9)
    assert scores[20]['ssim'] == pytest.approx(final['val/ssim_y'], abs=1e-12)
    # Padding is masked: equal up to float rounding, which can flip an 8-bit output level (a
    # flipped level moves this PSNR by ~1e-6 dB).
    assert scores[1]['psnr'] == pytest.approx(scores[20]['psnr'], abs=1e-5)


# --- configs and the CLI ---------------------------------------------------------------------

@pytest.mark.parametrize('overrides, message', [
    (['--config.train.nonexistent=1'],
     "unknown config key 'nonexistent' in --config.train.nonexistent=1"),
    (['--config.train.epochs=abc'], "flag --config.train.epochs=abc: invalid literal for int()"),
    (['--config.data.source=folder', '--config.data.hr_dir=/no/such/dir'],
     "config.data.hr_dir='/no/such/dir' is not a directory"),
])
def test_cli_rejects_bad_configs_with_a_clear_message(overrides, message, env, tmp_path):
    result = run(['train.py', '--config', 'configs/quickstart.py', '--workdir', str(tmp_path),
                  *overrides], env, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('overrides, message', [
    ({'model.feature_map': 'no_such_module:phi'},
     "model.feature_map='no_such_module:phi': cannot import module 'no_such_module'"),
    ({'model.projection': 'examples.my_kernels:missing'},
     "model.projection='examples.my_kernels:missing': module 'examples.my_kernels'"),
    ({'model.attention': 'examples.my_kernels:relu_squared'},
     "model.attention='examples.my_kernels:relu_squared': not a valid attention"),
])
def test_bad_swappable_functions_are_config_errors_the_cli_reports(overrides, message,
                                                                    tmp_path):
    """What `train.py` reports for a config it refuses (the test above): `run_training`'s
    reason, for functions of the model that cannot be imported or fail their checks."""
    config = quickstart.get_config()
    config.update_from_flattened_dict(overrides)
    error = loop.run_training(config, tmp_path)
    assert error.startswith('invalid config: ') and message in error
    assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('overrides, message', [
    ({'data.lr_patch': 8}, 'needs at least 65 positions'),
    ({'data.batch_size': 0}, 'data.batch_size must be >= 1'),
    ({'train.redraw.every': 'sometimes'}, 'redraw.every'),
    ({'train.lr_decay_epochs': (4, 2)}, 'must be increasing'),
    ({'data.val_source': 'web'}, 'data.val_source'),
    ({'train.lr': -1e-4}, 'train.lr must be finite and > 0.0, got -0.0001'),
    ({'train.lr': float('inf')}, 'train.lr must be finite and > 0.0, got inf'),
    ({'train.lr_decay_factor': float('nan')}, 'train.lr_decay_factor must be finite'),
    ({'data.num_workers': 0}, 'data.num_workers must be >= 1, got 0'),
    ({'data.photos': ()}, 'data.photos is empty'),
    ({'data.val_photos': ()}, 'data.val_photos is empty'),
    ({'train.contrastive.weight': -1.0}, 'contrastive.weight must be >= 0'),
    ({'model.scale': 5}, 'scale must be 3 or a power of 2'),
    ({'model.num_random_features': 0}, 'model.num_random_features must be >= 1, got 0'),
    ({'data.lr_patch': 0}, 'config.data.lr_patch must be >= 1, got 0'),
    ({'train.eval_bucket': 0}, 'config.train.eval_bucket must be >= 1, got 0'),
    ({'train.keep_checkpoints': 0}, 'config.train.keep_checkpoints must be >= 1, got 0'),
])
def test_validate_config(overrides, message):
    config = tiny_config()
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        config_check.validate_config(config)


@pytest.mark.parametrize('module', ['default', 'x2', 'x3', 'x4', 'quickstart'])
def test_configs_build_their_model_and_pass_validation(module):
    config = __import__(f'configs.{module}', fromlist=['get_config']).get_config()
    if config.data.source != 'skimage':
        config.data.source = config.data.val_source = 'skimage'
    config_check.validate_config(config)
    model = recipe.create_model(config)
    assert model.body_layout().count('enlca') == (5 if config.model.n_resblocks == 32 else 3)


# --- cadences that do not line up -------------------------------------------------------------

# 9 steps of 3-step epochs: checkpoints every 4 steps (4, 8 and the last, 9), a validation every
# 2 epochs (6, and the last step 9), random features redrawn every 4 steps (0, 4, 8), so a run
# resumed at step 6 must keep the features the checkpoint holds (drawn at 4) until step 8.
CADENCE = dict(train__epochs=3, train__checkpoint_every_steps=4, train__eval_every_epochs=2,
               train__redraw__every='steps', train__redraw__steps=4, train__log_every=1)


@pytest.fixture(scope='module')
def cadence_runs(tmp_path_factory):
    """`(straight workdir, resumed workdir, lock checks)`: 9 steps at once, and 6 then 3 more
    with another logging window (2 steps); `lock checks` records, at every save and
    validation of the straight run, whether the workdir lock was held."""
    straight, resumed = (tmp_path_factory.mktemp(name) for name in ('straight', 'resumed'))
    held = []

    def check_lock(real):
        def save(*args, **kwargs):
            try:
                with workdir_lib.WorkdirLock(straight):
                    held.append(False)
            except workdir_lib.WorkdirError:
                held.append(True)
            return real(*args, **kwargs)
        return save

    with pytest.MonkeyPatch.context() as patch:
        for name in ('save_checkpoint', 'save_best'):
            patch.setattr(checkpoints, name, check_lock(getattr(checkpoints, name)))
        loop.train_and_evaluate(tiny_config(**CADENCE), straight)
    loop.train_and_evaluate(tiny_config(**{**CADENCE, 'train__epochs': 2,
                                                'train__log_every': 2}), resumed)
    loop.train_and_evaluate(tiny_config(**{**CADENCE, 'train__log_every': 2}), resumed)
    return straight, resumed, held


def test_the_last_steps_are_saved_and_validated_when_cadences_do_not_divide_the_run(
        cadence_runs):
    straight, _, held = cadence_runs
    assert checkpoints.latest_manager(straight, read_only=True).all_steps() == [4, 8, 9]
    assert [r['step'] for r in read_metrics(straight) if 'val/psnr_y' in r] == [6, 9]
    assert sorted(train_losses(straight)) == list(range(1, 10))
    assert held == [True] * 5  # saves at 4, 8, 9; best at 6, 9: all under the lock


def test_the_logged_lr_is_the_schedule_s_value_at_each_step(cadence_runs):
    config = tiny_config(**CADENCE)
    lr, decay, epoch_steps = config.train.lr, config.train.lr_decay_factor, 3
    expected = {step: lr * decay ** sum(e * epoch_steps <= step - 1
                                        for e in config.train.lr_decay_epochs)
                for step in range(1, 10)}
    logged = {r['step']: r['train/lr'] for r in read_metrics(cadence_runs[0]) if 'train/lr' in r}
    assert expected[3] == lr and expected[4] == lr * decay  # the decay starts at step 4
    assert logged == pytest.approx(expected, rel=1e-6)


def test_a_resumed_run_repeats_the_straight_one_and_logs_window_means(cadence_runs):
    straight, resumed, _ = cadence_runs
    _, variables_a, step_a = checkpoints.load_model(straight)
    _, variables_b, step_b = checkpoints.load_model(resumed)
    assert step_a == step_b == 9
    assert_trees_close(variables_a, variables_b, rtol=1e-6)
    per_step, windows = train_losses(straight), train_losses(resumed)
    # Logged every 2 steps, at the saves (4, 6: the end of the first run, 8, 9) and at the
    # validation at 6: each record is the mean loss of the steps since the previous one.
    assert sorted(windows) == [2, 4, 6, 8, 9]
    for first, last in ((1, 2), (3, 4), (5, 6), (7, 8), (9, 9)):
        mean = np.mean([per_step[s] for s in range(first, last + 1)])
        assert windows[last] == pytest.approx(mean, rel=1e-6), (first, last)
