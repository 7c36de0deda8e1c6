"""Random features for kernelised attention.

Two kinds of small, swappable function live here (as in the Performer's `fast_attention.py`),
each in a `registry.Registry`, selected by name or as `MODULE:NAME` in the config:

* **Projection samplers** `sampler(key, m, d) -> F [m, d]` (`model.projection`): the random
  matrix whose rows are the random features. `orthogonal` (the released code's default: QR blocks
  of d x d, rows rescaled by chi-distributed norms) and `iid` Gaussian rows.
* **Feature maps** `phi(x [..., d], F [m, d]) -> [..., m]` (`model.feature_map`), non-negative,
  such that `phi(q) . phi(k)` estimates a kernel `K(q, k)`. `softmax_kernel` is the positive
  random-feature map of ENLA, an estimator of `exp(q . k)`; `softmax_kernel_stable` the same up to
  factors that cancel in ENLA's ratio, safe from overflow and underflow at large k or in low
  precision; `relu` is Performer's ReLU map. A map's options are its own keyword arguments with
  defaults (the additive constant `eps` of the softmax-kernel map: the released 1e-4);
  `model.kernel_eps` sets `eps` of a map that has one. A map may also take a keyword
  `is_query: bool`, which ENLA then passes (queries and keys may be treated differently). ENLA
  maps queries a block of rows at a time: a map must treat query rows independently.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from enlcn_jax.nn import registry

Array = jax.Array
FeatureMap = Callable[[Array, Array], Array]
ProjectionSampler = Callable[[Array, int, int], Array]

# The released code adds this constant inside the softmax feature map (docs/method.md).
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


def _softmax_kernel_exponent(x: Array, projection: Array) -> Array:
    """`F x - |x|^2 / 2`: the exponent of the positive random features. `[..., d] -> [..., m]`."""
    proj = jnp.einsum('...d,md->...m', x, projection)
    return proj - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)


def softmax_kernel_features(x: Array, projection: Array,
                            eps: float = SOFTMAX_KERNEL_EPS) -> Array:
    """Positive random features for the softmax kernel `exp(q . k)` (ENLA, Eq. 5).

    `phi(u) = (exp(F u - |u|^2 / 2) + eps) / sqrt(m)`, exactly as released (no max-subtraction).
    With iid Gaussian rows and eps = 0, `E[phi(q) . phi(k)] = exp(q . k)`.

    Args:
        x: `[..., d]` inputs.
        projection: `[m, d]` random features F.
        eps: constant added inside (1e-4 in the released code, 0 in the paper).
    Returns:
        `[..., m]` non-negative features.
    """
    m = projection.shape[0]
    return (jnp.exp(_softmax_kernel_exponent(x, projection)) + eps) * (m ** -0.5)


def stable_softmax_kernel_features(x: Array, projection: Array,
                                   eps: float = SOFTMAX_KERNEL_EPS, *,
                                   is_query: bool = False) -> Array:
    """`softmax_kernel_features(x, F, eps) * exp(-c)`, computed without forming `exp(c)`.

    The Performer's stabiliser: queries are shifted per row (`c` over the m features of each
    position), keys by one constant per image (`c` over all positions and features, the last two
    axes), with `c = max(largest exponent, log eps)`, so every term is at most 1. Nothing
    overflows, and at large amplification, where every `exp(F x - |x|^2 / 2)` underflows in
    float32, the features keep their ratios. ENLA divides by the same features' sum, so the
    factors cancel: the attention equals the unstabilised map's up to rounding. The features
    alone are not estimates of `exp(q . k)`. `[..., d] -> [..., m]`; ENLA passes `is_query`.
    """
    m = projection.shape[0]
    exponent = _softmax_kernel_exponent(x, projection)
    axes = -1 if is_query else tuple(range(max(exponent.ndim - 2, 0), exponent.ndim))
    log_eps = jnp.log(jnp.float32(eps))  # -inf for eps = 0
    shift = jax.lax.stop_gradient(
        jnp.maximum(jnp.max(exponent, axis=axes, keepdims=True), log_eps))
    return (jnp.exp(exponent - shift) + jnp.exp(log_eps - shift)) * (m ** -0.5)


def relu_features(x: Array, projection: Array, eps: float = 1e-3) -> Array:
    """Performer's ReLU random features: `(relu(F x) + eps) / sqrt(m)`. `[..., d] -> [..., m]`."""
    m = projection.shape[0]
    return (jax.nn.relu(jnp.einsum('...d,md->...m', x, projection)) + eps) * (m ** -0.5)


