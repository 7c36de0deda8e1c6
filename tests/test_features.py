"""Random-feature kernel math against closed forms and Monte Carlo estimates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enlcn_jax import features

exact_kernel = lambda q, k: jnp.exp(jnp.sum(q * k, -1))


def estimates(sampler, key, q, k, m, draws):
    """`draws` independent estimates of exp(q.k) with m features and no eps. -> [draws, ...]."""
    phi = functools.partial(features.softmax_kernel_features, eps=0.0)

    def one(key):
        projection = sampler(key, m, q.shape[-1])
        return jnp.sum(phi(q, projection) * phi(k, projection), -1)

    return jax.vmap(one)(jax.random.split(key, draws))


def unit_pairs(key, n, d, norm):
    kq, kk = jax.random.split(key)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return (norm * unit(jax.random.normal(kq, (n, d))),
            norm * unit(jax.random.normal(kk, (n, d))))


@pytest.mark.parametrize('name', ['orthogonal', 'iid'])
def test_same_key_same_matrix_and_shapes(name):
    sampler = features.get_projection(name)
    a = sampler(jax.random.key(3), 100, 16)
    assert a.shape == (100, 16)
    np.testing.assert_array_equal(a, sampler(jax.random.key(3), 100, 16))
    assert not np.allclose(a, sampler(jax.random.key(4), 100, 16))


def test_orthogonal_rows_are_orthogonal_within_blocks_with_chi_norms():
    d = 16
    projection = features.orthogonal_gaussian_projection(jax.random.key(0), 4 * d, d)
    for block in np.split(np.asarray(projection), 4):
        gram = block @ block.T
        np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-4)
    # Row norms are chi(d): E[norm^2] = d. Over many rows the mean is close.
    many = features.orthogonal_gaussian_projection(jax.random.key(1), 4096, d)
    mean_sq = float(jnp.mean(jnp.sum(many ** 2, -1)))
    assert abs(mean_sq - d) < 4 * np.sqrt(2 * d / 4096)


def test_monte_carlo_unbiased_for_exp_dot_product():
    """E[phi(q).phi(k)] = exp(q.k) for iid features: sample mean within 4 standard errors."""
    q, k = unit_pairs(jax.random.key(0), 20, 8, norm=1.0)
    est = estimates(features.iid_gaussian_projection, jax.random.key(1), q, k, m=16, draws=4000)
    mean = np.asarray(jnp.mean(est, 0))
    stderr = np.asarray(jnp.std(est, 0)) / np.sqrt(est.shape[0])
    z = np.abs(mean - np.asarray(exact_kernel(q, k))) / stderr
    assert np.all(z < 4), z


def test_empirical_variance_matches_eq7():
    """Var[phi(q).phi(k)] = K(q,k)^2 (exp(|q+k|^2) - 1) / m for iid features, within 10 %."""
    q, k = unit_pairs(jax.random.key(2), 6, 8, norm=0.7)
    m = 8
    est = estimates(features.iid_gaussian_projection, jax.random.key(3), q, k, m=m, draws=40000)
    measured = np.asarray(jnp.var(est, 0))
    eq7 = np.asarray(exact_kernel(q, k) ** 2 * (jnp.exp(jnp.sum((q + k) ** 2, -1)) - 1) / m)
    np.testing.assert_allclose(measured, eq7, rtol=0.10)


def test_orthogonal_features_have_lower_variance_than_iid():
    q, k = unit_pairs(jax.random.key(4), 32, 16, norm=1.0)
    mse = {}
    for name in ('orthogonal', 'iid'):
        est = estimates(features.get_projection(name), jax.random.key(5), q, k, m=64, draws=2000)
        mse[name] = float(jnp.mean((est - exact_kernel(q, k)) ** 2))
    assert mse['orthogonal'] < 0.8 * mse['iid'], mse


def test_features_are_positive_and_eps_is_added():
    x = jax.random.normal(jax.random.key(0), (5, 8)) * 3
    projection = features.iid_gaussian_projection(jax.random.key(1), 32, 8)
    phi = features.softmax_kernel_features(x, projection)
    bare = features.softmax_kernel_features(x, projection, eps=0.0)
    assert phi.shape == (5, 32) and bool(jnp.all(phi > 0))
    np.testing.assert_allclose(phi - bare, 1e-4 / np.sqrt(32), rtol=0, atol=1e-7)


def test_unknown_names_are_clear_errors_and_registration_works():
    with pytest.raises(ValueError, match="unknown feature map 'cosine'.*softmax"):
        features.get_feature_map('cosine')
    with pytest.raises(ValueError, match="unknown projection 'sobol'"):
        features.get_projection('sobol')
    features.register_feature_map('test_abs', lambda x, f: jnp.abs(x @ f.T))
    try:
        assert features.get_feature_map('test_abs') is features.FEATURE_MAPS['test_abs']
    finally:
        del features.FEATURE_MAPS['test_abs']
