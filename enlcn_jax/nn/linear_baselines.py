"""Linear-cost attention baselines from the literature, registered as `model.attention` names.

* `cosformer`: ReLU features re-weighted by cos/sin of the 2-D position (Qin et al., ICLR 2022).
* `efficient`: softmax over Q's features and over K's positions (Shen et al., WACV 2021).

Both have the signature of `attention.enla` and `attention.exact_attention`
(`fn(q [B, N, d], k [B, N, d], v [B, N, c], projection, feature_map, mask=None) -> [B, N, c]`),
ignore the random features and the feature map (their features are fixed by their papers), leave
out keys where `mask` is 0, and never form an N x N matrix. Katharopoulos et al.'s linear
attention is `enla` with the feature map `elu_plus_one` (`features.elu_plus_one_features`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from enlcn_jax.nn import attention

Array = jax.Array


def _position_weights(n: int, spatial_shape: tuple[int, int] | None,
                      mask: Array | None, batch: int) -> Array:
    """cosFormer's per-position re-weighting factors for a row-major `H x W` grid, `[B, N, 4]`:

    `[cos a cos b, cos a sin b, sin a cos b, sin a sin b]` with `a = pi/2 min(row, M_h) / M_h`,
    `b = pi/2 min(col, M_w) / M_w`, where `(M_h, M_w)` is the real extent of each image: one
    past its last row and column where `mask` is 1 (the whole `spatial_shape` without a mask;
    `spatial_shape` None is the paper's 1-D sequence, `(1, N)`). Positions beyond the extent
    (padding) get angle pi/2, keeping every factor in [0, 1].
    """
    h, w = (1, n) if spatial_shape is None else spatial_shape
    if h * w != n:
        raise ValueError(f'cosformer: spatial_shape {tuple(spatial_shape)} has {h * w} positions, '
                         f'q has {n}')
    rows = (jnp.arange(n) // w).astype(jnp.float32)
    cols = (jnp.arange(n) % w).astype(jnp.float32)
    if mask is None:
        extent = jnp.broadcast_to(jnp.asarray([h, w], jnp.float32), (batch, 2))
    else:
        real = mask[..., 0] > 0                                                   # [B, N]
        extent = jnp.stack([jnp.max(jnp.where(real, rows + 1, 0.0), axis=-1),
                            jnp.max(jnp.where(real, cols + 1, 0.0), axis=-1)], axis=-1)
        extent = jnp.maximum(extent, 1.0)
    angle_h = 0.5 * math.pi * jnp.minimum(rows, extent[:, :1]) / extent[:, :1]   # [B, N]
    angle_w = 0.5 * math.pi * jnp.minimum(cols, extent[:, 1:]) / extent[:, 1:]
    ch, sh, cw, sw = jnp.cos(angle_h), jnp.sin(angle_h), jnp.cos(angle_w), jnp.sin(angle_w)
    return jnp.stack([ch * cw, ch * sw, sh * cw, sh * sw], axis=-1)


def cosformer(q: Array, k: Array, v: Array, projection: Array | None = None,
              feature_map=None, mask: Array | None = None,
              spatial_shape: tuple[int, int] | None = None) -> Array:
    """cosFormer attention (Qin et al., "cosFormer: Rethinking Softmax in Attention", ICLR 2022,
    Eq. 9-11), extended to images by a separable 2-D re-weighting:

        out_i = sum_j s_ij v_j / sum_j s_ij,
        s_ij = relu(q_i) . relu(k_j) cos(pi/2 (h_i - h_j) / M_h) cos(pi/2 (w_i - w_j) / M_w),

    `(h_i, w_i)` the row and column of position i. By `cos(a - b) = cos a cos b + sin a sin b` on
    each axis the weight is `psi(q_i) . psi(k_j)` with `psi(x)_t = relu(x) f_t(position)` for the
    4 products `f` of `_position_weights`, features `[B, N, 4 d]`, so the attention is linear.
    `(M_h, M_w)` is each image's real extent (the paper's M is the sequence length): padding does
    not change the weights of the real positions, so a padded image with `mask` gives the
    unpadded output. Every `|h_i - h_j| < M_h`, so every weight is non-negative. A query whose
    ReLU features are all 0 gets output 0 (`attention.linear_attention`), as in the paper, which
    adds no constant.

    Args:
      q, k: `[B, N, d]`; v: `[B, N, c]`.
      projection, feature_map: unused (for the common signature).
      mask: optional `[B, N, 1]`, 0 for keys to leave out (padding), 1 for the others.
      spatial_shape: `(H, W)`, N = H W positions in row-major order; None: a 1-D sequence.
    Returns:
      `[B, N, c]` float32. O(N d c) time (4 N d c), O(N d + d c) memory (the `[B, N, 4 d]`
      features and the `[4 d, c]` key summary).
    """
    del projection, feature_map
    b, n, d = q.shape
    position = _position_weights(n, spatial_shape, mask, b)[..., :, None]         # [B, N, 4, 1]
    psi = lambda x: (position * jax.nn.relu(x)[..., None, :]).reshape(b, n, 4 * d)
    k_features = psi(k)
    if mask is not None:
        k_features = k_features * mask.astype(k_features.dtype)
    return attention.linear_attention(psi(q), k_features, v)


def efficient_attention(q: Array, k: Array, v: Array, projection: Array | None = None,
                        feature_map=None, mask: Array | None = None) -> Array:
    """Efficient Attention (Shen et al., "Efficient Attention: Attention with Linear
    Complexities", WACV 2021, Eq. 4):

        out = rho_q(Q) (rho_k(K)^T V),

    `rho_q` a softmax over each query's d features, `rho_k` a softmax over the positions of each
    of K's d columns, taken over the real keys only (`mask`). Row i of the output is a convex
    combination of the d "global context vectors" `rho_k(K)^T V` (`[d, c]`), each a convex
    combination of the values.

    Args:
      q, k: `[B, N, d]`; v: `[B, N, c]`.
      projection, feature_map: unused (for the common signature).
      mask: optional `[B, N, 1]`, 0 for keys to leave out (padding), 1 for the others.
    Returns:
      `[B, N, c]`. O(N d c) time, O(N d + d c) memory.
    """
    del projection, feature_map
    keys = None if mask is None else jnp.broadcast_to(mask > 0, k.shape)
    context = jnp.einsum('bnd,bnc->bdc', jax.nn.softmax(k, axis=1, where=keys), v)
    return jnp.einsum('bnd,bdc->bnc', jax.nn.softmax(q, axis=-1), context)


attention.ATTENTIONS.register('cosformer', cosformer, trusted=True)
attention.ATTENTIONS.register('efficient', efficient_attention, trusted=True)
