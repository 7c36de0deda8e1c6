"""Row blocks: apply a function to blocks of rows so peak memory is O(block), not O(rows).

Exact softmax attention and the contrastive loss both score every query against every key; done
`block` queries at a time, the largest intermediate is `[block, N]` instead of `[N, N]`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def map_row_blocks(fn: Callable[[Array], Array], rows: Array, block: int,
                   remat: bool = True) -> Array:
    """`fn` over blocks of `rows`, concatenated: `[N, ...] -> [N, ...]`.

    The N rows are cut into `ceil(N / block)` blocks of equal size (at most `block`), the last
    zero-padded by fewer rows than there are blocks; `fn` maps `[block, ...]` to
    `[block, ...]` row by row (padded rows are computed, then dropped). With `remat`, `fn` is
    rematerialised in the backward pass (`jax.checkpoint`), so gradients too hold one block at a
    time; without, the backward pass keeps what `fn`'s own gradient needs of every block (for a
    function whose residuals are small, it saves computing each block twice).
    """
    n = rows.shape[0]
    n_blocks = -(-n // block)
    block = -(-n // n_blocks)  # as even as possible: fewer than n_blocks padded rows
    padded = jnp.pad(rows, [(0, -n % block)] + [(0, 0)] * (rows.ndim - 1))
    out = jax.lax.map(jax.checkpoint(fn) if remat else fn,
                      padded.reshape(-1, block, *rows.shape[1:]))
    return out.reshape(-1, *out.shape[2:])[:n]
