"""Nystrom attention: `nystrom` (Xiong et al., "Nystromformer: A Nystrom-Based Algorithm for
Approximating Self-Attention", AAAI 2021).

Softmax attention `softmax(Q K^T) V` approximated through L landmarks, the segment means of the
queries and of the keys (Eq. 14 of the paper):

    out = softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V
          [N, L]          [L, L]                [L, N]          [N, c]

with `Ql, Kl [L, d]` the means of L segments of consecutive positions and `pinv` the iterative
Moore-Penrose pseudo-inverse of the paper (Eq. 16, Razavi et al. 2014; `pinv_iterations`, 6 as
the paper): `Z0 = A^T / (||A||_1 ||A||_inf)` (`||A||_inf` = 1 for a row-softmax),
`Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4`. Logits are `q . k` unscaled, as in `exact`
(the model's q and k already carry their scale, the amplification k). The paper's depthwise
convolution skip on V is a module with parameters, not part of the attention, and is left out.

Segments: the real positions (mask 1) in row-major order, real position r (0-based rank among
the n real ones) in segment `floor(r L / n)`, so segments are as equal as possible and contiguous
(the paper's equal segments when L divides N). Padding positions belong to no segment and are
left out as keys of `softmax(Ql K^T)`; since padding at the bottom and right keeps the real
positions' order, a padded image has the unpadded image's landmarks and output. With L > n some
segments are empty: their landmarks are left out of `softmax(Q Kl^T)` and their rows and columns
of `softmax(Ql Kl^T)` are zero, which the iteration keeps zero, so the result is that of the n
non-empty landmarks (each one position: exact attention, up to the pseudo-inverse's accuracy).

Cost: O(N L (d + c) + L^3 pinv_iterations) time, O(N L + L^2) memory per image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from enlcn_jax.nn import attention

Array = jax.Array


def iterative_pinv(a: Array, iterations: int) -> Array:
    """Nystromformer's iterative Moore-Penrose pseudo-inverse of a non-negative `a [L, L]`.

    `Z0 = a^T / max_j sum_i a_ij` (the paper's initialisation for a matrix whose rows sum to 1 or
    0), then `iterations` steps of `Z <- Z (13 I - a Z (15 I - a Z (7 I - a Z))) / 4`.
    O(L^3 iterations) time, O(L^2) memory.
    """
    identity = jnp.eye(a.shape[-1], dtype=a.dtype)
    z = a.T / jnp.max(jnp.sum(a, axis=0))
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z


def nystrom(q: Array, k: Array, v: Array, projection: Array | None = None, feature_map=None,
            mask: Array | None = None, *, num_landmarks: int = 64,
            pinv_iterations: int = 6) -> Array:
    """Nystromformer attention with segment-mean landmarks (see the module).

    Args:
      q, k: `[B, N, d]`.
      v: `[B, N, c]`.
      projection, feature_map: unused (the common signature of attention functions).
      mask: optional `[B, N, 1]`, 1 on real positions, 0 on padding (left out of the segments
        and as keys).
      num_landmarks: L, segments (and landmarks) per image.
      pinv_iterations: steps of the iterative pseudo-inverse.
    Returns:
      `[B, N, c]`. Cost O(N L (d + c) + L^3 pinv_iterations) time, O(N L + L^2) memory.
    """
    del projection, feature_map
    if num_landmarks < 1 or pinv_iterations < 0:
        raise ValueError(f'nystrom: num_landmarks={num_landmarks} must be >= 1 and '
                         f'pinv_iterations={pinv_iterations} >= 0')
    real = jnp.ones(q.shape[:2], bool) if mask is None else mask[..., 0] > 0

    def attend(q: Array, k: Array, v: Array, real: Array) -> Array:  # one image
        rank = jnp.cumsum(real) - 1
        n_real = jnp.maximum(jnp.sum(real), 1)
        segment = jnp.where(real, rank * num_landmarks // n_real, num_landmarks)
        members = (segment[:, None] == jnp.arange(num_landmarks)).astype(q.dtype)   # [N, L]
        counts = jnp.sum(members, axis=0)
        present = counts > 0
        q_landmarks, k_landmarks = (members.T @ x / jnp.maximum(counts, 1)[:, None]
                                    for x in (q, k))                               # [L, d]
        queries_to_landmarks = jax.nn.softmax(q @ k_landmarks.T, axis=-1, where=present[None])
        between = jax.nn.softmax(q_landmarks @ k_landmarks.T, axis=-1, where=present[None])
        between = jnp.where(present[:, None] & present[None], between, 0.0)
        landmarks_to_keys = jax.nn.softmax(q_landmarks @ k.T, axis=-1, where=real[None])
        landmarks_to_keys = jnp.where(present[:, None] & real[None], landmarks_to_keys, 0.0)
        return queries_to_landmarks @ (iterative_pinv(between, pinv_iterations)
                                       @ (landmarks_to_keys @ v))

    return jax.vmap(attend)(q, k, v, real)


attention.ATTENTIONS.register('nystrom', nystrom, trusted=True)
