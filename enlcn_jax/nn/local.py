"""Local attention over the image layout: `window` and `swin`.

Both are exact softmax attention `softmax_j(q_i . k_j) v_j` restricted to the keys of the query's
own `window x window` tile of the `H x W` image (`spatial_shape`, positions in row-major order);
they ignore the random features.

* `window`: non-overlapping tiles anchored at the top-left corner (the last row and column of
  tiles cut by the image border), as in the window attention of SwinIR (Liang et al., ICCVW 2021).
  `window(window=4)` is a window the size of one mosaic cell.
* `swin`: Swin Transformer's shifted windows (Liu et al., "Swin Transformer: Hierarchical Vision
  Transformer using Shifted Windows", ICCV 2021, Sec. 3.2): attention module `layer` (its ordinal
  among the network's attention modules, which the model passes to a function that takes
  `layer`) uses the plain grid when even, and when odd the grid shifted by `shift` (default
  window // 2): tile boundaries at `shift + j window` on both axes (the first row and column of
  tiles `shift` wide), so consecutive modules connect neighbouring tiles. Swin computes the
  shifted partition as a cyclic roll by `-shift` plus masks that keep wrapped-around regions
  apart; on an unpadded image whose sides are multiples of `window` (Swin pads to that) this is
  exactly that partition, each masked sub-window of the rolled image being one cut tile here.
  The shifted grid needs no roll, so padding at the bottom and right (evaluation's) changes no
  real tile, and the padded output equals the unpadded one.

Cost, with w = `window`: O(N w^2 (d + c)) time and O(N w^2) memory (the scores of every tile at
once; a tile cut by the border or by the offset is computed at full size, so N grows to at most
(H + w)(W + w)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from enlcn_jax.nn import attention

Array = jax.Array


def tiled_attention(q: Array, k: Array, v: Array, mask: Array | None,
                    spatial_shape: tuple[int, int], window: int, offset: int) -> Array:
    """Softmax attention within `window x window` tiles anchored at `(-offset, -offset)`.

    Args:
      q, k: `[B, N, d]`, N = H W positions in row-major order.
      v: `[B, N, c]`.
      mask: optional `[B, N, 1]`, 1 on real positions, 0 on padding (left out as keys).
      spatial_shape: `(H, W)`.
      window: tile side, >= 1.
      offset: grid offset in `[0, window)`; position `(y, x)` is in tile
        `((y + offset) // window, (x + offset) // window)`.
    Returns:
      `[B, N, c]`, float32 like the inputs.
    """
    if window < 1 or not 0 <= offset < window:
        raise ValueError(f'window attention: window={window} must be >= 1 and the grid '
                         f'offset {offset} in [0, window)')
    h, w = spatial_shape
    rows, cols = -(-(h + offset) // window), -(-(w + offset) // window)

    def tiles(x):  # [B, N, c] -> [B rows cols, window^2, c], zeros outside the image
        x = x.reshape(x.shape[0], h, w, -1)
        x = jnp.pad(x, ((0, 0), (offset, rows * window - h - offset),
                        (offset, cols * window - w - offset), (0, 0)))
        x = x.reshape(x.shape[0], rows, window, cols, window, -1).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, window * window, x.shape[-1])

    def untiled(x):  # the inverse of `tiles`, the outside cut off
        x = x.reshape(-1, rows, cols, window, window, x.shape[-1]).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(x.shape[0], rows * window, cols * window, -1)
        return x[:, offset:offset + h, offset:offset + w].reshape(x.shape[0], h * w, -1)

    real = jnp.ones_like(q[..., :1]) if mask is None else mask.astype(q.dtype)
    keys = tiles(real)[..., 0] > 0                                      # [T, window^2]
    scores = jnp.einsum('tid,tjd->tij', tiles(q), tiles(k))
    # A tile without a real key (outside the image or all padding) only has discarded rows: they
    # get uniform weights, not 0 / 0.
    scores = jnp.where(keys[:, None, :], scores, jnp.finfo(scores.dtype).min)
    return untiled(jax.nn.softmax(scores, axis=-1) @ tiles(v))


def window(q: Array, k: Array, v: Array, projection: Array | None = None, feature_map=None,
           mask: Array | None = None, *, spatial_shape: tuple[int, int],
           window: int = 8) -> Array:  # pylint: disable=redefined-outer-name
    """Exact softmax attention within non-overlapping `window x window` tiles (see the module).

    Args:
      q, k: `[B, N, d]`, N = H W positions in row-major order.
      v: `[B, N, c]`.
      projection, feature_map: unused (the common signature of attention functions).
      mask: optional `[B, N, 1]`, 1 on real positions, 0 on padding (left out as keys).
      spatial_shape: `(H, W)`.
      window: tile side.
    Returns:
      `[B, N, c]`. Cost O(N window^2 (d + c)) time, O(N window^2) memory.
    """
    del projection, feature_map
    return tiled_attention(q, k, v, mask, spatial_shape, window, 0)


def swin(q: Array, k: Array, v: Array, projection: Array | None = None, feature_map=None,
         mask: Array | None = None, *, spatial_shape: tuple[int, int], layer: int = 0,
         window: int = 8,  # pylint: disable=redefined-outer-name
         shift: int | None = None) -> Array:
    """Swin's (shifted) window attention: `window` tiles, offset by `shift` on odd `layer`s.

    Args:
      q, k, v, projection, feature_map, mask, spatial_shape, window: as `window`.
      layer: the ordinal of the attention module in the network (the model passes it); odd
        modules use the shifted grid.
      shift: where the first tile boundary of odd modules lies, in `[0, window)`; None:
        `window // 2` (Swin's).
    Returns:
      `[B, N, c]`. Cost O(N window^2 (d + c)) time, O(N window^2) memory (N counted with the
      offset tiles' border, at most (H + window)(W + window)).
    """
    del projection, feature_map
    shift = window // 2 if shift is None else shift
    if not 0 <= shift < window:
        raise ValueError(f'swin: shift={shift} must be in [0, window={window})')
    offset = -shift % window if layer % 2 else 0
    return tiled_attention(q, k, v, mask, spatial_shape, window, offset)


attention.ATTENTIONS.register('window', window, trusted=True)
attention.ATTENTIONS.register('swin', swin, trusted=True)
