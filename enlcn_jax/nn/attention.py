"""Non-local attention over flattened positions: ENLA (linear) and exact softmax NLA.

Both take the same arguments, so a model switches between them by name (`model.attention`,
or `MODULE:NAME` for a researcher's own, see `registry`):

    attention_fn(q [B, N, d], k [B, N, d], v [B, N, c], projection [m, d], feature_map,
                 mask=None) -> [B, N, c]

The model passes three keywords only to a function that takes them:

* `mask [B, N, 1]` (1 on real positions, 0 on padding; it broadcasts against `k` and `v`, as the
  model's `mask [B, H, W, 1]` does against images), when evaluation pads an image: padded
  positions must be left out as keys. Evaluation does not pad for a model whose attention takes
  no mask (`models.ENLCN.masks_padding`).
* `spatial_shape=(H, W)`: the image layout of the N = H W positions (row-major), for attention
  that knows it (local windows, axial attention; `local.window`).
* `layer`: the ordinal of the attention module among the network's attention modules (0 first;
  `ENLCN` gives each block with a `layer` field its ordinal, `ENLCAConfig.attend` passes it), for
  attention that differs between modules (`local.swin` shifts its windows on odd modules).

Options of a function are keyword arguments set in the spec (`'enla(query_block=512)'`).
`check_attention` runs a function as the model does before any model uses it.

`enla` never forms an N x N matrix: it costs O(N m (d + c)) time and O(N m + m c) memory (the
forward holds the key features `[N, m]` and one block of query features at a time).
`exact` is the quadratic baseline `softmax(q k^T) v` (Eq. 1, NLA), O(N^2)
time but blocked over queries so its memory is O(query_block N); it ignores the random features.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from enlcn_jax.nn import blockwise, features, registry

Array = jax.Array
AttentionFn = Callable[..., Array]

# Queries per block of exact softmax attention: [B, 4096, N] floats at a time.
SOFTMAX_QUERY_BLOCK = 4096
# Queries per block of ENLA: [2048, m] features at a time (1 MiB at m = 128: a core's L2 cache).
ENLA_QUERY_BLOCK = 2048


def linear_attention(q_features: Array, k_features: Array, v: Array) -> Array:
    """Kernelised attention `D^-1 phi(Q) (phi(K)^T V)` with `D = diag(phi(Q) phi(K)^T 1_N)`.

    Args:
      q_features: `[B, N, m]` non-negative query features.
      k_features: `[B, N, m]` non-negative key features.
      v: `[B, N, c]` values.
    Returns:
      `[B, N, c]`; row i is the average of the values weighted by `phi(q_i) . phi(k_j)`, and 0
      where every weight is 0 (a map without an additive constant, e.g. ReLU features, can give
      such a row; the guard leaves every other row bit-identical and keeps gradients finite).
    """
    context = jnp.einsum('bnm,bnc->bmc', k_features, v)
    normaliser = jnp.einsum('bnm,bm->bn', q_features, jnp.sum(k_features, axis=1))
    safe_normaliser = jnp.where(normaliser > 0, normaliser, 1.0)
    return jnp.einsum('bnm,bmc->bnc', q_features, context) / safe_normaliser[..., None]


def enla(q: Array, k: Array, v: Array, projection: Array,
         feature_map: features.FeatureMap = features.softmax_kernel_features,
         mask: Array | None = None, query_block: int = ENLA_QUERY_BLOCK) -> Array:
    """Efficient non-local attention (Eq. 6): linear attention on random features of q and k.

    `linear_attention(phi(q), phi(k), v)`, computed so that the `[N, m]` query features never
    exist at once: the keys are summarised first (`phi(K)^T [V, 1]`, `[m, c + 1]`), then the
    queries are mapped and attended `query_block` rows at a time, each block's features staying
    in cache (memory linear in N).
    The gradient is written out (`_attend_in_query_blocks`), so the backward pass is the
    whole-array formula's, not a loop. The feature map must therefore treat query rows
    independently (every registered map does; keys may share statistics, as the stabilised map's
    do).

    Args:
      q, k: `[B, N, d]` (already normalised and amplified by the caller).
      v: `[B, N, c]`.
      projection: `[m, d]` random features.
      feature_map: `phi(x [..., d], F [m, d]) -> [..., m]`, given `is_query=` if it takes it.
      mask: optional `[B, N, 1]`, 0 for keys to leave out (padding), 1 for the others.
      query_block: query rows mapped and attended at once.
    Returns:
      `[B, N, c]`.
    """
    if registry.accepts(feature_map, 'is_query'):
        query_map = functools.partial(feature_map, is_query=True)
        k_features = feature_map(k, projection, is_query=False)
    else:
        query_map, k_features = feature_map, feature_map(k, projection)
    if mask is not None:
        k_features = k_features * mask.astype(k_features.dtype)
    attend = functools.partial(_attend_in_query_blocks, query_map, query_block)
    return jax.vmap(attend, in_axes=(0, None, 0, 0))(q, projection, k_features, v)


def _key_summary(k_features: Array, v: Array) -> Array:
    """`[phi(K)^T V, phi(K)^T 1]`: `[N, m], [N, c] -> [m, c + 1]`."""
    return jnp.concatenate([k_features.T @ v, jnp.sum(k_features, axis=0)[:, None]], axis=-1)


def _normalised(numerator_and_normaliser: Array) -> Array:
    """`[R, c + 1]` -> `[R, c]`: the rows divided by their last column (0 where it is 0)."""
    numerator, normaliser = numerator_and_normaliser[:, :-1], numerator_and_normaliser[:, -1]
    return numerator / jnp.where(normaliser > 0, normaliser, 1.0)[:, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attend_in_query_blocks(query_map: features.FeatureMap, query_block: int, q: Array,
                            projection: Array, k_features: Array, v: Array) -> Array:
    """`linear_attention` of one image with the query features made block by block.

    `q [N, d]`, `projection [m, d]`, `k_features [N, m]`, `v [N, c]` -> `[N, c]`.
    """
    summary = _key_summary(k_features, v)
    return blockwise.map_row_blocks(
        lambda rows: _normalised(query_map(rows, projection) @ summary), q, query_block,
        remat=False)


def _attend_forward(query_map, query_block, q, projection, k_features, v):
    out = _attend_in_query_blocks(query_map, query_block, q, projection, k_features, v)
    return out, (q, projection, k_features, v, out)


def _attend_backward(query_map, query_block, residuals, grad_out):
    """The whole-array gradient of `out = (Qf C) / (Qf s)`, `C = Kf^T V`, `s = Kf^T 1`."""
    del query_block
    q, projection, k_features, v, out = residuals
    q_features, map_vjp = jax.vjp(query_map, q, projection)
    summary = _key_summary(k_features, v)                                      # [m, c + 1]
    normaliser = q_features @ summary[:, -1]                                   # [N]
    has_weight = normaliser > 0
    safe = jnp.where(has_weight, normaliser, 1.0)
    grad_numerator = grad_out / safe[:, None]                                  # [N, c]
    grad_normaliser = jnp.where(has_weight, -jnp.sum(grad_out * out, axis=-1) / safe, 0.0)
    grad_rows = jnp.concatenate([grad_numerator, grad_normaliser[:, None]], axis=-1)
    grad_summary = q_features.T @ grad_rows                                    # [m, c + 1]
    grad_q_features = grad_rows @ summary.T                                    # [N, m]
    grad_q, grad_projection = map_vjp(grad_q_features)
    grad_k_features = v @ grad_summary[:, :-1].T + grad_summary[:, -1]         # [N, m]
    grad_v = k_features @ grad_summary[:, :-1]                                 # [N, c]
    return grad_q, grad_projection, grad_k_features, grad_v


_attend_in_query_blocks.defvjp(_attend_forward, _attend_backward)


def exact_attention(q: Array, k: Array, v: Array, projection: Array | None = None,
                    feature_map: features.FeatureMap | None = None,
                    mask: Array | None = None,
                    query_block: int = SOFTMAX_QUERY_BLOCK) -> Array:
    """Exact non-local attention `softmax_j(q_i . k_j) v_j` (Eq. 1): O(N^2) time.

    Queries are processed `query_block` at a time (each block rematerialised in the backward
    pass), so the largest intermediate is `[B, query_block, N]` rather than `[B, N, N]`: exact
    NLA evaluates on whole benchmark images. With `N <= query_block` it is one block.
    `projection` and `feature_map` are accepted for a common signature with `enla` and unused.

    Args:
      q, k: `[B, N, d]`.
      v: `[B, N, c]`.
      mask: optional `[B, N, 1]`, 0 for keys to leave out (padding), 1 for the others.
    Returns:
      `[B, N, c]`.
    """
    del projection, feature_map
    keys = jnp.ones(k.shape[:2], k.dtype) if mask is None else mask[..., 0]  # [B, N]

    def attend(q_block: Array, k: Array, v: Array, keys: Array) -> Array:  # [n, d] -> [n, c]
        weights = jax.nn.softmax(q_block @ k.T, axis=-1, where=keys[None, :] > 0)
        return weights @ v

    if q.shape[1] <= query_block:
        return jax.vmap(attend)(q, k, v, keys)
    return jax.vmap(lambda q, k, v, keys: blockwise.map_row_blocks(
        lambda q_block: attend(q_block, k, v, keys), q, query_block))(q, k, v, keys)


def check_attention(fn: AttentionFn, m: int = features.CHECK_M,
                    d: int = features.CHECK_D) -> None:
    """Raises unless `fn` behaves as the ENLCA module runs it, under `jit`, on
    `features.check_inputs` (|q|^2 = |k|^2 up to k = 6) with the softmax-kernel map, m random
    features of width d (the model's `num_random_features` and embedding width, or small sizes):

    * `fn(q, k [2, 12, d], v [2, 12, 3], F [m, d], phi)` is finite `[2, 12, 3]`, with
      `spatial_shape=(3, 4)` if `fn` takes it;
    * if `fn` takes `mask`: the images padded to 4 x 6 with `mask [2, 24, 1]` give the unpadded
      output at the real positions (evaluation pads images and relies on it).
    """
    with jax.ensure_compile_time_eval():  # concrete even when first used inside a jit trace
        _check_attention_values(fn, m, d)


def _check_attention_values(fn: AttentionFn, m: int, d: int) -> None:
    (h, w), (padded_h, padded_w) = (3, 4), (4, 6)
    q, projection = features.check_inputs(n=h * w, d=d, m=m)
    k = q[:, ::-1]
    v = jnp.linspace(-1.0, 1.0, q.shape[0] * h * w * 3, dtype=jnp.float32).reshape(-1, h * w, 3)

    def run(q, k, v, spatial_shape, **mask):
        spatial = {'spatial_shape': spatial_shape} if registry.accepts(fn, 'spatial_shape') else {}
        call = lambda q, k, v, projection, **mask: fn(
            q, k, v, projection, features.softmax_kernel_features, **mask, **spatial)
        return jnp.asarray(jax.jit(call)(q, k, v, projection, **mask))

    out = run(q, k, v, (h, w))
    if out.shape != v.shape:
        raise ValueError(f'attention(q, k {list(q.shape)}, v {list(v.shape)}, F [{m}, {d}], phi) '
                         f'has shape {list(out.shape)}, expected {list(v.shape)}')
    if not bool(jnp.all(jnp.isfinite(out))):
        raise ValueError('attention output is not finite at |q|^2 = |k|^2 <= '
                         f'{features.CHECK_AMPLIFICATION:g} (the model runs at k)')
    if not registry.accepts(fn, 'mask'):
        return

    def pad(x, fill):  # [B, h w, c] -> [B, padded_h padded_w, c], `fill` at the new positions
        x = x.reshape(x.shape[0], h, w, -1)
        x = jnp.pad(x - fill, ((0, 0), (0, padded_h - h), (0, padded_w - w), (0, 0))) + fill
        return x.reshape(x.shape[0], padded_h * padded_w, -1)

    mask = pad(jnp.ones_like(v[..., :1]), 0.0)
    padded = run(pad(q, q[:, :1, None]), pad(k, q[:, :1, None]), pad(v, 10.0), (padded_h, padded_w),
                 mask=mask)
    real = padded.reshape(-1, padded_h, padded_w, 3)[:, :h, :w].reshape(out.shape)
    difference = float(jnp.max(jnp.abs(real - out)))
    if not difference <= 1e-4 * float(jnp.max(jnp.abs(out))):
        raise ValueError(f'with mask, the output on an image padded from {h}x{w} to '
                         f'{padded_h}x{padded_w} differs from the unpadded output by '
                         f'{difference:.3g}: positions where mask is 0 must be left out as keys '
                         '(evaluation pads images); or take no mask, and evaluation does not pad')


ATTENTIONS: registry.Registry[AttentionFn] = registry.Registry(
    'attention', 'model.attention', check_attention)
ATTENTIONS.register('enla', enla, trusted=True)
ATTENTIONS.register('exact', exact_attention, trusted=True)


def get_attention(spec: registry.Spec, **sizes: int) -> AttentionFn:
    """The attention function `spec` selects (a name or `MODULE:NAME`, with options, or a
    callable; 'none' is the model's setting for no ENLCA modules, not an attention function),
    checked (`check_attention`) at `sizes` (`m`, `d`: the model's) or small ones."""
    return ATTENTIONS.get(spec, **sizes)


def register_attention(name: str, fn: AttentionFn, *, replace: bool = False) -> AttentionFn:
    """Makes `fn(q, k, v, projection, feature_map[, mask][, spatial_shape])` selectable as
    `model.attention=name`."""
    return ATTENTIONS.register(name, fn, replace=replace)
