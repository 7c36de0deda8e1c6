"""Random features for kernelised attention.

Two kinds of small, swappable function live here (as in the Performer's `fast_attention.py`),
each in a `registry.Registry`, selected by name or as `MODULE:NAME` in the config:

* **Projection samplers** `sampler(key, m, d) -> F [m, d]` (`model.projection`): the random
  matrix whose rows are the random features. `orthogonal` (the released code's default: QR blocks
  of d x d without sign correction, rows rescaled by chi-distributed norms), `orthogonal_haar`
  (the same with Haar-distributed blocks: isotropic rows) and `iid` Gaussian rows.
* **Feature maps** `phi(x [..., d], F [m, d]) -> [..., m']` (`model.feature_map`), non-negative,
  such that `phi(q) . phi(k)` estimates a kernel `K(q, k)` (m' is usually m). `softmax_kernel` is
  the positive random-feature map of ENLA, an estimator of `exp(q . k)`; `softmax_kernel_stable`
  the same up to factors that cancel in ENLA's ratio, safe from overflow and underflow at large k
  or in low precision; `favor_hyperbolic` FAVOR+'s hyperbolic estimator of `exp(q . k)` (width
  2m); `relu` is Performer's ReLU map; `elu_plus_one` the deterministic map of Katharopoulos et
  al.'s linear attention (width d, no random features). A map's options are its own keyword arguments with
  defaults, set in the spec (`'softmax_kernel(eps=0.0)'`; the additive constant `eps` of the
  softmax-kernel map is the released 1e-4); `model.kernel_eps` is a shorthand for the `eps`
  option. A map may also take a keyword `is_query: bool`, which ENLA then passes (queries and
  keys may be treated differently). ENLA maps queries a block of rows at a time: a map must
  treat query rows independently. `check_feature_map` runs a map as ENLA does.
"""

from __future__ import annotations

import functools
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


