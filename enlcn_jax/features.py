"""Random features for kernelised attention.

Two kinds of object live here, both small and swappable (as in the Performer's
`fast_attention.py`):

* **Projection samplers** `sampler(key, m, d) -> F [m, d]`: the random matrix whose rows
    are the random features. `orthogonal` (the released code's default: QR blocks of d x d,
    rows rescaled by chi-distributed norms) and `iid` Gaussian rows.
* **Feature maps** `feature_map(x [..., d], F [m, d]) -> phi(x) [..., m]`, non-negative, such that
    `phi(q) . phi(k)` estimates a kernel `K(q, k)`. `softmax` is the positive random-feature map
    of ENLA, an unbiased estimator of `exp(q . k)`; `relu` is the ReLU feature map of Performer.

Researchers add their own with `register_feature_map` / `register_projection` and select them
by name in the config (`model.feature_map`, `model.projection`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
FeatureMap = Callable[[Array, Array], Array]
ProjectionSampler = Callable[[Array, int, int], Array]

# The released code adds this constant inside the softmax feature map (SPEC: "feature map").
SOFTMAX_KERNEL_EPS = 1e-4


def iid_gaussian_projection(key: Array, m: int, d: int) -> Array:
    """Draws `m` iid standard Gaussian rows. Returns float32 `[m, d]`."""
    return jax.random.normal(key, (m, d), jnp.float32)


def orthogonal_gaussian_projection(key: Array, m: int, d: int) -> Array:
    """Draws `m` Gaussian rows that are exactly orthogonal within blocks of `d` rows.

    Each block is the Q factor of a `[d, d]` Gaussian matrix (transposed, as in Performer's
    `gaussian_orthogonal_random_matrix`); rows are rescaled by the norms of independent
    Gaussian vectors (chi-distributed with d degrees of freedom) so each row is marginally
    a standard Gaussian vector. Returns float32 `[m, d]`.
    """
    n_blocks = -(-m // d)
    block_key, norm_key = jax.random.split(key)
    gaussian = jax.random.normal(block_key, (n_blocks, d, d), jnp.float32)
    q, _ = jnp.linalg.qr(gaussian)
    rows = jnp.swapaxes(q, -1, -2).reshape(n_blocks * d, d)[:m]
    norms = jnp.linalg.norm(jax.random.normal(norm_key, (m, d), jnp.float32), axis=-1)
    return rows * norms[:, None]


def softmax_kernel_features(x: Array, projection: Array,
                                                        eps: float = SOFTMAX_KERNEL_EPS) -> Array:
    """Positive random features for the softmax kernel `exp(q . k)` (ENLA, Eq. 5).

    `phi(u) = (exp(F u - |u|^2 / 2) + eps) / sqrt(m)`, exactly as released (no max-subtraction).
    With iid Gaussian rows and eps = 0, `E[phi(q) . phi(k)] = exp(q . k)`.

    Args:
        x: `[..., d]` inputs.
        projection: `[m, d]` random features F.
        eps: constant added inside (1e-4 in the released code).
    Returns:
        `[..., m]` non-negative features.
    """
    m = projection.shape[0]
    proj = jnp.einsum('...d,md->...m', x, projection)
    sq_norm = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    return (jnp.exp(proj - sq_norm) + eps) * (m ** -0.5)


def relu_features(x: Array, projection: Array, eps: float = 1e-3) -> Array:
    """Performer's ReLU random features: `(relu(F x) + eps) / sqrt(m)`. `[..., d] -> [..., m]`."""
    m = projection.shape[0]
    return (jax.nn.relu(jnp.einsum('...d,md->...m', x, projection)) + eps) * (m ** -0.5)


FEATURE_MAPS: dict[str, FeatureMap] = {
        'softmax': softmax_kernel_features,
        'relu': relu_features,
}

PROJECTIONS: dict[str, ProjectionSampler] = {
        'orthogonal': orthogonal_gaussian_projection,
        'iid': iid_gaussian_projection,
}


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f'unknown {kind} {name!r}; known: {sorted(table)} '
                                          f'(add one with register_{kind.replace(" ", "_")})')
    return table[name]


def get_feature_map(name: str, eps: float | None = None) -> FeatureMap:
    """Returns the feature map registered under `name` (ValueError naming the known ones).

    `eps`, if given, replaces the map's own additive constant (`eps` keyword).
    """
    feature_map = _lookup(FEATURE_MAPS, 'feature map', name)
    return feature_map if eps is None else functools.partial(feature_map, eps=eps)


def get_projection(name: str) -> ProjectionSampler:
    """Returns the projection sampler registered under `name`."""
    return _lookup(PROJECTIONS, 'projection', name)


def register_feature_map(name: str, fn: FeatureMap) -> None:
    """Makes `fn(x [..., d], F [m, d]) -> [..., m]` selectable as `model.feature_map=name`."""
    FEATURE_MAPS[name] = fn


def register_projection(name: str, fn: ProjectionSampler) -> None:
    """Makes `fn(key, m, d) -> [m, d]` selectable as `model.projection=name`."""
    PROJECTIONS[name] = fn
