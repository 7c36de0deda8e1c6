"""Contracts of `research/runs.py`, the leaderboard's one trainer: the batch size and the
config every run trains with (against the docstring's arithmetic done here by loops), and a
`VariantTrainer` on a tiny task: its initial states, its training (the documented loop written
out here), the divergence check, the per-image scores (the forward and PSNR-Y by hand), the
result of a run and the parameter count. The training uses a 1-block, 8-feature ENLCN on 9^2 LR
images (odd sides: a padded forward would differ) and 3 steps with an epoch of 2 steps, so the
random features are redrawn at steps 0 and 2."""

import math
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from conftest import error_message
from enlcn_jax.evaluation import metrics
from enlcn_jax.nn import models
from enlcn_jax.research import runs, tasks
from enlcn_jax.train import default_config, recipe


def test_a_batch_holds_batch_pixels_lr_pixels_and_at_least_one_image():
    assert runs.BATCH_PIXELS == 2048
    for side in (8, 12, 16, 32, 45, 46, 64):
        task = tasks.MosaicTask(name='t', lr_size=side, cell=side, textures=1)
        images = max([k for k in range(1, 100) if k * side * side <= 2048], default=1)
        assert runs.batch_size(task) == images and type(runs.batch_size(task)) is int
    assert [runs.batch_size(tasks.get_task(n)) for n in tasks.TASKS] == [8, 2, 2, 8]


def epoch_holding(step: int) -> int:
    """The epoch (of `STEPS_PER_EPOCH` steps) that holds 0-based `step`, by a loop."""
    epoch = 0
    while not epoch * 50 <= step < (epoch + 1) * 50:
        epoch += 1
    return epoch


@pytest.mark.parametrize('steps', [400, 130, 133, 50, 49, 1, 1201])
def test_the_base_config_is_the_default_with_the_documented_small_enlcn_and_schedule(steps):
    assert runs.STEPS_PER_EPOCH == 50
    task = tasks.MosaicTask(name='t', lr_size=12, scale=3)
    config = runs.base_config(task, steps)
    changed = {
        'model.scale': 3, 'model.n_resblocks': 4, 'model.n_feats': 16,
        'model.attention_every': 4, 'model.num_random_features': 64,
        'data.lr_patch': 12, 'data.batch_size': 14,
        'train.epochs': min(e for e in range(1, 100) if e * 50 >= steps),
        'train.steps_per_epoch': 50, 'train.lr': 2e-3,
        'train.lr_decay_epochs': (epoch_holding(math.floor(0.75 * steps)),),
        'train.contrastive.start_epoch': epoch_holding(math.floor(0.5 * steps))}
    flat = lambda c: {k: v for k, v in _flatten(c.to_dict())}
    got, default = flat(config), flat(default_config.get_config())
    for key, value in changed.items():
        assert got[key] == value and type(got[key]) is type(value), key
    assert {k: v for k, v in got.items() if k not in changed} == \
        {k: v for k, v in default.items() if k not in changed}
    assert isinstance(config, ml_collections.ConfigDict)


def _flatten(tree, prefix=''):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f'{prefix}{key}.')
        else:
            yield f'{prefix}{key}', value


def test_the_base_network_has_two_attention_modules_of_4_dimensions_and_64_features():
    config = runs.base_config(tasks.get_task('mosaic'), 400)
    model = recipe.create_model(config)
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (16, 16)))
    features = shapes[models.RANDOM_FEATURES]
    assert len(features) == 2
    assert all(leaf.shape == (64, 4) for leaf in jax.tree.leaves(features))


# A trainer on a tiny task.

TASK = tasks.MosaicTask(name='runs_tiny', lr_size=9, cell=3, textures=2)
STEPS = 3


def tiny_runs_config() -> ml_collections.ConfigDict:
    """`runs.base_config` of the tiny task with a 1-block, 8-feature network and 2-image batches."""
    config = runs.base_config(TASK, STEPS)
    config.model.n_resblocks, config.model.n_feats, config.model.attention_every = 1, 8, 1
    config.model.num_random_features = 8
    config.data.batch_size = 2
    config.train.steps_per_epoch = 2
    return config


@pytest.fixture(scope='module')
def trainer():
    return runs.VariantTrainer(tiny_runs_config(), TASK)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_initial_states_come_from_the_seed_replicated_with_the_first_one_s_static_fields(
        trainer):
    first, again, other = (trainer.initial_state(s) for s in (3, 3, 4))
    assert_trees_equal(first.params, again.params)
    assert_trees_equal(first.random_features, again.random_features)
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(first.params),
                                                        leaves(other.params)))
    # Parameters and features from `jax.random.PRNGKey(seed)`, as `create_train_state` makes them.
    made = recipe.create_train_state(trainer.config, trainer.model, jax.random.PRNGKey(4))
    for field in ('params', 'random_features', 'rng', 'opt_state', 'step'):
        assert_trees_equal(getattr(other, field), getattr(made, field))
    assert other.apply_fn is first.apply_fn and other.tx is first.tx
    assert int(other.step) == 0
    for leaf in jax.tree.leaves(other):
        assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.spec == PartitionSpec()
        assert leaf.sharding.mesh == trainer.mesh