def _orthogonal_blocks(key: Array, m: int, d: int, *, haar: bool) -> Array:
    """`m` rows, orthogonal within blocks of `d`, rescaled by chi(d)-distributed norms.

    Each block is the transposed Q factor of a `[d, d]` standard Gaussian matrix (as in
    Performer's `gaussian_orthogonal_random_matrix`); with `haar`, Q's columns are first
    multiplied by the signs of R's diagonal, which makes Q Haar-distributed. Each row is then
    multiplied by the norm of an independent standard Gaussian vector of dimension d. Float32
    `[m, d]`; O(ceil(m / d) d^3) time.
    """
    n_blocks = -(-m // d)
    block_key, norm_key = jax.random.split(key)
    gaussian = jax.random.normal(block_key, (n_blocks, d, d), jnp.float32)
    q, r = jnp.linalg.qr(gaussian)
    if haar:
        q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    rows = jnp.swapaxes(q, -1, -2).reshape(n_blocks * d, d)[:m]
    norms = jnp.linalg.norm(jax.random.normal(norm_key, (m, d), jnp.float32), axis=-1)
    return rows * norms[:, None]


def orthogonal_gaussian_projection(key: Array, m: int, d: int) -> Array:
    """Draws `m` rows that are exactly orthogonal within blocks of `d` rows, as the released
    code does (`orthogonal`, the default).

    Each block is the Q factor of the QR decomposition of a `[d, d]` Gaussian matrix,
    transposed, without sign correction (as Performer's `gaussian_orthogonal_random_matrix`);
    rows are rescaled by the norms of independent Gaussian vectors (chi-distributed with d
    degrees of freedom), so each row's norm is distributed as a Gaussian vector's, but its
    direction is not uniform: QR's signs (Householder, as LAPACK computes it) make row j of a
    block lean along axis j, its j-th coordinate averaging about -0.8 for the first rows (-sqrt(2 /
    pi) for j = 0, where it is never positive), shrinking towards -0.5 for later ones, and
    about +0.5 for the last (measured at d = 16 over 4000 draws). The softmax-kernel estimate
    with these rows is therefore not exactly unbiased; `orthogonal_haar` removes the lean.
    Returns float32 `[m, d]`; O(ceil(m / d) d^3) time.
    """
    return _orthogonal_blocks(key, m, d, haar=False)


def haar_orthogonal_projection(key: Array, m: int, d: int) -> Array:
    """Draws `m` rows orthogonal within blocks of `d`, each block Haar-distributed
    (`orthogonal_haar`).

    As `orthogonal`, with QR's sign ambiguity removed (Q's columns multiplied by the signs of R's
    diagonal; Mezzadri, "How to generate random matrices from the classical compact groups",
    Notices AMS 2007), so a block is a uniformly random orthogonal matrix and, after the
    chi(d) norm scaling, each row is marginally a standard Gaussian vector: the softmax-kernel
    features then estimate exp(q . k) without bias (Choromanski et al., ICLR 2021, orthogonal
    random features). Returns float32 `[m, d]`; O(ceil(m / d) d^3) time.
    """
    return _orthogonal_blocks(key, m, d, haar=True)


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



def hyperbolic_features(x: Array, projection: Array) -> Array:
    """FAVOR+'s hyperbolic positive random features (`favor_hyperbolic`; Choromanski et al.,
    "Rethinking Attention with Performers", ICLR 2021, Lemma 1):

    `phi(u) = exp(-|u|^2 / 2) / sqrt(2 m) [exp(F u), exp(-F u)]`, `[..., d] -> [..., 2 m]`.

    `phi(q) . phi(k) = mean_i exp(-(|q|^2 + |k|^2) / 2) cosh(w_i . (q + k))`: each row of F is
    used with both signs (antithetic), so the estimate of exp(q . k) is unbiased for Gaussian
    rows and its variance is lower than `softmax_kernel`'s with the same m rows (2 m features).
    It is unchanged when any row's sign flips, so `orthogonal` and `orthogonal_haar` give the
    same features. O(N m d) time, O(N m) memory, twice `softmax_kernel`'s feature width.

    Measured (ENLA output against exact softmax attention, relative L2 error, |q|^2 = |k|^2 = 6,
    d = 16, N = 256, m = 64 rows, 3 inputs x 64 draws): 1.51 with `orthogonal` rows (1.63
    iid), against 1.57 (1.70) for `softmax_kernel(eps=0)` and 1.77 (1.78) for FAVOR++'s
    generalised exponential features with the variance-optimal A (Likhosherstov et al., NeurIPS
    2022), whose kernel estimate has a 3x lower RMSE but whose attention output is worse here.
    """
    m = projection.shape[0]
    proj = jnp.einsum('...d,md->...m', x, projection)
    half_norm = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    both = jnp.concatenate([proj - half_norm, -proj - half_norm], axis=-1)
    return jnp.exp(both) * ((2 * m) ** -0.5)


def elu_plus_one_features(x: Array, projection: Array) -> Array:
    """`phi(u) = elu(u) + 1`, the deterministic map of linear attention (`elu_plus_one`;
    Katharopoulos et al., "Transformers are RNNs", ICML 2020, Eq. 7).

    `[..., d] -> [..., d]`, positive; `projection` is ignored (no random features). ENLA with it
    is Katharopoulos et al.'s linear attention: `phi(q_i) . sum_j phi(k_j) v_j^T / phi(q_i) .
    sum_j phi(k_j)`, O(N d c) time and O(N d + d c) memory.
    """
    del projection
    return jax.nn.elu(x) + 1.0

# The amplification the checks run maps and attention at: |q|^2 = |k|^2 = k, the model's default.
CHECK_AMPLIFICATION = 6.0


# The sizes the checks run functions at unless given the model's: m random features of width d.
CHECK_M, CHECK_D = 8, 4


def check_inputs(n: int = 12, d: int = CHECK_D, batch: int = 2,
                 m: int = CHECK_M) -> tuple[Array, Array]:
    """Inputs the checks run functions on, as the model makes them: `x [batch, n, d]` with
    squared norms spread over (0, CHECK_AMPLIFICATION] (the last row of each image at exactly k),
    and an orthogonal Gaussian projection `[m, d]`. Float32."""
    key_x, key_f = jax.random.split(jax.random.key(0))
    directions = jax.random.normal(key_x, (batch, n, d), jnp.float32)
    directions /= jnp.linalg.norm(directions, axis=-1, keepdims=True)
    norms = jnp.sqrt(jnp.linspace(0.05, 1.0, n) * CHECK_AMPLIFICATION)
    return directions * norms[:, None], orthogonal_gaussian_projection(key_f, m, d)


def check_feature_map(fn: FeatureMap, m: int = CHECK_M, d: int = CHECK_D) -> None:
    """Raises unless `fn` behaves as ENLA runs it, on `check_inputs` (|x|^2 up to k = 6) with m
    random features of width d (the model's `num_random_features` and embedding width, or
    small sizes); O(m d) per input row:

    * `fn(x [B, N, d], F [m, d]) -> [B, N, m']` (any width m' >= 1: ENLA only needs
      `phi(q) . phi(k)`), finite and non-negative, for keys (`is_query=False`, the whole
      `[B, N, d]` at once) and for queries (`is_query=True`, `[rows, d]` of one image), when `fn`
      takes `is_query` (both values are passed, as under `jit`);
    * query rows are mapped independently: mapping the rows in blocks (as ENLA does) gives the
      whole array's features;
    * images are mapped independently: one image's key features do not depend on the others'.
    """
    with jax.ensure_compile_time_eval():  # concrete even when first used inside a jit trace
        _check_feature_map_values(fn, m, d)


def _check_feature_map_values(fn: FeatureMap, m: int, d: int) -> None:
    x, projection = check_inputs(d=d, m=m)
    if registry.accepts(fn, 'is_query'):
        key_map = functools.partial(fn, is_query=False)
        query_map = functools.partial(fn, is_query=True)
    else:
        key_map = query_map = fn
    keys = jnp.asarray(key_map(x, projection))
    if keys.ndim != 3 or keys.shape[:2] != x.shape[:2] or keys.shape[-1] < 1:
        raise ValueError(f'phi(x {list(x.shape)}, F [{m}, {d}]) has shape {list(keys.shape)}, '
                         f"expected [{x.shape[0]}, {x.shape[1]}, m'] (phi(x [..., d], F [m, d]) "
                         "-> [..., m'])")
    queries = jnp.asarray(query_map(x[0], projection))
    if queries.shape != keys.shape[1:]:
        raise ValueError(f'phi(x {list(x.shape[1:])}, F, is_query=True) has shape '
                         f'{list(queries.shape)}, the keys\' features {list(keys.shape[1:])}: '
                         'queries and keys need the same feature width')
    for name, out, inputs in (('keys', keys, x), ('queries', queries, x[0])):
        if not bool(jnp.all(jnp.isfinite(out))):
            raise ValueError(f'phi(x, F) of the {name} is not finite at |x|^2 <= '
                             f'{CHECK_AMPLIFICATION:g} (the model runs at |x|^2 = k)')
        if not bool(jnp.all(out >= 0)):
            squared_norms = jnp.sum(inputs * inputs, -1)
            first = float(jnp.min(jnp.where(jnp.min(out, -1) < 0, squared_norms, jnp.inf)))
            raise ValueError(f'phi(x, F) of the {name} is negative at |x|^2 = {first:.2g} (the '
                             f'model runs at |x|^2 = k, {CHECK_AMPLIFICATION:g} by default): ENLA '
                             'needs non-negative features')
    blocked = jnp.concatenate([query_map(rows, projection) for rows in jnp.split(x[0], [5, 7])])
    if not _close(blocked, queries):
        raise ValueError('phi(x, F, is_query=True) of a block of query rows differs from the '
                         'same rows mapped with the others: ENLA maps queries a block at a time, '
                         'so query rows must be mapped independently (statistics over rows are '
                         'allowed for keys only)')
    if not _close(jnp.asarray(key_map(x[1:], projection)), keys[1:]):
        raise ValueError('phi(x, F) of one image\'s keys depends on the other images of the '
                         'batch: images must be mapped independently')


def _close(a: Array, b: Array) -> bool:
    """Equal up to float32 rounding, relative to the largest magnitude."""
    return bool(jnp.max(jnp.abs(a - b)) <= 1e-5 * (jnp.max(jnp.abs(b)) + 1e-30))


def check_projection(fn: ProjectionSampler, m: int = 6, d: int = CHECK_D) -> None:
    """Raises unless `fn(key, m, d)` gives a finite `[m, d]` matrix (the model's sizes, or
    small ones)."""
    with jax.ensure_compile_time_eval():  # concrete even when first used inside a jit trace
        out = jnp.asarray(fn(jax.random.key(0), m, d))
        if out.shape != (m, d):
            raise ValueError(f'sampler(key, m={m}, d={d}) has shape {list(out.shape)}, expected '
                             f'[{m}, {d}] (sampler(key, m, d) -> F [m, d])')
        if not bool(jnp.all(jnp.isfinite(out))):
            raise ValueError('sampler(key, m, d) must be finite')


FEATURE_MAPS: registry.Registry[FeatureMap] = registry.Registry(
    'feature map', 'model.feature_map', check_feature_map)
FEATURE_MAPS.register('softmax_kernel', softmax_kernel_features, trusted=True)
FEATURE_MAPS.register('softmax_kernel_stable', stable_softmax_kernel_features, trusted=True)
FEATURE_MAPS.register('relu', relu_features, trusted=True)
FEATURE_MAPS.register('favor_hyperbolic', hyperbolic_features, trusted=True)
FEATURE_MAPS.register('elu_plus_one', elu_plus_one_features, trusted=True)

PROJECTIONS: registry.Registry[ProjectionSampler] = registry.Registry(
    'projection', 'model.projection', check_projection)
PROJECTIONS.register('orthogonal', orthogonal_gaussian_projection, trusted=True)
PROJECTIONS.register('iid', iid_gaussian_projection, trusted=True)
PROJECTIONS.register('orthogonal_haar', haar_orthogonal_projection, trusted=True)


def get_feature_map(spec: registry.Spec, eps: float | None = None, **sizes: int) -> FeatureMap:
    """The feature map `spec` selects (a name or `MODULE:NAME`, with options, or a callable), its
    `eps` option set to `eps` if given (`model.kernel_eps`, a shorthand for `NAME(eps=...)`),
    checked (`check_feature_map`) at `sizes` (`m`, `d`: the model's) or small ones.

    Raises:
      ValueError: an unknown or invalid map; `eps` for a map without an `eps` option, or for a
        spec that sets `eps` itself.
    """
    return registry.with_option(FEATURE_MAPS.get(spec, **sizes), 'eps', eps, spec=spec,
                                key=FEATURE_MAPS.key, shorthand='model.kernel_eps')


def get_projection(spec: registry.Spec, **sizes: int) -> ProjectionSampler:
    """The projection sampler `spec` selects (a name or `MODULE:NAME`, with options, or a
    callable), checked (`check_projection`) at `sizes` (`m`, `d`: the model's) or small ones."""
    return PROJECTIONS.get(spec, **sizes)


def register_feature_map(name: str, fn: FeatureMap, *, replace: bool = False) -> FeatureMap:
    """Makes `fn(x [..., d], F [m, d]) -> [..., m]` selectable as `model.feature_map=name`."""
    return FEATURE_MAPS.register(name, fn, replace=replace)


def register_projection(name: str, fn: ProjectionSampler, *,
                        replace: bool = False) -> ProjectionSampler:
    """Makes `fn(key, m, d) -> [m, d]` selectable as `model.projection=name`."""
    return PROJECTIONS.register(name, fn, replace=replace)
