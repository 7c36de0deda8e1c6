"""Super-resolution data sources: LR/HR pairs from folders, DIV2K (TFDS), bundled photos, and the
benchmark sets by name. The batching pipeline that feeds training is `input_pipeline`.

Flow::

    load_folder / load_div2k_tfds / load_skimage_photos  ->  SRDataset (uint8 arrays, decoded once)
    find_dataset('Set5', scale)  ->  DatasetSource (where a benchmark's images are)
    iter_folder (lazy, per image)  ->  (hr_path, (hr, lr)) or (hr_path, error), for evaluation

Every pair satisfies ``hr.shape == (lr_h * scale, lr_w * scale, 3)``: HR is
cropped at the bottom/right to a multiple of ``scale`` (``modcrop``), which is
how both DIV2K and ``bicubic_downscale`` define the LR image.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from absl import logging

from enlcn_jax.storage import files
from enlcn_jax.data.image_io import list_images, load_image, save_image
from enlcn_jax.data.imresize import bicubic_downscale, modcrop

DIV2K_SCALES = (2, 3, 4, 8)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not available locally; the message says how to provide it."""


class AmbiguousLRError(ValueError):
    """Two HR images of a folder share a stem, so one LR file of an LR folder would serve both."""


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


def _positive_scale(scale: int) -> int:
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
    try:  # atomic: concurrent loaders never read a half-written file
        save_image(cache_path, lr)
    except files.WriteError as e:  # the LR is still good; only its reuse is lost
        logging.warning('LR cache not written: %s', e)
    return hr_cropped, lr


def div2k_lr_path(lr_dir: str | os.PathLike, hr_stem: str, scale: int) -> Path:
    """DIV2K layout: ``<lr_dir>/X{s}/<stem>x{s}.png`` (e.g. ``X2/0001x2.png``)."""
    return Path(lr_dir) / f"X{scale}" / f"{hr_stem}x{scale}.png"


def list_hr_images(
    hr_dir: str | os.PathLike, scale: int, lr_dir: str | os.PathLike | None = None
) -> list[Path]:
    """``list_images(hr_dir)``, checked to pair one to one with the LR files of ``lr_dir``.

    The LR file of an HR image is named by its stem (``div2k_lr_path``), so with an ``lr_dir``
    two HR files sharing a stem (``a.png``, ``a.bmp``) would both be paired with one LR file.
    Without an ``lr_dir`` each LR image is made from its own HR image and stems may repeat.

    Raises:
      FileNotFoundError: ``hr_dir`` is missing or holds no image.
      AmbiguousLRError: with ``lr_dir``, two HR files share a stem (names both).
    """
    paths = list_images(hr_dir)
    if lr_dir is not None:
        by_stem: dict[str, Path] = {}
        for path in paths:
            other = by_stem.setdefault(path.stem, path)
            if other != path:
                raise AmbiguousLRError(
                    f"HR images {other} and {path} share the stem {path.stem!r}, so both would "
                    f"be paired with the LR image {div2k_lr_path(lr_dir, path.stem, scale)}: "
                    "rename one of them")
    return paths


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
    scale = _positive_scale(scale)
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
      AmbiguousLRError: as ``list_hr_images`` (before the first item).
    """
    if prefetch < 0:
        raise ValueError(f"iter_folder: prefetch must be >= 0, got {prefetch}")
    scale = _positive_scale(scale)
    hr_paths = list_hr_images(hr_dir, scale, lr_dir)

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
      ``SRDataset`` named by file stem, in sorted file order. An image that cannot be used (an
      undecodable or truncated file, a broken link, a missing or mis-sized LR file) is left out
      with a warning that names it and says why.

    Raises:
      DatasetNotFoundError: ``hr_dir`` is missing or holds no image.
      AmbiguousLRError: with ``lr_dir``, two HR files share a stem (``list_hr_images``).
      ValueError, OSError: no image of the folder could be used (the first one's error).
    """
    scale = _positive_scale(scale)
    try:
        hr_paths = list_hr_images(hr_dir, scale, lr_dir)
    except FileNotFoundError as e:
        raise DatasetNotFoundError(str(e)) from e

    def load(path: Path):
        try:
            return load_pair(path, scale, lr_dir, cache_dir)
        except (OSError, ValueError) as e:
            return e

    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        pairs = list(pool.map(load, hr_paths))
    failed = [(path, e) for path, e in zip(hr_paths, pairs) if isinstance(e, Exception)]
    if len(failed) == len(hr_paths):
        raise failed[0][1]
    for path, error in failed:
        logging.warning('left out of the dataset: %s (%s)', path, error)
    kept = [(path, pair) for path, pair in zip(hr_paths, pairs) if not isinstance(pair, Exception)]
    return SRDataset(
        names=[path.stem for path, _ in kept],
        hr=[hr for _, (hr, _) in kept],
        lr=[lr for _, (_, lr) in kept],
        scale=scale,
    )


