"""Pictures written for people: SR comparison panels (bicubic | SR | HR crops), attention maps
and the random-feature approximation study's plots. PNG files; matplotlib is imported lazily.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from enlcn_jax.data import image_io

from enlcn_jax.evaluation import metrics

from enlcn_jax.storage import files
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
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Writes a matplotlib figure as PNG atomically (parent folders created) and closes it.

    Raises:
      files.WriteError: `out` cannot be written (one line naming it); its previous content is
        intact.
    """
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    try:
        fig.tight_layout()
        with files.atomic_path(out) as temporary:
            fig.savefig(temporary, dpi=110)
    finally:
        plt.close(fig)
    return Path(out)


def plot_study(rows: list[dict], out: str | Path) -> Path:
    """Three panels: kernel variance vs k (at the largest m) with Eq. 7, vs m (at k = 6 or the
    nearest), and attention-output error vs k; one colour per feature map, one marker per
    projection."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    ks = sorted({r['k'] for r in rows})
    ms = sorted({r['m'] for r in rows})
    m_ref, k_ref = ms[-1], min(ks, key=lambda k: abs(k - 6))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    feature_maps = list(dict.fromkeys(r['feature_map'] for r in rows))
    for (color, spec), (name, marker) in itertools.product(
            enumerate(feature_maps), (('iid', 'o'), ('orthogonal', 's'))):
        sel = lambda **kv: sorted((r for r in rows if r['projection'] == name
                                   and r['feature_map'] == spec  # pylint: disable=cell-var-from-loop
                                   and all(r[a] == b for a, b in kv.items())),
                                  key=lambda r: (r['k'], r['m']))
        by_k, by_m = sel(m=m_ref), sel(k=k_ref)
        style = dict(marker=marker, color=f'C{color}', label=f'{spec}, {name}')
        axes[0].semilogy([r['k'] for r in by_k], [r['kernel_rel_var'] for r in by_k],
                         linestyle='none', **style)
        axes[1].loglog([r['m'] for r in by_m], [r['kernel_rel_var'] for r in by_m],
                       linestyle='none', **style)
        axes[2].plot([r['k'] for r in by_k], [r['output_rel_error'] for r in by_k], **style)
    eq7 = lambda r: r['projection'] == 'iid' and r['feature_map'] == feature_maps[0]
    eq7_k = sorted((r for r in rows if eq7(r) and r['m'] == m_ref), key=lambda r: r['k'])
    eq7_m = sorted((r for r in rows if eq7(r) and r['k'] == k_ref), key=lambda r: r['m'])
    axes[0].semilogy([r['k'] for r in eq7_k], [r['eq7_rel_var'] for r in eq7_k], 'k-', label='Eq. 7')
    axes[1].loglog([r['m'] for r in eq7_m], [r['eq7_rel_var'] for r in eq7_m], 'k-', label='Eq. 7')
    axes[0].set(xlabel='amplification k', ylabel='Var / exp(q.k)^2', title=f'kernel estimate, m = {m_ref}')
    axes[1].set(xlabel='random features m', ylabel='Var / exp(q.k)^2', title=f'kernel estimate, k = {k_ref:g}')
    axes[2].set(xlabel='amplification k', ylabel='relative error',
                title=f'attention output vs exact softmax, m = {m_ref}')
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    return save_figure(fig, out)
