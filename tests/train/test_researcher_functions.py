"""Training with a researcher's functions: a contrastive loss of one's own chosen on the command
line, trained, recorded and evaluated; a non-finite loss traced to the function that made it.

Everything runs the tiny ENLCN of `conftest.TINY` (2 blocks, 16 features, 12x12 LR patches) on
one skimage photo.
"""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (INFO_NCE, benchmark_images, cli_overrides, load_config, tiny_config,
                      unit_embeddings)
from enlcn_jax.data import input_pipeline, sources
from enlcn_jax.evaluation import runner
from enlcn_jax.nn import losses
from enlcn_jax.train import config_check, loop, recipe

def first_batch(config) -> dict[str, np.ndarray]:
    """The batch of training step 1 (`PatchLoader.batch(0)`) of `config`."""
    dataset = sources.load_skimage_photos(config.data.photos, config.model.scale)
    return input_pipeline.PatchLoader(dataset, config.data.batch_size, config.data.lr_patch,
                                      seed=config.train.seed, num_workers=1).batch(0)


# --- a contrastive loss of one's own -------------------------------------------------------------

def test_a_loss_given_on_the_command_line_trains_is_recorded_and_evaluates(tmp_path):
    """`--config.train.contrastive.loss=MODULE:NAME(options)` parsed as train.py parses it: the
    logged contrastive loss of step 1 is the example's InfoNCE at temperature 0.2 on that step's
    embeddings, `config.json` records the spec as written, and eval.py's runner scores the
    workdir."""
    overrides = cli_overrides(train__epochs=1, train__steps_per_epoch=1,
                              train__contrastive__start_epoch=0, data__val_source='none')
    config = load_config('configs/quickstart.py',
                         [*overrides, f'--config.train.contrastive.loss={INFO_NCE}'])
    workdir = tmp_path / 'run'
    assert loop.run_training(config, workdir) is None
    recorded = json.loads((workdir / 'config.json').read_text())['train']['contrastive']
    assert recorded['loss'] == INFO_NCE and recorded['margin'] is None

    # Step 1 trains the initial parameters with the first draw of random features.
    model = recipe.create_model(config)
    state = recipe.create_train_state(config, model, jax.random.PRNGKey(config.train.seed))
    state = state.replace(random_features=recipe.draw_random_features(
        model, state.random_features, state.rng, 0))
    lr_images, _ = recipe.batch_images(first_batch(config))
    _, embeddings = model.apply(state.variables, lr_images, return_embeddings=True)

    def info_nce(**options):
        example = losses.get_contrastive_loss('examples.contrastive_losses:info_nce')
        per_image = jax.vmap(functools.partial(example, **options))
        return float(np.mean([jnp.mean(per_image(q, k)) for q, k in embeddings]))

    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    logged = next(r['train/contrastive'] for r in records if r['step'] == 1)
    assert logged == pytest.approx(info_nce(temperature=0.2), rel=1e-5)
    assert logged != pytest.approx(info_nce(), rel=1e-2)  # the option, not the default

    hr_dir = tmp_path / 'images'
    hr_dir.mkdir()
    shutil.copy(benchmark_images('Set5')[2], hr_dir)
    runner.run(runner.EvalOptions(datasets=(str(hr_dir),), checkpoint=str(workdir),
                                  output=str(tmp_path / 'results.json')))
    (summary,) = json.loads((tmp_path / 'results.json').read_text())['summary']
    assert summary['images'] == 1 and 5 < summary['psnr'] < 60


@pytest.mark.parametrize('loss, margins', [('paper', (None, 3.5)), ('code', (10.0, 12.0))])
def test_the_configured_margin_reaches_the_loss(loss, margins):
    """`train.contrastive.margin` is the loss's margin: without a hinge ('paper'), or with one
    every row passes (the code's at a margin of 10), the loss moves by the difference (None is
    the loss's own margin, 1)."""
    embeddings = [unit_embeddings(jax.random.key(0), (2, 300, 8), amplification=2.7)]
    low, high = (float(recipe.contrastive_term(embeddings, tiny_config(
        train__contrastive__loss=loss, train__contrastive__margin=margin))) for margin in margins)
    assert high - low == pytest.approx(margins[1] - (margins[0] or 1.0), abs=1e-5)


def test_block_size_is_given_only_to_a_loss_that_takes_it():
    config = tiny_config(train__contrastive__block_size=7)
    assert recipe.contrastive_loss_fn(config).keywords == {'block_size': 7}
    config.train.contrastive.loss = 'code(block_size=64)'  # the spec's own wins
    assert recipe.contrastive_loss_fn(config).keywords == {'block_size': 64}
    config.train.contrastive.loss = INFO_NCE
    assert recipe.contrastive_loss_fn(config).keywords == {'temperature': 0.2}


