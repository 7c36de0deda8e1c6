"""The training input pipeline: random LR/HR patch batches from an `SRDataset`.

Flow (as in the Flax examples' `input_pipeline.py`)::

    PatchLoader(dataset, batch_size, lr_patch, seed, start_step)
        -> {'lr': uint8 [B, p, p, 3], 'hr': uint8 [B, p*s, p*s, 3]}   (random crop + dihedral)
    prefetch_to_device(loader, n, put_fn)  ->  the same batches, already on device

``PatchLoader`` is a pure function of ``(seed, step)`` per batch, so a run
resumed at step ``k`` sees exactly the batches a straight run would have seen.
The ``dihedral`` transforms (`transforms.py`) are shared with evaluation's self-ensemble.
"""

from __future__ import annotations

import collections
import itertools
import sys
from typing import Any, Callable, Iterable, Iterator

import grain
import numpy as np

from enlcn_jax.data.sources import SRDataset
from enlcn_jax.data.transforms import dihedral


def _check_fits(lr: np.ndarray, lr_patch: int, name: str) -> None:
    if lr.shape[0] < lr_patch or lr.shape[1] < lr_patch:
        raise ValueError(
            f"{name}: LR image {lr.shape[1]}x{lr.shape[0]} (WxH) is smaller than the "
            f"LR patch {lr_patch}x{lr_patch}"
        )


def random_crop_pair(
    hr: np.ndarray,
    lr: np.ndarray,
    lr_patch: int,
    scale: int,
    rng: np.random.Generator,
    name: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned random crops: LR ``[y:y+p, x:x+p]`` and HR ``[s*y:s*(y+p), s*x:s*(x+p)]``.

    Args:
      hr: ``[H*s, W*s, C]`` (at least; extra bottom/right pixels are never used).
      lr: ``[H, W, C]``.
      lr_patch: LR patch side ``p``.
      scale: ``s``.
      rng: draws ``y`` then ``x``.
      name: used in the error for an image smaller than the patch.

    Returns:
      ``(hr_patch [p*s, p*s, C], lr_patch [p, p, C])``, views into the inputs.
    """
    _check_fits(lr, lr_patch, name)
    y = int(rng.integers(lr.shape[0] - lr_patch + 1))
    x = int(rng.integers(lr.shape[1] - lr_patch + 1))
    hp = lr_patch * scale
    return (
        hr[y * scale : y * scale + hp, x * scale : x * scale + hp],
        lr[y : y + lr_patch, x : x + lr_patch],
    )


def check_counts(where: str = "", **counts: int) -> None:
    """Raises ValueError unless every count (`batch_size`, `lr_patch`, `num_workers`, `prefetch`
    of a `PatchLoader`) is >= 1; the message is `where` followed by the count's name."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{where}{name} must be >= 1, got {value}")


class PatchLoader:
    """Infinite iterator of random, aligned, augmented LR/HR patch batches.

    Batch number ``step`` is ``self.batch(step)``: sample ``i`` of the global
    batch of ``batch_size`` draws, from ``np.random.default_rng([seed, step, i])``,
    an image index (uniform), a crop position, and (if ``augment``) a
    ``dihedral`` index. Batches therefore do not depend on worker count,
    timing or where iteration started (``PatchLoader(..., start_step=k)``
    yields the batches ``k, k+1, ...`` of a loader started at 0), nor on how
    many processes share them: with ``shard=(p, n)`` the loader yields rows
    ``[p B / n, (p + 1) B / n)`` of the same global batch.

    Iteration is a grain pipeline, ``MapDataset.range(start_step, ...).map(self.batch)``:
    ``num_workers`` grain threads compute up to ``prefetch`` batches ahead, returned in step
    order. Use ``close()`` (or ``with``) to stop them.

    Attributes:
      step: the step of the batch the next ``next()`` returns.
    Yields:
      ``{'lr': uint8 [B / n, p, p, 3], 'hr': uint8 [B / n, p*s, p*s, 3]}``.
    """

    def __init__(
        self,
        dataset: SRDataset,
        batch_size: int,
        lr_patch: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        augment: bool = True,
        num_workers: int = 2,
        prefetch: int = 8,
        shard: tuple[int, int] = (0, 1),
    ):
        if len(dataset) == 0:
            raise ValueError("PatchLoader: the dataset is empty")
        check_counts(batch_size=batch_size, lr_patch=lr_patch, num_workers=num_workers,
                     prefetch=prefetch, where="PatchLoader: ")
        if start_step < 0:
            raise ValueError(f"PatchLoader: start_step must be >= 0, got {start_step}")
        index, count = shard
        if not 0 <= index < count or batch_size % count:
            raise ValueError(f"PatchLoader: shard {shard} of a batch of {batch_size}: need "
                             "0 <= index < count and count dividing the batch")
        for name, lr in zip(dataset.names, dataset.lr):
            _check_fits(lr, lr_patch, name)
        self.dataset = dataset
        self.rows = range(index * batch_size // count, (index + 1) * batch_size // count)
        self.lr_patch = lr_patch
        self.seed = seed
        self.augment = augment
        self.step = start_step
        batches = grain.MapDataset.range(start_step, sys.maxsize).map(self.batch)
        self._iterator = iter(batches.to_iter_dataset(
            grain.ReadOptions(num_threads=num_workers, prefetch_buffer_size=prefetch)))

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This shard's rows of batch number ``step``, computed in the calling thread."""
        ds, p, s = self.dataset, self.lr_patch, self.dataset.scale
        lr = np.empty((len(self.rows), p, p, 3), np.uint8)
        hr = np.empty((len(self.rows), p * s, p * s, 3), np.uint8)
        for i, row in enumerate(self.rows):
            rng = np.random.default_rng([self.seed, step, row])
            j = int(rng.integers(len(ds)))
            hr_patch, lr_patch = random_crop_pair(ds.hr[j], ds.lr[j], p, s, rng, ds.names[j])
            if self.augment:
                k = int(rng.integers(8))
                hr_patch, lr_patch = dihedral(hr_patch, k), dihedral(lr_patch, k)
            hr[i], lr[i] = hr_patch, lr_patch
        return {"lr": lr, "hr": hr}

    def __iter__(self) -> "PatchLoader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            raise RuntimeError("PatchLoader is closed")
        batch = next(self._iterator)
        self.step += 1
        return batch

    def close(self) -> None:
        """Stop the workers; pending batches are dropped. Idempotent."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def __enter__(self) -> "PatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetch_to_device(iterator: Iterable[Any], size: int, sharding_fn: Callable[[Any], Any]) -> Iterator[Any]:
    """Keep ``size`` items transferred ahead: yields ``sharding_fn(item)`` in order.

    Like ``flax.jax_utils.prefetch_to_device`` but the transfer is up to the
    caller, e.g. ``lambda b: jax.device_put(b, sharding)`` or a
    ``jax.make_array_from_process_local_data`` wrapper. Because JAX transfers
    are asynchronous, the copies overlap the computation on earlier items.

    Args:
      iterator: host batches (any pytree the function accepts).
      size: number of items in flight, >= 1.
      sharding_fn: puts one host item on device(s).
    """
    if size < 1:
        raise ValueError(f"prefetch_to_device: size must be >= 1, got {size}")
    iterator = iter(iterator)
    queue: collections.deque = collections.deque()

    def enqueue(n: int) -> None:
        for item in itertools.islice(iterator, n):
            queue.append(sharding_fn(item))

    def generate() -> Iterator[Any]:
        enqueue(size)
        while queue:
            yield queue.popleft()
            enqueue(1)

    return generate()
