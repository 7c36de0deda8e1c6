"""A researcher's math as the model runs it: options in specs, callables, layout-aware attention,
whole blocks, wider feature maps, and the checks that refuse what would fail or mislead later."""

import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL as TINY, unit
from enlcn_jax.evaluation import inference
from enlcn_jax.nn import attention, features, local, losses, models, registry

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples import temperature_block  # pylint: disable=wrong-import-position

X = np.linspace(0.0, 1.0, 6 * 7 * 3, dtype=np.float32).reshape(1, 6, 7, 3)  # no XLA at import


def init(config, lr_size=(6, 7)):
    model = models.from_config({**TINY, **config})
    return model, models.init_variables(model, jax.random.key(0), lr_size)


# --- options in the spec -------------------------------------------------------------------

def test_parse_spec_reads_literal_keyword_options():
    assert registry.parse_spec('enla') == ('enla', {})
    assert registry.parse_spec(' my.kernels:favor(rho=0.5, window=(2, 3), name="a") ') == \
        ('my.kernels:favor', {'rho': 0.5, 'window': (2, 3), 'name': 'a'})
    for bad, message in (('f(1)', 'keyword arguments'), ('f(x=y)', 'not a Python literal'),
                         ('f(x=1', 'cannot read the options'), ('f)', 'unbalanced')):
        with pytest.raises(ValueError, match=message):
            registry.parse_spec(bad)


def test_specs_are_split_at_the_commas_outside_options():
    assert registry.split_specs('relu, my:favor(rho=0.5, s=1),orthogonal,') == [
        'relu', 'my:favor(rho=0.5, s=1)', 'orthogonal']


def test_an_option_string_is_the_function_with_that_keyword():
    """`softmax_kernel(eps=0.0)` is the map with eps 0: the same model as `kernel_eps=0.0`, a
    different one from the released 1e-4."""
    model, variables = init({'feature_map': 'softmax_kernel(eps=0.0)'})
    shorthand = models.from_config({**TINY, 'kernel_eps': 0.0})
    released = models.from_config(TINY)
    sr = model.apply(variables, X)
    np.testing.assert_array_equal(sr, shorthand.apply(variables, X))
    assert np.abs(np.asarray(sr - released.apply(variables, X))).max() > 1e-6
    phi = features.get_feature_map('relu(eps=0.25)')
    np.testing.assert_allclose(phi(jnp.asarray([[-1.0]]), jnp.asarray([[1.0]])), [[0.25]])
    assert attention.get_attention('enla(query_block=5)').keywords == {'query_block': 5}


def test_bad_options_are_one_line_errors_naming_the_key_and_the_options():
    with pytest.raises(ValueError, match=r"model.feature_map='relu\(rho=1\)': relu takes no "
                                         r"option\(s\) \['rho'\]; its options: \['eps'\]"):
        models.from_config({**TINY, 'feature_map': 'relu(rho=1)'})
    with pytest.raises(ValueError, match=r"kernel_eps=0.0 and model.feature_map=.* both set eps"):
        models.from_config({**TINY, 'feature_map': 'relu(eps=0.1)', 'kernel_eps': 0.0})
    with pytest.raises(ValueError, match=r"model.attention: options of 'enla\(2\)' .* keyword"):
        models.from_config({**TINY, 'attention': 'enla(2)'})


# --- functions given in code ----------------------------------------------------------------

def favor_hyperbolic(x, projection):
    """A feature map given in code, of width 2 m: the built-in `favor_hyperbolic` map called from
    this module, so the tests record and import it as this module's function."""
    return features.hyperbolic_features(x, projection)