def _div2k_help(split: str, scale: int, data_dir: str | os.PathLike | None) -> str:
    # A TFDS split may be sliced ("train[:100]"): its name is what precedes the brackets.
    folder_split = "train" if split.partition("[")[0].strip() == "train" else "valid"
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
    scale = _positive_scale(scale)
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


# --- benchmark sets by name --------------------------------------------------------------------

BENCHMARKS = ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109')
# Other names the same sets go by in the wild (EDSR's archive uses B100).
ALIASES = {'B100': ('B100', 'BSD100')}
DIV2K = 'DIV2K'
DATA_ENV = 'ENLCN_DATA'
DEFAULT_DATA_DIR = 'datasets'
HOW_TO_GET = (
    'How to get the data:\n'
    '  * Set5, Set14, B100, Urban100, Manga109: the EDSR benchmark archive '
    '(https://cv.snu.ac.kr/research/EDSR/benchmark.tar, linked from the EDSR-PyTorch README), '
    'extracted so that DATA_DIR/<Name>/HR/*.png (or DATA_DIR/benchmark/<Name>/HR/*.png) exists;\n'
    '  * DIV2K validation (0801-0900): DIV2K_valid_HR.zip (and DIV2K_valid_LR_bicubic_X<s>.zip) '
    'from https://data.vision.ee.ethz.ch/cvl/DIV2K/, extracted to DATA_DIR/DIV2K/;\n'
    f'  * DATA_DIR is --data_dir, else ${DATA_ENV}, else ./{DEFAULT_DATA_DIR}; '
    'any folder of HR images can also be given as the dataset itself.')


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's images are.

    Attributes:
      name: the dataset's name in results (benchmark name or folder name).
      hr_dir: folder of HR images.
      lr_dir: DIV2K-style LR root (`<lr_dir>/X{s}/<stem>x{s}.png`), or None: LR made by bicubic.
    """
    name: str
    hr_dir: Path
    lr_dir: Path | None


def data_dir_or_default(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir`, else `$ENLCN_DATA`, else `./datasets`."""
    return Path(data_dir or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def _lr_root(candidate: Path, scale: int) -> Path | None:
    return candidate if (candidate / f'X{scale}').is_dir() else None


def _source_in(folder: Path, name: str, scale: int) -> DatasetSource:
    """A folder in EDSR benchmark layout (`HR/`, optional `LR_bicubic/X{s}/`) or of HR images."""
    if (folder / 'HR').is_dir():
        return DatasetSource(name, folder / 'HR', _lr_root(folder / 'LR_bicubic', scale))
    return DatasetSource(name, folder, None)


def find_dataset(name: str, scale: int, data_dir: str | os.PathLike | None = None) -> DatasetSource:
    """Locates a benchmark by name (case-insensitive), DIV2K validation, or a folder path.

    Looks at `<data_dir>/<Name>/HR` and `<data_dir>/benchmark/<Name>/HR` for the benchmarks,
    `<data_dir>/DIV2K/DIV2K_valid_HR` (LR in `DIV2K_valid_LR_bicubic/X{s}` beside it) for DIV2K.
    A path to an existing folder is used as is (EDSR layout if it has an `HR/` subfolder).

    Raises:
      DatasetNotFoundError: listing every place looked at and how to get the data.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return _source_in(path, path.resolve().name, scale)
    root = data_dir_or_default(data_dir)
    canonical = {n.lower(): n for n in (*BENCHMARKS, DIV2K)}.get(name.lower())
    if canonical is None:
        raise DatasetNotFoundError(
            f'unknown dataset {name!r}: not a folder, nor one of {", ".join((*BENCHMARKS, DIV2K))}\n'
            + HOW_TO_GET)
    if canonical == DIV2K:
        places = [root / DIV2K / 'DIV2K_valid_HR', root / 'DIV2K_valid_HR']
        for hr_dir in places:
            if hr_dir.is_dir():
                return DatasetSource(DIV2K, hr_dir,
                                     _lr_root(hr_dir.parent / 'DIV2K_valid_LR_bicubic', scale))
    else:
        folders = [base / alias for base in (root, root / 'benchmark')
                   for alias in ALIASES.get(canonical, (canonical,))]
        places = [folder / 'HR' for folder in folders]
        for folder in folders:
            if (folder / 'HR').is_dir():
                return _source_in(folder, canonical, scale)
    looked = '\n'.join(f'  {p.absolute()}' for p in places)
    raise DatasetNotFoundError(
        f'dataset {canonical} not found (data dir {root.absolute()}); looked in:\n{looked}\n'
        + HOW_TO_GET)
