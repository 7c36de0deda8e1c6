"""Synthetic x2 tasks on which a researcher's attention is compared: where non-local information
helps, how far away it is, whether it is real image content, and a control where it cannot help.

Every task is a grid of square cells, each showing one of a few HR contents (`Sample.layout`):
a content repeats in several cells, and every cell is observed with a grey cast of its own (the
same offset on R, G and B, constant over the cell, independent between cells, normal with std
`cast` in [0, 1] units). The HR target is the clean grid; the LR input is MATLAB's bicubic
downscale (`imresize`) of the cast grid. A cell's own pixels say nothing about its cast, so one
repeat alone leaves the content's level uncertain by the cast; the mean over the content's R
repeats misses it by cast / sqrt(R). Using the repeats means finding, for every position, the
cells that hold the same content wherever they are (a grey cast changes neither the hue nor the
structure of a content) and averaging only those: an average weighted by content similarity
(non-local attention) can, a fixed weighting of a neighbourhood (a convolution) cannot, since
which cells repeat which changes from image to image.

The tasks (`TASKS`):

* `mosaic`: 16^2 LR, 4 x 4 cells of 4^2 LR pixels, 3 flat colours per image in 5 or 6 cells
  each at random places. The leaderboard's network (`runs.base_config`: 4 residual blocks of
  two 3x3 convs, head, body and upsampler convs at LR, a 3x3 conv at HR: the outputs of an LR
  position depend on the LR pixels up to 12 away, a field of 25 pixels) sees most of the image:
  what a convolution lacks is selection by content, not reach.
* `mosaic_far`: 32^2 LR, 8 x 8 cells of 4^2 LR pixels, 16 colours in 4 cells each, the 4 at
  least `spacing` = 4 cells apart (Chebyshev) from one another (`spaced_layout`): the nearest
  pixels of two repeats are 13 LR pixels apart, beyond the field's reach of 12 (only the bicubic
  kernel's bleed comes closer: the LR pixel just outside a cell holds 7 % of it). A network
  without attention sees no repeat of any cell: reach matters as well as selection.
* `real_repeats`: 32^2 LR, 4 x 4 cells of 8^2 LR pixels, each one of 4 patches cut from real
  photos (`skimage.data`, offline) in 4 cells each at random places. Training images cut their
  patches from `TRAIN_PHOTOS`, the held-out images from `HELD_OUT_PHOTOS` (other photos), so the
  score measures generalisation to unseen content. Patches whose luma std is below `min_std` are
  redrawn: a flat patch under a grey cast cannot be told from another flat patch.
* `control`: the mosaic with every cell its own colour (16 colours, one cell each, the same cast
  statistics): nothing elsewhere in the image says anything about a cell, so the oracle equals
  the own-cell estimate and a variant that attends perfectly gains nothing.

Reference estimates (`Sample.own`, `Sample.oracle`, scored by `ceilings`): the own-cell estimate
is the target plus the cell's own cast (perfect upsampling of the cell's observation); the
oracle is the target plus the mean cast over the content's repeats (perfect selection, perfect
averaging, perfect upsampling). Both are unbiased and use no prior: a network that learns the
colour prior (the colours are uniform in [0.25, 0.75]) can beat the own-cell estimate locally,
and in principle pass the oracle by a little.

Every image is deterministic from its generator: `training_batches(task, seed, b)` draws from
`default_rng([TRAIN_STREAM, seed])`, `held_out_set(task)` from `default_rng(TEST_SET_ENTROPY)`.
A task's `version` changes whenever the images a seed gives change.

`held_out_samples` keeps the held-out images' `Sample`s (the oracle and own-cell images with
them); `held_out_set` is the evaluator's view of them.

Cost: drawing one image is a bicubic downscale of S s x S s pixels plus, for `mosaic_far`, a
layout search: about 0.3 ms (`mosaic`, `control`), 0.7 ms (`mosaic_far`, `real_repeats`) per
image on one core.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import statistics
from typing import Iterator

import numpy as np

from enlcn_jax.data import imresize, sources
from enlcn_jax.evaluation import evaluator, inference, metrics

# Random streams: seed s trains on `default_rng([TRAIN_STREAM, s])`, every seed is scored on the
# images of `default_rng(TEST_SET_ENTROPY)`.
TRAIN_STREAM = 1
TEST_SET_ENTROPY = [0, 2024]
TEST_IMAGES = 32

# The photos `real_repeats` cuts its patches from (`skimage.data` names, bundled with it).
TRAIN_PHOTOS = ('astronaut', 'coffee', 'rocket', 'immunohistochemistry', 'camera', 'brick',
                'grass')
HELD_OUT_PHOTOS = ('chelsea', 'coins', 'gravel', 'moon')

# Attempts at a spaced layout (`spaced_layout`) before giving up.
LAYOUT_ATTEMPTS = 100


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a task and how it was made. S = `Task.lr_size`, s = `Task.scale`,
    G = cells per side.

    Attributes:
      hr: uint8 `[S s, S s, 3]` the target: the clean grid.
      lr: uint8 `[S, S, 3]` the network input: the cast grid, bicubic-downscaled.
      oracle: uint8 `[S s, S s, 3]` perfect selection and upsampling: the target plus, in every
        cell, the mean cast over its content's repeats.
      own: uint8 `[S s, S s, 3]` the own-cell estimate: the target plus every cell's own cast.
      layout: int `[G, G]` the content of each cell; cells with equal values are repeats.
      casts: float `[G, G]` each cell's grey cast.
      contents: float `[K, c s, c s, 3]` the HR content of each of the K contents, in [0, 1]
        (c the cell's LR side).
      origins: for photo patches, `(photo, y, x)` of each content: its top-left HR pixel in the
        `skimage.data` photo; empty for flat colours.
    """
    hr: np.ndarray
    lr: np.ndarray
    oracle: np.ndarray
    own: np.ndarray
    layout: np.ndarray
    casts: np.ndarray
    contents: np.ndarray
    origins: tuple[tuple[str, int, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
    """A family of images (subclasses: `MosaicTask`, `RealRepeatsTask`).

    Attributes:
      name: the registry key (`TASKS`).
      version: bumped whenever the images a generator gives change.
      scale: SR factor.
      lr_size: LR image side, a multiple of `cell`.
      cell: LR side of a cell.
      cast: std of a cell's grey cast, in [0, 1] pixel units.
    """
    name: str = ''
    version: int = 1
    scale: int = 2
    lr_size: int = 16
    cell: int = 4
    cast: float = 0.06

    def __post_init__(self):
        if self.cell < 1 or self.lr_size < self.cell or self.lr_size % self.cell:
            raise ValueError(f'task {self.name!r}: the LR size ({self.lr_size}) must be a '
                             f'positive multiple of the cell ({self.cell})')

    @property
    def grid(self) -> int:
        """Cells per side."""
        return self.lr_size // self.cell

    @abc.abstractmethod
    def draw(self, rng: np.random.Generator, held_out: bool = False) -> Sample:
        """One image from `rng` (deterministic given the generator's state); `held_out` images
        come from content kept out of training where the task has such (`real_repeats`)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for tables."""


def grid_sample(contents: np.ndarray, layout: np.ndarray, casts: np.ndarray,
                scale: int, origins: tuple = ()) -> Sample:
    """The `Sample` of a grid of `contents` placed by `layout`, observed with `casts`.

    Args:
      contents: float `[K, h, h, 3]` HR contents in [0, 1], h = cell side x `scale`.
      layout: int `[G, G]` content of each cell, values in [0, K).
      casts: float `[G, G]` grey cast of each cell.
      scale: SR factor (h must be a multiple of it).
      origins: passed to `Sample.origins`.
    Cost: one bicubic downscale of `[G h, G h, 3]`.
    """
    grid, side = layout.shape[0], contents.shape[1]
    counts = np.bincount(layout.ravel(), minlength=len(contents))
    pooled = np.bincount(layout.ravel(), casts.ravel(), minlength=len(contents)) / np.maximum(
        counts, 1)

    def paint(offsets: np.ndarray) -> np.ndarray:  # [G, G] grey offsets -> [G h, G h, 3]
        cells = contents[layout] + offsets[:, :, None, None, None]
        return cells.transpose(0, 2, 1, 3, 4).reshape(grid * side, grid * side, 3)

    hr = paint(np.zeros_like(casts))
    observed = paint(casts)
    lr = imresize.imresize(observed, scale=1 / scale)
    return Sample(metrics.quantize(hr), metrics.quantize(lr), metrics.quantize(paint(
        pooled[layout])), metrics.quantize(observed), layout, casts, contents, origins)


def random_layout(rng: np.random.Generator, grid: int, textures: int) -> np.ndarray:
    """int `[grid, grid]`: `textures` contents, each in `grid^2 / textures` cells (the remainder
    spread over the first ones), at uniformly random places."""
    return rng.permutation(np.arange(grid ** 2) % textures).reshape(grid, grid)


def spaced_layout(rng: np.random.Generator, grid: int, textures: int,
                  spacing: int) -> np.ndarray:
    """As `random_layout`, with the cells of every content at least `spacing` cells apart from one
    another (Chebyshev distance: `max(|dy|, |dx|) >= spacing`).

    Randomised greedy: the free cell with the fewest free cells far enough from it starts a
    content, whose next cells are drawn the same way among those far from all its cells; ties
    are broken by one random draw per cell and attempt. Restarts on a dead end.

    Raises:
      ValueError: no such layout found in `LAYOUT_ATTEMPTS` attempts.
    Cost: O(grid^4) per attempt (about 0.1 ms at grid 8).
    """
    rows, cols = np.divmod(np.arange(grid ** 2), grid)
    far = ((np.abs(rows[:, None] - rows) >= spacing) | (np.abs(cols[:, None] - cols) >= spacing))
    sizes = np.bincount(np.arange(grid ** 2) % textures, minlength=textures)
    for _ in range(LAYOUT_ATTEMPTS):
        layout = _spaced_attempt(rng, far, sizes)
        if layout is not None:
            return layout.reshape(grid, grid)
    raise ValueError(f'no layout of {textures} textures on {grid}x{grid} cells keeps the repeats '
                     f'{spacing} cells apart ({LAYOUT_ATTEMPTS} attempts)')


def _spaced_attempt(rng: np.random.Generator, far: np.ndarray,
                    sizes: np.ndarray) -> np.ndarray | None:
    """One attempt of `spaced_layout`: int `[N]` layout of N cells (`far`: bool `[N, N]`, cells
    far enough apart; `sizes`: cells per content), or None at a dead end."""
    layout, free = np.full(len(far), -1), np.ones(len(far), bool)
    # Free cells far enough from each cell, plus a tie-breaking draw in [0, 1).
    freedom = far.sum(axis=1) + rng.random(len(far))
    for texture, size in enumerate(sizes):
        allowed = free.copy()
        for _ in range(size):
            options = np.flatnonzero(allowed)
            if not len(options):
                return None
            chosen = options[np.argmin(freedom[options])]
            layout[chosen], free[chosen] = texture, False
            freedom -= far[chosen]
            allowed &= far[chosen] & free
    return layout


@dataclasses.dataclass(frozen=True)
class MosaicTask(Task):
    """Mosaics of flat colours (see the module docstring): `mosaic`, `mosaic_far`, `control`.

    Attributes:
      textures: colours per image, uniform in [0.25, 0.75]^3, each filling
        `grid^2 / textures` cells (`random_layout`); `grid^2` textures make every cell its own.
      spacing: 0 for random places; else the repeats of a colour are at least `spacing` cells
        apart (`spaced_layout`).
    """
    name: str = 'mosaic'
    textures: int = 3
    spacing: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.textures <= self.grid ** 2:
            raise ValueError(f'task {self.name!r}: {self.grid ** 2} cells cannot hold '
                             f'{self.textures} textures')
        if self.spacing > 1:
            spaced_layout(np.random.default_rng(0), self.grid, self.textures, self.spacing)

    def draw(self, rng: np.random.Generator, held_out: bool = False) -> Sample:
        """Colours, then layout, then casts, from `rng`; `held_out` changes nothing."""
        colours = rng.uniform(0.25, 0.75, (self.textures, 3))
        layout = (spaced_layout(rng, self.grid, self.textures, self.spacing) if self.spacing > 1
                  else random_layout(rng, self.grid, self.textures))
        casts = self.cast * rng.standard_normal((self.grid, self.grid))
        side = self.cell * self.scale
        contents = np.broadcast_to(colours[:, None, None, :], (self.textures, side, side, 3))
        return grid_sample(contents, layout, casts, self.scale)

    def describe(self) -> str:
        repeats = self.grid ** 2 // self.textures
        where = (f'{repeats} cells each, >= {self.spacing} cells apart' if self.spacing > 1 else
                 'one cell each' if repeats == 1 else f'{repeats}+ cells each')
        return (f'x{self.scale} mosaics {self.lr_size}^2 LR, {self.textures} colours in '
                f'{self.grid}x{self.grid} cells of {self.cell}^2 LR px ({where}), cast std '
                f'{self.cast}')


@functools.cache
def photos(names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """uint8 `[H, W, 3]` HR of the `skimage.data` photos `names` (grey ones as RGB), loaded once
    per process (`sources.load_skimage_photos`)."""
    return tuple(sources.load_skimage_photos(names, 1).hr)


@dataclasses.dataclass(frozen=True)
class RealRepeatsTask(Task):
    """Grids of patches cut from real photos (see the module docstring).

    Attributes:
      patches: patches per image, each in `grid^2 / patches` cells (`random_layout`).
      min_std: least luma std (Y in [16, 235]) of a patch; flatter ones are redrawn.
      train_photos, held_out_photos: the `skimage.data` photos of the training and held-out
        images.
    """
    name: str = 'real_repeats'
    lr_size: int = 32
    cell: int = 8
    patches: int = 4
    min_std: float = 8.0
    train_photos: tuple[str, ...] = TRAIN_PHOTOS
    held_out_photos: tuple[str, ...] = HELD_OUT_PHOTOS

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.patches <= self.grid ** 2:
            raise ValueError(f'task {self.name!r}: {self.grid ** 2} cells cannot hold '
                             f'{self.patches} patches')
        if set(self.train_photos) & set(self.held_out_photos):
            raise ValueError(f'task {self.name!r}: photos both trained on and held out: '
                             f'{sorted(set(self.train_photos) & set(self.held_out_photos))}')

    def draw(self, rng: np.random.Generator, held_out: bool = False) -> Sample:
        """Patches (photo, then top-left corner, redrawn while flat or equal to an earlier
        one), then layout, then casts, from `rng`."""
        names = self.held_out_photos if held_out else self.train_photos
        images, side = photos(names), self.cell * self.scale
        contents, origins = [], []
        while len(contents) < self.patches:
            index = int(rng.integers(len(images)))
            y, x = (int(rng.integers(n - side + 1)) for n in images[index].shape[:2])
            patch = images[index][y:y + side, x:x + side]
            if (metrics.rgb_to_y(patch).std() >= self.min_std
                    and not any(np.array_equal(patch, other) for other in contents)):
                contents.append(patch)
                origins.append((names[index], y, x))
        layout = random_layout(rng, self.grid, self.patches)
        casts = self.cast * rng.standard_normal((self.grid, self.grid))
        return grid_sample(np.stack(contents) / 255.0, layout, casts, self.scale, tuple(origins))

    def describe(self) -> str:
        return (f'x{self.scale} photo patches {self.lr_size}^2 LR, {self.patches} patches in '
                f'{self.grid}x{self.grid} cells of {self.cell}^2 LR px '
                f'({self.grid ** 2 // self.patches} cells each), cast std {self.cast}; held-out '
                'photos unseen in training')


TASKS: dict[str, Task] = {
    'mosaic': MosaicTask(),
    'mosaic_far': MosaicTask(name='mosaic_far', lr_size=32, textures=16, spacing=4),
    'real_repeats': RealRepeatsTask(),
    'control': MosaicTask(name='control', textures=16),
}


def get_task(name: str) -> Task:
    """The task of `TASKS` called `name`.

    Raises:
      ValueError: an unknown name, naming the known tasks.
    """
    if name not in TASKS:
        raise ValueError(f'unknown task {name!r}; known tasks: {", ".join(TASKS)}')
    return TASKS[name]


def draw_batch(task: Task, rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """`size` training images: `{'lr': uint8 [size, S, S, 3], 'hr': uint8 [size, S s, S s, 3]}`."""
    samples = [task.draw(rng) for _ in range(size)]
    return {'lr': np.stack([s.lr for s in samples]), 'hr': np.stack([s.hr for s in samples])}


def training_batches(task: Task, seed: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The endless training stream of `seed`: `draw_batch` of `batch_size` images per step, from
    `default_rng([TRAIN_STREAM, seed])`."""
    rng = np.random.default_rng([TRAIN_STREAM, seed])
    while True:
        yield draw_batch(task, rng, batch_size)


@functools.cache
def held_out_samples(task: Task, count: int = TEST_IMAGES) -> tuple[Sample, ...]:
    """The held-out images with their oracle and own-cell estimates: the same `count` images for
    every seed and variant (`task.draw(..., held_out=True)` from `default_rng(TEST_SET_ENTROPY)`),
    drawn once per process."""
    rng = np.random.default_rng(TEST_SET_ENTROPY)
    return tuple(task.draw(rng, held_out=True) for _ in range(count))


def held_out_set(task: Task, count: int = TEST_IMAGES) -> sources.SRDataset:
    """`held_out_samples` as the evaluator's dataset: images named `<task>_<i>`."""
    samples = held_out_samples(task, count)
    return sources.SRDataset([f'{task.name}_{i}' for i in range(count)],
                             [s.hr for s in samples], [s.lr for s in samples], task.scale)


def ceilings(task: Task, count: int = TEST_IMAGES) -> dict[str, float]:
    """Reference PSNR-Y (dB) on the held-out set, by the protocol the leaderboard scores with
    (Y of BT.601, `scale` pixels shaved, mean over the images).

    Returns:
      `bicubic` (`evaluator.evaluate_in_memory` with `inference.BicubicUpscaler`),
      `own cell` (`Sample.own`) and `oracle` (`Sample.oracle`).
    """
    dataset = held_out_set(task, count)
    bicubic = evaluator.evaluate_in_memory(dataset, inference.BicubicUpscaler(task.scale))
    samples = held_out_samples(task, count)
    return {'bicubic': bicubic.summary()['psnr'],
            'own cell': statistics.fmean(metrics.psnr_y(s.own, s.hr, task.scale)
                                         for s in samples),
            'oracle': statistics.fmean(metrics.psnr_y(s.oracle, s.hr, task.scale)
                                       for s in samples)}