def test_callables_stand_for_specs_and_are_recorded_by_name():
    """`ENLCAConfig(attention=fn)` builds the model the name builds; the config records the
    importable name; a lambda cannot be recorded and says so."""
    network = {key: value for key, value in TINY.items() if key != 'num_random_features'}
    by_name = models.ENLCN(**network, enlca=models.ENLCAConfig(num_random_features=16,
                                                               feature_map='relu(eps=0.5)'))
    by_object = models.ENLCN(**network, enlca=models.ENLCAConfig(
        num_random_features=16, attention=attention.enla,
        feature_map=functools.partial(features.relu_features, eps=0.5)))
    variables = models.init_variables(by_name, jax.random.key(0), (6, 7))
    np.testing.assert_array_equal(by_name.apply(variables, X), by_object.apply(variables, X))
    recorded = models.recordable_config({'attention': attention.enla,
                                         'feature_map': favor_hyperbolic, 'n_feats': 16})
    assert recorded == {'attention': 'enlcn_jax.nn.attention:enla',
                        'feature_map': f'{__name__}:favor_hyperbolic', 'n_feats': 16}
    assert models.from_config({**TINY, **recorded}).enlca.feature_map == recorded['feature_map']
    with pytest.raises(ValueError, match='model.feature_map: cannot record .*lambda'):
        models.recordable_config({'feature_map': lambda x, f: x})


def test_a_feature_map_of_width_2m_runs_and_estimates_the_softmax_kernel():
    """ENLA only needs phi(q).phi(k): a map of width 2 m is accepted, and its attention converges
    to the exact softmax attention as m grows (Monte Carlo: about 1 / sqrt(m); at m = 8192 the
    error is 0.04, against 0.84 for the uniform average)."""
    features.get_feature_map(favor_hyperbolic)
    rng = np.random.default_rng(0)
    q = jnp.asarray(unit(rng.normal(size=(1, 40, 4))), jnp.float32)
    k = jnp.asarray(unit(rng.normal(size=(1, 40, 4))), jnp.float32)
    v = jnp.asarray(rng.normal(size=(1, 40, 3)), jnp.float32)
    exact = attention.exact_attention(q, k, v)
    errors = {}
    for m in (512, 8192):
        projection = features.iid_gaussian_projection(jax.random.key(3), m, 4)
        out = attention.enla(q, k, v, projection, favor_hyperbolic)
        errors[m] = float(jnp.linalg.norm(out - exact) / jnp.linalg.norm(exact))
    assert errors[8192] < 0.1 and errors[8192] < errors[512] / 3, errors
    _, variables = init({'feature_map': f'{__name__}:favor_hyperbolic'})
    assert variables[models.RANDOM_FEATURES]['body_0']['projection'].shape == (16, 4)


# --- attention that knows the layout, and whole blocks ---------------------------------------

