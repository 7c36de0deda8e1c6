"""The attention baselines and controls against their explicit N x N weight matrices (NumPy, on
small inputs), the padding check they are trusted to pass, and each one in a tiny ENLCN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import unit
from enlcn_jax.nn import attention, controls, features, linear_baselines, models

OURS = ['cosformer', 'efficient', 'identity', 'global_mean']


def inputs(b=2, n=15, d=4, c=3, seed=0):
    """q, k at |q|^2 = |k|^2 = 6 (as ENLCA makes them) and v, float64 NumPy."""
    rng = np.random.default_rng(seed)
    q, k = (unit(rng.normal(size=(b, n, d))) * 6 ** 0.5 for _ in range(2))
    return q, k, rng.normal(size=(b, n, c))


def attend(weights, v, mask=None):
    """`[B, N, N]` non-negative weights, keys with mask 0 dropped, rows normalised (a row without
    weight gives 0), times v."""
    if mask is not None:
        weights = weights * mask[:, None, :, 0]
    total = weights.sum(-1, keepdims=True)
    normalised = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum('bij,bjc->bic', normalised, v)


def run(fn, q, k, v, **kwargs):
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    mask = kwargs.pop('mask', None)
    if mask is not None:
        kwargs['mask'] = as32(mask)
    return np.asarray(fn(as32(q), as32(k), as32(v), jnp.zeros((8, q.shape[-1])),
                         features.softmax_kernel_features, **kwargs))


def padding_mask(b, h, w, real_h, real_w):
    mask = np.zeros((b, h, w, 1))
    mask[:, :real_h, :real_w] = 1
    return mask.reshape(b, h * w, 1)


def cosformer_weights(q, k, h, w):
    """`relu(q_i).relu(k_j) cos(pi/2 (h_i - h_j) / h) cos(pi/2 (w_i - w_j) / w)`, `[B, N, N]`."""
    rows, cols = np.divmod(np.arange(h * w), w)
    decay = (np.cos(np.pi / 2 * (rows[:, None] - rows[None, :]) / h)
             * np.cos(np.pi / 2 * (cols[:, None] - cols[None, :]) / w))
    return np.einsum('bid,bjd->bij', np.maximum(q, 0), np.maximum(k, 0)) * decay


def test_cosformer_is_relu_attention_reweighted_by_the_2d_cosine_of_the_offsets():
    q, k, v = inputs(n=15)
    np.testing.assert_allclose(run(linear_baselines.cosformer, q, k, v, spatial_shape=(3, 5)),
                               attend(cosformer_weights(q, k, 3, 5), v), rtol=1e-4, atol=1e-5)
    # Without a layout: the paper's 1-D sequence, M = N.
    np.testing.assert_allclose(run(linear_baselines.cosformer, q, k, v),
                               attend(cosformer_weights(q, k, 1, 15), v), rtol=1e-4, atol=1e-5)


def test_cosformer_on_a_padded_image_takes_m_from_the_real_extent():
    """Padded 3 x 5 -> 5 x 7 with a mask: the real positions get the unpadded image's output,
    the weights with M = (3, 5), not (5, 7)."""
    q, k, v = inputs(n=15, seed=1)
    pad = lambda x: np.pad(x.reshape(2, 3, 5, -1), ((0, 0), (0, 2), (0, 2), (0, 0)),
                           constant_values=0.5).reshape(2, 35, -1)
    out = run(linear_baselines.cosformer, pad(q), pad(k), pad(v), spatial_shape=(5, 7),
              mask=padding_mask(2, 5, 7, 3, 5))
    real = out.reshape(2, 5, 7, -1)[:, :3, :5].reshape(2, 15, -1)
    np.testing.assert_allclose(real, attend(cosformer_weights(q, k, 3, 5), v),
                               rtol=1e-4, atol=1e-5)


def softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def test_efficient_attention_is_the_product_of_the_two_softmaxes():
    """Weights `rho_q(Q) rho_k(K)^T` as an N x N matrix, K's softmax over the real keys only;
    each row sums to 1."""
    q, k, v = inputs(n=12, seed=2)
    mask = np.ones((2, 12, 1))
    mask[1, 7:] = 0
    for m in (None, mask):
        keys = k if m is None else np.where(m > 0, k, -np.inf)
        weights = np.einsum('bid,bjd->bij', softmax(q, -1), softmax(keys, 1))
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(run(linear_baselines.efficient_attention, q, k, v, mask=m),
                                   weights @ v, rtol=1e-4, atol=1e-5)


def test_linear_elu_is_enla_with_the_elu_plus_one_map():
    """Katharopoulos et al.'s linear attention: weights `(elu(q_i) + 1).(elu(k_j) + 1)`."""
    q, k, v = inputs(n=12, seed=3)
    mask = np.ones((2, 12, 1))
    mask[0, :4] = 0
    elu1 = lambda x: np.where(x > 0, x + 1, np.exp(x))
    weights = np.einsum('bid,bjd->bij', elu1(q), elu1(k))
    for m in (None, mask):
        out = attention.enla(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)),
                             jnp.zeros((8, 4)), features.elu_plus_one_features,
                             mask=None if m is None else jnp.asarray(m, jnp.float32))
        np.testing.assert_allclose(out, attend(weights, v, m), rtol=1e-4, atol=1e-5)


