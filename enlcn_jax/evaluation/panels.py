"""SR comparison panels for people: the same crop of the bicubic, SR and HR images side by side,
labelled with each crop's Y PSNR, as PNG (eval.py's `--compare`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from enlcn_jax.data import image_io

from enlcn_jax.evaluation import metrics

from enlcn_jax.data.imresize import imresize


def busiest_crop(hr: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left `(y, x)` of the `size x size` window with the most gradient energy of HR's Y.

    Args:
      hr: uint8 `[H, W, 3]`, H and W >= size.
    """
    y = metrics.rgb_to_y(hr)
    energy = np.zeros_like(y)
    energy[:, 1:] += np.diff(y, axis=1) ** 2
    energy[1:, :] += np.diff(y, axis=0) ** 2
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size]
            + integral[:-size, :-size])
    top, left = np.unravel_index(np.argmax(sums), sums.shape)
    return int(top), int(left)


def comparison_panel(panels: list[tuple[str, np.ndarray]], crop: tuple[int, int, int],
                     display: int = 256) -> np.ndarray:
    """The same crop of several images side by side, each labelled below.

    Args:
      panels: `(label, uint8 [H, W, 3])`, all of one size.
      crop: `(y, x, size)` in those images' pixels.
      display: minimum side of each shown crop (nearest-neighbour enlarged by an integer).
    Returns:
      uint8 `[rows, cols, 3]` image.
    """
    y, x, size = crop
    zoom = max(1, -(-display // size))
    side, gap, text_h = size * zoom, 8, 24
    canvas = Image.new('RGB', (len(panels) * (side + gap) - gap, side + text_h), 'white')
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    for i, (label, image) in enumerate(panels):
        patch = Image.fromarray(image[y:y + size, x:x + size]).resize((side, side), Image.NEAREST)
        canvas.paste(patch, (i * (side + gap), 0))
        draw.text((i * (side + gap) + 4, side + 4), label, fill='black', font=font)
    return np.asarray(canvas)


def write_comparison(path: str | os.PathLike, hr: np.ndarray, lr: np.ndarray, sr: np.ndarray,
                     scale: int, model: str, crop: tuple[int, int, int] | None = None) -> Path:
    """Bicubic, SR and HR crops side by side, labelled with the crop's Y PSNR, as a PNG.

    Args:
      hr, sr: uint8 `[H s, W s, 3]`; lr: uint8 `[H, W, 3]`.
      crop: `(y, x, size)` in HR pixels; default: a `32 s` square (at most the image) with the
        highest HR gradient energy.
    """
    if crop is None:
        size = min(32 * scale, *hr.shape[:2])
        crop = (*busiest_crop(hr, size), size)
    y, x, size = crop
    if size < 1 or y < 0 or x < 0 or y + size > hr.shape[0] or x + size > hr.shape[1]:
        raise ValueError(f'crop y={y}, x={x}, size={size} does not fit in the '
                         f'{hr.shape[1]}x{hr.shape[0]} (WxH) HR image')
    window = lambda image: metrics.rgb_to_y(image[y:y + size, x:x + size])
    label = lambda name, image: f'{name} {metrics.psnr(window(image), window(hr)):.2f} dB'
    bicubic = imresize(lr, scale)
    panel = comparison_panel([(label('bicubic', bicubic), bicubic), (label(model, sr), sr),
                              ('HR', hr)], crop)
    image_io.save_image(path, panel)
    return Path(path)
