"""Benchmark evaluation: find a dataset, super-resolve every image, score it as the papers do.

    source = find_dataset('Set5', scale=2)                 # <data_dir>/Set5/HR (+ LR_bicubic/X2)
    upscaler = load_upscaler('checkpoints/enlcn_x2')      # or BicubicUpscaler(2)
    result = evaluate_dataset(source, upscaler)
    print(markdown_table([result]))

Protocol (../shared/docs/SPEC.md): the SR output is clipped and rounded to 8 bit, converted to
the Y channel of BT.601, `scale` pixels are shaved from every border, and PSNR and MATLAB's SSIM
are averaged over the images (`metrics.psnr_y`, `metrics.ssim_y`). LR images come from the
dataset's `LR_bicubic/X{s}` folder when it has one, else from MATLAB bicubic `imresize` of the
HR image cropped to a multiple of s (`data.load_pair`).

Inference (`ModelUpscaler`), batch of one:
  * whole images in one jit-compiled forward. The LR image is padded at the bottom/right up to a
    multiple of `bucket` (reflect padding) and the SR output cropped back, so images of nearby
    sizes share one compiled program: a 100-image set compiles a handful of times, not 100.
    Padding is not free of effects: near the bottom/right borders the convolutions see reflected
    pixels where the unpadded forward sees zero padding, and the non-local attention (ENLCA
    attends over every position) takes the padded positions in everywhere. On the (random) fixture
    model the output changes by up to ~0.2 (of 1) in a band of a few pixels at those borders and
    by ~1e-4 elsewhere. `bucket=1` pads nothing and is exact, at the price of one compilation per
    distinct image size: use it for numbers to compare with published tables.
  * `tile`: for devices short of memory, the LR image is cut into `tile x tile` tiles that
    overlap by `tile_overlap` pixels; each output pixel is taken from the tile in which it lies
    furthest from a cut (no blending), so every kept pixel has at least `tile_overlap // 2`
    pixels of real context. For a convolutional model (attention='none') whose receptive-field
    radius is at most that, the result equals the whole-image output; with ENLCA the attention
    only sees one tile, which changes the output.
  * `self_ensemble`: the 8 dihedral transforms of the input (`data.dihedral`), each output
    transformed back and averaged before quantisation (EDSR's x8 ensemble, "+").
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Collection, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from enlcn_jax import checkpoints, data, image_io, metrics, models
from enlcn_jax.imresize import imresize

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
      data.DatasetNotFoundError: listing every place looked at and how to get the data.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return _source_in(path, path.resolve().name, scale)
    root = data_dir_or_default(data_dir)
    canonical = {n.lower(): n for n in (*BENCHMARKS, DIV2K)}.get(name.lower())
    if canonical is None:
        raise data.DatasetNotFoundError(
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
    raise data.DatasetNotFoundError(
        f'dataset {canonical} not found (data dir {root.absolute()}); looked in:\n{looked}\n'
        + HOW_TO_GET)


class Upscaler(Protocol):
    """LR `uint8 [H, W, 3]` -> SR `uint8 [H s, W s, 3]`, plus what the results table reports:
    `compiled_shapes`, the input shapes compiled so far (one per compilation)."""
    name: str
    scale: int
    compiled_shapes: Sequence[tuple[int, ...]]

    def __call__(self, lr: np.ndarray) -> np.ndarray: ...


class BicubicUpscaler:
    """The bicubic baseline: MATLAB `imresize(lr, s)` on the uint8 image (rounded per axis)."""

    name = 'bicubic'
    compiled_shapes = ()

    def __init__(self, scale: int):
        self.scale = int(scale)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        return imresize(lr, self.scale)


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
      variables: its variables (`params`, `random_features`), moved to the default device once.
      bucket: LR height and width are padded up to a multiple of this (1: no padding, exact).
      tile: LR tile side, or None for whole images.
      tile_overlap: LR pixels shared by neighbouring tiles, `0 <= tile_overlap < tile`.
      self_ensemble: average the outputs of the 8 dihedral transforms of the input.
      pad_mode: `np.pad` mode of the bucket padding.
      name: the model's name in results.
    """

    def __init__(self, model: models.ENLCN, variables: dict, *, bucket: int = 16,
                 tile: int | None = None, tile_overlap: int = 0, self_ensemble: bool = False,
                 pad_mode: str = 'reflect', name: str = 'enlcn'):
        if bucket < 1:
            raise ValueError(f'bucket must be >= 1, got {bucket}')
        if tile is not None and not 0 <= tile_overlap < tile:
            raise ValueError(f'tile_overlap must be in [0, tile={tile}), got {tile_overlap}')
        self.model = model
        self.scale = model.scale
        self.variables = jax.device_put(variables)
        self.bucket = bucket
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.self_ensemble = self_ensemble
        self.pad_mode = pad_mode
        self.name = name
        self.compiled_shapes: list[tuple[int, ...]] = []
        self._forward = jax.jit(self._traced_forward)

    def _traced_forward(self, variables: dict, x: jax.Array) -> jax.Array:
        # Runs only when jit traces, i.e. once per new input shape.
        self.compiled_shapes.append(tuple(x.shape))
        return self.model.apply(variables, x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One forward of `x` float32 `[h, w, 3]` padded to the bucket -> `[h s, w s, 3]`."""
        h, w = x.shape[:2]
        pad = ((0, -h % self.bucket), (0, -w % self.bucket), (0, 0))
        y = self._forward(self.variables, jnp.asarray(np.pad(x, pad, mode=self.pad_mode))[None])
        return np.asarray(y)[0, :h * self.scale, :w * self.scale]

    def _run_tiled(self, x: np.ndarray) -> np.ndarray:
        if self.tile is None:
            return self._run(x)
        s = self.scale
        out = np.empty((x.shape[0] * s, x.shape[1] * s, 3), np.float32)
        for y0, ky0, ky1 in _tile_spans(x.shape[0], self.tile, self.tile_overlap):
            for x0, kx0, kx1 in _tile_spans(x.shape[1], self.tile, self.tile_overlap):
                sr = self._run(x[y0:y0 + self.tile, x0:x0 + self.tile])
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
        outputs = [data.inverse_dihedral(self._run_tiled(np.ascontiguousarray(data.dihedral(x, k))), k)
                   for k in range(8)]
        return np.mean(outputs, axis=0, dtype=np.float32)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        """`predict`, clipped and rounded to uint8 `[H s, W s, 3]` (the protocol's SR image)."""
        return metrics.quantize(self.predict(lr))


def load_upscaler(checkpoint: str | os.PathLike, which: str = 'latest', **options) -> ModelUpscaler:
    """A `ModelUpscaler` for a model directory or training workdir (`checkpoints.load_model`).

    Args:
      checkpoint: the directory.
      which: `'latest'` or `'best'` checkpoint of a workdir.
      **options: `ModelUpscaler`'s keyword arguments.
    """
    config, variables = checkpoints.load_model(checkpoint, which)
    return ModelUpscaler(models.from_config(config), variables, **options)


@dataclasses.dataclass
class DatasetResult:
    """Scores of one dataset at one scale.

    Attributes:
      images: per image `{'name', 'psnr', 'ssim', 'seconds', 'lr_height', 'lr_width'}`,
        `seconds` the upscaling time (compilation included when it happened).
      skipped: per unreadable or unscorable image `{'name', 'error'}`.
      seconds: wall time of the whole dataset (loading and compilation included).
      compiles: new compilations while scoring this dataset.
      kept: `name -> (hr, lr, sr)` uint8 arrays of the images asked for with `keep`.
    """
    dataset: str
    scale: int
    model: str
    images: list[dict]
    skipped: list[dict]
    seconds: float
    compiles: int
    kept: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        """One results-table row (PSNR / SSIM are None when no image could be scored)."""
        mean = lambda key: statistics.fmean(r[key] for r in self.images) if self.images else None
        return {'dataset': self.dataset, 'scale': self.scale, 'model': self.model,
                'psnr': mean('psnr'), 'ssim': mean('ssim'), 'images': len(self.images),
                'skipped': len(self.skipped), 'seconds': self.seconds, 'compiles': self.compiles}


def evaluate_dataset(source: DatasetSource, upscaler: Upscaler, *,
                     save_dir: str | os.PathLike | None = None, keep: Collection[str] = (),
                     progress: bool = True) -> DatasetResult:
    """Upscales and scores every image of `source` at `upscaler.scale`.

    An image that cannot be read, or is too small to score (SSIM needs 11 pixels after the
    shave), is reported on stderr by name and skipped; the others are still scored.

    Args:
      source: from `find_dataset`.
      upscaler: `BicubicUpscaler` or `ModelUpscaler`.
      save_dir: if given, SR images are written to `<save_dir>/<dataset>/X{s}/<name>.png`.
      keep: names (file stems) whose `(hr, lr, sr)` are returned in `kept`.
      progress: show a tqdm bar.
    """
    scale = upscaler.scale
    start, compiles_before = time.perf_counter(), len(upscaler.compiled_shapes)
    images, skipped, kept = [], [], {}
    items = data.iter_folder(source.hr_dir, scale, source.lr_dir)
    total = len(image_io.list_images(source.hr_dir))
    for path, pair in tqdm(items, total=total, desc=f'{source.name} x{scale}', unit='img',
                           disable=not progress, file=sys.stderr):
        if isinstance(pair, Exception):
            skipped.append({'name': path.stem, 'error': str(pair)})
            tqdm.write(f'skipping {path}: {pair}', file=sys.stderr)
            continue
        hr, lr = pair
        t0 = time.perf_counter()
        sr = upscaler(lr)
        seconds = time.perf_counter() - t0
        try:
            scores = {'psnr': metrics.psnr_y(sr, hr, scale), 'ssim': metrics.ssim_y(sr, hr, scale)}
        except ValueError as e:
            skipped.append({'name': path.stem, 'error': f'cannot score: {e}'})
            tqdm.write(f'skipping {path}: cannot score: {e}', file=sys.stderr)
            continue
        images.append({'name': path.stem, **scores, 'seconds': seconds,
                       'lr_height': lr.shape[0], 'lr_width': lr.shape[1]})
        if save_dir is not None:
            image_io.save_image(Path(save_dir) / source.name / f'X{scale}' / f'{path.stem}.png', sr)
        if path.stem in keep:
            kept[path.stem] = (hr, lr, sr)
    return DatasetResult(source.name, scale, upscaler.name, images, skipped,
                         time.perf_counter() - start,
                         len(upscaler.compiled_shapes) - compiles_before, kept)


def markdown_table(results: list[DatasetResult]) -> str:
    """One row per dataset and scale: mean PSNR / SSIM, images, skipped, seconds, compiles."""
    lines = ['| dataset | scale | model | PSNR (dB) | SSIM | images | skipped | seconds | compiled shapes |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in (result.summary() for result in results):
        psnr = '-' if r['psnr'] is None else f"{r['psnr']:.2f}"
        ssim = '-' if r['ssim'] is None else f"{r['ssim']:.4f}"
        lines.append(f"| {r['dataset']} | x{r['scale']} | {r['model']} | {psnr} | {ssim} | "
                     f"{r['images']} | {r['skipped']} | {r['seconds']:.1f} | {r['compiles']} |")
    return '\n'.join(lines)


def write_results(results: list[DatasetResult], output: str | os.PathLike,
                  config: dict | None = None) -> list[Path]:
    """Writes `output` (JSON: config, summary rows, every image's scores, skipped images) and,
    beside it with the same stem, `.csv` (one row per image) and `.md` (the table).

    Returns:
      The three paths written.
    """
    json_path = Path(output)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    images = [{'dataset': r.dataset, 'scale': r.scale, 'model': r.model, **image}
              for r in results for image in r.images]
    skipped = [{'dataset': r.dataset, 'scale': r.scale, **s} for r in results for s in r.skipped]
    json_path.write_text(json.dumps({'config': config or {}, 'summary': [r.summary() for r in results],
                                     'images': images, 'skipped': skipped}, indent=2))
    csv_path = json_path.with_suffix('.csv')
    columns = ['dataset', 'scale', 'model', 'name', 'psnr', 'ssim', 'seconds', 'lr_height', 'lr_width']
    with csv_path.open('w', newline='') as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(images)
    md_path = json_path.with_suffix('.md')
    md = [markdown_table(results)]
    if skipped:
        md += ['', 'Skipped images:'] + [f'- {s["dataset"]} x{s["scale"]} {s["name"]}: {s["error"]}'
                                         for s in skipped]
    md_path.write_text('\n'.join(md) + '\n')
    return [json_path, csv_path, md_path]


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
