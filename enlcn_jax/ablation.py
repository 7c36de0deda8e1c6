"""Table 2 as a script: one backbone trained under each attention variant, then evaluated.

    python -m enlcn_jax.ablation --config configs/ablation_small.py --workdir workdirs/ablation

Each variant trains in `<workdir>/<variant>` with `loop.train_and_evaluate` (same steps,
same seed; a finished or interrupted variant resumes), is scored on `config.ablation.datasets`
with the standard protocol (no padding; whole images, or for every variant alike `ablation.tile`
x `ablation.tile` LR tiles overlapping by `ablation.tile_overlap` where exact softmax attention
on whole images is beyond the budget), and the results go to
`<workdir>/ablation.md` (a Table-2-like markdown table: PSNR per dataset, parameters, train
time) and `<workdir>/ablation.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from enlcn_jax.data import sources

from enlcn_jax.evaluation import evaluator, inference

from enlcn_jax.nn import models

from enlcn_jax.storage import checkpoints, files

from enlcn_jax.train import loop

# Overrides applied to the base config for each row of the table.
VARIANTS: dict[str, dict] = {
    'none': {'model.attention': 'none'},
    'enla': {'model.attention': 'enla', 'model.amplification': 1.0,
             'train.contrastive.weight': 0.0},
    'enla_k': {'model.attention': 'enla', 'train.contrastive.weight': 0.0},
    'enla_k_cl': {'model.attention': 'enla'},
    'exact': {'model.attention': 'exact', 'model.amplification': 1.0,
                'train.contrastive.weight': 0.0},
}
DESCRIPTIONS = {
    'none': 'EDSR baseline (no attention)',
    'enla': '+ ENLA (k = 1)',
    'enla_k': '+ ENLA, k',
    'enla_k_cl': '+ ENLA, k, contrastive (ENLCA)',
    'exact': '+ exact non-local attention (NLA)',
}


def variant_config(base: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """`base` with the overrides of `VARIANTS[name]` (ValueError naming the known variants)."""
    if name not in VARIANTS:
        raise ValueError(f'unknown ablation variant {name!r}; known: {sorted(VARIANTS)}')
    config = ml_collections.ConfigDict(base.to_dict())
    for key, value in VARIANTS[name].items():
        section, field = key.rsplit('.', 1)
        target = config
        for part in section.split('.'):
            target = target[part]
        target[field] = value
    return config


def run_ablation(base: ml_collections.ConfigDict, workdir: str | Path) -> list[dict]:
    """Trains and evaluates every variant of `base.ablation.variants` (all if empty)."""
    workdir = Path(workdir)
    names = [n for n in base.ablation.variants.split(',') if n] or list(VARIANTS)
    test_sets = [sources.find_dataset(d, base.model.scale, base.ablation.data_dir)
                 for d in base.ablation.datasets.split(',') if d]
    # The rows and the table both use the resolved names ('set5' -> 'Set5', a folder path -> the
    # folder's name), never the names as typed.
    datasets = [source.name for source in test_sets]
    rows = []
    for name in names:
        config = variant_config(base, name)
        start = time.perf_counter()
        loop.train_and_evaluate(config, workdir / name)
        train_seconds = time.perf_counter() - start
        model, variables, _ = checkpoints.load_model(workdir / name, 'latest')
        upscaler = inference.ModelUpscaler(
            model, variables, bucket=1, name=name,
            tile=base.ablation.tile or None, tile_overlap=base.ablation.tile_overlap)
        row = {'variant': name, 'description': DESCRIPTIONS[name],
               'params': models.count_params(variables['params']),
               'train_seconds': train_seconds}
        start = time.perf_counter()
        for source in test_sets:
            result = evaluator.evaluate_dataset(source, upscaler, progress=False).summary()
            row[f'{source.name} PSNR'] = result['psnr']
            row[f'{source.name} SSIM'] = result['ssim']
        row['eval_seconds'] = time.perf_counter() - start
        rows.append(row)
        write_table(rows, datasets, base, workdir)
    return rows


def write_table(rows: list[dict], datasets: list[str], base: ml_collections.ConfigDict,
                workdir: Path) -> None:
    """Writes `<workdir>/ablation.md` and `ablation.json` (rewritten after every variant).

    `datasets` are the resolved dataset names (`sources.DatasetSource.name`) the rows' PSNR
    keys (`'<name> PSNR'`) use.
    """
    steps = base.train.epochs * base.train.steps_per_epoch
    head = ['variant', *[f'{d} PSNR' for d in datasets], 'params', 'train min', 'eval min']
    tiles = (f'{base.ablation.tile}^2 LR tiles overlapping by {base.ablation.tile_overlap}'
             if base.ablation.tile else 'whole images')
    cells = [[row['description'], *[f"{row[f'{d} PSNR']:.2f}" for d in datasets],
              f"{row['params']:,}", f"{row['train_seconds'] / 60:.1f}",
              f"{row['eval_seconds'] / 60:.1f}"] for row in rows]
    text = (f'Ablation x{base.model.scale}: {base.model.n_resblocks} blocks, {base.model.n_feats} '
            f'features, {steps} steps of {base.data.batch_size} x {base.data.lr_patch}^2 LR '
            f'patches; evaluated on {tiles}; {jax.devices()[0].device_kind} '
            f'({time.strftime("%Y-%m-%d")}).\n\n{files.markdown_table(head, cells)}')
    files.write_text(workdir / 'ablation.md', text + '\n')
    files.write_text(workdir / 'ablation.json', json.dumps(rows, indent=2))
    print(text)


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Ablation config (configs/ablation_small.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', 'workdirs/ablation', 'One sub-directory per variant.')


def main(argv):
    del argv
    checkpoints.quiet_orbax_logs()
    run_ablation(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
    flags.mark_flags_as_required(['config'])
    app.run(main)
