"""Contracts of `nn/features.py` beyond the estimators' statistics (tests/nn/test_features.py):
the stabilised softmax-kernel map against its closed form in float64, the inputs the checks run
functions on, each check's exact one-line refusal, and registration."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from conftest import assert_replaced_only_when_asked, error_message
from enlcn_jax.nn import features


def stable_reference(x, projection, eps, is_query):
    """`features.stable_softmax_kernel_features` as its docstring states it, in float64:
    `(exp(e - c) + eps exp(-c)) / sqrt(m)`, e = F x - |x|^2 / 2, c = max(largest e, log eps)
    over each query row's m features, or over the last two axes for keys."""
    x, projection = np.asarray(x, np.float64), np.asarray(projection, np.float64)
    exponent = x @ projection.T - 0.5 * np.sum(x * x, -1, keepdims=True)
    axes = -1 if is_query else tuple(range(max(exponent.ndim - 2, 0), exponent.ndim))
    log_eps = np.log(eps) if eps > 0 else -np.inf
    shift = np.maximum(np.max(exponent, axis=axes, keepdims=True), log_eps)
    return (np.exp(exponent - shift) + np.exp(log_eps - shift)) / np.sqrt(projection.shape[0])


@pytest.mark.parametrize('shape', [(2, 5, 4), (5, 4), (4,)])
@pytest.mark.parametrize('eps', [1e-4, 0.0, 1e3])
def test_the_stable_map_is_its_closed_form_shifted_per_query_row_or_per_image_of_keys(shape,
                                                                                      eps):
    rng = np.random.default_rng(0)
    # Rows of very different norms, so that each row's and each image's largest exponent differ.
    x = rng.normal(size=shape) * np.linspace(0.5, 3.0, int(np.prod(shape[:-1])) or 1).reshape(
        shape[:-1] + (1,))
    projection = rng.normal(size=(8, 4))
    for is_query in (False, True):
        out = features.stable_softmax_kernel_features(jnp.asarray(x, jnp.float32),
                                                      jnp.asarray(projection, jnp.float32),
                                                      eps, is_query=is_query)
        np.testing.assert_allclose(out, stable_reference(x, projection, eps, is_query),
                                   rtol=2e-5, atol=1e-30)
    np.testing.assert_array_equal(
        features.stable_softmax_kernel_features(jnp.asarray(x, jnp.float32),
                                                jnp.asarray(projection, jnp.float32), eps),
        features.stable_softmax_kernel_features(jnp.asarray(x, jnp.float32),
                                                jnp.asarray(projection, jnp.float32), eps,
                                                is_query=False))


def test_the_stable_map_is_the_softmax_kernel_map_times_one_factor_per_row_or_image():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.float32)
    projection = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    plain = features.softmax_kernel_features(x, projection)
    keys = features.stable_softmax_kernel_features(x, projection) / plain
    queries = features.stable_softmax_kernel_features(x, projection, is_query=True) / plain
    np.testing.assert_allclose(keys, np.broadcast_to(keys[:, :1, :1], keys.shape), rtol=1e-5)
    np.testing.assert_allclose(queries, np.broadcast_to(queries[..., :1], queries.shape),
                               rtol=1e-5)
    assert float(jnp.max(features.stable_softmax_kernel_features(x, projection, eps=0.0))) == (
        pytest.approx(8 ** -0.5, rel=1e-6))


def test_the_check_inputs_spread_squared_norms_up_to_the_amplification():
    x, projection = features.check_inputs()
    assert x.shape == (2, 12, features.CHECK_D) and x.dtype == jnp.float32
    assert projection.shape == (features.CHECK_M, features.CHECK_D)
    expected = np.linspace(0.05, 1.0, 12) * features.CHECK_AMPLIFICATION
    np.testing.assert_allclose(jnp.sum(x * x, -1), np.stack([expected] * 2), rtol=1e-5)
    assert not np.allclose(x[0], x[1])  # each image its own directions
    gram = projection[:4] @ projection[:4].T  # one block of d rows: orthogonal
    np.testing.assert_allclose(gram - jnp.diag(jnp.diag(gram)), 0, atol=1e-5)
    x, projection = features.check_inputs(n=3, d=5, batch=1, m=7)
    assert x.shape == (1, 3, 5) and projection.shape == (7, 5)
    np.testing.assert_allclose(jnp.sum(x * x, -1), [[0.3, 3.15, 6.0]], rtol=1e-5)


