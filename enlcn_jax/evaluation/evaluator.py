"""Scoring super-resolution as the papers do: one evaluator for `eval.py`, the ablation and
training validation.

    source = sources.find_dataset('Set5', scale=2)          # <data_dir>/Set5/HR (+ LR_bicubic/X2)
    upscaler = inference.load_upscaler('checkpoints/enlcn_x2')   # or BicubicUpscaler(2)
    result = evaluate_dataset(source, upscaler)
    print(markdown_table([result]))

Protocol (docs/method.md): the SR output is clipped and rounded to 8 bit, converted to
the Y channel of BT.601, `scale` pixels are shaved from every border, and PSNR and MATLAB's SSIM
are averaged over the images (`metrics.psnr_y`, `metrics.ssim_y`). LR images come from the
dataset's `LR_bicubic/X{s}` folder when it has one, else from MATLAB bicubic `imresize` of the
HR image cropped to a multiple of s (`sources.load_pair`). `evaluate_pairs` scores any LR/HR pairs
(training validates in-memory pairs with it); `evaluate_dataset` the images of a folder.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Collection, Iterable

import numpy as np
from tqdm import tqdm

from enlcn_jax.data import image_io, sources

from enlcn_jax.evaluation import inference, metrics

from enlcn_jax.storage import files


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


def evaluate_pairs(name: str, pairs: Iterable[tuple[str, tuple[np.ndarray, np.ndarray] | Exception]],
                   upscaler: inference.Upscaler, *, total: int | None = None,
                   save_dir: str | os.PathLike | None = None, keep: Collection[str] = (),
                   progress: bool = True) -> DatasetResult:
    """Upscales and scores `(image name, (hr, lr))` pairs at `upscaler.scale`.

    A pair given as an exception (an unreadable image), or too small to score (SSIM needs 11
    pixels after the shave), is reported on stderr by name and skipped; the others are scored.

    Args:
      name: the dataset's name in results.
      pairs: `(name, (hr uint8 [H s, W s, 3], lr uint8 [H, W, 3]))` or `(name, error)`.
      upscaler: `inference.BicubicUpscaler` or `inference.ModelUpscaler`.
      total: number of pairs, for the progress bar.
      save_dir: if given, SR images are written to `<save_dir>/<name>/X{s}/<image>.png`.
      keep: image names whose `(hr, lr, sr)` are returned in `kept`.
      progress: show a tqdm bar.
    """
    scale = upscaler.scale
    start, compiles_before = time.perf_counter(), len(upscaler.compiled_shapes)
    images, skipped, kept = [], [], {}
    for image, pair in tqdm(pairs, total=total, desc=f'{name} x{scale}', unit='img',
                            disable=not progress, file=sys.stderr):
        if isinstance(pair, Exception):
            skipped.append({'name': image, 'error': str(pair)})
            tqdm.write(f'skipping {image}: {pair}', file=sys.stderr)
            continue
        hr, lr = pair
        t0 = time.perf_counter()
        sr = upscaler(lr)
        seconds = time.perf_counter() - t0
        try:
            scores = {'psnr': metrics.psnr_y(sr, hr, scale), 'ssim': metrics.ssim_y(sr, hr, scale)}
        except ValueError as e:
            skipped.append({'name': image, 'error': f'cannot score: {e}'})
            tqdm.write(f'skipping {image}: cannot score: {e}', file=sys.stderr)
            continue
        images.append({'name': image, **scores, 'seconds': seconds,
                       'lr_height': lr.shape[0], 'lr_width': lr.shape[1]})
        if save_dir is not None:
            image_io.save_image(Path(save_dir) / name / f'X{scale}' / f'{image}.png', sr)
        if image in keep:
            kept[image] = (hr, lr, sr)
    return DatasetResult(name, scale, upscaler.name, images, skipped,
                         time.perf_counter() - start,
                         len(upscaler.compiled_shapes) - compiles_before, kept)


def evaluate_dataset(source: sources.DatasetSource, upscaler: inference.Upscaler,
                     **options) -> DatasetResult:
    """`evaluate_pairs` over the images of `source` (from `sources.find_dataset`), read one by one;
    `options` as there. An image is named by its file stem, or by its file name where two files
    share a stem (`a.png`, `a.jpg`; refused with an LR folder, `sources.list_hr_images`), so rows
    and saved images stay distinct."""
    paths = sources.list_hr_images(source.hr_dir, upscaler.scale, source.lr_dir)
    stems = collections.Counter(path.stem for path in paths)
    pairs = ((path.stem if stems[path.stem] == 1 else path.name, pair)
             for path, pair in sources.iter_folder(source.hr_dir, upscaler.scale, source.lr_dir))
    return evaluate_pairs(source.name, pairs, upscaler, total=len(paths), **options)


def evaluate_in_memory(dataset: sources.SRDataset, upscaler: inference.Upscaler,
                       name: str = 'validation') -> DatasetResult:
    """`evaluate_pairs` over an in-memory `SRDataset` (training validation), without a bar."""
    return evaluate_pairs(name, zip(dataset.names, zip(dataset.hr, dataset.lr)), upscaler,
                          total=len(dataset), progress=False)


def markdown_table(results: list[DatasetResult]) -> str:
    """One row per dataset and scale: mean PSNR / SSIM, images, skipped, seconds, compiles."""
    columns = ['dataset', 'scale', 'model', 'PSNR (dB)', 'SSIM', 'images', 'skipped', 'seconds',
               'compiled shapes']
    rows = [[r['dataset'], f"x{r['scale']}", r['model'],
             '-' if r['psnr'] is None else f"{r['psnr']:.2f}",
             '-' if r['ssim'] is None else f"{r['ssim']:.4f}",
             r['images'], r['skipped'], f"{r['seconds']:.1f}", r['compiles']]
            for r in (result.summary() for result in results)]
    return files.markdown_table(columns, rows)


RESULT_SUFFIXES = ('.json', '.csv', '.md')
# The `.json` of `write_results` names its writer and the SHA-256 of the `.csv` and `.md` it
# wrote with it (`'sha256': {file name: hex digest}`): what `foreign_results` recognises.
WRITTEN_BY = 'enlcn_jax eval.py'


class ForeignResultsError(FileExistsError):
    """Results files would replace files that `write_results` did not write."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def result_paths(output: str | os.PathLike) -> list[Path]:
    """The `.json`, `.csv` and `.md` files `write_results(..., output)` writes."""
    if Path(output).suffix not in RESULT_SUFFIXES:
        raise ValueError(f'{output}: results are written as {", ".join(RESULT_SUFFIXES)}')
    return [Path(output).with_suffix(suffix) for suffix in RESULT_SUFFIXES]


