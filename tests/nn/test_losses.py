"""Contrastive loss against a direct full-sort implementation, at full patch size, with gradients.

The comparisons run at amplification 2.7 with d = 8, where the hinge is active on about 70 % of
the query rows and clips the rest: at the paper's k = 6 with random embeddings every row is
clipped, the loss and every gradient entry are 0, and a wrong rank window or margin goes unseen.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import batched_contrastive_loss, unit_embeddings
from enlcn_jax.nn import losses

ACTIVE_AMPLIFICATION = 2.7


def full_sort_row_losses(q, k, relevant, irrelevant, margin, eps, xp=np):
    """Direct transcription: full N x N `exp(q k^T)`, whole rows sorted descending. -> `[B, N]`."""
    scores = -xp.sort(-xp.exp(xp.einsum('bnd,bmd->bnm', q, k)), axis=-1)
    pos = scores[..., relevant[0]:relevant[1]].mean(-1)
    neg = scores[..., irrelevant[0]:irrelevant[1]].mean(-1)
    return -xp.log(pos / (neg + eps)) + margin


def code_reference(q, k):
    """The released loss (`code` variant) in float64: ranks 0..14 vs 50..64, margin 1, hinge."""
    rows = full_sort_row_losses(np.float64(q), np.float64(k), (0, 15), (50, 65), 1.0, 1e-6)
    return float(np.mean(np.maximum(rows, 0))), float(np.mean(rows > 0))


@pytest.fixture(scope='module')
def active_embeddings():
    return unit_embeddings(jax.random.key(0), (2, 300, 8), ACTIVE_AMPLIFICATION)


@pytest.mark.parametrize('block_size', [7, 64, 1024])
def test_code_variant_matches_full_sort_with_active_rows(active_embeddings, block_size):
    q, k = active_embeddings
    ref, active = code_reference(q, k)
    assert 0.5 < active < 0.9 and ref > 0.03  # the hinge both passes and clips rows
    ours = batched_contrastive_loss(q, k, 'code', block_size=block_size)
    np.testing.assert_allclose(float(ours), ref, rtol=1e-5)


def test_paper_variant_matches_eq10_with_percentages():
    n = 1000  # n1 N = 20 relevant, irrelevant ranks [80, 100)
    q, k = unit_embeddings(jax.random.key(1), (1, n, 8))
    ours = batched_contrastive_loss(q, k, 'paper', block_size=256, margin=1.0)
    rows = full_sort_row_losses(np.float64(q), np.float64(k), (0, 20), (80, 100), 1.0, 0.0)
    assert np.any(rows < 0)  # no hinge: negative rows count
    np.testing.assert_allclose(float(ours), float(np.mean(rows)), rtol=1e-5)


def test_hinge_is_zero_when_relevant_keys_dominate():
    # Every query has 15 keys equal to itself (score k = 6) and the rest orthogonal (score 0):
    # -log(e^6 / 1) + 1 < 0, so the hinge clips every row to zero.
    d, n = 8, 100
    q = np.zeros((1, n, d), np.float32)
    q[0, :, 0] = np.sqrt(6)
    k = np.zeros((1, n, d), np.float32)
    k[0, :15, 0] = np.sqrt(6)
    k[0, 15:, 1] = np.sqrt(6)
    assert float(batched_contrastive_loss(jnp.asarray(q), jnp.asarray(k))) == 0.0


def test_closed_form_value_with_two_score_levels():
    """20 keys at score a, the rest at score 0: every row is relu(-log(e^a / (mean of ranks 50..64
    = 1) + 1e-6) + 1) = relu(1 - a + log(1 + 1e-6)), computed by hand."""
    d, n, a = 4, 80, 0.4
    q = np.zeros((1, n, d), np.float32)
    q[0, :, 0] = 1.0
    k = np.zeros((1, n, d), np.float32)
    k[0, :20, 0] = a
    k[0, 20:, 1] = 1.0
    expected = 1.0 - a + np.log1p(1e-6)
    assert float(batched_contrastive_loss(jnp.asarray(q), jnp.asarray(k))) == pytest.approx(
        expected, rel=1e-6)


@pytest.mark.parametrize('loss', ['code', 'paper'])
def test_runs_at_96x96_with_gradients(loss):
    n = 96 * 96
    q, k = unit_embeddings(jax.random.key(2), (1, n, 16))
    loss_fn = jax.jit(lambda q, k: batched_contrastive_loss(q, k, loss))
    loss, (gq, gk) = jax.value_and_grad(loss_fn, argnums=(0, 1))(q, k)
    assert np.isfinite(float(loss))
    assert bool(jnp.all(jnp.isfinite(gq))) and float(jnp.abs(gq).max()) > 0
    assert float(jnp.abs(gk).max()) > 0
    # Peak memory O(block x N): no N x N array anywhere in the program.
    jaxpr = jax.make_jaxpr(jax.grad(loss_fn))(q, k)
    assert f'{n},{n}' not in str(jaxpr).replace(' ', '')


def test_gradient_matches_full_sort_autodiff(active_embeddings):
    """Blocked top-k with rematerialisation has the gradient of the plain full-sort formula."""
    q, k = active_embeddings

    def full_sort(q, k):
        rows = full_sort_row_losses(q, k, (0, 15), (50, 65), 1.0, 1e-6, xp=jnp)
        return jnp.mean(jax.nn.relu(rows))

    ours = jax.grad(lambda q, k: batched_contrastive_loss(q, k, block_size=48), (0, 1))(q, k)
    ref = jax.grad(full_sort, (0, 1))(q, k)
    for a, b in zip(ours, ref):
        assert float(jnp.mean(jnp.abs(b) > 0)) > 0.5  # most rows carry a gradient
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_gradient_equals_differentiating_through_top_k(active_embeddings):
    """The ranks are chosen without a gradient and the chosen scores recomputed: the gradient is
    the one of differentiating through `lax.top_k`'s values (the former implementation)."""
    q, k = active_embeddings

    def through_top_k(q, k):
        scores, _ = jax.lax.top_k(jnp.einsum('bnd,bmd->bnm', q, k), 65)
        exp_scores = jnp.exp(scores)
        rows = -jnp.log(exp_scores[..., :15].mean(-1) / (exp_scores[..., 50:65].mean(-1) + 1e-6))
        return jnp.mean(jax.nn.relu(rows + 1.0))

    ours = jax.grad(lambda q, k: batched_contrastive_loss(q, k, block_size=64), (0, 1))(q, k)
    for a, b in zip(ours, jax.grad(through_top_k, (0, 1))(q, k)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))


