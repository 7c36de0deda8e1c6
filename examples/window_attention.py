"""Local window attention: an attention function that knows the image layout.

    python train.py --config configs/quickstart.py \
        --config.model.attention='examples.window_attention:window_attention(window=8)'

Each position attends, by exact softmax of `q . k`, to the keys of its own `window x window`
tile of the image (non-overlapping tiles from the top-left corner; the last row and column of
tiles are cut by the image border). The model passes `spatial_shape=(H, W)` because the
function takes it, and `mask` because it takes that too, so evaluation may pad images: padded
positions are left out as keys. The random features are not used.
"""

import jax
import jax.numpy as jnp


def window_attention(q, k, v, projection, feature_map, mask=None, *, spatial_shape,
                     window=8):
    """Softmax attention within `window x window` tiles.

    Args:
      q, k: `[B, N, d]`, N = H W positions in row-major order.
      v: `[B, N, c]`.
      projection, feature_map: unused (the common signature of attention functions).
      mask: optional `[B, N, 1]`, 1 on real positions, 0 on padding (left out as keys).
      spatial_shape: `(H, W)`.
      window: tile side.
    Returns:
      `[B, N, c]`.
    """
    del projection, feature_map
    h, w = spatial_shape
    rows, cols = -(-h // window), -(-w // window)

    def tiles(x):  # [B, N, c] -> [B rows cols, window^2, c], zero-padded to whole tiles
        x = x.reshape(x.shape[0], h, w, -1)
        x = jnp.pad(x, ((0, 0), (0, rows * window - h), (0, cols * window - w), (0, 0)))
        x = x.reshape(x.shape[0], rows, window, cols, window, -1).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, window * window, x.shape[-1])

    def untiled(x):  # the inverse of `tiles`, the padding cut off
        x = x.reshape(-1, rows, cols, window, window, x.shape[-1]).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(x.shape[0], rows * window, cols * window, -1)[:, :h, :w]
        return x.reshape(x.shape[0], h * w, -1)

    real = jnp.ones_like(q[..., :1]) if mask is None else mask.astype(q.dtype)
    keys = tiles(real)[..., 0] > 0                                      # [T, window^2]
    scores = jnp.einsum('tid,tjd->tij', tiles(q), tiles(k))
    # A tile of padding only has no key: its (discarded) rows get uniform weights, not 0 / 0.
    scores = jnp.where(keys[:, None, :], scores, jnp.finfo(scores.dtype).min)
    return untiled(jax.nn.softmax(scores, axis=-1) @ tiles(v))
