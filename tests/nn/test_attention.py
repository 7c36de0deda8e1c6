"""ENLA against exact softmax attention, and ENLA's linear memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import unit
from enlcn_jax.nn import attention, features, models, registry


def normalized_qkv(key, b, n, d, c, amplification=6.0):
    kq, kk, kv = jax.random.split(key, 3)
    s = np.sqrt(amplification)
    return (s * unit(jax.random.normal(kq, (b, n, d))), s * unit(jax.random.normal(kk, (b, n, d))),
            jax.random.normal(kv, (b, n, c)))


def test_exact_attention_matches_direct_formula():
    q, k, v = normalized_qkv(jax.random.key(0), 2, 30, 8, 5)
    weights = np.exp(np.einsum('bnd,bmd->bnm', q, k))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(attention.exact_attention(q, k, v),
                               np.einsum('bnm,bmc->bnc', weights, v), rtol=1e-5, atol=1e-6)


def test_blocked_exact_attention_equals_one_block_with_gradients():
    q, k, v = normalized_qkv(jax.random.key(3), 2, 70, 8, 5)   # 70 = 5 blocks of 16, the last padded
    blocked = lambda q, k, v: attention.exact_attention(q, k, v, query_block=16)
    whole = lambda q, k, v: attention.exact_attention(q, k, v, query_block=70)
    np.testing.assert_allclose(blocked(q, k, v), whole(q, k, v), rtol=1e-5, atol=1e-6)
    probe = jax.random.normal(jax.random.key(4), (2, 70, 5))
    grads = [jax.grad(lambda *a: jnp.sum(f(*a) * probe), argnums=(0, 1, 2))(q, k, v)
             for f in (blocked, whole)]
    for g_blocked, g_whole in zip(*grads):
        np.testing.assert_allclose(g_blocked, g_whole, rtol=1e-4, atol=1e-5)


def test_linear_attention_with_identity_features_is_normalised_kernel_attention():
    key = jax.random.key(1)
    qf, kf = jax.random.uniform(key, (2, 1, 20, 6)) + 0.1
    v = jax.random.normal(key, (1, 20, 3))
    w = np.einsum('bnm,bkm->bnk', qf, kf)
    expected = np.einsum('bnk,bkc->bnc', w / w.sum(-1, keepdims=True), v)
    np.testing.assert_allclose(attention.linear_attention(qf, kf, v), expected, rtol=1e-5)


def whole_array_enla(q, k, v, projection, feature_map, mask):
    """ENLA as Eq. 6 writes it: every query and key feature at once, autodiff gradients."""
    if registry.accepts(feature_map, 'is_query'):
        qf, kf = feature_map(q, projection, is_query=True), feature_map(k, projection, is_query=False)
    else:
        qf, kf = feature_map(q, projection), feature_map(k, projection)
    return attention.linear_attention(qf, kf * mask, v)


@pytest.mark.parametrize('map_name', ['softmax_kernel', 'softmax_kernel_stable', 'relu'])
@pytest.mark.parametrize('n, block', [(70, 16), (70, 2048)])  # 5 blocks, the last padded; one
def test_query_blocked_enla_and_its_written_out_gradient_equal_the_whole_array_formula(
        map_name, n, block):
    """Values and gradients w.r.t. q, k, v and the projection, with some keys masked."""
    q, k, v = normalized_qkv(jax.random.key(5), 2, n, 8, 5)
    projection = features.orthogonal_gaussian_projection(jax.random.key(6), 16, 8)
    mask = jnp.ones((2, n, 1)).at[0, -9:].set(0.0)
    phi = features.get_feature_map(map_name)
    blocked = lambda *a: attention.enla(*a, phi, mask=mask, query_block=block)
    whole = lambda *a: whole_array_enla(*a, phi, mask)
    args = (q, k, v, projection)
    np.testing.assert_allclose(blocked(*args), whole(*args), rtol=1e-5, atol=1e-6)
    probe = jax.random.normal(jax.random.key(7), (2, n, 5))
    grads = [jax.grad(lambda *a: jnp.sum(f(*a) * probe), argnums=(0, 1, 2, 3))(*args)
             for f in (blocked, whole)]
    for g_blocked, g_whole in zip(*grads):
        scale = float(jnp.max(jnp.abs(g_whole)))
        assert scale > 0
        np.testing.assert_allclose(g_blocked, g_whole, rtol=0, atol=1e-5 * scale)


def test_enla_row_with_no_weight_is_zero_with_finite_gradients():
    """ReLU features without their constant give a query no weight on any key: its output is 0
    and the written-out gradient stays finite (and equals autodiff of the whole-array formula)."""
    q, k, v = normalized_qkv(jax.random.key(8), 1, 12, 4, 3)
    projection = jnp.eye(4)
    q = q.at[0, 0].set(-jnp.abs(q[0, 0]))   # every feature of query 0 is relu(< 0) = 0
    phi = functools.partial(features.relu_features, eps=0.0)
    mask = jnp.ones((1, 12, 1))
    out = attention.enla(q, k, v, projection, phi, query_block=5)
    assert float(jnp.max(jnp.abs(out[0, 0]))) == 0.0
    grads = [jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2))(q, k, v, projection)
             for f in (lambda *a: attention.enla(*a, phi, query_block=5),
                       lambda *a: whole_array_enla(*a, phi, mask))]
    for g_blocked, g_whole in zip(*grads):
        assert bool(jnp.all(jnp.isfinite(g_blocked)))
        np.testing.assert_allclose(g_blocked, g_whole, rtol=1e-5, atol=1e-6)


def test_enla_approaches_exact_attention_as_m_grows():
    q, k, v = normalized_qkv(jax.random.key(2), 1, 256, 16, 8, amplification=2.0)
    exact = attention.exact_attention(q, k, v)

    @functools.partial(jax.jit, static_argnums=0)
    def mean_error(m):  # over 8 draws of the random features
        def error(seed):
            projection = features.orthogonal_gaussian_projection(jax.random.key(seed), m, 16)
            return jnp.linalg.norm(attention.enla(q, k, v, projection) - exact)
        return jnp.mean(jax.vmap(error)(jnp.arange(8))) / jnp.linalg.norm(exact)

    errors = [float(mean_error(m)) for m in (16, 64, 256, 1024)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # Heavy-tailed estimates (Eq. 7 grows like exp(|q + k|^2)) shrink slower than 1/sqrt(m)
    # at small m; measured here: 0.82, 0.55, 0.39, 0.23.
    assert errors[-1] < errors[0] / 3, errors
    assert errors[-1] < 0.25, errors


def _intermediate_sizes(jaxpr):
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield int(np.prod(var.aval.shape))
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (list, tuple)) else [param]):
                inner = getattr(sub, 'jaxpr', None)
                if inner is not None:
                    yield from _intermediate_sizes(getattr(inner, 'jaxpr', inner))


@pytest.mark.parametrize('kind, quadratic', [('enla', False), ('exact', True)])
def test_enlca_memory_is_linear_in_positions(kind, quadratic):
    """No N x N intermediate in ENLA's forward or backward at 256 x 256 positions, 64 channels.

    Exact softmax attention is quadratic, but only `[query_block, N]` at a time.
    """
    side, c = 256, 64
    n = side * side
    module = models.ENLCA(models.ENLCAConfig(attention=kind))
    x = jax.ShapeDtypeStruct((1, side, side, c), jnp.float32)
    variables = jax.eval_shape(lambda: module.init(
        {'params': jax.random.key(0), 'random_features': jax.random.key(1)},
        jnp.zeros((1, 8, 8, c))))

    def loss(params, random_features, x):
        out, _ = module.apply({'params': params, 'random_features': random_features}, x)
        return jnp.sum(out)

    args = (variables['params'], variables['random_features'], x)
    jaxpr = jax.make_jaxpr(jax.grad(loss))(*args).jaxpr
    largest = max(_intermediate_sizes(jaxpr))
    if quadratic:
        assert largest == attention.SOFTMAX_QUERY_BLOCK * n, largest
    else:
        assert largest <= n * 128  # the [N, m] random features are the largest arrays
        # Also in the compiled program: no dimension pair N x N in the HLO.
        hlo = jax.jit(jax.grad(loss)).lower(*args).compile().as_text()
        assert f'{n},{n}' not in hlo


def test_enla_forward_runs_at_256x256():
    side, c = 256, 64
    module = models.ENLCA()
    x = jax.random.normal(jax.random.key(0), (1, side, side, c))
    variables = module.init({'params': jax.random.key(1), 'random_features': jax.random.key(2)}, x)
    out, (q, k) = jax.jit(module.apply)(variables, x)
    assert out.shape == x.shape and q.shape == (1, side * side, 16)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_unknown_attention_is_a_clear_error():
    with pytest.raises(ValueError, match="model.attention='lsh': unknown attention.*'enla'"):
        attention.get_attention('lsh')


def enla_not_finite_above_width_4(q, k, v, projection, feature_map):
    """ENLA, but NaN when the embedding is wider than 4: valid for d <= 4 only."""
    out = attention.enla(q, k, v, projection, feature_map)
    return out * jnp.nan if q.shape[-1] > 4 else out


def test_attention_is_checked_at_the_models_embedding_width():
    attention.register_attention('nan_above_width_4', enla_not_finite_above_width_4)
    tiny = dict(scale=2, n_resblocks=1, n_feats=16, attention_every=1, num_random_features=8,
                attention='nan_above_width_4')
    try:
        models.from_config(tiny)                                                  # d = 16 / 4
        with pytest.raises(ValueError, match=r"^model.attention='nan_above_width_4': not a "
                                             r"valid attention: ValueError: attention output is "
                                             r"not finite .*\(checked at m=8, d=8\)$"):
            models.from_config({**tiny, 'n_feats': 32})
    finally:
        attention.ATTENTIONS.unregister('nan_above_width_4')