def test_window_attention_gets_the_layout_and_equals_masked_softmax():
    """The model passes spatial_shape to a function that takes it: the built-in window
    attention equals exact softmax attention restricted, by an explicit N x N mask, to keys in
    the query's own 4 x 4 tile (tiles cut by the border at 6 x 7)."""
    h, w = 6, 7
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(unit(rng.normal(size=(2, h * w, 4))) * 6 ** 0.5, jnp.float32)
            for _ in range(2))
    v = jnp.asarray(rng.normal(size=(2, h * w, 3)), jnp.float32)
    config = models.ENLCAConfig(attention='window(window=4)')
    out = config.attend(q, k, v, jnp.zeros((8, 4)), spatial_shape=(h, w))
    tile = (np.arange(h)[:, None] // 4 * 10 + np.arange(w)[None, :] // 4).reshape(-1)
    same_tile = tile[:, None] == tile[None, :]
    scores = np.where(same_tile, np.einsum('bid,bjd->bij', q, k), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    expected = (weights / weights.sum(-1, keepdims=True)) @ np.asarray(v)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert registry.accepts(local.window, 'spatial_shape')


def test_a_block_of_ones_own_replaces_enlca_and_pads_exactly():
    """`model.block=MODULE:NAME`: the example block with its learned amplification is built in
    every attention position (its own parameters, ENLCA's random features), trains its k (a
    gradient reaches log_amplification) and gives the unpadded output on padded input."""
    model, variables = init({'block': 'examples.temperature_block:LearnedAmplificationENLCA'})
    assert 'log_amplification' in variables['params']['body_0']
    np.testing.assert_allclose(variables['params']['body_0']['log_amplification'], np.log(6.0))
    assert set(variables[models.RANDOM_FEATURES]) == {'body_0', 'body_2', 'body_4'}
    grads = jax.grad(lambda p: jnp.sum(model.apply({**variables, 'params': p}, X) ** 2))(
        variables['params'])
    assert abs(float(grads['body_0']['log_amplification'])) > 0
    padded = jnp.pad(X, ((0, 0), (0, 2), (0, 1), (0, 0)))
    mask = jnp.pad(jnp.ones((1, 6, 7, 1)), ((0, 0), (0, 2), (0, 1), (0, 0)))
    np.testing.assert_allclose(model.apply(variables, padded, mask=mask)[:, :12, :14],
                               model.apply(variables, X), atol=1e-5)
    assert temperature_block.LearnedAmplificationENLCA is models.BLOCKS.get(
        'examples.temperature_block:LearnedAmplificationENLCA')


def test_a_block_that_does_not_return_q_and_k_is_refused():
    class NoEmbeddings(models.ENLCA):
        def __call__(self, x, mask=None):
            return super().__call__(x, mask)[0]
    with pytest.raises(ValueError, match=r"model.block='.*NoEmbeddings': not a valid attention "
                                         r"block: .*returns \(y, \(q, k\)\)"):
        models.BLOCKS.get(NoEmbeddings)


# --- checks that run functions as the model does ---------------------------------------------

def negative_beyond_two(x, projection):
    """Non-negative while |x|^2 <= 2, as today's check (|x| <= 1) saw it; negative at k = 6."""
    return (jnp.exp(x @ projection.T) * (2.0 - jnp.sum(x * x, -1, keepdims=True)) + 1.0) / 4


def row_normalised(x, projection, is_query=False):
    """Statistics over rows (each feature divided by its max over the positions): the query
    features then depend on which rows are mapped together."""
    del is_query
    out = jnp.exp(x @ projection.T)
    return out / jnp.max(out, axis=-2, keepdims=True)


@functools.partial(jax.jit, static_argnames=())
def branches_on_is_query(x, projection, is_query=False):
    if is_query:
        return jnp.exp(x @ projection.T)
    return jnp.exp(-(x @ projection.T))


def ignores_the_mask(q, k, v, projection, feature_map, mask=None):
    del mask
    return attention.enla(q, k, v, projection, feature_map)


@pytest.mark.parametrize('fn, message', [
    (negative_beyond_two, r'negative at \|x\|\^2 = 2.* k, 6'),
    (row_normalised, 'query rows must be mapped independently'),
    (branches_on_is_query, 'TracerBoolConversionError'),
])
def test_feature_maps_that_fail_only_where_the_model_runs_them_are_refused(fn, message):
    with pytest.raises(ValueError, match=r'model.feature_map=.*not a valid feature map: .*'
                       + message) as info:
        features.get_feature_map(fn)
    assert '\n' not in str(info.value).split('\n\nSee')[0].strip()


def test_row_independence_matters_in_the_model():
    """Why the check refuses `row_normalised`: ENLA's blocked and whole-array outputs differ."""
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(unit(rng.normal(size=(1, 300, 4))) * 6 ** 0.5, jnp.float32)
            for _ in range(2))
    v = jnp.asarray(rng.normal(size=(1, 300, 3)), jnp.float32)
    projection = features.orthogonal_gaussian_projection(jax.random.key(0), 16, 4)
    whole = attention.enla(q, k, v, projection, row_normalised, query_block=300)
    blocked = attention.enla(q, k, v, projection, row_normalised, query_block=64)
    assert float(jnp.abs(whole - blocked).max()) > 1e-3


def test_an_attention_that_takes_a_mask_must_honour_it():
    with pytest.raises(ValueError, match=r'with mask, the output on an image padded from 3x4 '
                                         r'to 4x6 differs .* must be left out as keys'):
        attention.get_attention(ignores_the_mask)


def without_mask(q, k, v, projection, feature_map):
    """An attention function that takes no mask."""
    return attention.enla(q, k, v, projection, feature_map)


def test_a_model_whose_attention_takes_no_mask_is_evaluated_unpadded(caplog):
    """Evaluation's default bucket pads; for attention without a mask the upscaler does not pad
    (one log line) and gives the unpadded forward's numbers exactly."""
    model, variables = init({'attention': f'{__name__}:without_mask'})
    assert not model.masks_padding() and init({})[0].masks_padding()
    with caplog.at_level('INFO'):
        upscaler = inference.ModelUpscaler(model, variables, bucket=16)
    assert upscaler.bucket == 1
    assert 'takes no mask: images are evaluated unpadded' in caplog.text
    image = np.asarray(X[0])
    np.testing.assert_array_equal(upscaler._run(image), model.apply(variables, X)[0])
    with pytest.raises(ValueError, match='takes no mask: evaluate this model without padding'):
        model.apply(variables, X, mask=jnp.ones((1, 6, 7, 1)))


def test_a_dotted_module_that_is_missing_is_named_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r'put research/nomod.py in the working directory'):
        features.get_feature_map('research.nomod:phi')