def test_controls_are_the_identity_and_the_uniform_weight_matrices():
    q, k, v = inputs(n=12, seed=4)
    mask = np.ones((2, 12, 1))
    mask[1, 5:] = 0
    np.testing.assert_allclose(run(controls.identity_attention, q, k, v, mask=mask), v, rtol=1e-6)
    for m in (None, mask):
        np.testing.assert_allclose(run(controls.global_mean_attention, q, k, v, mask=m),
                                   attend(np.ones((2, 12, 12)), v, m), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', OURS)
def test_each_passes_the_attention_check_it_is_trusted_to_pass(name):
    attention.check_attention(attention.get_attention(name))


X = np.linspace(0.0, 1.0, 5 * 6 * 3, dtype=np.float32).reshape(1, 5, 6, 3)  # no XLA at import
TINY = dict(scale=2, n_resblocks=1, n_feats=16, attention_every=1, num_random_features=8)


@pytest.mark.parametrize('config', [{'attention': name} for name in OURS] + [
    {'feature_map': 'elu_plus_one'}, {'feature_map': 'favor_hyperbolic',
                                      'projection': 'orthogonal_haar'}])
def test_each_in_a_tiny_enlcn_pads_exactly_and_trains(config):
    """Padded input with the mask gives the unpadded output; two SGD steps (one jitted function
    for the forwards and the step) give finite gradients, reaching the value convolution, and
    lower the L1 loss on a fixed target."""
    model = models.from_config({**TINY, **config})
    variables = numpy_variables(lambda: models.init_variables(model, jax.random.key(0), (5, 6)))
    padded = jnp.pad(X, ((0, 0), (0, 3), (0, 2), (0, 0)), constant_values=0.7)
    mask = jnp.pad(jnp.ones((1, 5, 6, 1)), ((0, 0), (0, 3), (0, 2), (0, 0)))
    target = jax.image.resize(X, (1, 10, 12, 3), 'bicubic')

    @jax.jit
    def step(params):
        apply = lambda p, *a, **k: model.apply({**variables, 'params': p}, *a, **k)
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.abs(apply(p, X) - target)))(params)
        new = jax.tree_util.tree_map(lambda p, g: p - 1e-2 * g, params, grads)
        return loss, new, grads, apply(params, X), apply(params, padded, mask=mask)

    params, losses = variables['params'], []
    for _ in range(2):
        loss, params, grads, out, out_padded = step(params)
        np.testing.assert_allclose(out_padded[:, :10, :12], out, atol=1e-5)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
        assert float(jnp.max(jnp.abs(grads['body_0']['conv_assembly']['kernel']))) > 0
        losses.append(float(loss))
    assert losses[1] < losses[0], losses


def numpy_variables(init, seed=0):
    """Variables of the shapes `init()` returns, Gaussian, drawn in NumPy (Flax's initialisers
    take seconds to compile on a small CPU)."""
    rng = np.random.default_rng(seed)
    draw = lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(
        np.float32)
    return jax.tree_util.tree_map(draw, jax.eval_shape(init))
