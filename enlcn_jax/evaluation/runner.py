"""eval.py's work as library code: the models and datasets its options name, scored and reported.

    options = runner.EvalOptions(datasets=('Set5', 'Set14'), checkpoint='workdirs/quickstart')
    results = runner.run(options)   # prints the table; writes results.json, .csv and .md

`check_options` refuses, before any work, options that do not fit together and output paths
that would fail after all of it (`OptionError`; eval.py shows it under its usage). `run` raises
`EvalError` (one line) for results files it would replace that an earlier eval.py run did not
write (`evaluator.foreign_results`; unless `overwrite`), before any work and again before
writing, for a checkpoint or dataset that cannot be used, and, once the results are
written and printed, for a dataset none of whose images could be scored; a results file that
cannot be written is `files.WriteError` (one line naming it, its previous content kept).
Messages name the options by eval.py's flags (`--output`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from enlcn_jax.data import sources

from enlcn_jax.evaluation import evaluator, inference, panels

Job = tuple[sources.DatasetSource, inference.Upscaler]


class OptionError(ValueError):
    """Options that do not fit together, or an output path that cannot be written."""


class EvalError(Exception):
    """A checkpoint or dataset that cannot be used, or a dataset with no scorable image."""


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What eval.py scores and where it writes the results (its flags, parsed).

    Attributes:
      datasets: dataset names (Set5, Set14, B100, Urban100, Manga109, DIV2K) or folder paths.
      scales: SR scales; required for `model='bicubic'`, else checked against the checkpoint.
      checkpoint: model directory or training workdir (`model='enlcn'`).
      which: `'latest'` or `'best'` checkpoint of a workdir.
      model: `'enlcn'` (the checkpoint) or `'bicubic'` (the baseline).
      data_dir: dataset root (None: `$ENLCN_DATA`, else ./datasets).
      self_ensemble, bucket, tile, tile_overlap: `inference.ModelUpscaler`'s options.
      dtype: compute precision (`precision.NAMES`; None: the one the checkpoint was trained in).
      trust_code: import the modules outside the package the checkpoint names (`MODULE:NAME`
        specs); without it such a checkpoint is refused (`checkpoints.load_model`).
      allow_changed_code: score functions whose source changed since the checkpoint was saved.
      save_images: folder the SR PNGs go to (`<dir>/<dataset>/X<s>/<name>.png`), or None.
      compare: image name (file stem) whose bicubic | SR | HR crop is written beside `output`.
      crop: `(y, x, size)` of that crop in HR pixels (None: the busiest `32 s` square).
      output: results file, `.json`, `.csv` or `.md` (all three are written, with its stem).
      overwrite: replace results files of that stem that an earlier eval.py run did not write
        (without it they are refused: `evaluator.foreign_results`).
    """
    datasets: tuple[str, ...]
    scales: tuple[int, ...] = ()
    checkpoint: str | None = None
    which: str = 'latest'
    model: str = 'enlcn'
    data_dir: str | None = None
    self_ensemble: bool = False
    bucket: int = inference.DEFAULT_BUCKET
    tile: int | None = None
    tile_overlap: int = inference.AUTO_TILE_OVERLAP
    dtype: str | None = None
    trust_code: bool = False
    allow_changed_code: bool = False
    save_images: str | None = None
    compare: str | None = None
    crop: tuple[int, ...] | None = None
    output: str = 'results.json'
    overwrite: bool = False

    def record(self) -> dict:
        """The options as the results' `config` record, keyed by eval.py's flag names."""
        return {'dataset': list(self.datasets), 'scale': list(self.scales) or None,
                'checkpoint': self.checkpoint, 'which': self.which, 'model': self.model,
                'dtype': self.dtype, 'data_dir': self.data_dir,
                'self_ensemble': self.self_ensemble, 'bucket': self.bucket, 'tile': self.tile,
                'tile_overlap': self.tile_overlap, 'trust_code': self.trust_code,
                'allow_changed_code': self.allow_changed_code, 'output': self.output,
                'overwrite': self.overwrite, 'save_images': self.save_images}


def check_options(options: EvalOptions) -> None:
    """Raises `OptionError` for options that do not fit together (a model without what it
    needs, a crop that is not `y, x, size`, inference options out of range) and for output
    paths that would fail after all the work (a directory, a suffix other than the results', a
    parent that is a file, an image folder that is a file)."""
    if options.crop is not None and len(options.crop) != 3:
        raise OptionError(f'--crop takes y,x,size, got {",".join(map(str, options.crop))}')
    output = Path(options.output)
    if output.is_dir():
        raise OptionError(f'--output {output} is a directory: name a results file')
    if output.suffix not in evaluator.RESULT_SUFFIXES:
        raise OptionError(f'--output {output}: name a {", ".join(evaluator.RESULT_SUFFIXES)} '
                          'file (all three are written, with its stem)')
    if any(parent.exists() and not parent.is_dir() for parent in output.parents):
        raise OptionError(f'--output {output}: a parent is a file, not a directory')
    save_images = Path(options.save_images) if options.save_images else None
    if save_images and save_images.exists() and not save_images.is_dir():
        raise OptionError(f'--save_images {save_images} is a file: give a directory')
    try:
        inference.ModelUpscaler.check_options(options.bucket, options.tile, options.tile_overlap)
    except ValueError as e:
        raise OptionError(f'--{e}') from e
    if options.model == 'bicubic':
        if not options.scales:
            raise OptionError('--model bicubic needs --scale')
        if options.checkpoint:
            raise OptionError('--checkpoint is not used with --model bicubic')
    elif not options.checkpoint:
        raise OptionError('--model enlcn needs --checkpoint (a model directory or workdir)')


