"""Training losses: L1 reconstruction and the contrastive loss of ENLCA (Eq. 8-10).

The contrastive loss is swappable (`train.contrastive.loss`, a `registry` spec: a registered
name or `MODULE:NAME`, either with options in parentheses, or in code a callable). A contrastive
loss is any function

    loss(q [N, d], k [N, d], **options) -> scalar

of one image's normalised, amplified queries and keys (`|q_i|^2 = |k_j|^2 = k`, as the ENLCA
module returns them); training batches it over images with `jax.vmap` (the batch axis then stays
a parallel axis the compiler can split over devices) and averages over images and modules.
`get_contrastive_loss` resolves a spec, with `train.contrastive.margin` as a shorthand for the
`margin` option; training gives `block_size=train.contrastive.block_size` to a loss that takes a
`block_size` keyword. `check_contrastive_loss` runs a loss as training does before any training
uses it.

The two registered losses rank, for every query position i, the scores `S_ij = q_i . k_j` over
all keys j and push the top-ranked ("relevant") keys away from lower-ranked ("irrelevant") ones.
Only the top ranks are ever needed, so rows are processed in blocks with `jax.lax.top_k`: peak
memory is O(block_size x N + N x top x d), never O(N^2), and nothing sorts whole rows.

  * `code` (default, the released code): relevant = ranks [0, 15), irrelevant = ranks [50, 65),
    `mean_i relu(-log(mean_rel exp S / (mean_irr exp S + 1e-6)) + margin)`, margin 1.
  * `paper` (Eq. 10): relevant = top n1 N, irrelevant = n1 N ranks from n2 N (n1 = 2 %,
    n2 = 8 %), `mean_i -log(mean_rel exp S / mean_irr exp S) + margin`, no hinge. The paper's
    `/ n1 N` is read as the mean over the n1 N entries (the PDF text is ambiguous; this is the
    reading the released code implements with fixed counts).

Their windows are options: `'code(relevant=10, irrelevant=(40, 55))'`, `'paper(n1=0.03)'`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from enlcn_jax.nn import blockwise, features, registry

Array = jax.Array
ContrastiveLoss = Callable[..., Array]

# Positions of the one image `check_contrastive_loss` runs a loss on (a 32 x 32 patch): more
# than the rank windows of the registered losses reach.
CHECK_POSITIONS = 1024


def l1_loss(sr: Array, hr: Array) -> Array:
    """Mean absolute error over all elements of `[B, H, W, C]` images."""
    return jnp.mean(jnp.abs(sr - hr))


def _row_losses(q_block: Array, k: Array, relevant: tuple[int, int],
                irrelevant: tuple[int, int], margin: float, hinge: bool, eps: float) -> Array:
    """Per-row loss for a block of queries. `q_block [R, d]`, `k [N, d]` -> `[R]`.

    The ranks are chosen on `stop_gradient` scores (which keys are relevant is a selection, not
    a differentiable quantity), then the chosen keys' scores are recomputed from the gathered
    keys, so the backward pass touches only `[R, top, d]`: no `top_k` to differentiate, no
    `[R, N]` block to keep or to recompute.
    """
    top = max(relevant[1], irrelevant[1])
    _, chosen = jax.lax.top_k(jax.lax.stop_gradient(q_block @ k.T), top)  # [R, top]
    scores = jnp.einsum('rd,rtd->rt', q_block, k[chosen])
    exp_scores = jnp.exp(scores)
    relevant_mean = jnp.mean(exp_scores[:, slice(*relevant)], axis=-1)
    irrelevant_mean = jnp.mean(exp_scores[:, slice(*irrelevant)], axis=-1)
    loss = -jnp.log(relevant_mean / (irrelevant_mean + eps)) + margin
    return jax.nn.relu(loss) if hinge else loss


def _ranked_contrastive_loss(q: Array, k: Array, relevant: tuple[int, int],
                             irrelevant: tuple[int, int], *, margin: float, hinge: bool,
                             eps: float, block_size: int) -> Array:
    """`mean_i [relu](-log(mean_rel exp S_ij / (mean_irr exp S_ij + eps)) + margin)` over the
    query rows of one image, the keys j of each row ranked by `S_ij = q_i . k_j` (0 = the most
    similar) and averaged over the rank windows `relevant` and `irrelevant` (`[start, stop)`).

    `q, k [N, d]` -> scalar float32.

    Raises:
      ValueError: inputs that are not one image's `[N, d]`, or fewer positions than the
        windows reach.
    """
    if q.ndim != 2 or k.shape != q.shape:
        raise ValueError(f'a contrastive loss takes one image: q, k [N, d], got {q.shape}, '
                         f'{k.shape} (batch it with jax.vmap)')
    top = max(relevant[1], irrelevant[1])
    if top > q.shape[0]:
        raise ValueError(f'the loss needs at least {top} positions per image for its rank '
                         f'windows, got {q.shape[0]} (use a larger patch)')
    row_losses = functools.partial(_row_losses, k=k, relevant=relevant, irrelevant=irrelevant,
                                   margin=margin, hinge=hinge, eps=eps)
    return jnp.mean(blockwise.map_row_blocks(row_losses, q, block_size, remat=False))


def code_contrastive_loss(q: Array, k: Array, *, margin: float = 1.0, relevant: int = 15,
                          irrelevant: tuple[int, int] = (50, 65),
                          block_size: int = 1024) -> Array:
    """The released code's contrastive loss (`'code'`): ranks [0, relevant) against the ranks
    [irrelevant[0], irrelevant[1]), `mean_i relu(-log(mean_rel exp S / (mean_irr exp S + 1e-6))
    + margin)`.

    Args:
      q, k: `[N, d]` normalised, amplified queries and keys of one image.
      margin: b, added inside the hinge.
      relevant: the number of top-ranked keys that count as relevant.
      irrelevant: `(start, stop)` ranks that count as irrelevant.
      block_size: query rows scored at once; peak memory is O(block_size x N).
    Returns:
      scalar float32.
    """
    return _ranked_contrastive_loss(q, k, (0, relevant), tuple(irrelevant), margin=margin,
                                    hinge=True, eps=1e-6, block_size=block_size)


def paper_contrastive_loss(q: Array, k: Array, *, margin: float = 1.0, n1: float = 0.02,
                           n2: float = 0.08, block_size: int = 1024) -> Array:
    """The paper's contrastive loss (`'paper'`, Eq. 10): the top `n1 N` ranks against the `n1 N`
    ranks from `n2 N`, `mean_i -log(mean_rel exp S / mean_irr exp S) + margin`, no hinge.

    Args:
      q, k: `[N, d]` normalised, amplified queries and keys of one image.
      margin: b.
      n1: the fraction of the N keys in each window (at least one key).
      n2: where the irrelevant window starts, as a fraction of N.
      block_size: query rows scored at once; peak memory is O(block_size x N).
    Returns:
      scalar float32.
    """
    n = q.shape[0]
    count, start = max(1, round(n1 * n)), round(n2 * n)
    return _ranked_contrastive_loss(q, k, (0, count), (start, start + count), margin=margin,
                                    hinge=False, eps=0.0, block_size=block_size)


def check_embeddings(n: int = CHECK_POSITIONS, d: int = 8) -> tuple[Array, Array]:
    """One image's `q, k [n, d]` as the ENLCA module makes them: Gaussian directions scaled to
    squared norm `features.CHECK_AMPLIFICATION` (the model's default k)."""
    scale = jnp.sqrt(jnp.float32(features.CHECK_AMPLIFICATION))
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return tuple(scale * unit(jax.random.normal(key, (n, d), jnp.float32))
                 for key in jax.random.split(jax.random.key(0)))


def check_contrastive_loss(fn: ContrastiveLoss) -> None:
    """Raises unless `fn` behaves as training runs it, on `check_embeddings` (one image, N = 1024
    positions, |q|^2 = |k|^2 = 6), under `jax.jit`: `fn(q [N, d], k [N, d])` is a float scalar
    of shape (), finite, and so is its gradient with respect to q and k."""
    with jax.ensure_compile_time_eval():  # concrete even when first used inside a jit trace
        q, k = check_embeddings()
        out = jax.eval_shape(fn, q, k)
        if getattr(out, 'shape', None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f'loss(q [{q.shape[0]}, 8], k [{q.shape[0]}, 8]) gives '
                             f'{getattr(out, "shape", out)} {getattr(out, "dtype", "")}, '
                             'expected a float scalar of shape ()')
        value, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(q, k)
        if not bool(jnp.isfinite(value)):
            raise ValueError(f'loss(q, k) is {float(value)} at |q|^2 = |k|^2 = '
                             f'{features.CHECK_AMPLIFICATION:g}')
        for name, grad in zip('qk', grads):
            if not bool(jnp.all(jnp.isfinite(grad))):
                raise ValueError(f'the gradient of loss(q, k) with respect to {name} is not '
                                 f'finite at |q|^2 = |k|^2 = {features.CHECK_AMPLIFICATION:g}')


CONTRASTIVE_LOSSES: registry.Registry[ContrastiveLoss] = registry.Registry(
    'contrastive loss', 'train.contrastive.loss', check_contrastive_loss)
CONTRASTIVE_LOSSES.register('code', code_contrastive_loss, trusted=True)
CONTRASTIVE_LOSSES.register('paper', paper_contrastive_loss, trusted=True)


def get_contrastive_loss(spec: registry.Spec, margin: float | None = None) -> ContrastiveLoss:
    """The contrastive loss `spec` selects (a name or `MODULE:NAME`, with options, or a
    callable), its `margin` option set to `margin` if given (`train.contrastive.margin`, a
    shorthand for `NAME(margin=...)`).

    Raises:
      ValueError: an unknown or invalid loss; `margin` for a loss without a `margin` option, or
        for a spec that sets `margin` itself.
    """
    return registry.with_option(CONTRASTIVE_LOSSES.get(spec), 'margin', margin, spec=spec,
                                key=CONTRASTIVE_LOSSES.key, shorthand='train.contrastive.margin')