def test_a_map_is_run_for_keys_and_for_queries_with_is_query_when_it_takes_it():
    calls = []

    def phi(x, projection, is_query=None):
        calls.append((x.ndim, is_query))
        return features.softmax_kernel_features(x, projection)
    features.check_feature_map(phi)
    assert (3, False) in calls and (2, True) in calls
    assert {is_query for ndim, is_query in calls if ndim == 2} == {True}
    assert {is_query for ndim, is_query in calls if ndim == 3} == {False}


@pytest.mark.parametrize('fn, message', [
    (lambda x, f: x[..., 0],
     "phi(x [2, 12, 4], F [8, 4]) has shape [2, 12], expected [2, 12, m'] (phi(x [..., d], "
     "F [m, d]) -> [..., m'])"),
    (lambda x, f: jnp.ones((x.shape[0], 3, 2)) if x.ndim == 3 else jnp.ones((12, 2)),
     "phi(x [2, 12, 4], F [8, 4]) has shape [2, 3, 2], expected [2, 12, m'] (phi(x [..., d], "
     "F [m, d]) -> [..., m'])"),
    (lambda x, f: jnp.ones(x.shape[:-1] + (0,)),
     "phi(x [2, 12, 4], F [8, 4]) has shape [2, 12, 0], expected [2, 12, m'] (phi(x [..., d], "
     "F [m, d]) -> [..., m'])"),
    (lambda x, f, is_query=False: jnp.ones(x.shape[:-1] + (5 if is_query else 8,)),
     "phi(x [12, 4], F, is_query=True) has shape [12, 5], the keys' features [12, 8]: queries "
     "and keys need the same feature width"),
])
def test_a_map_of_the_wrong_shape_is_refused_in_one_line(fn, message):
    assert error_message(lambda: features.check_feature_map(fn)) == message


def test_a_map_of_width_one_is_enough():
    features.check_feature_map(
        lambda x, f: jnp.sum(features.softmax_kernel_features(x, f), -1, keepdims=True))


def test_a_sampler_of_the_wrong_shape_or_not_finite_is_refused_in_one_line():
    assert error_message(lambda: features.check_projection(
        lambda key, m, d: jnp.zeros((d, m)))) == ('sampler(key, m=6, d=4) has shape [4, 6], '
                                                  'expected [6, 4] (sampler(key, m, d) -> F '
                                                  '[m, d])')
    assert error_message(lambda: features.check_projection(
        lambda key, m, d: jnp.full((m, d), jnp.nan))) == 'sampler(key, m, d) must be finite'


def test_a_registered_name_is_replaced_only_when_asked():
    def sampler(key, m, d):
        return features.iid_gaussian_projection(key, m, d) * 2
    assert_replaced_only_when_asked(features.register_projection, features.get_projection,
                                    features.PROJECTIONS, sampler,
                                    features.iid_gaussian_projection)


def test_iid_rows_are_float32_standard_gaussians():
    rows = features.iid_gaussian_projection(jax.random.key(3), 4000, 4)
    assert rows.dtype == jnp.float32 and rows.shape == (4000, 4)
    assert abs(float(jnp.mean(rows))) < 0.03 and abs(float(jnp.std(rows)) - 1) < 0.03


def query_dependent(base, scale=1.0, delta=0.0):
    """A map that is `base * scale` for keys (`[B, N, d]`) and for queries multiplies by
    `1 + delta * rows`, so a block of query rows differs from the whole array by about
    `delta * (12 - rows)` relative."""
    def phi(x, f):
        out = base(x, f) * scale
        return out * (1 + delta * x.shape[0]) if x.ndim == 2 else out
    return phi


def refused(fn) -> str:
    return error_message(lambda: features.check_feature_map(fn))


