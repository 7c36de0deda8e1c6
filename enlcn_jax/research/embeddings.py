"""The attention inputs a model's attention module receives, read for one image: what the research
tools (`attention_maps`, `kernel_study`) work on.

Every attention block sows `('intermediates', 'embeddings')` = `(q, k, v)` exactly as its
attention receives them (the block contract, `models.check_block`): q, k `[B, N, d]` normalised
and amplified, v `[B, N, c]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from enlcn_jax.nn import models

Array = jax.Array
IMAGE_EXPECTED = 'expected an RGB image [H, W, 3], uint8 (0..255) or float in [0, 1]'


def model_input(image: np.ndarray) -> np.ndarray:
    """The network's input for an RGB image: float32 `[H, W, 3]` in [0, 1].

    Args:
      image: `[H, W, 3]`, uint8 (divided by 255) or float with values in [0, 1] (used as is).
    Raises:
      ValueError: another shape or dtype, or a float image with values outside [0, 1] (one line
        naming the expected input).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise ValueError(f'image of shape {list(image.shape)}: {IMAGE_EXPECTED}')
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f'image of dtype {image.dtype}: {IMAGE_EXPECTED}')
    if not np.all(np.isfinite(image)):
        raise ValueError(f'{image.dtype} image with NaN or infinite values: {IMAGE_EXPECTED}')
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f'{image.dtype} image with values from {image.min():g} to '
                         f'{image.max():g}: {IMAGE_EXPECTED}')
    return image.astype(np.float32)


def attention_modules(model: models.ENLCN) -> list[str]:
    """The names (`body_<i>`) of the model's attention modules in body order: module 0 first."""
    return [f'body_{i}' for i, kind in enumerate(model.body_layout()) if kind == 'enlca']


def module_embeddings(model: models.ENLCN, variables: dict, image: np.ndarray,
                      module: int) -> tuple[Array, Array, Array, str]:
    """The attention inputs of one attention module for one image, as the block sows them
    (`models.check_block`).

    Args:
      image: `[H, W, 3]` LR input, uint8 or float in [0, 1] (`model_input`).
      module: index among the attention modules (0 = the first).
    Returns:
      `(q [N, d], k [N, d], v [N, c], name)`: the queries and keys (normalised and amplified)
      and values the module's attention receives at the N = H W positions, and the module's
      name (`body_<i>`).
    Raises:
      ValueError: a model without attention modules, or `module` out of range.
    """
    x = jnp.asarray(model_input(image))[None]
    names = attention_modules(model)
    if not names:
        raise ValueError("the model has no attention module (attention='none')")
    if not 0 <= module < len(names):
        raise ValueError(f'module {module} out of range: the model has {len(names)} attention '
                         f'modules (0 to {len(names) - 1})')
    def embeddings(variables: dict, x: Array) -> tuple[Array, Array, Array]:  # XLA drops the rest
        _, state = model.apply(variables, x, mutable=['intermediates'])
        q, k, v = state['intermediates'][names[module]]['embeddings'][0]
        return q[0], k[0], v[0]

    return (*jax.jit(embeddings)(variables, x), names[module])


def unit_directions(x: Array) -> Array:
    """`x / |x|` over the last axis (a zero row stays zero). `[..., d] -> [..., d]`."""
    return models.l2_normalize(x, float(jnp.finfo(jnp.float32).tiny))
