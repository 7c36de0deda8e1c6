"""Sparse attention by locality-sensitive hashing: `nlsn` (Mei, Fan, Zhou, "Image Super-Resolution
with Non-Local Sparse Attention", CVPR 2021), the LSH attention of Reformer (Kitaev et al., ICLR
2020) on image embeddings.

Per hash round r (`n_hashes` rounds), with `n_buckets` = b (even) and rotations
`R_r [d, b / 2]`:

1. Spherical LSH (Andoni et al. 2015): `bucket(x) = argmax([x R_r, -x R_r])`, for every query
   and every key.
2. The queries are sorted by bucket, and so are the keys (stably, so position order breaks ties),
   and each sorted sequence is cut into chunks of `chunk_size` = C.
3. Query chunk i attends, by exact softmax of `q . k`, to key chunks i - 1, i and i + 1:
   `out_r(q) = sum_j exp(q . k_j - lse_r(q)) v_j` over those at most 3 C keys, with
   `lse_r(q) = log sum_j exp(q . k_j)`.
4. The rounds are combined by their normalisers: `out(q) = sum_r softmax_r(lse_r(q)) out_r(q)`,
   i.e. the attention over the union of the rounds' key sets, each key weighted by how many rounds
   reached it.

NLSN shares queries and keys (one embedding); here they differ, so each is hashed and sorted by
its own buckets and query chunk i meets key chunk i: the chunks hold the same quantiles of the
two bucket orders. With q = k this is NLSN's attention, except that NLSN's first and last chunks
are also neighbours (a cyclic wrap) and its last chunk is filled up by repeating the last
positions; here the first and last chunks have one neighbour and a partial last chunk is filled
with keys left out.

The rotations are rows of the model's random features `projection [m, d]` (round r uses rows
`[r b / 2, (r + 1) b / 2)`), so they are drawn, recorded and redrawn with the model's features
and evaluation is reproducible; NLSN draws them afresh at every call. This needs
`m >= n_hashes b / 2`. NLSN sets b from N (N / 144, even, at most 128); b must not depend on N
here (a padded image would hash differently), so it is an option, by default as many buckets as
the projection gives: `min(128, 2 floor(m / n_hashes))`.

Padding: padded positions get a bucket past every real one, so they sort after every real query
and key, and are left out as keys (weight 0). The real queries and keys then fill the same
leading chunks in the same order as in the unpadded image, so a padded image gives the unpadded
output.

Cost: O(n_hashes N (b d / 2 + 3 C (d + c)) + n_hashes N log N) time and
O(n_hashes N (3 C + b + c)) memory (every round's scores at once, as NLSN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from enlcn_jax.nn import attention

Array = jax.Array

MAX_BUCKETS = 128


def num_buckets(n_buckets: int | None, n_hashes: int, m: int) -> int:
    """The buckets per round: `n_buckets`, or `min(128, 2 floor(m / n_hashes))` for None.

    Raises:
      ValueError: an odd or non-positive count, or a projection with fewer than
        `n_hashes n_buckets / 2` rows.
    """
    buckets = min(MAX_BUCKETS, 2 * (m // n_hashes)) if n_buckets is None else n_buckets
    if n_hashes < 1 or buckets < 2 or buckets % 2:
        raise ValueError(f'nlsn: n_hashes={n_hashes} must be >= 1 and n_buckets={buckets} even '
                         f'and >= 2 (with m={m} random features)')
    if n_hashes * buckets // 2 > m:
        raise ValueError(f'nlsn: n_hashes={n_hashes} rounds of n_buckets={buckets} need '
                         f'{n_hashes * buckets // 2} rotation rows, the projection has m={m}: '
                         'raise model.num_random_features or lower n_buckets / n_hashes')
    return buckets


def hash_buckets(x: Array, rotation: Array) -> Array:
    """Spherical LSH: `argmax([x R, -x R])`, `x [..., d]`, `rotation [b / 2, d]` -> int `[...]`."""
    rotated = x @ rotation.T
    return jnp.argmax(jnp.concatenate([rotated, -rotated], axis=-1), axis=-1)


def _chunked(x: Array, chunk_size: int, fill) -> Array:
    """`[N, ...] -> [ceil(N / C), C, ...]`, the last chunk filled up with `fill`."""
    n_chunks = -(-x.shape[0] // chunk_size)
    x = jnp.pad(x, [(0, n_chunks * chunk_size - x.shape[0])] + [(0, 0)] * (x.ndim - 1),
                constant_values=fill)
    return x.reshape(n_chunks, chunk_size, *x.shape[1:])


def _with_neighbours(chunks: Array, fill) -> Array:
    """`[K, C, ...] -> [K, 3 C, ...]`: chunk i - 1, i, i + 1 (`fill` beyond the ends)."""
    edge = jnp.full_like(chunks[:1], fill)
    previous = jnp.concatenate([edge, chunks[:-1]])
    following = jnp.concatenate([chunks[1:], edge])
    return jnp.concatenate([previous, chunks, following], axis=1)


def hash_round(q: Array, k: Array, v: Array, real: Array, rotation: Array,
               chunk_size: int) -> tuple[Array, Array]:
    """One round of LSH attention for one image (steps 1 to 3 of the module docstring).

    Args:
      q, k: `[N, d]`; v: `[N, c]`; real: bool `[N]`, False on padding.
      rotation: `[b / 2, d]`.
      chunk_size: C.
    Returns:
      `(out [N, c], lse [N])`: each query's attention output in this round and the log of its
      softmax normaliser.
    """
    n_buckets = 2 * rotation.shape[0]
    q_order = jnp.argsort(jnp.where(real, hash_buckets(q, rotation), n_buckets), stable=True)
    k_order = jnp.argsort(jnp.where(real, hash_buckets(k, rotation), n_buckets), stable=True)
    queries = _chunked(q[q_order], chunk_size, 0.0)                         # [K, C, d]
    keys = _with_neighbours(_chunked(k[k_order], chunk_size, 0.0), 0.0)     # [K, 3 C, d]
    values = _with_neighbours(_chunked(v[k_order], chunk_size, 0.0), 0.0)  # [K, 3 C, c]
    present = _with_neighbours(_chunked(real[k_order], chunk_size, False), False)
    scores = jnp.einsum('kid,kjd->kij', queries, keys)
    # A query without a real key (padding, or a filler slot) gets finite, discarded values.
    scores = jnp.where(present[:, None, :], scores, jnp.finfo(scores.dtype).min)
    lse = jax.nn.logsumexp(scores, axis=-1, keepdims=True)                  # [K, C, 1]
    out = jnp.einsum('kij,kjc->kic', jnp.exp(scores - lse), values)
    n = q.shape[0]
    unsort = jnp.argsort(q_order)
    return (out.reshape(-1, out.shape[-1])[:n][unsort], lse.reshape(-1)[:n][unsort])


def nlsn(q: Array, k: Array, v: Array, projection: Array, feature_map=None,
         mask: Array | None = None, *, n_hashes: int = 4, chunk_size: int = 144,
         n_buckets: int | None = None) -> Array:
    """Non-Local Sparse Attention: LSH buckets, chunked softmax, rounds combined (see the module).

    Args:
      q, k: `[B, N, d]`.
      v: `[B, N, c]`.
      projection: `[m, d]` random features; rows `[r b / 2, (r + 1) b / 2)` rotate round r.
      feature_map: unused (the common signature of attention functions).
      mask: optional `[B, N, 1]`, 1 on real positions, 0 on padding (left out as keys).
      n_hashes: hash rounds (NLSN: 4).
      chunk_size: C, positions per chunk (NLSN: 144).
      n_buckets: b, buckets per round (even); None: `min(128, 2 floor(m / n_hashes))`.
    Returns:
      `[B, N, c]`. Cost O(n_hashes N (b d / 2 + 3 C (d + c) + log N)) time,
      O(n_hashes N (3 C + b + c)) memory.
    Raises:
      ValueError: bad options, or too few random features for the rotations.
    """
    del feature_map
    if chunk_size < 1:
        raise ValueError(f'nlsn: chunk_size={chunk_size} must be >= 1')
    buckets = num_buckets(n_buckets, n_hashes, projection.shape[0])
    rotations = projection[:n_hashes * buckets // 2].reshape(n_hashes, buckets // 2, -1)
    real = jnp.ones(q.shape[:2], bool) if mask is None else mask[..., 0] > 0

    def attend(q: Array, k: Array, v: Array, real: Array) -> Array:  # one image
        outs, lses = jax.vmap(hash_round, in_axes=(None, None, None, None, 0, None))(
            q, k, v, real, rotations, chunk_size)                   # [R, N, c], [R, N]
        return jnp.einsum('rn,rnc->nc', jax.nn.softmax(lses, axis=0), outs)

    return jax.vmap(attend)(q, k, v, real)


attention.ATTENTIONS.register('nlsn', nlsn, trusted=True)
