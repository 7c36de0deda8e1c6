"""Random-feature kernel math against closed forms and Monte Carlo estimates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import unit
from configs import quickstart
from enlcn_jax.nn import features, models

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
    return (norm * unit(jax.random.normal(kq, (n, d))),
            norm * unit(jax.random.normal(kk, (n, d))))


@pytest.mark.parametrize('name', ['orthogonal', 'orthogonal_haar', 'iid'])
def test_same_key_same_matrix_and_shapes(name):
    sampler = features.get_projection(name)
    a = sampler(jax.random.key(3), 100, 16)
    assert a.shape == (100, 16)
    np.testing.assert_array_equal(a, sampler(jax.random.key(3), 100, 16))
    assert not np.allclose(a, sampler(jax.random.key(4), 100, 16))


def test_orthogonal_rows_are_orthogonal_within_blocks_with_chi_square_norms():
    """Rows of each d-block are orthogonal; |row|^2 ~ chi-square(d) as for a Gaussian row:
    over 4096 rows, mean d and variance 2d within 4 standard errors (a constant norm has 0)."""
    m, d = 4096, 16
    rows = np.asarray(features.orthogonal_gaussian_projection(jax.random.key(1), m, d), np.float64)
    blocks = rows.reshape(m // d, d, d)
    gram = np.einsum('bij,bkj->bik', blocks, blocks)
    off_diagonal = gram * (1 - np.eye(d))
    np.testing.assert_allclose(off_diagonal / np.einsum('bii->b', gram)[:, None, None], 0, atol=1e-6)
    sq = np.sum(rows ** 2, -1)
    mean_se = np.sqrt(2 * d / m)
    # Var of the sample variance of chi-square(d): (2d)^2 (2 + 12 / d) / m (kurtosis 3 + 12 / d).
    var_se = 2 * d * np.sqrt((2 + 12 / d) / m)
    assert abs(sq.mean() - d) < 4 * mean_se, sq.mean()
    assert abs(sq.var() - 2 * d) < 4 * var_se, sq.var()


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


def test_haar_rows_are_isotropic_and_the_release_rows_lean_on_their_own_axis():
    """Row j's j-th coordinate over 3000 draws of one d = 8 block: mean 0 within 4 standard errors
    for `orthogonal_haar`; for the released sampler the first row's is -sqrt(2 / pi) (never
    positive), and the haar blocks stay orthogonal with chi-square(d) squared row norms."""
    d, draws = 8, 3000
    keys = jax.random.split(jax.random.key(7), draws)
    coordinate = {}
    for name in ('orthogonal_haar', 'orthogonal'):
        blocks = jax.vmap(lambda key: features.get_projection(name)(key, d, d))(keys)
        coordinate[name] = np.asarray(jnp.diagonal(blocks, axis1=1, axis2=2), np.float64)
    haar = coordinate['orthogonal_haar']
    assert np.all(np.abs(haar.mean(0)) < 4 * haar.std(0) / np.sqrt(draws)), haar.mean(0)
    release = coordinate['orthogonal']
    assert np.all(release[:, 0] <= 0)
    assert abs(release[:, 0].mean() + np.sqrt(2 / np.pi)) < 0.05, release[:, 0].mean()
    gram = np.einsum('bij,bkj->bik', blocks, blocks)
    np.testing.assert_allclose(gram * (1 - np.eye(d)), 0, atol=1e-4)
    sq = np.einsum('bii->bi', gram).reshape(-1)
    assert abs(sq.mean() - d) < 4 * np.sqrt(2 * d / sq.size), sq.mean()


def test_haar_orthogonal_estimate_of_exp_dot_product_is_unbiased():
    """E[phi(q).phi(k)] = exp(q.k) with `orthogonal_haar` rows (16 = two blocks of 8): sample
    mean within 4 standard errors, on pairs along the axes where the released rows lean."""
    q, k = unit_pairs(jax.random.key(8), 20, 8, norm=1.0)
    q = q.at[:4].set(jnp.eye(8)[:4]).at[4:8].set(-jnp.eye(8)[:4])
    k = k.at[:8].set(q[:8])
    est = estimates(features.haar_orthogonal_projection, jax.random.key(9), q, k, m=16, draws=4000)
    mean = np.asarray(jnp.mean(est, 0))
    stderr = np.asarray(jnp.std(est, 0)) / np.sqrt(est.shape[0])
    z = np.abs(mean - np.asarray(exact_kernel(q, k))) / stderr
    assert np.all(z < 4), z


def hyperbolic_written_out(x, projection):
    """FAVOR+'s Lemma 1 in NumPy: `exp(-|x|^2 / 2) [exp(F x), exp(-F x)] / sqrt(2 m)`."""
    x, projection = np.asarray(x, np.float64), np.asarray(projection, np.float64)
    proj, m = x @ projection.T, projection.shape[0]
    scale = np.exp(-0.5 * np.sum(x * x, -1, keepdims=True)) / np.sqrt(2 * m)
    return np.concatenate([np.exp(proj), np.exp(-proj)], -1) * scale