def check_feature_map(fn: FeatureMap) -> None:
    """Raises unless `fn(x [2, 3, 4], F [5, 4])` gives finite, non-negative `[2, 3, 5]`."""
    with jax.ensure_compile_time_eval():  # concrete even when first used inside a jit trace
        _check_feature_map_values(fn)


def _check_feature_map_values(fn: FeatureMap) -> None:
    x = jnp.linspace(-0.5, 0.5, 24, dtype=jnp.float32).reshape(2, 3, 4)
    projection = jnp.linspace(-1.0, 1.0, 20, dtype=jnp.float32).reshape(5, 4)
    out = jnp.asarray(fn(x, projection))
    if out.shape != (2, 3, 5):
        raise ValueError(f'phi(x [2, 3, 4], F [5, 4]) has shape {list(out.shape)}, expected '
                         '[2, 3, 5] (phi(x [..., d], F [m, d]) -> [..., m])')
    if not bool(jnp.all(jnp.isfinite(out)) & jnp.all(out >= 0)):
        raise ValueError('phi(x, F) must be finite and non-negative')


def check_projection(fn: ProjectionSampler) -> None:
    """Raises unless `fn(key, 6, 4)` gives a finite `[6, 4]` matrix."""
    with jax.ensure_compile_time_eval():  # concrete even when first used inside a jit trace
        out = jnp.asarray(fn(jax.random.key(0), 6, 4))
        if out.shape != (6, 4):
            raise ValueError(f'sampler(key, m=6, d=4) has shape {list(out.shape)}, expected '
                             '[6, 4] (sampler(key, m, d) -> F [m, d])')
        if not bool(jnp.all(jnp.isfinite(out))):
            raise ValueError('sampler(key, m, d) must be finite')


FEATURE_MAPS: registry.Registry[FeatureMap] = registry.Registry(
    'feature map', 'model.feature_map', check_feature_map,
    aliases={'softmax': 'softmax_kernel'})
FEATURE_MAPS.register('softmax_kernel', softmax_kernel_features)
FEATURE_MAPS.register('softmax_kernel_stable', stable_softmax_kernel_features)
FEATURE_MAPS.register('relu', relu_features)

PROJECTIONS: registry.Registry[ProjectionSampler] = registry.Registry(
    'projection', 'model.projection', check_projection)
PROJECTIONS.register('orthogonal', orthogonal_gaussian_projection)
PROJECTIONS.register('iid', iid_gaussian_projection)


def get_feature_map(spec: str, eps: float | None = None) -> FeatureMap:
    """The feature map `spec` selects (a name or `MODULE:NAME`), its `eps` option set if given.

    Raises:
      ValueError: an unknown or invalid map, or `eps` for a map without an `eps` argument.
    """
    feature_map = FEATURE_MAPS.get(spec)
    if eps is None:
        return feature_map
    if not accepts(feature_map, 'eps'):
        raise ValueError(f'model.kernel_eps={eps} sets the eps option of a feature map, and '
                         f'{spec!r} has none: leave model.kernel_eps unset (None)')
    return functools.partial(feature_map, eps=eps)


def accepts(feature_map: FeatureMap, option: str) -> bool:
    """Whether `feature_map` takes the keyword `option` (`eps`, `is_query`: see the module
    docstring)."""
    return option in inspect.signature(feature_map).parameters


def get_projection(spec: str) -> ProjectionSampler:
    """The projection sampler `spec` selects (a name or `MODULE:NAME`)."""
    return PROJECTIONS.get(spec)


def register_feature_map(name: str, fn: FeatureMap, *, replace: bool = False) -> FeatureMap:
    """Makes `fn(x [..., d], F [m, d]) -> [..., m]` selectable as `model.feature_map=name`."""
    return FEATURE_MAPS.register(name, fn, replace=replace)


def register_projection(name: str, fn: ProjectionSampler, *,
                        replace: bool = False) -> ProjectionSampler:
    """Makes `fn(key, m, d) -> [m, d]` selectable as `model.projection=name`."""
    return PROJECTIONS.register(name, fn, replace=replace)
