"""Scores a model on SR benchmarks with the papers' protocol (Y PSNR / SSIM, s pixels shaved).

    python eval.py --dataset Set5,Set14,B100 --checkpoint checkpoints/enlcn_x2
    python eval.py --dataset Urban100 --checkpoint workdirs/x4 --which best --self_ensemble
    python eval.py --dataset Set5 --model bicubic --scale 2,3,4
    python eval.py --dataset /path/to/hr_images --checkpoint DIR --save_images sr/ --compare baby

The model config (scale included) comes from the checkpoint (a model directory or a training
workdir); `--scale` only checks it, and is required for `--model bicubic` (several scales at
once are allowed there). Datasets are Set5, Set14, B100, Urban100, Manga109 and DIV2K (validation
0801-0900) under `--data_dir` (else $ENLCN_DATA, else ./datasets), or any folder path. Prints a
markdown table and writes `--output` (JSON), with `.csv` (every image) and `.md` (the table)
beside it; the JSON config and the printed results name the training step scored when
`--checkpoint` is a workdir. A failed write (a full disk) is one line naming the file, which keeps
its previous content. See `enlcn_jax/evaluator.py` for the protocol and `enlcn_jax/evaluation/inference.py` for the
inference options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging

from enlcn_jax.data import sources

from enlcn_jax.evaluation import evaluator, inference, panels

from enlcn_jax.nn import precision

from enlcn_jax.storage import files

FLAGS = flags.FLAGS
flags.DEFINE_list('dataset', None, 'comma-separated dataset names (Set5, Set14, B100, Urban100, '
                  'Manga109, DIV2K) or folder paths', required=True)
flags.DEFINE_list('scale', None, 'SR scale(s); required for --model bicubic, else checked '
                  'against the checkpoint')
flags.DEFINE_string('checkpoint', None, 'model directory or training workdir (--model enlcn)')
flags.DEFINE_enum('which', 'latest', ['latest', 'best'], 'checkpoint of a training workdir')
flags.DEFINE_enum('model', 'enlcn', ['enlcn', 'bicubic'], 'the checkpoint, or the bicubic baseline')
flags.DEFINE_string('data_dir', None, f'dataset root (default ${sources.DATA_ENV}, else '
                    f'./{sources.DEFAULT_DATA_DIR})')
flags.DEFINE_boolean('self_ensemble', False, 'average the 8 dihedral transforms ("+" results)')
flags.DEFINE_integer('bucket', 16, 'pad LR sides to a multiple of this so sizes share a compiled '
                     'forward (the padding is masked: same numbers); 1 = no padding, one '
                     'compilation per image size', lower_bound=1)
flags.DEFINE_integer('tile', None, 'LR tile side for devices short of memory (default: whole '
                     'images)', lower_bound=1)
flags.DEFINE_integer('tile_overlap', 16, 'LR pixels of overlap between tiles', lower_bound=0)
flags.DEFINE_enum('dtype', None, list(precision.NAMES), 'compute precision of the network '
                  '(default: the one the checkpoint was trained in, its model.dtype)')
flags.DEFINE_string('save_images', None, 'write SR PNGs to DIR/<dataset>/X<s>/<name>.png')
flags.DEFINE_string('compare', None, 'image name (file stem): write a bicubic | SR | HR crop PNG '
                    'beside --output')
flags.DEFINE_list('crop', None, 'y,x,size of the --compare crop in HR pixels (default: the '
                  'busiest 32*s square)')
flags.DEFINE_string('output', 'results.json', 'results file: .json, .csv or .md; all three are '
                    'written, with its stem')


def _ints(values: list[str] | None, flag: str) -> list[int]:
    try:
        return [int(v) for v in values or []]
    except ValueError as e:
        raise app.UsageError(f'--{flag} takes comma-separated integers, got {values}') from e


def _upscalers(scales: list[int]) -> list[inference.Upscaler]:
    """The models to run, from the flags; every error names the flag at fault.

    Misused flags raise `app.UsageError` (usage, then the message); an unreadable checkpoint
    exits with the message alone, as does a missing dataset in `main`.
    """
    if FLAGS.model == 'bicubic':
        if not scales:
            raise app.UsageError('--model bicubic needs --scale')
        if FLAGS.checkpoint:
            raise app.UsageError('--checkpoint is not used with --model bicubic')
        return [inference.BicubicUpscaler(s) for s in scales]
    if not FLAGS.checkpoint:
        raise app.UsageError('--model enlcn needs --checkpoint (a model directory or workdir)')
    if FLAGS.tile is not None and FLAGS.tile_overlap >= FLAGS.tile:
        raise app.UsageError(f'--tile_overlap {FLAGS.tile_overlap} must be less than --tile {FLAGS.tile}')
    try:
        upscaler = inference.load_upscaler(
            FLAGS.checkpoint, FLAGS.which, dtype=FLAGS.dtype, bucket=FLAGS.bucket, tile=FLAGS.tile,
            tile_overlap=FLAGS.tile_overlap, self_ensemble=FLAGS.self_ensemble)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'eval.py: --checkpoint {FLAGS.checkpoint}: {e}') from e
    if scales and scales != [upscaler.scale]:
        raise app.UsageError(f'--scale {",".join(map(str, scales))} disagrees with the checkpoint, '
                             f'a x{upscaler.scale} model')
    return [upscaler]


def _check_outputs() -> None:
    """Output paths that would fail after all the work fail now, as usage errors."""
    output = Path(FLAGS.output)
    if output.is_dir():
        raise app.UsageError(f'--output {output} is a directory: name a results file')
    if output.suffix not in evaluator.RESULT_SUFFIXES:
        raise app.UsageError(f'--output {output}: name a {", ".join(evaluator.RESULT_SUFFIXES)} '
                             'file (all three are written, with its stem)')
    if any(parent.exists() and not parent.is_dir() for parent in output.parents):
        raise app.UsageError(f'--output {output}: a parent is a file, not a directory')
    if FLAGS.save_images and Path(FLAGS.save_images).exists() and \
            not Path(FLAGS.save_images).is_dir():
        raise app.UsageError(f'--save_images {FLAGS.save_images} is a file: give a directory')


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not FLAGS['verbosity'].present:  # orbax logs every restore step at INFO
        logging.set_verbosity(logging.WARNING)
    crop = _ints(FLAGS.crop, 'crop')
    if crop and len(crop) != 3:
        raise app.UsageError(f'--crop takes y,x,size, got {FLAGS.crop}')
    _check_outputs()
    upscalers = _upscalers(_ints(FLAGS.scale, 'scale'))
    try:  # resolve every dataset, and list its images, before the first forward
        jobs = [(sources.find_dataset(name, u.scale, FLAGS.data_dir), u)
                for u in upscalers for name in FLAGS.dataset]
        for source, upscaler in jobs:
            sources.list_hr_images(source.hr_dir, upscaler.scale, source.lr_dir)
    # DatasetNotFoundError, a folder without images, HR files sharing the stem of one LR file
    except (FileNotFoundError, sources.AmbiguousLRError) as e:
        raise SystemExit(f'eval.py: --dataset: {e}') from e
    try:
        _score(jobs, upscalers, crop)
    except files.WriteError as e:  # a full disk, a read-only folder: the message names the file
        raise SystemExit(f'eval.py: {e}') from e


def _score(jobs: list[tuple[sources.DatasetSource, inference.Upscaler]],
           upscalers: list[inference.Upscaler], crop: list[int]) -> None:
    """Scores every `(dataset, upscaler)` job, writes and prints the results."""
    output = Path(FLAGS.output)
    results = []
    for source, upscaler in jobs:
        result = evaluator.evaluate_dataset(source, upscaler, save_dir=FLAGS.save_images,
                                           keep={FLAGS.compare} if FLAGS.compare else ())
        results.append(result)
        if FLAGS.compare in result.kept:
            path = output.parent / f'compare_{source.name}_x{upscaler.scale}_{FLAGS.compare}.png'
            try:
                panels.write_comparison(path, *result.kept[FLAGS.compare], upscaler.scale,
                                          upscaler.name, tuple(crop) if crop else None)
                print(f'wrote {path}')
            except ValueError as e:  # a --crop outside the image: the scores still count
                print(f'--crop: {FLAGS.compare} of {source.name}: {e}', file=sys.stderr)
    if FLAGS.compare and not any(FLAGS.compare in r.kept for r in results):
        print(f'--compare: no scored image named {FLAGS.compare!r} in {", ".join(FLAGS.dataset)}',
              file=sys.stderr)

    config = {name: FLAGS[name].value for name in (
        'dataset', 'scale', 'checkpoint', 'which', 'model', 'dtype', 'data_dir', 'self_ensemble',
        'bucket', 'tile', 'tile_overlap', 'output', 'save_images')}
    compiled = [{'model': u.name, 'scale': u.scale, 'precision': u.precision,
                 'checkpoint_step': u.checkpoint_step,
                 'shapes': [list(s) for s in u.compiled_shapes]} for u in upscalers]
    step = upscalers[0].checkpoint_step  # one checkpoint, or bicubic upscalers (None)
    paths = evaluator.write_results(results, output,
                                   {**config, 'checkpoint_step': step, 'compiled': compiled})
    print(evaluator.markdown_table(results))
    if step is not None:
        print(f'scored step {step} of {FLAGS.checkpoint} ({FLAGS.which})')
    for r in results:
        for s in r.skipped:
            print(f'skipped in {r.dataset} x{r.scale}: {s["name"]}: {s["error"]}')
    print('wrote ' + ', '.join(map(str, paths)))
    unscored = [f'{r.dataset} x{r.scale}' for r in results if not r.images]
    if unscored:
        sys.exit(f'eval.py: no image of {", ".join(unscored)} could be scored (see the skipped '
                 'images above)')


if __name__ == '__main__':
    app.run(main)