def foreign_results(output: str | os.PathLike) -> list[Path]:
    """The existing files among `result_paths(output)` that an earlier `write_results` did not
    write: a `.json` without its `written_by` mark, a `.csv` or `.md` whose SHA-256 is not the
    one that `.json` recorded (edited since, or someone else's). Reads the three files."""
    json_path, *siblings = result_paths(output)
    try:
        record = json.loads(json_path.read_text()) if json_path.exists() else {}
    except (OSError, ValueError):
        record = None
    ours = isinstance(record, dict) and record.get('written_by') == WRITTEN_BY
    digests = record.get('sha256', {}) if ours and isinstance(record.get('sha256'), dict) else {}
    foreign = [json_path] if json_path.exists() and not ours else []
    for path in siblings:
        try:
            if path.exists() and digests.get(path.name) != _sha256(path.read_bytes()):
                foreign.append(path)
        except OSError:  # unreadable: not known to be ours
            foreign.append(path)
    return foreign


def foreign_message(foreign: list[Path]) -> str:
    """The one line refusing to replace `foreign` (`foreign_results`)."""
    return (f'{", ".join(map(str, foreign))} exist{"s" if len(foreign) == 1 else ""} and '
            f'{"was" if len(foreign) == 1 else "were"} not written by eval.py (its .json marks '
            'its results and records the SHA-256 of the .csv and .md): move them away, or pass '
            '--overwrite to replace them')


def write_results(results: list[DatasetResult], output: str | os.PathLike,
                  config: dict | None = None, overwrite: bool = False) -> list[Path]:
    """Writes the results as three files with `output`'s stem, whichever of them `output` names:
    `.json` (config, summary rows, every image's scores, skipped images, and `WRITTEN_BY` with
    the SHA-256 of the other two), `.csv` (one row per image) and `.md` (the table). Each file is
    written atomically (`files.write_text`).

    Args:
      results: the datasets' results.
      output: a `.json`, `.csv` or `.md` path.
      config: what was scored (the `config` of the `.json`).
      overwrite: replace existing files that an earlier `write_results` did not write.
    Returns:
      The three paths written.
    Raises:
      ForeignResultsError: without `overwrite`, an existing file it did not write (nothing is
        written).
      files.WriteError: a file cannot be written (one line naming it); it keeps its previous
        content.
    """
    json_path, csv_path, md_path = result_paths(output)
    foreign = [] if overwrite else foreign_results(output)
    if foreign:
        raise ForeignResultsError(foreign_message(foreign))
    images = [{'dataset': r.dataset, 'scale': r.scale, 'model': r.model, **image}
              for r in results for image in r.images]
    skipped = [{'dataset': r.dataset, 'scale': r.scale, **s} for r in results for s in r.skipped]
    columns = ['dataset', 'scale', 'model', 'name', 'psnr', 'ssim', 'seconds', 'lr_height', 'lr_width']
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, columns)
    writer.writeheader()
    writer.writerows(images)
    md = [markdown_table(results)]
    if skipped:
        md += ['', 'Skipped images:'] + [f'- {s["dataset"]} x{s["scale"]} {s["name"]}: {s["error"]}'
                                         for s in skipped]
    texts = {csv_path: table.getvalue(), md_path: '\n'.join(md) + '\n'}
    files.write_text(json_path, json.dumps({
        'config': config or {}, 'summary': [r.summary() for r in results], 'images': images,
        'skipped': skipped, 'written_by': WRITTEN_BY,
        'sha256': {path.name: _sha256(text.encode('utf-8')) for path, text in texts.items()}},
        indent=2))
    for path, text in texts.items():
        files.write_text(path, text)
    return [json_path, csv_path, md_path]
