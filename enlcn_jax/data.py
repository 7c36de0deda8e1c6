"""Super-resolution data: in-memory LR/HR pairs and a random-patch batch loader.

Flow::

    load_folder / load_div2k_tfds / load_skimage_photos  ->  SRDataset (uint8 arrays, decoded once)
    iter_folder (lazy, per image)  ->  (hr_path, (hr, lr)) or (hr_path, error), for evaluation
    PatchLoader(dataset, ...)      ->  {'lr': uint8 [B, p, p, 3], 'hr': uint8 [B, p*s, p*s, 3]}
    prefetch_to_device(loader, n, put_fn)  ->  the same batches, already on device

Every pair satisfies ``hr.shape == (lr_h * scale, lr_w * scale, 3)``: HR is
cropped at the bottom/right to a multiple of ``scale`` (``modcrop``), which is
how both DIV2K and ``bicubic_downscale`` define the LR image.

``PatchLoader`` is a pure function of ``(seed, step)`` per batch, so a run
resumed at step ``k`` sees exactly the batches a straight run would have seen.
The ``dihedral`` transforms are shared with evaluation's self-ensemble.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from enlcn_jax.image_io import list_images, load_image, save_image
from enlcn_jax.imresize import bicubic_downscale, modcrop

DIV2K_SCALES = (2, 3, 4, 8)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not available locally; the message says how to provide it."""


@dataclasses.dataclass(frozen=True)
class SRDataset:
    """Decoded LR/HR image pairs kept in host memory.

    Attributes:
      names: one identifier per pair (file stem, or ``<split>/<index>`` for TFDS).
      hr: ``uint8 [h_i * scale, w_i * scale, 3]`` arrays.
      lr: ``uint8 [h_i, w_i, 3]`` arrays.
      scale: integer upscaling factor.
    """

    names: list[str]
    hr: list[np.ndarray]
    lr: list[np.ndarray]
    scale: int

    def __post_init__(self):
        if not len(self.names) == len(self.hr) == len(self.lr):
            raise ValueError(
                f"SRDataset: {len(self.names)} names, {len(self.hr)} HR and {len(self.lr)} LR images"
            )
        for name, hr, lr in zip(self.names, self.hr, self.lr):
            expected = (lr.shape[0] * self.scale, lr.shape[1] * self.scale, 3)
            if hr.dtype != np.uint8 or lr.dtype != np.uint8 or lr.ndim != 3 or hr.shape != expected:
                raise ValueError(
                    f"{name}: expected uint8 HR [{expected[0]}, {expected[1]}, 3] for LR "
                    f"{lr.dtype} {list(lr.shape)} at x{self.scale}, got HR {hr.dtype} {list(hr.shape)}"
                )

    def __len__(self) -> int:
        return len(self.names)


def _check_scale(scale: int) -> int:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _match_pair(hr: np.ndarray, lr: np.ndarray, scale: int, name: str) -> np.ndarray:
    """HR modcropped to ``lr.shape * scale``; raises if LR is not ``floor(HR / scale)``."""
    expected = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != expected:
        raise ValueError(
            f"{name}: LR size {lr.shape[1]}x{lr.shape[0]} (WxH) does not match HR size "
            f"{hr.shape[1]}x{hr.shape[0]} / {scale} = {expected[1]}x{expected[0]}"
        )
    return modcrop(hr, scale)


def _cache_path(cache_dir: Path, hr_path: Path, hr: np.ndarray, scale: int) -> Path:
    """``<cache_dir>/X{s}/<stem>x{s}_<hash>.png``; the HR content hash keeps
    equally named files of different folders (Set5 and Set14 both have
    ``img_001.png``) and edited files apart."""
    digest = hashlib.blake2b(repr(hr.shape).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(hr))
    return cache_dir / f"X{scale}" / f"{hr_path.stem}x{scale}_{digest.hexdigest()}.png"


def _bicubic_lr(hr: np.ndarray, hr_path: Path, scale: int, cache_dir: Path | None):
    """``(hr_cropped, lr)`` by ``bicubic_downscale``, read from / written to the cache."""
    if cache_dir is None:
        return bicubic_downscale(hr, scale)
    cache_path = _cache_path(cache_dir, hr_path, hr, scale)
    if cache_path.is_file():
        lr = load_image(cache_path)
        return _match_pair(hr, lr, scale, str(cache_path)), lr
    hr_cropped, lr = bicubic_downscale(hr, scale)
    # Write-then-rename so concurrent loaders never read a half-written file.
    tmp_path = cache_path.with_name(f".tmp-{uuid.uuid4().hex}-{cache_path.name}")
    save_image(tmp_path, lr)
    os.replace(tmp_path, cache_path)
    return hr_cropped, lr


