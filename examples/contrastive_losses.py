"""A contrastive loss of one's own: `loss(q [N, d], k [N, d], **options) -> scalar`.

    python train.py --config configs/quickstart.py \
        --config.train.contrastive.loss='examples.contrastive_losses:info_nce(temperature=0.2)'
"""

import jax
import jax.numpy as jnp


def info_nce(q, k, *, temperature=0.1, positives=15):
    """InfoNCE with each query's top-ranked keys as its positives.

    For query i, the `positives` keys j of highest score `S_ij = q_i . k_j` are its positives and
    every key is in the denominator:
    `mean_i -log(sum_pos exp(S_ij / t) / sum_j exp(S_ij / t))`, t the temperature. The positives
    are chosen without a gradient, as the registered losses choose their ranks.

    Args:
      q, k: `[N, d]` normalised, amplified queries and keys of one image (`|q_i|^2 = k`).
      temperature: t.
      positives: keys per query counted as positives.
    Returns:
      scalar float32. It forms the `[N, N]` scores: for patches up to about 64 x 64.
    """
    logits = q @ k.T / temperature  # [N, N]
    _, chosen = jax.lax.top_k(jax.lax.stop_gradient(logits), positives)  # [N, positives]
    positive_logits = jnp.take_along_axis(logits, chosen, axis=-1)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jax.nn.logsumexp(positive_logits, axis=-1))