def test_bad_arguments_are_clear_errors():
    q, k = unit_embeddings(jax.random.key(5), (1, 40, 4))
    with pytest.raises(ValueError, match='needs at least 65 positions per image'):
        losses.code_contrastive_loss(q[0], k[0])
    with pytest.raises(ValueError, match=r'one image: q, k \[N, d\].*jax.vmap'):
        losses.paper_contrastive_loss(q, k)


# --- the loss by name, MODULE:NAME and options ------------------------------------------------

def test_the_registered_losses_are_the_code_s_and_the_paper_s():
    assert losses.CONTRASTIVE_LOSSES.names() == ['code', 'paper']
    assert losses.get_contrastive_loss('code') is losses.code_contrastive_loss
    assert losses.get_contrastive_loss('paper') is losses.paper_contrastive_loss


def test_options_of_the_spec_set_the_rank_windows(active_embeddings):
    q, k = active_embeddings  # N = 300
    ours = batched_contrastive_loss(q, k, 'code(relevant=10, irrelevant=(40, 55))')
    rows = full_sort_row_losses(np.float64(q), np.float64(k), (0, 10), (40, 55), 1.0, 1e-6)
    np.testing.assert_allclose(float(ours), float(np.mean(np.maximum(rows, 0))), rtol=1e-5)
    assert abs(float(ours) - code_reference(q, k)[0]) > 1e-2  # not the default windows
    ours = batched_contrastive_loss(q, k, 'paper(n1=0.05, n2=0.2)')  # 15 keys; ranks [60, 75)
    rows = full_sort_row_losses(np.float64(q), np.float64(k), (0, 15), (60, 75), 1.0, 0.0)
    np.testing.assert_allclose(float(ours), float(np.mean(rows)), rtol=1e-5)


@pytest.mark.parametrize('spec, margin, message', [
    ('infonce', None, "train.contrastive.loss='infonce': unknown contrastive loss; known: "
                      "['code', 'paper']"),
    ('code(temperature=0.1)', None, "train.contrastive.loss='code(temperature=0.1)': code takes "
                                    "no option(s) ['temperature']; its options: ['margin', "
                                    "'relevant', 'irrelevant', 'block_size']"),
    ('no_such_module:info_nce', None, "train.contrastive.loss='no_such_module:info_nce': cannot "
                                      "import module 'no_such_module'"),
    ('code(relevant=2000)', None, "train.contrastive.loss='code(relevant=2000)': not a valid "
                                  'contrastive loss: ValueError: the loss needs at least 2000 '
                                  'positions per image'),
    ('code(margin=3.0)', 2.0, "train.contrastive.margin=2.0 and train.contrastive.loss="
                              "'code(margin=3.0)' both set margin"),
    ('examples.contrastive_losses:info_nce', 2.0,
     "train.contrastive.margin=2.0 sets the margin option, and train.contrastive.loss="
     "'examples.contrastive_losses:info_nce' has none"),
])
def test_bad_specs_are_one_line_errors_naming_the_key(spec, margin, message):
    with pytest.raises(ValueError) as info:
        losses.get_contrastive_loss(spec, margin)
    assert message in str(info.value) and '\n' not in str(info.value)


@pytest.mark.parametrize('loss, message', [
    (lambda q, k: jnp.sum(q * k, axis=-1), 'gives (1024,) float32, expected a float scalar'),
    (lambda q, k: jnp.mean(jnp.log(q @ k.T)), 'loss(q, k) is nan at |q|^2 = |k|^2 = 6'),
    (lambda q, k: jnp.mean(jnp.sqrt(jnp.maximum(q @ k.T, 0.0))),
     'the gradient of loss(q, k) with respect to q is not finite'),
])
def test_a_loss_is_checked_as_training_runs_it(loss, message):
    """One image's `q, k [N, d]` at |q|^2 = |k|^2 = 6, under jit: a float scalar, finite, with a
    finite gradient."""
    with pytest.raises(ValueError, match='not a valid contrastive loss') as info:
        losses.get_contrastive_loss(loss)
    assert message in str(info.value)


def test_l1_loss():
    a = jnp.zeros((2, 4, 4, 3))
    b = a.at[0, 0, 0, 0].set(-4.8)
    assert float(losses.l1_loss(a, a + 0.5)) == pytest.approx(0.5)
    assert float(losses.l1_loss(a, b)) == pytest.approx(4.8 / a.size)