def div2k_lr_path(lr_dir: str | os.PathLike, hr_stem: str, scale: int) -> Path:
    """DIV2K layout: ``<lr_dir>/X{s}/<stem>x{s}.png`` (e.g. ``X2/0001x2.png``)."""
    return Path(lr_dir) / f"X{scale}" / f"{hr_stem}x{scale}.png"


def load_pair(
    hr_path: str | os.PathLike,
    scale: int,
    lr_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one HR image and its LR counterpart (the per-image step of ``load_folder``).

    Args:
      hr_path: HR image file.
      scale: integer factor.
      lr_dir: optional DIV2K-style LR root; the LR is ``div2k_lr_path(lr_dir, stem, scale)``
        and must be ``floor(HR / scale)`` in size. Without it LR is ``bicubic_downscale(HR, scale)``.
      cache_dir: where a generated LR image is stored as PNG and reused (only without ``lr_dir``).

    Returns:
      ``(hr uint8 [h * scale, w * scale, 3], lr uint8 [h, w, 3])``, HR modcropped.

    Raises:
      FileNotFoundError: a missing HR or LR file.
      ValueError: an LR image whose size is not HR / scale (names the file).
      image_io.ImageError: an undecodable image (names the file).
    """
    scale = _check_scale(scale)
    hr_path = Path(hr_path)
    hr = load_image(hr_path)
    if lr_dir is None:
        return _bicubic_lr(hr, hr_path, scale, None if cache_dir is None else Path(cache_dir))
    lr_path = div2k_lr_path(lr_dir, hr_path.stem, scale)
    if not lr_path.is_file():
        raise FileNotFoundError(
            f"LR image for {hr_path} not found: expected {lr_path} "
            f"(DIV2K layout <lr_dir>/X{scale}/<stem>x{scale}.png)"
        )
    lr = load_image(lr_path)
    return _match_pair(hr, lr, scale, f"{lr_path} (HR {hr_path})"), lr


def iter_folder(
    hr_dir: str | os.PathLike,
    scale: int,
    lr_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    prefetch: int = 2,
) -> Iterator[tuple[Path, tuple[np.ndarray, np.ndarray] | Exception]]:
    """Lazy ``load_folder``: one image pair at a time, for streaming evaluation.

    A background thread loads up to ``prefetch`` images ahead of the consumer. An image
    that cannot be loaded does not end the iteration: its error is yielded in place of
    the pair, so the caller can report it and go on.

    Args:
      hr_dir, scale, lr_dir, cache_dir: as ``load_folder``.
      prefetch: images decoded ahead, >= 0.

    Yields:
      ``(hr_path, (hr, lr))`` as ``load_pair`` returns them, or ``(hr_path, error)`` with the
      ``OSError`` / ``ValueError`` (``ImageError`` included) that ``load_pair`` raised; in
      sorted file order.

    Raises:
      FileNotFoundError: ``hr_dir`` is missing or holds no image (before the first item).
    """
    if prefetch < 0:
        raise ValueError(f"iter_folder: prefetch must be >= 0, got {prefetch}")
    scale = _check_scale(scale)
    hr_paths = list_images(hr_dir)

    def result(path: Path, future: concurrent.futures.Future):
        try:
            return path, future.result()
        except (OSError, ValueError) as e:
            return path, e

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="iter_folder") as pool:
        pending: collections.deque = collections.deque()
        for path in hr_paths:
            pending.append((path, pool.submit(load_pair, path, scale, lr_dir, cache_dir)))
            if len(pending) > prefetch:
                yield result(*pending.popleft())
        while pending:
            yield result(*pending.popleft())


def load_folder(
    hr_dir: str | os.PathLike,
    scale: int,
    lr_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 4,
) -> SRDataset:
    """Decode a folder of HR images and their LR counterparts.

    Args:
      hr_dir: folder of HR images (see ``image_io.list_images``).
      scale: integer factor.
      lr_dir: optional DIV2K-style LR root; the LR of ``<stem>.png`` is
        ``div2k_lr_path(lr_dir, stem, scale)`` and must be ``floor(HR / scale)``
        in size. Without it LR is ``bicubic_downscale(HR, scale)``.
      cache_dir: where generated LR images are stored as PNG and reused by the
        next load (only used without ``lr_dir``).
      num_workers: threads decoding / downscaling images.

    Returns:
      ``SRDataset`` named by file stem, in sorted file order.

    Raises:
      FileNotFoundError: empty/missing ``hr_dir`` or a missing LR file.
      ValueError: an LR image whose size is not HR / scale (names the file).
      image_io.ImageError: an undecodable image (names the file).
    """
    scale = _check_scale(scale)
    hr_paths = list_images(hr_dir)
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        pairs = list(pool.map(lambda path: load_pair(path, scale, lr_dir, cache_dir), hr_paths))
    return SRDataset(
        names=[p.stem for p in hr_paths],
        hr=[hr for hr, _ in pairs],
        lr=[lr for _, lr in pairs],
        scale=scale,
    )


def _div2k_help(split: str, scale: int, data_dir: str | os.PathLike | None) -> str:
    folder_split = "train" if split == "train" else "valid"
    where = data_dir if data_dir is not None else "~/tensorflow_datasets"
    return (
        f"DIV2K (div2k/bicubic_x{scale}) must be prepared as array_record under {where}; "
        "it cannot be downloaded without network access. Either\n"
        f"  * prepare it on a machine with network access (needs tensorflow there):\n"
        f"      tfds build div2k/bicubic_x{scale} --data_dir DIR --file_format=array_record\n"
        f"    then copy DIR here and pass it as data_dir; or\n"
        f"  * use the extracted DIV2K folders instead:\n"
        f"      data.source=folder data.hr_dir=/path/DIV2K_{folder_split}_HR "
        f"data.lr_dir=/path/DIV2K_{folder_split}_LR_bicubic"
    )


def load_div2k_tfds(split: str, scale: int, data_dir: str | os.PathLike | None = None) -> SRDataset:
    """DIV2K bicubic pairs from a prepared tensorflow-datasets directory.

    Reads ``div2k/bicubic_x{scale}`` through ``builder.as_data_source`` (random
    access over array_record files; tensorflow is not needed), never downloads.

    Args:
      split: a TFDS split, e.g. ``"train"``, ``"validation"``, ``"train[:100]"``.
      scale: one of ``DIV2K_SCALES``.
      data_dir: TFDS data directory (default ``~/tensorflow_datasets``).

    Returns:
      ``SRDataset`` with names ``"<split>/<index>"``.

    Raises:
      DatasetNotFoundError: the dataset cannot be opened (not prepared, prepared
        as tfrecord, tfds missing, ...); wraps the tfds error and explains how
        to prepare the data or use ``data.source=folder`` instead.
    """
    if scale not in DIV2K_SCALES:
        raise ValueError(f"DIV2K bicubic scale must be one of {DIV2K_SCALES}, got {scale!r}")
    name = f"div2k/bicubic_x{scale}"
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(f"{name} not prepared in {builder.data_dir}")
        source = builder.as_data_source(split=split)
    except Exception as e:  # tfds raises many unrelated types for "not usable here"
        raise DatasetNotFoundError(
            f"cannot open {name} split {split!r}: {type(e).__name__}: {e}\n"
            + _div2k_help(split, scale, data_dir)
        ) from e
    names, hrs, lrs = [], [], []
    for i in range(len(source)):
        example = source[i]
        pair_name = f"{split}/{i}"
        lr = np.asarray(example["lr"], dtype=np.uint8)
        hrs.append(_match_pair(np.asarray(example["hr"], dtype=np.uint8), lr, scale, f"{name} {pair_name}"))
        lrs.append(lr)
        names.append(pair_name)
    return SRDataset(names=names, hr=hrs, lr=lrs, scale=scale)


def load_skimage_photos(names: Iterable[str], scale: int) -> SRDataset:
    """Photos bundled with scikit-image (no download) as HR, with bicubic LR.

    Args:
      names: ``skimage.data`` functions returning a bundled image, e.g. ``"astronaut"``,
        ``"chelsea"``, ``"coffee"``, ``"rocket"``, ``"immunohistochemistry"``,
        ``"hubble_deep_field"``. Grayscale photos are repeated to RGB, alpha is dropped.
      scale: integer factor; LR is ``bicubic_downscale(HR, scale)``.

    Returns:
      ``SRDataset`` named after the photos, in the given order.

    Raises:
      DatasetNotFoundError: an unknown name, or a photo that is not bundled (skimage would
        have to download it).
    """
    scale = _check_scale(scale)
    import skimage.data

    names, hrs, lrs = list(names), [], []
    for name in names:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception as e:  # AttributeError, or pooch's errors without network
            raise DatasetNotFoundError(
                f"skimage.data.{name}() is not available offline: {type(e).__name__}: {e}"
            ) from e
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DatasetNotFoundError(f"skimage.data.{name}() is not an 8-bit photo: "
                                       f"{image.dtype} {list(image.shape)}")
        rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
        hr, lr = bicubic_downscale(np.ascontiguousarray(rgb), scale)
        hrs.append(hr)
        lrs.append(lr)
    return SRDataset(names=names, hr=hrs, lr=lrs, scale=scale)


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


def _flip(x, axis: int):
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, -1)
    return x[tuple(index)]


def dihedral(x, k: int, axes: tuple[int, int] = (-3, -2)):
    """One of the 8 symmetries of the square applied to the two spatial axes.

    ``k`` (a Python int in ``0..7``) is read as bits: 4 transposes the axes
    (applied first), 1 flips the first axis, 2 flips the second. Works on
    NumPy and JAX arrays alike (only slicing and ``swapaxes``).

    Args:
      x: ``[H, W, C]`` or ``[B, H, W, C]`` with the default ``axes=(-3, -2)``;
        any layout with ``axes`` naming the two spatial axes.
      k: transform index.

    Returns:
      Array of the same kind; H and W are exchanged when ``k & 4``.
    """
    if k not in range(8):
        raise ValueError(f"dihedral index must be in 0..7, got {k!r}")
    row, col = axes
    if k & 4:
        x = x.swapaxes(row, col)
    if k & 1:
        x = _flip(x, row)
    if k & 2:
        x = _flip(x, col)
    return x


def inverse_dihedral(x, k: int, axes: tuple[int, int] = (-3, -2)):
    """Undo ``dihedral(·, k, axes)``.

    Flips are their own inverse; with a transpose, undoing "transpose, flip
    rows, flip cols" equals "transpose, flip the other axes", i.e. the index
    with bits 1 and 2 exchanged.
    """
    if k & 4:
        k = 4 | ((k & 1) << 1) | ((k & 2) >> 1)
    return dihedral(x, k, axes)


class PatchLoader:
    """Infinite iterator of random, aligned, augmented LR/HR patch batches.

    Batch number ``step`` is ``self.batch(step)``: for each of the ``B``
    samples it draws, from ``np.random.default_rng([seed, step])``, an image
    index (uniform), a crop position, and (if ``augment``) a ``dihedral``
    index. Batches therefore do not depend on worker count, timing or where
    iteration started: ``PatchLoader(..., start_step=k)`` yields the batches
    ``k, k+1, ...`` of a loader started at 0.

    ``num_workers`` threads compute up to ``prefetch`` batches ahead; they
    are returned in step order. Use ``close()`` (or ``with``) to stop them.

    Yields:
      ``{'lr': uint8 [B, p, p, 3], 'hr': uint8 [B, p*s, p*s, 3]}``.
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
    ):
        if len(dataset) == 0:
            raise ValueError("PatchLoader: the dataset is empty")
        for value, what in ((batch_size, "batch_size"), (lr_patch, "lr_patch"),
                            (num_workers, "num_workers"), (prefetch, "prefetch")):
            if value < 1:
                raise ValueError(f"PatchLoader: {what} must be >= 1, got {value}")
        if start_step < 0:
            raise ValueError(f"PatchLoader: start_step must be >= 0, got {start_step}")
        for name, lr in zip(dataset.names, dataset.lr):
            _check_fits(lr, lr_patch, name)
        self.dataset = dataset
        self.batch_size = batch_size
        self.lr_patch = lr_patch
        self.seed = seed
        self.augment = augment
        self.prefetch = prefetch
        self.step = start_step  # step of the batch the next ``next()`` returns
        self._next_submit = start_step
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self._pool = concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="PatchLoader")

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch number ``step``, computed in the calling thread."""
        ds, p, s = self.dataset, self.lr_patch, self.dataset.scale
        rng = np.random.default_rng([self.seed, step])
        lr = np.empty((self.batch_size, p, p, 3), np.uint8)
        hr = np.empty((self.batch_size, p * s, p * s, 3), np.uint8)
        for i in range(self.batch_size):
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
        if self._pool is None:
            raise RuntimeError("PatchLoader is closed")
        while len(self._pending) < self.prefetch:
            self._pending.append(self._pool.submit(self.batch, self._next_submit))
            self._next_submit += 1
        batch = self._pending.popleft().result()
        self.step += 1
        return batch

    def close(self) -> None:
        """Stop the workers; pending batches are dropped. Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()

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
