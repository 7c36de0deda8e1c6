"""Super-resolving whole images with a trained model: the `Upscaler`s evaluation and `upscale` use.

Inference (`ModelUpscaler`), batch of one:
  * whole images in one jit-compiled forward. The LR image is padded at the bottom/right up to a
    multiple of `bucket` and the SR output cropped back, so images of nearby sizes share one
    compiled program: a 100-image set compiles a handful of times, not 100. The padding is
    masked (`ENLCN`'s `mask`: zero after every convolution, left out of the attention's keys
    and normaliser), so the result is the unpadded forward's up to float rounding (~1e-7).
  * `tile`: for devices short of memory (automatically, with a warning, when XLA's estimate of
    the whole-image forward exceeds `memory_budget`), the LR image is cut into `tile x tile`
    tiles that overlap by `tile_overlap` pixels; each output pixel is taken from the tile in
    which it lies furthest from a cut (no blending), so every kept pixel has at least `tile_overlap // 2`
    pixels of real context. For a convolutional model (attention='none') whose receptive-field
    radius is at most that, the result equals the whole-image output; with ENLCA the attention
    only sees one tile, which changes the output.
  * `self_ensemble`: the 8 dihedral transforms of the input (`transforms.dihedral`), each output
    transformed back and averaged before quantisation (EDSR's x8 ensemble, "+").
"""

from __future__ import annotations

import copy
import os
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from enlcn_jax.data import transforms

from enlcn_jax.evaluation import memory, metrics

from enlcn_jax.nn import models, registry

from enlcn_jax.storage import checkpoints
from enlcn_jax.data.imresize import imresize


class Upscaler(Protocol):
    """LR `uint8 [H, W, 3]` -> SR `uint8 [H s, W s, 3]`, plus what the results report:
    `compiled_shapes`, the input shapes compiled so far (one per compilation), `precision`,
    the dtype the upscaling computes in, and `checkpoint_step`, the training step of the
    workdir checkpoint it runs (None for a model directory and the bicubic baseline)."""
    name: str
    scale: int
    precision: str
    compiled_shapes: Sequence[tuple[int, ...]]
    checkpoint_step: int | None

    def __call__(self, lr: np.ndarray) -> np.ndarray: ...


class BicubicUpscaler:
    """The bicubic baseline: MATLAB `imresize(lr, s)` on the uint8 image (rounded per axis)."""

    name = 'bicubic'
    compiled_shapes = ()
    precision = 'float64'
    checkpoint_step = None

    def __init__(self, scale: int):
        self.scale = int(scale)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        return imresize(lr, self.scale)


# LR sides are padded to a multiple of this by default (eval.py, upscale, training validation):
# images of nearby sizes share one compiled forward.
DEFAULT_BUCKET = 16
# LR pixels of overlap between automatic tiles (the CLIs' --tile_overlap default).
AUTO_TILE_OVERLAP = 16


