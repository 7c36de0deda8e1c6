"""Table 2 as a script: one backbone trained under each attention variant, then evaluated.

    python -m enlcn_jax.ablation --config configs/ablation_small.py --workdir workdirs/ablation

The rows are variants as the leaderboard writes them (`variants.variant_config`; by default the
paper's Table 2, `variants.TABLE2`). Each variant trains in `<workdir>/<variant>` with
`loop.train_and_evaluate` (same steps, same seed; a finished or interrupted variant resumes), is
scored on `config.ablation.datasets` with the standard protocol (no padding; whole images, or
for every variant alike `ablation.tile` x `ablation.tile` LR tiles overlapping by
`ablation.tile_overlap` where exact softmax attention on whole images is beyond the budget), and
the results go to `<workdir>/ablation.md` (a Table-2-like markdown table: PSNR per dataset,
parameters, train time) and `<workdir>/ablation.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import ml_collections

from enlcn_jax.data import sources
from enlcn_jax.evaluation import evaluator, inference
from enlcn_jax.nn import models, registry
from enlcn_jax.research import variants
from enlcn_jax.storage import checkpoints, files
from enlcn_jax.train import loop


def run_ablation(base: ml_collections.ConfigDict, workdir: str | Path) -> list[dict]:
    """Trains and evaluates every variant of `base.ablation.variants` (`variants.TABLE2` if
    empty); all are checked before any trains.

    Raises:
      variants.VariantError: a bad variant (one line).
    """
    workdir = Path(workdir)
    names = registry.split_specs(base.ablation.variants) or list(variants.TABLE2)
    configs = [variants.check_variant(base, name) for name in names]
    test_sets = [sources.find_dataset(d, base.model.scale, base.ablation.data_dir)
                 for d in base.ablation.datasets.split(',') if d]
    # The rows and the table both use the resolved names ('set5' -> 'Set5', a folder path -> the
    # folder's name), never the names as typed.
    datasets = [source.name for source in test_sets]
    rows = []
    for name, (config, description) in zip(names, configs):
        start = time.perf_counter()
        loop.train_and_evaluate(config, workdir / name)
        train_seconds = time.perf_counter() - start
        # The ablation trained this workdir from the command's own variants just above: its
        # functions are the user's, not a checkpoint's someone else made.
        model, variables, _ = checkpoints.load_model(workdir / name, 'latest',
                                                     trust_code=True)
        upscaler = inference.ModelUpscaler(
            model, variables, bucket=1, name=name,
            tile=base.ablation.tile or None, tile_overlap=base.ablation.tile_overlap)
        row = {'variant': name, 'description': description,
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
