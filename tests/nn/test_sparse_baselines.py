"""The sparse and local attention baselines (`nlsn`, `nystrom`, `window`, `swin`) against
brute-force NumPy references with explicit N x N weights, under padding masks, and in a model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import unit
from enlcn_jax.nn import attention, features, local, lsh, models, nystrom


def embeddings(seed, b, n, d=4, c=3):
    """q, k at norm sqrt(6) (as the model makes them), Gaussian v; float64 NumPy arrays."""
    rng = np.random.default_rng(seed)
    q, k = (unit(rng.normal(size=(b, n, d))) * 6 ** 0.5 for _ in range(2))
    return q, k, rng.normal(size=(b, n, c))


def masked_softmax_attention(scores, allowed, v):
    """`softmax(scores)` over the `allowed` entries of each row (`[N, N]`), times `v [N, c]`;
    also the log-normaliser of each row."""
    scores = np.where(allowed, scores, -np.inf)
    top = scores.max(-1, keepdims=True)
    weights = np.exp(scores - top)
    total = weights.sum(-1, keepdims=True)
    return weights / total @ v, (np.log(total) + top)[:, 0]


def run(fn, *arrays, **keywords):
    """`fn(*arrays, **keywords)` jitted, NumPy arrays as float32, array keywords traced."""
    options = {key: value for key, value in keywords.items() if not hasattr(value, 'shape')}
    traced = {key: jnp.asarray(value, jnp.float32) for key, value in keywords.items()
              if hasattr(value, 'shape')}
    call = jax.jit(lambda arrays, traced: fn(*arrays, **traced, **options))
    return np.asarray(call([None if a is None else jnp.asarray(a, jnp.float32) for a in arrays],
                           traced))


# --- window and swin ------------------------------------------------------------------------

def tile_reference(q, k, v, h, w, window, shift):
    """Softmax attention with an explicit N x N mask: same tile, tile boundaries at
    `shift + j window` on both axes (`shift` 0: the plain grid)."""
    tile_of = lambda size: np.searchsorted(np.arange(shift or window, size, window),
                                           np.arange(size), side='right')
    tile = (tile_of(h)[:, None] * 100 + tile_of(w)[None, :]).reshape(-1)
    same = tile[:, None] == tile[None, :]
    return np.stack([masked_softmax_attention(qi @ ki.T, same, vi)[0]
                     for qi, ki, vi in zip(q, k, v)])


@pytest.mark.parametrize('fn, shift', [
    (functools.partial(local.window, window=4), 0),
    (functools.partial(local.swin, window=4, layer=0), 0),
    (functools.partial(local.swin, window=4, layer=1), 2),
    (functools.partial(local.swin, window=4, layer=3, shift=1), 1),
])
def test_windows_equal_softmax_restricted_to_the_query_s_tile(fn, shift):
    h, w = 6, 7
    q, k, v = embeddings(0, 2, h * w)
    np.testing.assert_allclose(run(fn, q, k, v, spatial_shape=(h, w)),
                               tile_reference(q, k, v, h, w, 4, shift), rtol=1e-5, atol=1e-6)
    attention.check_attention(functools.partial(fn, window=2))


def test_shifted_windows_equal_swin_s_cyclic_shift_with_masks():
    """Swin's own construction (Liu et al., Sec. 3.2 and their code): roll by -shift, attend
    within windows with the wrapped-around regions masked apart, roll back."""
    h = w = 8
    window, shift = 4, 2
    q, k, v = embeddings(1, 1, h * w)
    region = np.zeros((h, w), int)
    for i, rows in enumerate((slice(0, -window), slice(-window, -shift), slice(-shift, None))):
        for j, cols in enumerate((slice(0, -window), slice(-window, -shift), slice(-shift, None))):
            region[rows, cols] = 3 * i + j

    def rolled(x):  # [N, c] in the rolled image's row-major order
        return np.roll(x.reshape(h, w, -1), (-shift, -shift), axis=(0, 1)).reshape(h * w, -1)

    window_of = (np.arange(h)[:, None] // window * 10 + np.arange(w)[None, :] // window).ravel()
    allowed = (window_of[:, None] == window_of[None, :]) & \
        (region.ravel()[:, None] == region.ravel()[None, :])
    out = masked_softmax_attention(rolled(q[0]) @ rolled(k[0]).T, allowed, rolled(v[0]))[0]
    expected = np.roll(out.reshape(h, w, -1), (shift, shift), axis=(0, 1)).reshape(1, h * w, -1)
    np.testing.assert_allclose(run(local.swin, q, k, v, spatial_shape=(h, w), window=window,
                                   layer=1), expected, rtol=1e-5, atol=1e-6)


def test_the_model_tells_each_attention_module_its_ordinal():
    """`layer` reaches a function that takes it: 0, 1 for the two modules of a network with an
    attention module before and after its one residual block."""
    seen = []

    def spy(q, k, v, projection, feature_map, *, layer=0):
        del q, k, projection, feature_map
        seen.append(layer)
        return v

    model = models.from_config({'n_feats': 16, 'n_resblocks': 1, 'attention_every': 1,
                                'num_random_features': 8, 'attention': spy})
    seen.clear()  # the registry's check ran it once without the model
    models.init_variables(model, jax.random.key(0), (4, 4))
    assert seen == [0, 1]


# --- nystrom --------------------------------------------------------------------------------

def nystrom_reference(q, k, v, landmarks):
    """Eq. 14 of Nystromformer with np.linalg.pinv, landmarks the means of segments
    `floor(r L / N)` (one image, float64)."""
    n = q.shape[0]
    segment = np.arange(n) * landmarks // n
    ql, kl = (np.stack([x[segment == s].mean(0) for s in range(landmarks)]) for x in (q, k))

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    return softmax(q @ kl.T) @ np.linalg.pinv(softmax(ql @ kl.T)) @ softmax(ql @ k.T) @ v


def test_iterative_pinv_is_the_paper_s_iteration_and_converges_to_the_pseudo_inverse():
    """Eq. 16 of Nystromformer step by step (Z0 = A^T / ||A||_1, as A's rows sum to 1), and
    its limit np.linalg.pinv."""
    rng = np.random.default_rng(2)
    a = np.exp(rng.normal(size=(6, 6)))
    a /= a.sum(-1, keepdims=True)
    z = a.T / a.sum(0).max()
    for _ in range(6):
        z = 0.25 * z @ (13 * np.eye(6) - a @ z @ (15 * np.eye(6) - a @ z @ (7 * np.eye(6) - a @ z)))
    pinv = lambda iterations: np.asarray(nystrom.iterative_pinv(jnp.asarray(a, jnp.float32),
                                                                iterations))
    np.testing.assert_allclose(pinv(6), z, rtol=1e-4, atol=1e-5 * np.abs(z).max())
    np.testing.assert_allclose(pinv(20), np.linalg.pinv(a), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('landmarks', [5, 7])
def test_nystrom_equals_the_formula_with_the_exact_pseudo_inverse(landmarks):
    """Eq. 14 with the iteration run to convergence; with the paper's 6 steps it is the same
    formula with a rougher inverse, so only the order of magnitude agrees."""
    q, k, v = embeddings(3, 2, 30)
    expected = np.stack([nystrom_reference(*x, landmarks) for x in zip(q, k, v)])
    scale = np.abs(expected).max()
    converged = run(nystrom.nystrom, q, k, v, num_landmarks=landmarks, pinv_iterations=40)
    np.testing.assert_allclose(converged, expected, atol=1e-4 * scale)
    paper = run(nystrom.nystrom, q, k, v, num_landmarks=landmarks)  # 6 iterations
    assert np.abs(paper - expected).max() < 1.5 * scale


def test_nystrom_with_a_landmark_per_position_approaches_exact_attention():
    q, k, v = embeddings(4, 2, 30)
    exact = run(attention.exact_attention, q, k, v)
    errors = [np.linalg.norm(run(nystrom.nystrom, q, k, v, num_landmarks=landmarks,
                                 pinv_iterations=iterations) - exact) / np.linalg.norm(exact)
              for landmarks, iterations in ((30, 6), (30, 20), (64, 20))]
    assert errors[0] < 0.05 and errors[1] < 1e-3 and errors[2] < 1e-3, errors


def test_nystrom_segments_count_real_positions_only():
    """With padding anywhere, the real positions' output is that of the image without them
    (segments are ranks among the real positions; padded keys are left out)."""
    q, k, v = embeddings(5, 1, 24)
    real = np.ones(24, bool)
    real[[0, 5, 6, 17, 23]] = False
    padded = run(nystrom.nystrom, q, k, v, mask=real[None, :, None],
                 num_landmarks=5, pinv_iterations=20)
    alone = run(nystrom.nystrom, q[:, real], k[:, real], v[:, real], num_landmarks=5,
                pinv_iterations=20)
    np.testing.assert_allclose(padded[:, real], alone, rtol=1e-3, atol=1e-3 * np.abs(alone).max())
    attention.check_attention(functools.partial(nystrom.nystrom, num_landmarks=5))


# --- nlsn -----------------------------------------------------------------------------------

def nlsn_reference(q, k, v, real, projection, n_hashes, chunk_size, n_buckets):
    """NLSN for one image with explicit N x N weights: per round, the buckets by argmax over
    [x R, -x R] (padding in bucket n_buckets), the sorted slots, the allowed pairs (query and
    key chunks at most one apart, key real), the masked softmax and its log-normaliser; the
    rounds weighted by the softmax over rounds of the log-normalisers."""
    outs, lses = [], []
    for r in range(n_hashes):
        rotation = projection[r * n_buckets // 2:(r + 1) * n_buckets // 2].T      # [d, b / 2]

        def chunk(x):
            rotated = x @ rotation
            bucket = np.where(real, np.argmax(np.concatenate([rotated, -rotated], -1), -1),
                              n_buckets)
            slot = np.empty(len(x), int)
            slot[np.argsort(bucket, kind='stable')] = np.arange(len(x))
            return slot // chunk_size

        allowed = (np.abs(chunk(q)[:, None] - chunk(k)[None, :]) <= 1) & real[None, :]
        out, lse = masked_softmax_attention(q @ k.T, allowed, v)
        outs.append(out)
        lses.append(lse)
    lses = np.stack(lses)
    weights = np.exp(lses - lses.max(0))
    return np.einsum('rn,rnc->nc', weights / weights.sum(0), np.stack(outs))


@pytest.mark.parametrize('n_hashes, chunk_size, n_buckets', [(4, 5, 4), (2, 3, 8), (1, 7, 2)])
def test_nlsn_equals_the_brute_force_reference(n_hashes, chunk_size, n_buckets):
    q, k, v = embeddings(6, 2, 30)
    projection = np.asarray(features.orthogonal_gaussian_projection(jax.random.key(0), 16, 4))
    real = np.ones((2, 30), bool)
    real[1, [2, 3, 11, 29]] = False   # padding anywhere in the second image
    out = run(lsh.nlsn, q, k, v, projection, None, real[..., None], n_hashes=n_hashes,
              chunk_size=chunk_size, n_buckets=n_buckets)
    for b in range(2):
        expected = nlsn_reference(q[b], k[b], v[b], real[b], projection, n_hashes, chunk_size,
                                  n_buckets)
        np.testing.assert_allclose(out[b, real[b]], expected[real[b]], rtol=1e-4, atol=1e-5)
    attention.check_attention(functools.partial(lsh.nlsn, chunk_size=chunk_size,
                                                n_hashes=min(n_hashes, 2)))


def test_nlsn_with_one_chunk_is_exact_attention_and_needs_enough_rotations():
    q, k, v = embeddings(7, 2, 30)
    projection = features.orthogonal_gaussian_projection(jax.random.key(1), 16, 4)
    np.testing.assert_allclose(run(lsh.nlsn, q, k, v, projection, chunk_size=30),
                               run(attention.exact_attention, q, k, v), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='need 32 rotation rows, the projection has m=16'):
        lsh.nlsn(q, k, v, projection, n_buckets=16)
    attention.check_attention(lsh.nlsn)


# --- in a model -----------------------------------------------------------------------------

@pytest.mark.parametrize('spec, attention_every', [
    ('nlsn(chunk_size=8, n_hashes=2)', 8), ('nystrom(num_landmarks=8)', 8), ('window(window=4)', 8),
    ('swin(window=4)', 1),  # two modules: the second one's windows shifted
])
def test_each_baseline_builds_a_model_that_pads_exactly_and_trains(spec, attention_every):
    """A tiny ENLCN: padded with a mask it gives the unpadded output, and its gradient is
    finite and reaches the query convolution."""
    model = models.from_config({'attention': spec, 'n_feats': 16, 'n_resblocks': 1,
                                'attention_every': attention_every, 'num_random_features': 16})
    variables = jax.jit(lambda key: models.init_variables(model, key, (6, 7)))(jax.random.key(0))
    x = jnp.linspace(0.0, 1.0, 6 * 7 * 3).reshape(1, 6, 7, 3) ** 2
    padded = jnp.pad(x, ((0, 0), (0, 2), (0, 3), (0, 0)))
    mask = jnp.pad(jnp.ones((1, 6, 7, 1)), ((0, 0), (0, 2), (0, 3), (0, 0)))

    def loss(params):
        sr = model.apply({**variables, 'params': params}, x)
        return jnp.mean(sr ** 2), sr

    (_, sr), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
    padded_sr = jax.jit(model.apply)(variables, padded, mask=mask)
    np.testing.assert_allclose(padded_sr[:, :12, :14], sr, atol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads['body_0']['conv_match1']['kernel']).max()) > 0  # q is trained
