"""Image file I/O: every image enters the package as ``uint8 [H, W, 3]`` RGB.

``load_image`` normalises whatever PIL can open to that layout. Grayscale
(``1``, ``L``, ``I``, ``I;16``, ``F``), palette (``P``) and other colour
spaces (``CMYK``, ``YCbCr``, ...) are converted to RGB and an alpha channel
is dropped (not composited); each such conversion emits one ``UserWarning``
that names the file, so a dataset with odd files is noticed instead of
silently altered. 16-bit grayscale is rescaled to 8 bits (``v / 257``)
rather than clipped; 16-bit RGB PNGs (which PIL reads as 8 bits) get the same
warning. Of a multi-frame image (an animated GIF, a multi-page TIFF) only the
first frame is read, with the same warning. An EXIF orientation tag is applied,
so photos come in the way they are shown.

``save_image`` writes atomically (``files.atomic_path``): a failed write leaves
what was at the path before.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from enlcn_jax.storage import files

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# Integer grayscale modes whose values span 0..65535 (16-bit PNG / TIFF).
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


class ImageError(ValueError):
    """An image file exists but cannot be decoded (corrupt, truncated, unsupported)."""


def _has_alpha(im: Image.Image) -> bool:
    return "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Decoded PIL image of any mode -> ``uint8 [H, W, 3]``; alpha discarded."""
    if im.mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(im, dtype=np.float64) / 257.0
        gray8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Args:
      path: any format PIL decodes.

    Returns:
      ``np.ndarray`` of dtype ``uint8`` and shape ``[H, W, 3]``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ImageError: the file cannot be decoded; the message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode, alpha, frames = im.mode, _has_alpha(im), getattr(im, "n_frames", 1)
            sixteen_bit_rgb = im.format == "PNG" and mode in ("RGB", "RGBA") and \
                _png_bit_depth(path) == 16
            rgb = _to_rgb_array(ImageOps.exif_transpose(im))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot decode image {path}: {e}") from e
    what = [f"mode {mode!r} converted to RGB"] if mode not in ("RGB", "RGBA") else []
    if sixteen_bit_rgb:
        what.append("16-bit RGB reduced to 8 bits")
    if alpha:
        what.append("alpha channel dropped")
    if frames > 1:
        what.append(f"only the first of its {frames} frames used")
    if what:
        warnings.warn(f"{path}: {', '.join(what)}", UserWarning, stacklevel=2)
    return rgb


def _png_bit_depth(path: Path) -> int:
    """Bits per sample of a PNG, from its IHDR chunk (byte 24 of the file)."""
    with open(path, "rb") as f:
        header = f.read(25)
    return header[24] if len(header) == 25 else 8


def save_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write ``img`` (``uint8 [H, W, 3]`` or ``[H, W]``) to ``path`` atomically; the format
    follows the suffix and missing parent directories are created.

    Raises:
      ValueError: ``img`` is not such an array, or the suffix names no format PIL writes.
      files.WriteError: the file cannot be written (one line naming ``path``); what was at
        ``path`` before is intact.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(
            f"save_image({path}): expected uint8 [H, W, 3] or [H, W], got {img.dtype} {img.shape}"
        )
    if save_format(path) is None:
        raise ValueError(f"save_image({path}): PIL writes no image format of suffix "
                         f"{Path(path).suffix!r}")
    with files.atomic_path(path) as temporary:
        Image.fromarray(img).save(temporary)


def save_format(path: str | os.PathLike) -> str | None:
    """The PIL format ``save_image`` writes for ``path``'s suffix (case-insensitive), or None
    where PIL has no writer for it (no suffix, an unknown suffix, a read-only format)."""
    image_format = Image.registered_extensions().get(Path(path).suffix.lower())
    return image_format if image_format in Image.SAVE else None


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name.

    Recognised suffixes (case-insensitive): png, jpg, jpeg, bmp, tif, tiff. Broken symbolic
    links with those suffixes are included, so that reading them reports them.

    Raises:
      FileNotFoundError: ``folder`` is missing, not a directory, or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    # Broken links are listed too: reading them fails with an error that names them.
    files = sorted(
        p for p in folder.iterdir()
        if (p.is_file() or (p.is_symlink() and not p.exists()))
        and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise FileNotFoundError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {folder}"
        )
    return files
