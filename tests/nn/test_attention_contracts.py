"""Contracts of `nn/attention.py` beyond ENLA's estimate of exact attention
(tests/nn/test_attention.py): keys left out by `mask` against a brute-force float64 reference,
the keywords each function receives, the attention check's exact one-line refusals, and
registration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_replaced_only_when_asked, error_message
from enlcn_jax.nn import attention, features


def inputs(seed=0, b=2, n=7, d=4, c=3, m=8):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, n, d))
    k = rng.normal(size=(b, n, d))
    q *= np.sqrt(6) / np.linalg.norm(q, axis=-1, keepdims=True)
    k *= np.sqrt(6) / np.linalg.norm(k, axis=-1, keepdims=True)
    return q, k, rng.normal(size=(b, n, c)), rng.normal(size=(m, d))


def reference(q, k, v, projection, keep, kind):
    """Float64 attention of each image over its kept keys only (`keep [B, N]` bools):
    `softmax(q k^T) v` for `exact`, the softmax-kernel features' weights for `enla`."""
    out = np.zeros(v.shape)
    for b in range(q.shape[0]):
        kb, vb = k[b][keep[b]], v[b][keep[b]]
        if kind == 'exact':
            weights = np.exp(q[b] @ kb.T)
        else:
            phi = lambda x: ((np.exp(x @ projection.T - 0.5 * np.sum(x * x, -1, keepdims=True))
                              + features.SOFTMAX_KERNEL_EPS) / np.sqrt(projection.shape[0]))
            weights = phi(q[b]) @ phi(kb).T
        out[b] = weights @ vb / weights.sum(-1, keepdims=True)
    return out


@pytest.mark.parametrize('kind, fn', [('exact', attention.exact_attention),
                                      ('exact', lambda *a, **kw: attention.exact_attention(
                                          *a, **kw, query_block=3)),
                                      ('enla', attention.enla),
                                      ('enla', lambda *a, **kw: attention.enla(
                                          *a, **kw, query_block=3))])
def test_keys_where_the_mask_is_zero_are_left_out(kind, fn):
    q, k, v, projection = inputs()
    keep = np.ones(q.shape[:2], bool)
    keep[0, [1, 4]] = keep[1, 6] = False
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    out = fn(f32(q), f32(k), f32(v), f32(projection), features.softmax_kernel_features,
             mask=f32(keep[..., None]))
    np.testing.assert_allclose(out, reference(q, k, v, projection, keep, kind), rtol=2e-4,
                               atol=2e-5)
    unmasked = fn(f32(q), f32(k), f32(v), f32(projection), features.softmax_kernel_features)
    np.testing.assert_allclose(unmasked, reference(q, k, v, projection, np.ones_like(keep),
                                                   kind), rtol=2e-4, atol=2e-5)


def test_linear_attention_is_the_weighted_mean_of_the_values_and_zero_without_weight():
    rng = np.random.default_rng(2)
    qf, kf, v = rng.uniform(size=(1, 5, 3)), rng.uniform(size=(1, 6, 3)), rng.normal(size=(1, 6, 2))
    qf[0, 2] = 0.0
    weights = qf[0] @ kf[0].T
    expected = weights @ v[0] / np.where(weights.sum(-1) > 0, weights.sum(-1), 1)[:, None]
    out = attention.linear_attention(*(jnp.asarray(x, jnp.float32) for x in (qf, kf, v)))
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[0, 2], 0.0)


def test_enla_maps_queries_with_is_query_true_and_keys_with_false_when_the_map_takes_it():
    q, k, v, projection = (jnp.asarray(x, jnp.float32) for x in inputs())
    seen = []

    def phi(x, f, is_query=None):
        seen.append((x.shape[-2], is_query))
        return features.softmax_kernel_features(x, f)
    out = attention.enla(q, k, v, projection, phi)
    assert set(seen) == {(7, False), (7, True)}
    np.testing.assert_allclose(out, attention.enla(q, k, v, projection), rtol=1e-6)
    # A map without the keyword is called without it.
    attention.enla(q, k, v, projection, lambda x, f: features.softmax_kernel_features(x, f))


def test_the_check_passes_spatial_shape_and_a_mask_of_ones_at_the_real_positions():
    calls, masks = [], []

    def fn(q, k, v, projection, feature_map, mask=None, spatial_shape=None):
        calls.append((spatial_shape, mask is None))
        if mask is not None:  # the check runs under jit: the mask's value arrives at run time
            jax.debug.callback(lambda m: masks.append(np.asarray(m)), mask)
        return attention.enla(q, k, v, projection, feature_map, mask=mask)
    attention.check_attention(fn)
    assert calls == [((3, 4), True), ((4, 6), False)]
    [mask] = masks
    assert mask.shape == (2, 24, 1)
    expected = np.zeros((4, 6))
    expected[:3, :4] = 1
    np.testing.assert_array_equal(mask[..., 0], np.stack([expected.ravel()] * 2))


def test_a_function_without_mask_or_spatial_shape_gets_neither():
    calls = []

    def fn(q, k, v, projection, feature_map):
        calls.append(q.shape)
        return attention.enla(q, k, v, projection, feature_map)
    attention.check_attention(fn)
    assert calls == [(2, 12, 4)]


@pytest.mark.parametrize('fn, message', [
    (lambda q, k, v, f, phi: v[..., :2],
     'attention(q, k [2, 12, 4], v [2, 12, 3], F [8, 4], phi) has shape [2, 12, 2], expected '
     '[2, 12, 3]'),
    (lambda q, k, v, f, phi: v * jnp.nan,
     'attention output is not finite at |q|^2 = |k|^2 <= 6 (the model runs at k)'),
])
def test_a_function_of_the_wrong_shape_or_not_finite_is_refused_in_one_line(fn, message):
    assert error_message(lambda: attention.check_attention(fn)) == message