def test_favor_hyperbolic_matches_lemma_1_and_estimates_exp_dot_product_without_bias():
    """The closed form; E[phi(q).phi(k)] = exp(q.k) with iid rows (4 standard errors); the
    estimate is the same for the released and the haar rows of one key (a row's sign does not
    matter), and its variance is below `softmax_kernel`'s with the same rows."""
    x = jax.random.normal(jax.random.key(10), (2, 5, 8)) * 0.8
    projection = features.iid_gaussian_projection(jax.random.key(11), 32, 8)
    phi = features.get_feature_map('favor_hyperbolic')
    np.testing.assert_allclose(phi(x, projection), hyperbolic_written_out(x, projection),
                               rtol=1e-5, atol=1e-7)
    q, k = unit_pairs(jax.random.key(12), 20, 8, norm=1.0)
    draws = jax.random.split(jax.random.key(13), 4000)
    one = lambda key, sampler, phi: jnp.sum(phi(q, sampler(key, 16, 8)) * phi(k, sampler(key, 16, 8)), -1)
    est = jax.vmap(lambda key: one(key, features.iid_gaussian_projection, phi))(draws)
    mean, stderr = np.asarray(jnp.mean(est, 0)), np.asarray(jnp.std(est, 0)) / np.sqrt(4000)
    assert np.all(np.abs(mean - np.asarray(exact_kernel(q, k))) / stderr < 4)
    positive = functools.partial(features.softmax_kernel_features, eps=0.0)
    plain = jax.vmap(lambda key: one(key, features.iid_gaussian_projection, positive))(draws)
    assert float(jnp.var(est)) < 0.8 * float(jnp.var(plain))
    release, haar = (one(draws[0], features.get_projection(name), phi)
                     for name in ('orthogonal', 'orthogonal_haar'))
    np.testing.assert_allclose(release, haar, rtol=1e-5)


def test_elu_plus_one_is_the_elementwise_map_and_ignores_the_projection():
    x = np.linspace(-3.0, 3.0, 24).reshape(2, 3, 4)
    out = features.get_feature_map('elu_plus_one')(jnp.asarray(x, jnp.float32), jnp.zeros((7, 4)))
    np.testing.assert_allclose(out, np.where(x > 0, x + 1, np.exp(x)), rtol=1e-6)


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


def test_relu_features_match_the_direct_formula():
    """`(max(F x, 0) + eps) / sqrt(m)`, on inputs with projections of both signs."""
    rng = np.random.default_rng(0)
    x, projection = rng.normal(size=(6, 8)), rng.normal(size=(32, 8))
    proj = x @ projection.T
    assert (proj < -0.5).mean() > 0.2
    for eps, kwargs in ((1e-3, {}), (0.05, {'eps': 0.05})):
        direct = (np.maximum(proj, 0) + eps) / np.sqrt(32)
        ours = features.relu_features(jnp.asarray(x, jnp.float32),
                                      jnp.asarray(projection, jnp.float32), **kwargs)
        np.testing.assert_allclose(ours, direct, rtol=1e-5, atol=1e-6)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="'cosine': unknown feature map.*softmax_kernel"):
        features.get_feature_map('cosine')
    with pytest.raises(ValueError, match="model.projection='sobol': unknown projection"):
        features.get_projection('sobol')


@pytest.fixture
def register():
    """`register(name, fn)` registers a feature map for one test and removes it afterwards."""
    names = []

    def add(name, fn):
        features.register_feature_map(name, fn)
        names.append(name)
        return name

    yield add
    for name in names:
        features.FEATURE_MAPS.unregister(name)


def relu_written_out(x, projection, eps=1e-3):
    """Performer's ReLU features, written in the test: `(max(F x, 0) + eps) / sqrt(m)`."""
    return (jnp.maximum(x @ projection.T, 0) + eps) / np.sqrt(projection.shape[0])


def numpy_variables(init, seed=0):
    """Variables of the shapes `init()` returns, drawn in NumPy (Flax's initialisers take
    seconds to compile on a small CPU)."""
    rng = np.random.default_rng(seed)
    draw = lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    return jax.tree_util.tree_map(draw, jax.eval_shape(init))