# --- research tools --------------------------------------------------------------------------

def test_redraw_uses_the_model_s_projection_sampler():
    """A model with iid rows redraws iid rows (the sampler's own draw), not orthogonal blocks."""
    model, variables = init({'projection': 'iid'})
    redrawn = model.redraw(variables, jax.random.key(5))
    leaves = jax.tree_util.tree_leaves(redrawn[models.RANDOM_FEATURES])
    for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(leaf, features.iid_gaussian_projection(
            jax.random.fold_in(jax.random.key(5), i), *leaf.shape))


def test_specs_with_options_and_functions_are_recorded_and_load_again(tmp_path):
    """A model directory of a model built from an option string and a function in code records
    both as specs; `load_model` (eval, upscale and visualize load through it) rebuilds the same
    network, and upscale runs it."""
    from enlcn_jax import upscale  # pylint: disable=import-outside-toplevel
    from enlcn_jax.data import image_io  # pylint: disable=import-outside-toplevel
    from enlcn_jax.storage import checkpoints  # pylint: disable=import-outside-toplevel
    config = {**TINY, 'attention': 'window(window=4)',
              'feature_map': favor_hyperbolic}
    model, variables = init(config)
    checkpoints.save_model(tmp_path / 'model', config, variables)
    recorded = json.loads((tmp_path / 'model' / 'model_config.json').read_text())
    assert recorded['attention'] == 'window(window=4)'
    assert recorded['feature_map'] == f'{__name__}:favor_hyperbolic'
    loaded, loaded_variables, _ = checkpoints.load_model(tmp_path / 'model', trust_code=True)
    np.testing.assert_array_equal(loaded.apply(loaded_variables, X), model.apply(variables, X))
    image_io.save_image(tmp_path / 'lr.png', np.asarray(X[0] * 255, np.uint8))
    upscale.main([str(tmp_path / 'lr.png'), str(tmp_path / 'sr.png'),
                  '--checkpoint', str(tmp_path / 'model'), '--trust_code'])
    assert image_io.load_image(tmp_path / 'sr.png').shape == (12, 14, 3)


@pytest.mark.parametrize('functions, check', [
    (features.FEATURE_MAPS, features.check_feature_map),
    (features.PROJECTIONS, features.check_projection),
    (attention.ATTENTIONS, attention.check_attention),
    (models.BLOCKS, models.check_block),
    (losses.CONTRASTIVE_LOSSES, losses.check_contrastive_loss),
])
def test_the_package_s_own_functions_pass_the_checks_they_are_trusted_to_pass(functions, check):
    """The registries skip the check for the package's own functions (`trusted=True`): each
    passes it."""
    for name in functions.names():
        check(functions.get(name))