@pytest.mark.parametrize('overrides, message', [
    ({'train.contrastive.loss': 'nope'},
     "train.contrastive.loss='nope': unknown contrastive loss; known: ['code', 'paper']"),
    ({'train.contrastive.loss': 'code(temperature=0.1)'},
     "train.contrastive.loss='code(temperature=0.1)': code takes no option(s) ['temperature']"),
    ({'train.contrastive.loss': 'examples.contrastive_losses:info_nce',
      'train.contrastive.margin': 0.5},
     "train.contrastive.margin=0.5 sets the margin option, and train.contrastive.loss="
     "'examples.contrastive_losses:info_nce' has none"),
    ({'train.contrastive.loss': 'code(irrelevant=(140, 155))'},
     "config.train.contrastive.loss='code(irrelevant=(140, 155))' on config.data.lr_patch=12 "
     '(144 positions per image): the loss needs at least 155 positions per image'),
])
def test_validate_config_refuses_a_bad_loss_in_one_line_naming_the_key(overrides, message):
    config = tiny_config()
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError) as info:
        config_check.validate_config(config)
    assert message in str(info.value) and '\n' not in str(info.value)


# --- a non-finite loss names the function that made it ------------------------------------------

RESEARCH = '''
import jax.numpy as jnp


def shifted_sqrt(x, projection, shift=6.0):
    """`sqrt(F x + shift) / sqrt(m)`: NaN where F x < -shift, which the registry's check (a few
    inputs) never reaches and a training batch does."""
    return jnp.sqrt(x @ projection.T + shift) / projection.shape[0] ** 0.5


def nan_on_small_images(q, k):
    """A contrastive loss that is NaN on images of fewer than 1000 positions (the check's has
    1024, a 12 x 12 patch 144)."""
    return jnp.where(q.shape[0] < 1000, jnp.nan, jnp.mean(q * k))
'''


@pytest.fixture(scope='module')
def research(tmp_path_factory):
    """`nan_research`, a module of functions giving non-finite values on real data only,
    importable for the module's tests."""
    folder = tmp_path_factory.mktemp('research')
    (folder / 'nan_research.py').write_text(RESEARCH)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield 'nan_research'


def test_a_nan_from_a_researcher_s_feature_map_stops_training_naming_the_map(research, tmp_path):
    config = tiny_config(model__feature_map=f'{research}:shifted_sqrt', train__epochs=1,
                         data__val_source='none')
    with pytest.raises(FloatingPointError) as info:
        loop.train_and_evaluate(config, tmp_path)
    assert str(info.value).startswith('non-finite loss nan')
    assert ('at step 1: training stopped; no checkpoint was saved. Run again on the last finite '
            'state (the initial state) with the batch of step 1: module body_0: '
            f"model.feature_map='{research}:shifted_sqrt' gives non-finite features for the "
            'queries.') in str(info.value)


@pytest.mark.parametrize('overrides, step, explanation', [
    ({'train.contrastive.loss': 'nan_research:nan_on_small_images'}, 3,
     "module body_0: train.contrastive.loss='nan_research:nan_on_small_images' gives a "
     'non-finite value.'),
    # Step 2 is before the contrastive loss starts (at step 3): the loss is not run.
    ({'train.contrastive.loss': 'nan_research:nan_on_small_images'}, 2,
     'nothing is non-finite: every configured function gives finite values and gradients, and '
     "the network a finite output, so the step's own update diverged; try a lower train.lr."),
])
def test_explain_non_finite_names_the_first_configured_function_that_is(research, overrides,
                                                                         step, explanation):
    config = tiny_config()
    config.update_from_flattened_dict(overrides)
    state = recipe.create_train_state(config, recipe.create_model(config), jax.random.PRNGKey(0))
    assert recipe.explain_non_finite(config, state, first_batch(config), step) == explanation


def test_explain_non_finite_tells_diverged_parameters_from_a_configured_function():
    config = tiny_config()
    state = recipe.create_train_state(config, recipe.create_model(config), jax.random.PRNGKey(0))
    state = state.replace(params=jax.tree.map(lambda p: p * 1e30, state.params))
    assert recipe.explain_non_finite(config, state, first_batch(config), 3) == (
        'the embeddings of module body_0 are non-finite before any configured function runs on '
        "them: the network's parameters diverged; try a lower train.lr.")