def test_registered_feature_map_is_the_one_enlca_runs(register):
    """ENLCA output = x + 0.1 * linear attention with the registered map on its own q, k, v."""
    name = register('test_relu_written_out', relu_written_out)
    c, m = 16, 32
    x = jax.random.normal(jax.random.key(0), (1, 5, 6, c))
    rngs = {'params': jax.random.key(1), 'random_features': jax.random.key(2)}
    module = models.ENLCA(models.ENLCAConfig(feature_map=name, num_random_features=m))
    variables = numpy_variables(lambda: module.init(rngs, x))
    out, (q, k) = module.apply(variables, x)

    flat = np.asarray(x, np.float64).reshape(-1, c)
    assembly = variables['params']['conv_assembly']
    v = flat @ np.asarray(assembly['kernel'], np.float64)[0, 0] + np.asarray(assembly['bias'])
    projection = np.asarray(variables['random_features']['projection'], np.float64)
    phi = lambda e: (np.maximum(np.asarray(e, np.float64) @ projection.T, 0) + 1e-3) / np.sqrt(m)
    fq, fk = phi(q[0]), phi(k[0])
    attended = (fq @ (fk.T @ v)) / (fq @ fk.sum(0))[:, None]
    np.testing.assert_allclose(np.asarray(out).reshape(-1, c), flat + 0.1 * attended,
                               rtol=1e-5, atol=1e-5)
    softmax_out, _ = models.ENLCA(models.ENLCAConfig(num_random_features=m)).apply(variables, x)
    assert np.abs(softmax_out - out).max() > 1e-2


def test_registered_feature_map_runs_in_an_enlcn_like_its_builtin_twin(register):
    """An ENLCN with the registered ReLU map = one with the built-in 'relu', != 'softmax_kernel'."""
    name = register('test_relu_written_out', relu_written_out)
    tiny = dict(scale=2, n_resblocks=1, n_feats=16, attention_every=1, num_random_features=16)
    model = models.from_config(dict(feature_map=name, **tiny))
    variables = numpy_variables(lambda: models.init_variables(model, jax.random.key(0), (6, 7)))
    x = jax.random.uniform(jax.random.key(1), (1, 6, 7, 3))
    sr = model.apply(variables, x)
    builtin = models.from_config(dict(feature_map='relu', **tiny)).apply(variables, x)
    np.testing.assert_allclose(sr, builtin, rtol=1e-5, atol=1e-6)
    softmax = models.from_config(dict(feature_map='softmax_kernel', **tiny)).apply(variables, x)
    assert np.abs(softmax - sr).max() > 1e-4


# The default run covers this through the README's own command (`tests/test_readme.py`,
# `test_kernel_commands_train_the_file_s_map_and_eval_loads_it`: quickstart with
# `examples.my_kernels:relu_squared`).
@pytest.mark.slow
def test_plain_two_argument_feature_map_from_the_readme_runs_with_the_quickstart_config(register):
    """README: a feature map is a plain `phi(x, F)`: the configs' `model.kernel_eps` (None) is
    not bound to it."""
    def relu_squared(x, projection):
        return jnp.square(jax.nn.relu(x @ projection.T)) / projection.shape[0] ** 0.5 + 1e-6

    config = {**quickstart.get_config().model.to_dict(), 'n_resblocks': 1, 'n_feats': 16,
              'feature_map': register('relu2', relu_squared)}
    model = models.from_config(config)
    variables = numpy_variables(lambda: models.init_variables(model, jax.random.key(0), (6, 6)))
    sr = model.apply(variables, jnp.full((1, 6, 6, 3), 0.5))
    assert sr.shape == (1, 12, 12, 3) and bool(jnp.all(jnp.isfinite(sr)))


def softmax_kernel_negated_above_8_rows(x, projection):
    """The softmax-kernel features, negated when F has more than 8 rows: a valid map at small
    sizes only."""
    phi = features.softmax_kernel_features(x, projection)
    return -phi if projection.shape[0] > 8 else phi


def gaussian_rows_at_most_4_wide(key, m, d):
    """iid Gaussian rows, but never wider than 4: a valid sampler for d <= 4 only."""
    return jax.random.normal(key, (m, min(d, 4)), jnp.float32)


def test_functions_are_checked_at_the_models_m_and_d(register):
    """A map valid at m = 8 and negative at m = 16 (trains to 9.9 dB when unchecked) is refused
    at m = 16 in one line naming the key and the sizes, after being accepted at m = 8 (the
    checks are remembered per size); a sampler valid only for d <= 4 likewise at d = 8."""
    name = register('negative_above_8_rows', softmax_kernel_negated_above_8_rows)
    tiny = dict(scale=2, n_resblocks=1, n_feats=16, attention_every=1)
    models.from_config(dict(feature_map=name, num_random_features=8, **tiny))
    with pytest.raises(ValueError) as info:
        models.from_config(dict(feature_map=name, num_random_features=16, **tiny))
    message = str(info.value)
    assert message.startswith(f"model.feature_map='{name}': not a valid feature map: ValueError: "
                              'phi(x, F) of the keys is negative')
    assert message.endswith('(checked at m=16, d=4)') and '\n' not in message

    features.register_projection('at_most_4_wide', gaussian_rows_at_most_4_wide)
    try:
        models.from_config(dict(projection='at_most_4_wide', **tiny))             # d = 16 / 4
        with pytest.raises(ValueError, match=r"^model.projection='at_most_4_wide': not a valid "
                                             r"projection: .*expected \[128, 8\].*"
                                             r"\(checked at m=128, d=8\)$"):
            models.from_config(dict(projection='at_most_4_wide', **{**tiny, 'n_feats': 32}))
    finally:
        features.PROJECTIONS.unregister('at_most_4_wide')
