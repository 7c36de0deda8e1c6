"""Swappable functions by name or MODULE:NAME: a researcher's file, checks, errors, safe ENLA."""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL as TINY, unit
from enlcn_jax.nn import attention, features, models, registry

X = np.linspace(0.0, 1.0, 6 * 7 * 3, dtype=np.float32).reshape(1, 6, 7, 3)  # no XLA at import

RESEARCH_MODULE = '''
import jax
import jax.numpy as jnp
from enlcn_jax.nn import attention


def relu_map(x, projection):
    """Performer's ReLU map written out, with its constant: the built-in 'relu'."""
    return (jax.nn.relu(x @ projection.T) + 1e-3) / projection.shape[0] ** 0.5


def gaussian_rows(key, m, d):
    return jax.random.normal(key, (m, d), jnp.float32)


def enla_again(q, k, v, projection, feature_map):
    return attention.enla(q, k, v, projection, feature_map)


def wrong_shape(x, projection):
    return jnp.sum(x, -1)


def too_many_arguments(x, projection, scale):
    return x @ projection.T * scale


NOT_A_FUNCTION = 3
'''


@pytest.fixture(name='research_module')
def fixture_research_module(tmp_path, monkeypatch):
    """`research_kernels.py` in a fresh working directory that is not on sys.path."""
    (tmp_path / 'research_kernels.py').write_text(RESEARCH_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if p not in ('', '.', str(tmp_path))])
    yield 'research_kernels'
    sys.modules.pop('research_kernels', None)


def forward(config):
    model = models.from_config(config)
    variables = models.init_variables(model, jax.random.key(0), (6, 7))
    return model, variables, model.apply(variables, X)


def test_module_name_from_the_working_directory_runs_like_its_builtin_twin(research_module):
    """A map, a sampler and an attention function from a file of the researcher's: the model
    equals the one built from the shipped 'relu', 'iid' and 'enla'."""
    ours = {'feature_map': f'{research_module}:relu_map', 'projection':
            f'{research_module}:gaussian_rows', 'attention': f'{research_module}:enla_again'}
    model, variables, sr = forward({**TINY, **ours})
    assert model.enlca.feature_map == 'research_kernels:relu_map'
    builtin = models.from_config({**TINY, 'feature_map': 'relu', 'projection': 'iid'})
    np.testing.assert_allclose(sr, builtin.apply(variables, X), rtol=1e-6, atol=1e-7)
    # The same key draws the same projection as the built-in sampler: same initial features.
    _, builtin_variables, _ = forward({**TINY, 'feature_map': 'relu', 'projection': 'iid'})
    np.testing.assert_array_equal(variables['random_features']['body_0']['projection'],
                                  builtin_variables['random_features']['body_0']['projection'])
    softmax = models.from_config({**TINY, 'projection': 'iid'}).apply(variables, X)
    assert np.abs(softmax - sr).max() > 1e-4


@pytest.mark.parametrize('spec, message', [
    ('no_such_module:phi', "model.feature_map='no_such_module:phi': cannot import module "
                           "'no_such_module'"),
    ('research_kernels:missing', "module 'research_kernels' .*research_kernels.py.* has no "
                                 "attribute 'missing'"),
    ('research_kernels:NOT_A_FUNCTION', 'research_kernels.NOT_A_FUNCTION is not callable'),
    ('research_kernels:wrong_shape', r"not a valid feature map: .*shape \[2, 12\], expected "
                                     r"\[2, 12, m'\]"),
    ('research_kernels:too_many_arguments', "not a valid feature map: TypeError.*scale"),
    ('research_kernels', 'unknown feature map'),
    (':phi', 'expected MODULE:NAME'),
])
def test_bad_feature_maps_are_one_line_errors_before_compiling(research_module, spec, message):
    del research_module
    with pytest.raises(ValueError, match=message) as info:
        models.from_config({**TINY, 'feature_map': spec})
    assert '\n' not in str(info.value)


def test_bad_projection_and_attention_name_their_key(research_module):
    with pytest.raises(ValueError, match=r"model.projection='research_kernels:wrong_shape': not a "
                                         r"valid projection"):
        models.from_config({**TINY, 'projection': f'{research_module}:wrong_shape'})
    with pytest.raises(ValueError, match=r"model.attention='research_kernels:relu_map': not a "
                                         r"valid attention"):
        models.from_config({**TINY, 'attention': f'{research_module}:relu_map'})


