"""The losses' documented contracts that the full-size comparisons leave open: input checks at
their boundaries, the paper loss's window of at least one key, the margin shorthand, the check
run on every user loss and the embeddings it runs on (tiny shapes: seconds)."""

import jax.numpy as jnp
import numpy as np
import pytest

from enlcn_jax.nn import features, losses


def embeddings(n, d=4, seed=0, amplification=2.7):
    """One image's `q, k [n, d]`: Gaussian rows scaled to squared norm `amplification`."""
    rng = np.random.default_rng(seed)
    q, k = (rng.normal(size=(n, d)) for _ in range(2))
    scale = np.sqrt(amplification)
    return tuple(jnp.asarray(scale * x / np.linalg.norm(x, axis=-1, keepdims=True), jnp.float32)
                 for x in (q, k))


def ranked_reference(q, k, relevant, irrelevant, margin, eps, hinge):
    """Float64 transcription: every row's scores sorted descending, windows `[start, stop)`."""
    scores = -np.sort(-np.exp(np.float64(q) @ np.float64(k).T), axis=-1)
    rows = -np.log(scores[:, slice(*relevant)].mean(-1) /
                   (scores[:, slice(*irrelevant)].mean(-1) + eps)) + margin
    return float(np.mean(np.maximum(rows, 0) if hinge else rows))


def test_inputs_must_be_one_image_with_keys_shaped_like_the_queries():
    q, k = embeddings(70)
    with pytest.raises(ValueError, match=r'^a contrastive loss takes one image: q, k \[N, d\], '
                                         r'got \(70, 4\), \(70, 3\) \(batch it with jax.vmap\)$'):
        losses.code_contrastive_loss(q, k[:, :3])


def test_exactly_as_many_positions_as_the_windows_reach_is_enough():
    q, k = embeddings(65)
    np.testing.assert_allclose(
        float(losses.code_contrastive_loss(q, k)),
        ranked_reference(q, k, (0, 15), (50, 65), 1.0, 1e-6, hinge=True), rtol=1e-5)
    with pytest.raises(ValueError, match=r'^the loss needs at least 65 positions per image for '
                                         r'its rank windows, got 64 \(use a larger patch\)$'):
        losses.code_contrastive_loss(q[:64], k[:64])


def test_the_paper_windows_hold_at_least_one_key():
    """n1 N = 0.3 rounds to no key: each window is one key, the irrelevant one at rank n2 N."""
    q, k = embeddings(30)
    ours = losses.paper_contrastive_loss(q, k, n1=0.01, n2=0.2)
    np.testing.assert_allclose(float(ours), ranked_reference(q, k, (0, 1), (6, 7), 1.0, 0.0,
                                                             hinge=False), rtol=1e-5)


def test_the_margin_shorthand_sets_the_margin_option():
    q, k = embeddings(70)
    loss = losses.get_contrastive_loss('paper', margin=2.5)
    assert loss.keywords == {'margin': 2.5}
    np.testing.assert_allclose(float(loss(q, k)), ranked_reference(
        q, k, (0, 1), (6, 7), 2.5, 0.0, hinge=False), rtol=1e-5)
    assert losses.get_contrastive_loss('paper', margin=None) is losses.paper_contrastive_loss


def test_the_check_runs_on_one_image_of_unit_directions_at_the_model_s_amplification():
    q, k = losses.check_embeddings(n=5, d=3)
    assert q.shape == k.shape == (5, 3) and q.dtype == k.dtype == jnp.float32
    for x in (q, k):
        np.testing.assert_allclose(jnp.sum(x * x, -1), features.CHECK_AMPLIFICATION, rtol=1e-6)
    assert float(jnp.max(jnp.abs(q - k))) > 0.1  # two draws, not one
    assert losses.check_embeddings()[0].shape == (losses.CHECK_POSITIONS, 8)


@pytest.mark.parametrize('loss, message', [
    (lambda q, k: jnp.sum(q * k, dtype=jnp.int32),
     r'loss\(q \[1024, 8\], k \[1024, 8\]\) gives \(\) int32, expected a float scalar of shape '
     r'\(\)$'),
    (lambda q, k: jnp.sum(q * k) + jnp.inf, r'loss\(q, k\) is inf at \|q\|\^2 = \|k\|\^2 = 6$'),
    (lambda q, k: jnp.mean(jnp.sqrt(jnp.maximum(k[:, :1], 0.0))) + jnp.mean(q),
     r'the gradient of loss\(q, k\) with respect to k is not finite at \|q\|\^2 = \|k\|\^2 = 6$'),
])
def test_a_loss_that_training_cannot_use_is_refused_in_one_line(loss, message):
    with pytest.raises(ValueError, match=r"^train.contrastive.loss='<lambda>': not a valid "
                                         r'contrastive loss: ValueError: ' + message):
        losses.get_contrastive_loss(loss)


def test_l1_is_the_mean_absolute_difference():
    sr = jnp.asarray([[[[1.0, 2.0, 3.0]]]])
    hr = jnp.asarray([[[[2.0, 2.0, -1.0]]]])
    assert float(losses.l1_loss(sr, hr)) == pytest.approx((1 + 0 + 4) / 3)


def test_a_loss_that_does_not_return_an_array_is_refused_in_one_line():
    with pytest.raises(ValueError) as info:
        losses.get_contrastive_loss(lambda q, k: (jnp.sum(q), jnp.sum(k)))
    text = str(info.value)
    assert text.endswith("<lambda>': not a valid contrastive loss: ValueError: loss(q [1024, 8], "
                         'k [1024, 8]) gives (ShapeDtypeStruct(shape=(), dtype=float32), '
                         'ShapeDtypeStruct(shape=(), dtype=float32)) , expected a float scalar '
                         'of shape ()')
    assert '\n' not in text
