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
beside it, replacing only files of that stem that eval.py wrote (others need `--overwrite`); the
JSON config and the printed results name the training step scored when `--checkpoint` is a
workdir. A failed write (a full disk) is one line naming the file, which keeps
its previous content. The work is `enlcn_jax/evaluation/runner.py`'s (this file parses the flags
into its `EvalOptions`); `evaluator.py` there is the protocol and `inference.py` the inference
options.
"""

from __future__ import annotations

from absl import app, flags, logging

from enlcn_jax.data import sources

from enlcn_jax.evaluation import inference, runner

from enlcn_jax.nn import precision

from enlcn_jax.storage import checkpoints, files

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
flags.DEFINE_integer('bucket', inference.DEFAULT_BUCKET, 'pad LR sides to a multiple of this so '
                     'sizes share a compiled forward (the padding is masked: same numbers); 1 = '
                     'no padding, one compilation per image size')
flags.DEFINE_integer('tile', None, 'LR tile side for devices short of memory (default: whole '
                     'images)')
flags.DEFINE_integer('tile_overlap', inference.AUTO_TILE_OVERLAP, 'LR pixels of overlap between '
                     'tiles')
flags.DEFINE_enum('dtype', None, list(precision.NAMES), 'compute precision of the network '
                  '(default: the one the checkpoint was trained in, its model.dtype)')
flags.DEFINE_boolean('trust_code', False, checkpoints.TRUST_CODE_HELP)
flags.DEFINE_boolean('allow_changed_code', False, checkpoints.ALLOW_CHANGED_CODE_HELP)
flags.DEFINE_string('save_images', None, 'write SR PNGs to DIR/<dataset>/X<s>/<name>.png')
flags.DEFINE_string('compare', None, 'image name (file stem): write a bicubic | SR | HR crop PNG '
                    'beside --output')
flags.DEFINE_list('crop', None, 'y,x,size of the --compare crop in HR pixels (default: the '
                  'busiest 32*s square)')
flags.DEFINE_string('output', 'results.json', 'results file: .json, .csv or .md; all three are '
                    'written, with its stem. Existing ones are replaced only if an earlier '
                    'eval.py run wrote them (its .json marks itself, "written_by", and records '
                    'the SHA-256 of the .csv and .md it wrote); others need --overwrite')
flags.DEFINE_boolean('overwrite', False, 'replace --output files that eval.py did not write')


def _ints(values: list[str] | None, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values or ())
    except ValueError as e:
        raise app.UsageError(f'--{flag} takes comma-separated integers, got {values}') from e


def options_from_flags(values: flags.FlagValues = FLAGS) -> runner.EvalOptions:
    """The parsed flags (`values`: this script's flags, parsed) as `runner.EvalOptions`."""
    return runner.EvalOptions(
        datasets=tuple(values.dataset), scales=_ints(values.scale, 'scale'),
        checkpoint=values.checkpoint, which=values.which, model=values.model,
        data_dir=values.data_dir, self_ensemble=values.self_ensemble, bucket=values.bucket,
        tile=values.tile, tile_overlap=values.tile_overlap, dtype=values.dtype,
        trust_code=values.trust_code, allow_changed_code=values.allow_changed_code,
        save_images=values.save_images, compare=values.compare,
        crop=_ints(values.crop, 'crop') or None, output=values.output,
        overwrite=values.overwrite)


def main(argv: list[str]) -> None:
    """Misused flags are `app.UsageError`s (usage, then the message); a checkpoint, dataset or
    results file that cannot be used exits with one line."""
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not FLAGS['verbosity'].present:  # orbax logs every restore step at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        runner.run(options_from_flags())
    except runner.OptionError as e:
        raise app.UsageError(str(e)) from e
    except (runner.EvalError, files.WriteError) as e:  # a full disk names the file
        raise SystemExit(f'eval.py: {e}') from e


if __name__ == '__main__':
    app.run(main)