def test_registration_refuses_an_existing_name_unless_asked():
    phi = functools.partial(features.relu_features, eps=0.5)
    with pytest.raises(ValueError, match="feature map 'relu' is already registered.*replace=True"):
        features.register_feature_map('relu', phi)
    assert features.get_feature_map('relu') is features.relu_features
    features.register_feature_map('relu', phi, replace=True)
    try:
        assert features.get_feature_map('relu') is phi
    finally:
        features.register_feature_map('relu', features.relu_features, replace=True)


@pytest.mark.parametrize('key, recorded, today', [
    ('attention', 'softmax', 'exact'),
    ('feature_map', 'softmax', 'softmax_kernel'),
    ('feature_map', 'softmax(eps=0.0)', 'softmax_kernel(eps=0.0)'),
])
def test_softmax_names_one_thing_and_old_records_read_as_today(key, recorded, today):
    """'softmax' named exact attention and the softmax-kernel map: a new config saying it is an
    unknown name; a config recorded with it reads as the function it meant."""
    with pytest.raises(ValueError, match=rf"^model.{key}='softmax': unknown "
                                         rf"[a-z ]+; known: \[.*'{today.split('(')[0]}'"):
        models.from_config({**TINY, key: recorded})
    assert models.upgrade_recorded_config({**TINY, key: recorded}) == {**TINY, key: today}
    assert models.upgrade_recorded_config({**TINY, 'attention': 'softmax_kernel',
                                           'feature_map': 'exact'})['feature_map'] == 'exact'


def test_a_model_directory_recorded_with_the_softmax_names_loads(tmp_path):
    """A model directory whose model_config.json says attention='softmax' (exact) and
    feature_map='softmax' loads as 'exact' with 'softmax_kernel', the same network."""
    from enlcn_jax.storage import checkpoints  # pylint: disable=import-outside-toplevel
    config = {**TINY, 'attention': 'exact', 'feature_map': 'softmax_kernel'}
    model = models.from_config(config)
    variables = models.init_variables(model, jax.random.key(0), (6, 7))
    path = checkpoints.save_model(tmp_path / 'old', config, variables)
    recorded = json.loads((path / checkpoints.MODEL_CONFIG).read_text())
    recorded.update(attention='softmax', feature_map='softmax')
    (path / checkpoints.MODEL_CONFIG).write_text(json.dumps(recorded))
    loaded, loaded_variables, _ = checkpoints.load_model(path)
    assert (loaded.enlca.attention, loaded.enlca.feature_map) == ('exact', 'softmax_kernel')
    np.testing.assert_array_equal(loaded.apply(loaded_variables, X), model.apply(variables, X))


@pytest.mark.parametrize('spec, after', [
    ('softmax_kernel(bogus=1)(eps=0.0)', '(eps=0.0)'),  # bogus was dropped silently
    ('softmax_kernel(eps=0.0).real', '.real'),
    ('softmax_kernel(eps=0.0)[0]', '[0]'),
    ('softmax_kernel(eps=0.0) or relu', 'or relu'),
])
def test_a_spec_is_one_call_and_nothing_may_follow_it(spec, after):
    with pytest.raises(ValueError) as info:
        models.from_config({**TINY, 'feature_map': spec})
    assert str(info.value) == (f"model.feature_map: {spec!r} is not one call NAME(option=value, "
                               f"...): {after!r} follows its closing parenthesis")
    assert features.get_feature_map(' softmax_kernel(eps=0.0) ').keywords == {'eps': 0.0}


@pytest.mark.parametrize('option, message', [
    ('-' * 200_000 + '1', 'are nested too deeply to read'),          # the parser's limit
    ('[' + '-' * 200_000 + '1]', 'are nested too deeply to read'),
    ('-' * 2_000 + '1', 'is not a Python literal'),                   # parsed, not a literal
    ('{[1]: 2}', 'is not a Python literal'),                          # an unhashable key
])
def test_options_that_cannot_be_read_are_one_short_line_naming_the_spec(option, message):
    spec = f'relu(eps={option})'
    with pytest.raises(ValueError) as info:
        models.from_config({**TINY, 'feature_map': spec})
    text = str(info.value)
    assert text.startswith('model.feature_map: ') and message in text
    assert repr(registry.describe(spec)) in text and len(registry.describe(spec)) <= 83
    assert '\n' not in text and len(text) < 300


def test_kernel_eps_belongs_to_maps_that_have_it():
    """The shipped relu map keeps its own 1e-3 unless kernel_eps is set (not the softmax
    kernel's 1e-4)."""
    x = jnp.asarray([[-1.0, 0.5]])
    projection = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    relu = features.get_feature_map('relu')
    # F x = [-1, 0.5, 1, -0.5]; (relu + 1e-3) / sqrt(4).
    np.testing.assert_allclose(relu(x, projection), [[5e-4, 0.2505, 0.5005, 5e-4]], rtol=1e-6)
    relu0 = features.get_feature_map('relu', eps=0.0)
    np.testing.assert_allclose(relu0(x, projection), [[0.0, 0.25, 0.5, 0.0]], atol=1e-7)
    with pytest.raises(ValueError, match=r"model.kernel_eps=0.0 sets the eps option, and "
                                         r"model.feature_map='examples.my_kernels:relu_"
                                         r"squared' has none"):
        features.get_feature_map('examples.my_kernels:relu_squared', eps=0.0)