def test_training_is_the_documented_loop_and_compiles_once_for_every_seed(trainer):
    """`steps` steps on the seed's stream of `config.data.batch_size` images, the features
    redrawn (draw e) at the first step of epoch e: written out here with the trainer's compiled
    step and redraw."""
    for seed in (1, 2):
        state = trainer.train(seed, STEPS)
        expected = trainer.initial_state(seed)
        batches = tasks.training_batches(TASK, seed, 2)
        for step in range(STEPS):
            if step % 2 == 0:
                expected = trainer.redraw(expected, step // 2)
            expected, _ = trainer.train_step(expected, recipe.shard_batch(next(batches),
                                                                          trainer.mesh))
        assert int(state.step) == STEPS
        assert_trees_equal(state.params, expected.params)
        assert_trees_equal(state.random_features, expected.random_features)
    # The features were redrawn: draw 1, not the initial ones.
    initial = trainer.initial_state(2)
    assert not np.array_equal(leaves(state.random_features)[0],
                              leaves(initial.random_features)[0])
    assert_trees_equal(state.random_features,
                       trainer.redraw(initial, 1).random_features)
    assert trainer.train_step._cache_size() == 1
    untrained = trainer.train(2, 0)
    assert_trees_equal(untrained.params, initial.params)


def poison_one_number(trainer, monkeypatch):
    """The trainer's step, then one scalar of one parameter set to infinity at the last step."""
    step, calls = trainer.train_step, []

    def poisoned(state, batch):
        state, metrics_ = step(state, batch)
        calls.append(1)
        if len(calls) == 2:
            params = jax.tree.map(np.array, state.params)
            first = jax.tree.leaves(params)[0]
            first.flat[-1] = np.inf
            state = state.replace(params=params)
        return state, metrics_

    monkeypatch.setattr(trainer, 'train_step', poisoned)


def test_a_parameter_not_finite_after_the_last_step_is_a_diverged_run(trainer, monkeypatch):
    poison_one_number(trainer, monkeypatch)
    assert error_message(lambda: trainer.train(5, 2), FloatingPointError) == (
        'the parameters are not finite after 2 steps of seed 5: training diverged')
    poison_one_number(trainer, monkeypatch)
    start = time.perf_counter()
    result = trainer.run(5, 2)
    took = time.perf_counter() - start
    seconds = result.pop('seconds')
    assert result == {'psnr': None, 'psnr_images': None, 'diverged': True,
                      'params': trainer.params}
    assert 0 < seconds <= took


def psnr_y_by_hand(a, b, shave):
    luma = lambda x: 16 + x[shave:-shave, shave:-shave] / 255 @ np.array([65.481, 128.553,
                                                                            24.966])
    return 10 * np.log10(255 ** 2 / np.mean((luma(a) - luma(b)) ** 2))


def test_a_run_scores_each_held_out_image_by_psnr_y_of_the_whole_image():
    # A trainer of its own: everything its construction sets up is used here.
    trainer = runs.VariantTrainer(tiny_runs_config(), TASK)
    start = time.perf_counter()
    result = trainer.run(6, 1)
    took = time.perf_counter() - start
    state = trainer.train(6, 1)
    variables = jax.tree.map(np.asarray, state.variables)
    forward = jax.jit(trainer.model.apply)
    samples = tasks.held_out_samples(TASK)
    expected = []
    for sample in samples:
        sr = np.asarray(forward(variables, sample.lr[None].astype(np.float32) / 255))[0]
        assert sr.shape == sample.hr.shape
        expected.append(psnr_y_by_hand(metrics.quantize(sr), sample.hr, TASK.scale))
    assert len(result['psnr_images']) == len(samples) == tasks.TEST_IMAGES
    np.testing.assert_allclose(result['psnr_images'], expected, atol=1e-6)
    assert result['psnr'] == pytest.approx(np.mean(expected), abs=1e-6)
    assert type(result['psnr']) is float and result['diverged'] is False
    assert result['params'] == trainer.params and 0 < result['seconds'] <= took
    assert set(result) == {'psnr', 'psnr_images', 'diverged', 'params', 'seconds'}
    # Scoring another state reuses the upscaler's compiled forward.
    upscaler = trainer._upscaler
    assert trainer.score(trainer.initial_state(6)) != result['psnr_images']
    # Whole images, no padding: one forward, compiled for the 9 x 9 LR itself.
    assert trainer._upscaler is upscaler and upscaler.compiled_shapes == [(1, 9, 9, 3)]


def test_params_counts_the_trainable_scalars_of_the_network(trainer):
    variables = models.init_variables(trainer.model, jax.random.key(1), (9, 9))
    count = sum(np.size(x) for x in jax.tree.leaves(variables['params']))
    assert trainer.params == count and type(trainer.params) is int
    assert count < sum(np.size(x) for x in jax.tree.leaves(variables))   # features left out