def _tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Tiles along one axis: `(start, keep_from, keep_to)`, the tile `[start, start + tile)`
    contributing the pixels `[keep_from, keep_to)`; cuts lie mid-way in each overlap."""
    if length <= tile:
        return [(0, 0, length)]
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    cuts = [(a + tile + b) // 2 for a, b in zip(starts, starts[1:])]
    return list(zip(starts, [0] + cuts, cuts + [length]))


class ModelUpscaler:
    """A Flax ENLCN/EDSR as an `Upscaler`: one compiled forward per padded input shape.

    Args:
      model: the network; `model.scale` is the SR scale.
      variables: its variables (`params`, `random_features`), moved to the default device once
        (`with_variables` gives an upscaler of another state of the same model that shares the
        forwards compiled so far; training validation uses it).
      bucket: LR height and width are padded up to a multiple of this (1: no padding, exact).
        A model whose attention takes no mask (`models.ENLCN.masks_padding`) is not padded.
      tile: LR tile side, or None for whole images.
      tile_overlap: LR pixels shared by neighbouring tiles, `0 <= tile_overlap < tile`.
      self_ensemble: average the outputs of the 8 dihedral transforms of the input.
      pad_mode: `np.pad` mode of the bucket padding.
      name: the model's name in results.
      memory_budget: bytes a forward may use; without `tile`, an image whose compiled
        whole-image forward needs more (XLA's estimate, `memory.compiled_bytes`) is tiled, with
        a warning. None: `memory.free_memory_budget()`, 80 % of the device's free memory (on
        CPU 40 % of the host's available memory, or of less where a cgroup or an address-space
        limit leaves less).
      checkpoint_step: the training step `variables` were saved at, for the results (None: not
        from a workdir).
    """

    def __init__(self, model: models.ENLCN, variables: dict, *, bucket: int = DEFAULT_BUCKET,
                 tile: int | None = None, tile_overlap: int = 0, self_ensemble: bool = False,
                 pad_mode: str = 'reflect', name: str = 'enlcn',
                 memory_budget: int | None = None, checkpoint_step: int | None = None):
        self.check_options(bucket, tile, tile_overlap)
        self.model = model
        self.scale = model.scale
        self.precision = model.dtype
        self.variables = jax.device_put(variables)
        if bucket > 1 and not model.masks_padding():
            logging.info('model.attention=%s takes no mask: images are evaluated unpadded '
                         '(bucket 1; exact numbers, one compilation per image size)',
                         registry.describe(model.enlca.attention))
            bucket = 1
        self.bucket = bucket
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.self_ensemble = self_ensemble
        self.pad_mode = pad_mode
        self.name = name
        self.memory_budget = memory_budget
        self.checkpoint_step = checkpoint_step
        self._compiled: dict[tuple[int, ...], jax.stages.Compiled] = {}
        self._auto_tiles: dict[tuple[int, ...], int | None] = {}  # by LR image shape

    @staticmethod
    def check_options(bucket: int, tile: int | None, tile_overlap: int) -> None:
        """Raises a one-line ValueError for the first of `bucket`, `tile`, `tile_overlap` out of
        range (see the class's arguments); the message starts with that argument's name. The
        commands call it before loading a model, so a misused option fails before any work."""
        if bucket < 1:
            raise ValueError(f'bucket must be >= 1, got {bucket}')
        if tile is not None and tile < 1:
            raise ValueError(f'tile must be >= 1, got {tile}')
        if tile is not None and not 0 <= tile_overlap < tile:
            raise ValueError(f'tile_overlap must be in [0, tile={tile}), got {tile_overlap}')

    def with_variables(self, variables: dict) -> 'ModelUpscaler':
        """This upscaler with other `variables` of the same shapes; the compiled forwards are
        shared (they take the variables as an argument)."""
        upscaler = copy.copy(self)
        upscaler.variables = jax.device_put(variables)
        return upscaler

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """The padded input shapes compiled so far, one per compilation."""
        return list(self._compiled)

    def _padded(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        pad = ((0, -h % self.bucket), (0, -w % self.bucket), (0, 0))
        return np.pad(x, pad, mode=self.pad_mode)[None]

    def _forward(self, variables: dict, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        return self.model.apply(variables, x, mask=mask)

    def _compile(self, shape: tuple[int, ...]) -> jax.stages.Compiled:
        if shape not in self._compiled:
            image = jax.ShapeDtypeStruct(shape, jnp.float32)
            mask = jax.ShapeDtypeStruct((*shape[:3], 1), jnp.float32) if self.bucket > 1 else None
            self._compiled[shape] = jax.jit(self._forward).lower(self.variables, image,
                                                                 mask).compile()
        return self._compiled[shape]

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One forward of `x` float32 `[h, w, 3]` padded to the bucket -> `[h s, w s, 3]`; the
        padding is masked (`ENLCN`'s `mask`), so it does not change the result."""
        h, w = x.shape[:2]
        padded = self._padded(x)
        mask = None
        if self.bucket > 1:
            mask = np.zeros((*padded.shape[:3], 1), np.float32)
            mask[:, :h, :w] = 1.0
        y = self._compile(padded.shape)(self.variables, jnp.asarray(padded), mask)
        return np.asarray(y)[0, :h * self.scale, :w * self.scale]

    def _auto_tile(self, x: np.ndarray) -> int | None:
        """A tile side if the whole-image forward of `x` needs more than the memory budget;
        decided (and warned about) once per image size."""
        if x.shape not in self._auto_tiles:
            self._auto_tiles[x.shape] = self._tile_for(x)
        return self._auto_tiles[x.shape]

    def _tile_for(self, x: np.ndarray) -> int | None:
        budget = self.memory_budget or memory.free_memory_budget()
        needed = memory.compiled_bytes(self._compile(self._padded(x).shape))
        if budget is None or needed is None or needed <= budget:
            return None
        h, w = x.shape[:2]
        side = int(np.sqrt(budget / needed * h * w)) // 16 * 16
        tile = max(32, min(side, max(h, w)))
        logging.warning('a %dx%d image needs ~%.0f MiB for one forward, more than the %.0f MiB '
                        'available: tiling it (--tile %d --tile_overlap %d)', w, h,
                        needed / 2 ** 20, budget / 2 ** 20, tile, self._overlap(tile))
        return tile

    def _overlap(self, tile: int) -> int:
        return self.tile_overlap if self.tile is not None else min(AUTO_TILE_OVERLAP, tile // 4)

    def _run_tiled(self, x: np.ndarray) -> np.ndarray:
        tile = self.tile if self.tile is not None else self._auto_tile(x)
        if tile is None:
            return self._run(x)
        overlap = self._overlap(tile)
        s = self.scale
        out = np.empty((x.shape[0] * s, x.shape[1] * s, 3), np.float32)
        for y0, ky0, ky1 in _tile_spans(x.shape[0], tile, overlap):
            for x0, kx0, kx1 in _tile_spans(x.shape[1], tile, overlap):
                sr = self._run(x[y0:y0 + tile, x0:x0 + tile])
                out[ky0 * s:ky1 * s, kx0 * s:kx1 * s] = sr[(ky0 - y0) * s:(ky1 - y0) * s,
                                                           (kx0 - x0) * s:(kx1 - x0) * s]
        return out

    def predict(self, lr: np.ndarray) -> np.ndarray:
        """SR of one image before quantisation.

        Args:
          lr: uint8 `[H, W, 3]`.
        Returns:
          float32 `[H s, W s, 3]`, nominally in [0, 1], not clipped.
        """
        if lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[-1] != 3:
            raise ValueError(f'expected an LR image uint8 [H, W, 3], got {lr.dtype} {lr.shape}')
        x = lr.astype(np.float32) / 255.0
        if not self.self_ensemble:
            return self._run_tiled(x)
        outputs = [transforms.inverse_dihedral(
            self._run_tiled(np.ascontiguousarray(transforms.dihedral(x, k))), k)
            for k in range(8)]
        return np.mean(outputs, axis=0, dtype=np.float32)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        """`predict`, clipped and rounded to uint8 `[H s, W s, 3]` (the protocol's SR image)."""
        return metrics.quantize(self.predict(lr))


def load_upscaler(checkpoint: str | os.PathLike, which: str = 'latest', dtype: str | None = None,
                  *, trust_code: bool = False, allow_changed_code: bool = False,
                  **options) -> ModelUpscaler:
    """A `ModelUpscaler` for a model directory or training workdir (`checkpoints.load_model`).

    Args:
      checkpoint: the directory.
      which: `'latest'` or `'best'` checkpoint of a workdir.
      dtype: compute precision (`precision.NAMES`); None: the one the model was trained in
        (its recorded `model.dtype`; float32 for models recorded without one).
      trust_code, allow_changed_code: `checkpoints.load_model`'s: import the modules outside
        the package the checkpoint names; run functions whose source changed since it was saved.
      **options: `ModelUpscaler`'s keyword arguments; its `checkpoint_step` is the step loaded
        (None for a model directory).
    """
    model, variables, step = checkpoints.load_model(checkpoint, which, trust_code=trust_code,
                                                    allow_changed_code=allow_changed_code)
    if dtype is not None:
        model = model.clone(dtype=dtype)
    return ModelUpscaler(model, variables, checkpoint_step=step, **options)