def test_linear_attention_with_an_all_zero_feature_row_is_finite_with_finite_gradients():
    """A ReLU map without a constant gives a query row of zeros: output 0, not 0/0."""
    rng = np.random.default_rng(0)
    qf = jnp.asarray(np.abs(rng.normal(size=(1, 5, 4))), jnp.float32).at[0, 2].set(0.0)
    kf = jnp.asarray(np.abs(rng.normal(size=(1, 5, 4))), jnp.float32)
    v = jnp.asarray(rng.normal(size=(1, 5, 3)), jnp.float32)
    out = attention.linear_attention(qf, kf, v)
    np.testing.assert_array_equal(out[0, 2], 0.0)
    expected = (qf[0] @ (kf[0].T @ v[0])) / (qf[0] @ kf[0].sum(0))[:, None]
    np.testing.assert_allclose(np.delete(out[0], 2, 0), np.delete(expected, 2, 0), rtol=1e-6)
    grads = jax.grad(lambda *a: jnp.sum(attention.linear_attention(*a) ** 2), (0, 1, 2))(qf, kf, v)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


@pytest.mark.parametrize('config', [
    {'kernel_eps': 0.0},                                # the paper's softmax-kernel map
    {'feature_map': 'relu', 'kernel_eps': 0.0},        # ReLU features without a constant
])
def test_enlcn_without_additive_constant_has_finite_output_and_gradients(config):
    model = models.from_config({**TINY, **config})
    variables = models.init_variables(model, jax.random.key(0), (6, 7))
    # Flat regions: identical embeddings, zero ReLU rows are likely.
    x = jnp.asarray(X).at[:, :3].set(0.0)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({**variables, 'params': p}, x))))(
        variables['params'])
    assert bool(jnp.all(jnp.isfinite(jax.jit(model.apply)(variables, x))))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def enla_float64(q, k, v, projection):
    """The unstabilised ENLA formula with eps 0 in float64 (exp of [-800, 700] is representable)."""
    q, k, v, f = (np.asarray(a, np.float64) for a in (q, k, v, projection))
    phi = lambda x: np.exp(x @ f.T - 0.5 * np.sum(x * x, -1, keepdims=True))
    fq, fk = phi(q), phi(k)
    return (fq @ (fk.T @ v)) / (fq @ fk.sum(0))[:, None]


@pytest.mark.parametrize('amplification, stable_only', [(6.0, False), (400.0, True)])
def test_stable_softmax_kernel_gives_the_same_attention_without_underflow(amplification,
                                                                          stable_only):
    """At k = 6 both maps agree with the float64 formula; at k = 400 every exp(F x - |x|^2/2) is
    below 1e-30, so phi(q).phi(k) underflows in float32 and only the stabilised map (one shift
    that cancels in the ratio) still gives the attention."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(unit(rng.normal(size=(1, 50, 8))) * np.sqrt(amplification), jnp.float32)
    k = jnp.asarray(unit(rng.normal(size=(1, 50, 8))) * np.sqrt(amplification), jnp.float32)
    v = jnp.asarray(rng.normal(size=(1, 50, 3)), jnp.float32)
    projection = features.orthogonal_gaussian_projection(jax.random.key(0), 32, 8)
    reference = enla_float64(q[0], k[0], v[0], projection)
    stable = features.get_feature_map('softmax_kernel_stable', eps=0.0)
    plain = features.get_feature_map('softmax_kernel', eps=0.0)
    out = attention.enla(q, k, v, projection, stable)[0]
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)
    plain_out = attention.enla(q, k, v, projection, plain)[0]
    if stable_only:
        assert float(jnp.max(plain(q, projection))) < 1e-15
        assert np.abs(np.asarray(plain_out) - reference).max() > 0.1
    else:
        np.testing.assert_allclose(plain_out, reference, rtol=1e-4, atol=1e-5)
        # With the released eps the two maps still give one attention: eps is scaled too.
        np.testing.assert_allclose(
            attention.enla(q, k, v, projection, features.get_feature_map('softmax_kernel')),
            attention.enla(q, k, v, projection, features.get_feature_map('softmax_kernel_stable')),
            rtol=1e-5, atol=1e-6)

