"""Control "attention" functions for ablations, registered as `model.attention` names.

* `identity`: no mixing; each position's output is its own value.
* `global_mean`: every position gets the mean of the values over the real positions.

They have the signature of `attention.enla` and ignore q, k, the random features and the
feature map. An ENLCA block built with one keeps its parameters (the value convolution is still
used; the query and key convolutions then get no gradient from the output), so a model compares
parameter for parameter with the attention it replaces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from enlcn_jax.nn import attention

Array = jax.Array


def identity_attention(q: Array, k: Array, v: Array, projection: Array | None = None,
                       feature_map=None, mask: Array | None = None) -> Array:
    """`out_i = v_i`: no mixing between positions (the weight matrix is the N x N identity).

    Takes `mask` (and needs none: no position reads another), so evaluation may pad.
    `[B, N, c]` -> `[B, N, c]`; O(1) extra time and memory.
    """
    del q, k, projection, feature_map, mask
    return v


def global_mean_attention(q: Array, k: Array, v: Array, projection: Array | None = None,
                          feature_map=None, mask: Array | None = None) -> Array:
    """`out_i = sum_j mask_j v_j / sum_j mask_j`: uniform attention over the real positions
    (every weight 1 / N_real), the same output at every position.

    Args:
      q, k, projection, feature_map: unused.
      v: `[B, N, c]`.
      mask: optional `[B, N, 1]`, 0 for positions to leave out (padding).
    Returns:
      `[B, N, c]`. O(N c) time, O(c) memory beyond the output.
    """
    del q, k, projection, feature_map
    weights = jnp.ones_like(v[..., :1]) if mask is None else mask.astype(v.dtype)
    mean = jnp.sum(v * weights, axis=1, keepdims=True) / jnp.sum(weights, axis=1, keepdims=True)
    return jnp.broadcast_to(mean, v.shape)


attention.ATTENTIONS.register('identity', identity_attention, trusted=True)
attention.ATTENTIONS.register('global_mean', global_mean_attention, trusted=True)