@pytest.mark.parametrize('scale', [1e3, 1.0, 1e-6])
def test_query_rows_are_compared_relative_to_the_largest_feature(scale):
    features.check_feature_map(query_dependent(features.softmax_kernel_features, scale, 1e-7))
    assert refused(query_dependent(features.softmax_kernel_features, scale, 2e-6)) == (
        'phi(x, F, is_query=True) of a block of query rows differs from the same rows mapped '
        'with the others: ENLA maps queries a block at a time, so query rows must be mapped '
        'independently (statistics over rows are allowed for keys only)')


def test_keys_that_depend_on_the_other_images_are_refused_in_one_line():
    def phi(x, f, is_query=False):
        out = features.softmax_kernel_features(x, f)
        return out if is_query else out * jnp.exp(jnp.mean(x))
    assert refused(phi) == ("phi(x, F) of one image's keys depends on the other images of the "
                            'batch: images must be mapped independently')


@pytest.mark.parametrize('which', ['keys', 'queries'])
def test_features_that_are_not_finite_are_refused_naming_keys_or_queries(which):
    def phi(x, f, is_query=False):
        out = features.softmax_kernel_features(x, f)
        return out * jnp.inf if is_query == (which == 'queries') else out
    assert refused(phi) == (f'phi(x, F) of the {which} is not finite at |x|^2 <= 6 (the model '
                            'runs at |x|^2 = k)')


@pytest.mark.parametrize('which', ['keys', 'queries'])
def test_negative_features_are_refused_at_the_smallest_squared_norm_where_they_are(which):
    """Zero features are allowed (ENLA guards rows without weight); the check's squared norms
    are 0.3, 0.82, ..., 2.9, 3.4, ... 6: these features are 0 below 1, negative above 3."""
    def phi(x, f, is_query=False):
        norm = jnp.sum(x * x, -1, keepdims=True)
        bad = jnp.where(norm < 1, 0.0, 1.0 - norm / 3) * jnp.ones(x.shape[:-1] + (8,))
        good = features.softmax_kernel_features(x, f)
        return bad if is_query == (which == 'queries') else good
    assert refused(phi) == (f'phi(x, F) of the {which} is negative at |x|^2 = 3.4 (the model '
                            'runs at |x|^2 = k, 6 by default): ENLA needs non-negative features')
    features.check_feature_map(lambda x, f: jnp.zeros(x.shape[:-1] + (3,)))


def test_kernel_eps_sets_the_eps_option_of_the_map_and_is_refused_where_it_cannot():
    x, projection = features.check_inputs()
    phi = features.get_feature_map('softmax_kernel', eps=0.5)
    np.testing.assert_allclose(phi(x, projection),
                               features.softmax_kernel_features(x, projection, eps=0.5),
                               rtol=1e-6)
    assert error_message(lambda: features.get_feature_map('elu_plus_one', eps=0.1)) == (
        "model.kernel_eps=0.1 sets the eps option, and model.feature_map='elu_plus_one' has "
        'none: leave model.kernel_eps unset (None)')
    assert error_message(lambda: features.get_feature_map('softmax_kernel(eps=0.0)', eps=0.1)) == (
        "model.kernel_eps=0.1 and model.feature_map='softmax_kernel(eps=0.0)' both set eps: "
        'leave model.kernel_eps unset (None)')


def test_a_registered_feature_map_is_replaced_only_when_asked():
    assert_replaced_only_when_asked(features.register_feature_map, features.get_feature_map,
                                    features.FEATURE_MAPS, features.relu_features,
                                    features.elu_plus_one_features)


def test_the_map_check_runs_at_the_sizes_given():
    shapes = []

    def phi(x, f):
        shapes.append((x.shape, f.shape))
        return features.softmax_kernel_features(x, f)
    features.check_feature_map(phi, m=5, d=3)
    assert set(shapes) == {((2, 12, 3), (5, 3)), ((12, 3), (5, 3)), ((5, 3), (5, 3)),
                           ((2, 3), (5, 3)), ((1, 12, 3), (5, 3))}