def check_outputs(options: EvalOptions) -> None:
    """Raises `EvalError` when the results files would replace files an earlier eval.py run did
    not write (`evaluator.foreign_results`), unless `options.overwrite`."""
    foreign = [] if options.overwrite else evaluator.foreign_results(options.output)
    if foreign:
        raise EvalError(f'--output: {evaluator.foreign_message(foreign)}')


def load_upscalers(options: EvalOptions) -> list[inference.Upscaler]:
    """The models `options` name: one bicubic baseline per scale, or the checkpoint's model.

    Raises:
      EvalError: the checkpoint cannot be loaded.
      OptionError: `scales` disagree with the checkpoint's scale.
    """
    if options.model == 'bicubic':
        return [inference.BicubicUpscaler(s) for s in options.scales]
    try:
        upscaler = inference.load_upscaler(
            options.checkpoint, options.which, dtype=options.dtype, bucket=options.bucket,
            tile=options.tile, tile_overlap=options.tile_overlap,
            self_ensemble=options.self_ensemble, trust_code=options.trust_code,
            allow_changed_code=options.allow_changed_code)
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(f'--checkpoint {options.checkpoint}: {e}') from e
    if options.scales and list(options.scales) != [upscaler.scale]:
        raise OptionError(f'--scale {",".join(map(str, options.scales))} disagrees with the '
                          f'checkpoint, a x{upscaler.scale} model')
    return [upscaler]


def find_jobs(options: EvalOptions, upscalers: list[inference.Upscaler]) -> list[Job]:
    """`(dataset, upscaler)` for every upscaler and dataset, each dataset found and its images
    listed before the first forward.

    Raises:
      EvalError: a dataset is missing, a folder holds no image, or HR files share the stem of
        one LR file.
    """
    try:
        jobs = [(sources.find_dataset(name, u.scale, options.data_dir), u)
                for u in upscalers for name in options.datasets]
        for source, upscaler in jobs:
            sources.list_hr_images(source.hr_dir, upscaler.scale, source.lr_dir)
    except (FileNotFoundError, sources.AmbiguousLRError) as e:
        raise EvalError(f'--dataset: {e}') from e
    return jobs


def score(options: EvalOptions, jobs: list[Job]) -> list[evaluator.DatasetResult]:
    """Scores every job (saving the SR images to `options.save_images`), and writes the
    `options.compare` panel beside the output for every dataset that has that image; a crop
    outside the image, or no image of that name, is reported on stderr."""
    output = Path(options.output)
    compare = options.compare
    results = []
    for source, upscaler in jobs:
        result = evaluator.evaluate_dataset(source, upscaler, save_dir=options.save_images,
                                            keep={compare} if compare else ())
        results.append(result)
        if compare in result.kept:
            path = output.parent / f'compare_{source.name}_x{upscaler.scale}_{compare}.png'
            try:
                panels.write_comparison(path, *result.kept[compare], upscaler.scale,
                                        upscaler.name, options.crop)
                print(f'wrote {path}')
            except ValueError as e:  # a crop outside the image: the scores still count
                print(f'--crop: {compare} of {source.name}: {e}', file=sys.stderr)
    if compare and not any(compare in r.kept for r in results):
        print(f'--compare: no scored image named {compare!r} in {", ".join(options.datasets)}',
              file=sys.stderr)
    return results


def report(options: EvalOptions, results: list[evaluator.DatasetResult],
           upscalers: list[inference.Upscaler]) -> list[Path]:
    """Writes the results files (`evaluator.write_results`; their config records the options,
    the checkpoint step scored and the shapes compiled) and prints the table, the step scored,
    the skipped images and the paths written. Returns those paths."""
    compiled = [{'model': u.name, 'scale': u.scale, 'precision': u.precision,
                 'checkpoint_step': u.checkpoint_step,
                 'shapes': [list(s) for s in u.compiled_shapes]} for u in upscalers]
    step = upscalers[0].checkpoint_step  # one checkpoint, or bicubic upscalers (None)
    config = {**options.record(), 'checkpoint_step': step, 'compiled': compiled}
    try:
        paths = evaluator.write_results(results, options.output, config, options.overwrite)
    except evaluator.ForeignResultsError as e:  # written meanwhile by someone else
        raise EvalError(f'--output: {e}') from e
    print(evaluator.markdown_table(results))
    if step is not None:
        print(f'scored step {step} of {options.checkpoint} ({options.which})')
    for r in results:
        for s in r.skipped:
            print(f'skipped in {r.dataset} x{r.scale}: {s["name"]}: {s["error"]}')
    print('wrote ' + ', '.join(map(str, paths)))
    return paths


def run(options: EvalOptions) -> list[evaluator.DatasetResult]:
    """eval.py: checks the options, loads the models, finds the datasets, then scores, writes
    and prints the results (see the module's docstring for the errors)."""
    check_options(options)
    check_outputs(options)
    upscalers = load_upscalers(options)
    jobs = find_jobs(options, upscalers)
    results = score(options, jobs)
    report(options, results, upscalers)
    unscored = [f'{r.dataset} x{r.scale}' for r in results if not r.images]
    if unscored:
        raise EvalError(f'no image of {", ".join(unscored)} could be scored (see the skipped '
                        'images above)')
    return results
