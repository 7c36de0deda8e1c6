"""Attention maps (the paper's Figures 1 and 7): for one query position of one attention module,
the attention weights over all positions, as heat maps over the image, under
  * ENLA: random-feature weights on the unit directions q/|q|, k/|k| (no amplification, k = 1),
  * softmax k: the exact kernel that ENLA + k estimates, `softmax(q . k)` on q, k as given,
  * ENLCA (<attention>): the module as it runs, named after its attention function (`enla`,
    `exact` or a researcher's): that function with the module's feature map on q, k as given and
    its recorded random features (`ENLCAConfig.attend`).
q and k are the module's sown embeddings (`embeddings.module_embeddings`). `plot_maps` draws
them over the image (PNG).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from enlcn_jax.nn import features, models, registry
from enlcn_jax.research import plots
from enlcn_jax.research.embeddings import model_input, module_embeddings, unit_directions

Array = jax.Array


def softmax_row(q: Array, k: Array) -> Array:
    """Exact attention weights of one query over all keys, `softmax(k q)`: `q [d]`, `k [N, d]` ->
    `[N]`, summing to one. O(N d)."""
    return jax.nn.softmax(k @ q)


def random_feature_row(q: Array, k: Array, projection: Array,
                       feature_map: features.FeatureMap) -> Array:
    """Random-feature attention weights of one query over all keys, `phi(q) . phi(k_j)`
    normalised to sum to one: `q [d]`, `k [N, d]`, `projection [m, d]` -> `[N]`. O(N m d)."""
    weights = feature_map(k, projection) @ feature_map(q, projection)
    return weights / jnp.sum(weights)


def configured_attention_row(config: models.ENLCAConfig, q: Array, k: Array, projection: Array,
                             i: int, spatial_shape: tuple[int, int]) -> Array:
    """Weights of query `i` over all keys under the configured attention, run as the ENLCA module
    runs it (`ENLCAConfig.attend`, no mask).

    They are the gradient of output `[i, 0]` with respect to a one-channel value `v [N, 1]` (one
    backward pass): exactly the weights of any attention function linear in v (the registered
    ones; their rows sum to one).

    Args:
      q, k: `[N, d]` the module's normalised, amplified queries and keys.
      projection: `[m, d]` the module's random features.
      i: the query's position, row-major in `spatial_shape` = (H, W), N = H W.
    Returns:
      `[N]` weights.
    """
    def output_i(v: Array) -> Array:
        out = config.attend(q[None], k[None], v[None], projection, spatial_shape=spatial_shape)
        return out[0, i, 0]

    return jax.jit(jax.grad(output_i))(jnp.zeros((q.shape[0], 1), q.dtype))[:, 0]

def enlca_map_name(config: models.ENLCAConfig) -> str:
    """The key and panel title of the module's own map in `query_attention_maps`:
    `ENLCA (<attention>)`, e.g. `ENLCA (enla)`, `ENLCA (exact)`, `ENLCA (my_attn:local)`."""
    return f'ENLCA ({registry.describe(config.attention)})'


def query_attention_maps(model: models.ENLCN, variables: dict, image: np.ndarray,
                         pixel: tuple[int, int], module: int = 0) -> dict[str, np.ndarray]:
    """Attention maps `[H, W]` for the query at `pixel` = (x, y) of an image `[H, W, 3]`, uint8 or
    float in [0, 1] (`model_input`): 'ENLA', 'softmax k' and `enlca_map_name`, in that order (see
    the module docstring)."""
    h, w = model_input(image).shape[:2]
    x, y = pixel
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f'pixel (x, y) = ({x}, {y}) is outside the {w}x{h} image')
    q, k, _, name = module_embeddings(model, variables, image, module)
    projection = variables[models.RANDOM_FEATURES][name]['projection']
    config = model.enlca
    i = y * w + x
    q1, k1 = unit_directions(q), unit_directions(k)
    rows = {
        'ENLA': random_feature_row(q1[i], k1, projection, config.feature_map_fn()),
        'softmax k': softmax_row(q[i], k),
        enlca_map_name(config): configured_attention_row(config, q, k, projection, i, (h, w)),
    }
    return {kind: np.asarray(row).reshape(h, w) for kind, row in rows.items()}

def plot_maps(image: np.ndarray, maps: dict[str, np.ndarray], pixel: tuple[int, int],
              out: str | Path, title: str = '') -> Path:
    """Writes the image with the query marked and one heat map per kind, side by side."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 3.4))
    axes[0].imshow(image)
    axes[0].set_title(title or 'query')
    for ax, (kind, weights) in zip(axes[1:], maps.items()):
        ax.imshow(image, alpha=0.35)
        ax.imshow(weights, cmap='jet', alpha=0.65)
        ax.set_title(f'{kind} (max {weights.max():.2g})')
    for ax in axes:
        ax.plot(*pixel, marker='x', color='white', markersize=10, mew=2)
        ax.axis('off')
    return plots.save_figure(fig, out)