def test_a_function_that_takes_a_mask_and_ignores_it_is_refused_in_one_line():
    def ignores(q, k, v, projection, feature_map, mask=None):
        return attention.enla(q, k, v, projection, feature_map)
    message = error_message(lambda: attention.check_attention(ignores))
    assert message.startswith('with mask, the output on an image padded from 3x4 to 4x6 differs '
                              'from the unpadded output by ')
    assert message.endswith(': positions where mask is 0 must be left out as keys (evaluation '
                            'pads images); or take no mask, and evaluation does not pad')
    assert float(message.split('output by ')[1].split(':')[0]) > 1e-3


def test_the_check_runs_at_the_sizes_given():
    shapes = []

    def fn(q, k, v, projection, feature_map):
        shapes.append((q.shape, projection.shape))
        return attention.enla(q, k, v, projection, feature_map)
    attention.check_attention(fn, m=5, d=3)
    assert shapes == [((2, 12, 3), (5, 3))]


def test_a_registered_name_is_replaced_only_when_asked():
    def mine(q, k, v, projection, feature_map):
        return attention.exact_attention(q, k, v)
    assert_replaced_only_when_asked(attention.register_attention, attention.get_attention,
                                    attention.ATTENTIONS, mine, attention.exact_attention)
    with pytest.raises(ValueError, match="^model.attention='none': unknown attention; known: "):
        attention.get_attention('none')


def test_exact_attention_in_blocks_is_exact_attention_in_one_block():
    q, k, v, _ = (jnp.asarray(x, jnp.float32) for x in inputs(n=10))
    np.testing.assert_allclose(attention.exact_attention(q, k, v, query_block=3),
                               attention.exact_attention(q, k, v), rtol=1e-6)
    assert jax.eval_shape(lambda: attention.exact_attention(q, k, v, query_block=10)).shape == (
        2, 10, 3)


def whole_array_enla(q, k, v, projection, phi, mask):
    """ENLA as one `linear_attention` of the whole arrays' features (autodiff's gradient)."""
    return attention.linear_attention(phi(q, projection), phi(k, projection) * mask, v)


@pytest.mark.parametrize('scale', [1.0, 0.01])
def test_enla_in_query_blocks_and_its_written_out_gradient_are_the_whole_array_formula_s(scale):
    """With masked keys and a query row without weight (ReLU features with no constant, a query
    row whose projections are all negative): values and the gradients of q, k, v and F, with
    feature sums above 1 and, at `scale` 0.01, far below."""
    q, k, v, projection = (jnp.asarray(x, jnp.float32) for x in inputs(n=7))
    projection = jnp.abs(projection) * scale
    q = q.at[0, 2].set(-jnp.abs(q[0, 2]))  # F q <= 0 on every row: no weight at all
    mask = jnp.ones(q.shape[:2] + (1,)).at[1, 3].set(0.0)

    def phi(x, f):
        return jax.nn.relu(x @ f.T)

    def loss(fn, q, k, v, projection):
        out = fn(q, k, v, projection, phi, mask)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))
    blocked = lambda q, k, v, f, phi, mask: attention.enla(q, k, v, f, phi, mask=mask,
                                                           query_block=3)
    values = blocked(q, k, v, projection, phi, mask)
    np.testing.assert_allclose(values, whole_array_enla(q, k, v, projection, phi, mask),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(values[0, 2], 0.0)
    grads = jax.grad(lambda *a: loss(blocked, *a), argnums=(0, 1, 2, 3))(q, k, v, projection)
    expected = jax.grad(lambda *a: loss(whole_array_enla, *a), argnums=(0, 1, 2, 3))(
        q, k, v, projection)
    for got, want in zip(grads, expected):
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_linear_attention_divides_small_weights_by_their_sum():
    rng = np.random.default_rng(4)
    qf, kf, v = (rng.uniform(size=(1, 4, 3)) * 0.01, rng.uniform(size=(1, 5, 3)) * 0.01,
                 rng.normal(size=(1, 5, 2)))
    weights = qf[0] @ kf[0].T  # every row's sum far below 1
    out = attention.linear_attention(*(jnp.asarray(x, jnp.float32) for x in (qf, kf, v)))
    np.testing.assert_allclose(out[0], weights @ v[0] / weights.sum(-1, keepdims=True),
                               rtol=1e-4)


def test_get_attention_checks_a_function_at_the_sizes_given():
    shapes = []

    def mine(q, k, v, projection, feature_map):
        shapes.append(projection.shape)
        return attention.enla(q, k, v, projection, feature_map)
    attention.get_attention(mine, m=5, d=3)
    assert shapes == [(5, 3)]


@pytest.mark.parametrize('leak, refused', [(3e-6, False), (6e-6, True)])
def test_padding_may_move_the_output_by_at_most_1e_4_of_its_largest_value(leak, refused):
    """The mask check's tolerance: on its inputs (largest output magnitude 0.81) an attention
    that gives padded keys `leak` of a real key's weight moves the output by about 5.6e-5
    (3e-6) or 1.1e-4 (6e-6), below and above 1e-4 x 0.81."""
    def leaks(q, k, v, projection, feature_map, mask=None):
        if mask is not None:
            mask = mask + leak * (1 - mask)
        return attention.enla(q, k, v, projection, feature_map, mask=mask)
    if refused:
        assert error_message(lambda: attention.check_attention(leaks)).startswith(
            'with mask, the output on an image padded from 3x4 to 4x6 differs from the unpadded '
            'output by 0.000112: ')
    else:
        attention.check_attention(leaks)
