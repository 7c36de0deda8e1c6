"""Row blocks: apply a function to blocks of rows so peak memory is O(block), not O(rows).

Exact softmax attention and the contrastive loss both score every query against every key; done
`block` queries at a time (each block rematerialised in the backward pass), the largest
intermediate is `[block, N]` instead of `[N, N]`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def map_row_blocks(fn: Callable[[Array], Array], rows: Array, block: int) -> Array:
    """`fn` over blocks of `rows`, concatenated: `[N, ...] -> [N, ...]`.

    `rows` is zero-padded to a multiple of `block` (capped at N); `fn` maps `[block, ...]` to
    `[block, ...]` row by row (padded rows are computed, then dropped) and is rematerialised in
    the backward pass (`jax.checkpoint`), so gradients too hold one block at a time.
    """
    n = rows.shape[0]
    block = min(block, n)
    padded = jnp.pad(rows, [(0, -n % block)] + [(0, 0)] * (rows.ndim - 1))
    out = jax.lax.map(jax.checkpoint(fn), padded.reshape(-1, block, *rows.shape[1:]))
    return out.reshape(-1, *out.shape[2:])[:n]
