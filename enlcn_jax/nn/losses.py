"""Training losses: L1 reconstruction and the contrastive loss of ENLCA (Eq. 8-10).

The contrastive loss ranks, for every query position i, the scores `S_ij = q_i . k_j` over all
keys j and pushes the top-ranked ("relevant") keys away from lower-ranked ("irrelevant") ones.
Only the top ranks are ever needed, so rows are processed in blocks with `jax.lax.top_k`:
peak memory is O(block x N + N x top x d), never O(N^2), and nothing sorts whole rows.

Variants (`train.contrastive.variant`):
  * `code` (default, the released code): relevant = ranks [0, 15), irrelevant = ranks [50, 65),
    `mean_i relu(-log(mean_rel exp S / (mean_irr exp S + 1e-6)) + margin)`, margin 1.
  * `paper` (Eq. 10): relevant = top n1 N, irrelevant = n1 N ranks from n2 N (n1 = 2 %,
    n2 = 8 %), `mean_i -log(mean_rel exp S / mean_irr exp S) + margin`, no hinge. The paper's
    `/ n1 N` is read as the mean over the n1 N entries (the PDF text is ambiguous; this is the
    reading the released code implements with fixed counts).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from enlcn_jax.nn import blockwise

Array = jax.Array


def l1_loss(sr: Array, hr: Array) -> Array:
    """Mean absolute error over all elements of `[B, H, W, C]` images."""
    return jnp.mean(jnp.abs(sr - hr))


@dataclasses.dataclass(frozen=True)
class RankWindows:
    """Which ranks (0 = most similar key) count as relevant and as irrelevant."""
    relevant: tuple[int, int]
    irrelevant: tuple[int, int]
    hinge: bool
    margin: float
    eps: float

    @property
    def top(self) -> int:
        return max(self.relevant[1], self.irrelevant[1])


def rank_windows(variant: str, n: int, *, margin: float = 1.0, n1: float = 0.02,
                 n2: float = 0.08, code_relevant: int = 15,
                 code_irrelevant: tuple[int, int] = (50, 65)) -> RankWindows:
    """Resolves a loss variant for `n` positions into rank windows (ValueError if n is too small)."""
    if variant == 'code':
        windows = RankWindows((0, code_relevant), tuple(code_irrelevant), True, margin, 1e-6)
    elif variant == 'paper':
        count = max(1, round(n1 * n))
        start = round(n2 * n)
        windows = RankWindows((0, count), (start, start + count), False, margin, 0.0)
    else:
        raise ValueError(f"unknown contrastive variant {variant!r}; known: 'code', 'paper'")
    if windows.top > n:
        raise ValueError(f'contrastive loss variant {variant!r} needs at least {windows.top} '
                         f'positions per image, got {n} (use a larger patch)')
    return windows


def _row_losses(q_block: Array, k: Array, windows: RankWindows) -> Array:
    """Per-row loss for a block of queries. `q_block [R, d]`, `k [N, d]` -> `[R]`.

    The ranks are chosen on `stop_gradient` scores (which keys are relevant is a selection, not
    a differentiable quantity), then the chosen keys' scores are recomputed from the gathered
    keys, so the backward pass touches only `[R, top, d]`: no `top_k` to differentiate, no
    `[R, N]` block to keep or to recompute.
    """
    _, chosen = jax.lax.top_k(jax.lax.stop_gradient(q_block @ k.T), windows.top)  # [R, top]
    scores = jnp.einsum('rd,rtd->rt', q_block, k[chosen])
    exp_scores = jnp.exp(scores)
    relevant = jnp.mean(exp_scores[:, slice(*windows.relevant)], axis=-1)
    irrelevant = jnp.mean(exp_scores[:, slice(*windows.irrelevant)], axis=-1)
    loss = -jnp.log(relevant / (irrelevant + windows.eps)) + windows.margin
    return jax.nn.relu(loss) if windows.hinge else loss


def contrastive_loss(q: Array, k: Array, variant: str = 'code', *, block_size: int = 1024,
                     **window_kwargs) -> Array:
    """Contrastive loss of one ENLCA module on one image, averaged over its query positions.

    Batch it with `jax.vmap` (the batch axis then stays a parallel axis the compiler can split
    over devices), e.g. `jnp.mean(jax.vmap(contrastive_loss)(q, k))` for `[B, N, d]` inputs.

    Args:
      q: `[N, d]` normalised, amplified queries of one image (as the ENLCA module returns them).
      k: `[N, d]` normalised, amplified keys.
      variant: `'code'` or `'paper'` (see the module docstring).
      block_size: query rows scored at once; peak memory is O(block_size x N).
      **window_kwargs: `margin`, `n1`, `n2`, `code_relevant`, `code_irrelevant`.
    Returns:
      scalar float32.
    """
    if q.ndim != 2 or k.shape != q.shape:
        raise ValueError(f'contrastive_loss takes one image: q, k [N, d], got {q.shape}, '
                         f'{k.shape} (batch it with jax.vmap)')
    windows = rank_windows(variant, q.shape[0], **window_kwargs)
    return jnp.mean(blockwise.map_row_blocks(lambda qb: _row_losses(qb, k, windows), q,
                                             block_size, remat=False))
