"""Does my attention math help? A synthetic x2 task that only non-local attention solves, in
minutes on a CPU.

    python -m enlcn_jax.proxy --variants none,enla,enla_k,enla_k_cl,exact --workdir workdirs/proxy
    python -m enlcn_jax.proxy --variants none,feature_map=relu,'my_kernels:favor(rho=0.5)' \\
        --workdir workdirs/proxy_favor [--seeds 3] [--steps 800] [--size 16]

Each variant trains the same small ENLCN (`base_config`: 4 residual blocks x 16 features, two
ENLCA modules) for the same steps on the same data stream, once per seed, and is scored by
PSNR-Y on a fixed held-out set; `<workdir>/proxy.md` (a table) and `proxy.json` (its rows,
`run_proxy`) say which variants beat plain EDSR (`none`) and by how many seed standard
deviations. A variant is a name of `ablation.VARIANTS` or a researcher's `KEY=SPEC`
(`variant_config`).

The task (`Task`, `draw_mosaic`). An image is a grid of square cells (4 x 4 cells of 4 x 4 LR
pixels), each filled with one of a few flat colours, the textures (3 per image, drawn per
image); a texture fills a third of the cells (5 or 6), at random places, so it repeats all over
the image. The HR target is this clean mosaic. The LR input is the bicubic downscale (MATLAB's)
of the mosaic as observed: each cell's colour shifted by a grey cast of its own (the same offset
on R, G and B, constant over the cell, independent between cells, normal with std `Task.cast`).

Why a local CNN cannot solve it: a cell's own pixels say nothing about its cast, so one repeat
alone leaves the true colour uncertain by the cast. The texture's other repeats were observed
with independent casts; their mean misses the true colour by only cast / sqrt(repeats). Using
them means finding, for every position, the cells that hold the same texture (the same hue: a
grey cast leaves the hue alone) wherever they are, and averaging only those. Which cells these
are changes from image to image, so a fixed weighting of a neighbourhood (a convolution) mixes
in the other textures; an average weighted by content similarity (non-local attention, with
queries and keys from the hue and values from the colour) need not, and the sharper the
attention (larger k) the less of the other textures it mixes in. The network's receptive field
(23 LR pixels) covers much of a 16-pixel image: what convolutions lack here is selection by
content, not reach (`--size` makes the images larger than the field).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from configs import default

from enlcn_jax import ablation
from enlcn_jax.data import imresize, sources
from enlcn_jax.evaluation import evaluator, inference, metrics
from enlcn_jax.nn import models, registry
from enlcn_jax.storage import files
from enlcn_jax.train import loop, recipe

# The config key a researcher's `KEY=SPEC` variant sets, and the ablation variant it is set on.
SPEC_KEYS = {'attention': 'model.attention', 'feature_map': 'model.feature_map',
             'projection': 'model.projection', 'block': 'model.block',
             'loss': 'train.contrastive.loss'}
SPEC_BASE = {'loss': 'enla_k_cl'}   # every other key: 'enla_k'

# Random streams: seed s trains on `default_rng([TRAIN_STREAM, s])`, every seed is scored on the
# images of `default_rng(TEST_SET_ENTROPY)`.
TRAIN_STREAM = 1
TEST_SET_ENTROPY = [0, 2024]
TEST_IMAGES = 32
STEPS_PER_EPOCH = 50  # the random features are redrawn at every epoch start


@dataclasses.dataclass(frozen=True)
class Task:
    """The synthetic mosaic task (see the module docstring).

    Attributes:
      lr_size: LR image side, a multiple of `cell`.
      cell: LR side of a cell.
      textures: colours per image, each filling `(lr_size / cell)^2 / textures` cells (the
        remainder spread over the first ones), at least 2 each.
      cast: std of a cell's grey cast, in [0, 1] pixel units.
      scale: SR factor.
    """
    lr_size: int = 16
    cell: int = 4
    textures: int = 3
    cast: float = 0.06
    scale: int = 2

    def __post_init__(self):
        if self.cell < 1 or self.lr_size < self.cell or self.lr_size % self.cell:
            raise ValueError(f'the LR size ({self.lr_size}) must be a positive multiple of the '
                             f'cell ({self.cell})')
        if self.textures < 1 or self.grid ** 2 < 2 * self.textures:
            raise ValueError(f'{self.grid ** 2} cells cannot hold {self.textures} textures twice '
                             'each')

    @property
    def grid(self) -> int:
        """Cells per side."""
        return self.lr_size // self.cell


@dataclasses.dataclass(frozen=True)
class Mosaic:
    """One image of the task and how it was made.

    Attributes:
      hr: uint8 `[S s, S s, 3]` clean mosaic (the target), S = `Task.lr_size`, s = `Task.scale`.
      lr: uint8 `[S, S, 3]` network input: the cast mosaic, bicubic-downscaled.
      layout: int `[G, G]` texture of each cell, G = `Task.grid`.
      colours: float `[textures, 3]` true colour of each texture, in [0, 1].
      casts: float `[G, G]` grey cast of each cell.
    """
    hr: np.ndarray
    lr: np.ndarray
    layout: np.ndarray
    colours: np.ndarray
    casts: np.ndarray


def draw_mosaic(task: Task, rng: np.random.Generator) -> Mosaic:
    """One image of `task` from `rng` (deterministic given the generator's state)."""
    colours = rng.uniform(0.25, 0.75, (task.textures, 3))
    layout = rng.permutation(np.arange(task.grid ** 2) % task.textures).reshape(task.grid,
                                                                                 task.grid)
    casts = task.cast * rng.standard_normal((task.grid, task.grid))
    hr_cell = task.cell * task.scale

    def paint(cells: np.ndarray) -> np.ndarray:  # [G, G, 3] -> [G hr_cell, G hr_cell, 3]
        return np.repeat(np.repeat(cells, hr_cell, axis=0), hr_cell, axis=1)

    hr = paint(colours[layout])
    observed = paint(colours[layout] + casts[..., None])
    lr = imresize.imresize(observed, scale=1 / task.scale)
    return Mosaic(metrics.quantize(hr), metrics.quantize(lr), layout, colours, casts)


def draw_batch(task: Task, rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """`size` images: `{'lr': uint8 [size, S, S, 3], 'hr': uint8 [size, S s, S s, 3]}`."""
    mosaics = [draw_mosaic(task, rng) for _ in range(size)]
    return {'lr': np.stack([m.lr for m in mosaics]), 'hr': np.stack([m.hr for m in mosaics])}


def training_batches(task: Task, seed: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The endless training stream of `seed`: `draw_batch` of `batch_size` images per step."""
    rng = np.random.default_rng([TRAIN_STREAM, seed])
    while True:
        yield draw_batch(task, rng, batch_size)


def held_out_set(task: Task, count: int = TEST_IMAGES) -> sources.SRDataset:
    """The held-out images: the same `count` mosaics for every seed and variant."""
    rng = np.random.default_rng(TEST_SET_ENTROPY)
    mosaics = [draw_mosaic(task, rng) for _ in range(count)]
    return sources.SRDataset([f'mosaic_{i}' for i in range(count)], [m.hr for m in mosaics],
                             [m.lr for m in mosaics], task.scale)


def base_config(task: Task, steps: int) -> ml_collections.ConfigDict:
    """The proxy's training config: `configs/default.py` with a small ENLCN on `task`.

    x`task.scale`, 4 residual blocks x 16 features, an ENLCA first and one after the 4th block
    (2 modules, embeddings of 16 / 4 = 4 dimensions, m = 64 random features); `steps` steps of 8
    whole images; Adam at 2e-3, halved from the epoch that holds three quarters of the steps; the
    contrastive loss (where a variant has it) from the epoch that holds half of them; random
    features redrawn every `STEPS_PER_EPOCH` steps (an epoch).
    """
    half, three_quarters = (int(fraction * steps) // STEPS_PER_EPOCH for fraction in (0.5, 0.75))
    config = default.get_config()
    config.update_from_flattened_dict({
        'model.scale': task.scale, 'model.n_resblocks': 4, 'model.n_feats': 16,
        'model.attention_every': 4, 'model.num_random_features': 64,
        'data.lr_patch': task.lr_size, 'data.batch_size': 8,
        'train.epochs': math.ceil(steps / STEPS_PER_EPOCH),
        'train.steps_per_epoch': STEPS_PER_EPOCH, 'train.lr': 2e-3,
        'train.lr_decay_epochs': (three_quarters,), 'train.contrastive.start_epoch': half,
    })
    return config


class VariantError(ValueError):
    """A variant that cannot be run; the one-line message names it."""


def parse_variant(variant: str) -> tuple[str | None, str]:
    """`(None, name)` for a name of `ablation.VARIANTS`, else `(KEY, SPEC)`: `KEY=SPEC`, or a
    bare SPEC read as `('attention', SPEC)`. Only an `=` before any `(` separates a KEY (an
    option string such as `my_kernels:favor(rho=0.5)` has its own)."""
    variant = variant.strip()
    if variant in ablation.VARIANTS:
        return None, variant
    if '=' in variant.split('(', 1)[0]:
        key, spec = variant.split('=', 1)
        return key.strip(), spec.strip()
    return 'attention', variant


def variant_config(base: ml_collections.ConfigDict,
                   variant: str) -> tuple[ml_collections.ConfigDict, str]:
    """The config and description of one variant.

    Args:
      base: the proxy's config (`base_config`).
      variant: a name of `ablation.VARIANTS`; or `KEY=SPEC` with KEY in `SPEC_KEYS`, which sets
        that config key to SPEC on the `enla_k` variant (`loss=`: on `enla_k_cl`); or a bare
        SPEC, read as `attention=SPEC`. SPEC is a registered name, `MODULE:NAME`, or either with
        options (`my_kernels:favor(rho=0.5)`); it is only put into the config (`check_variant`
        resolves it).
    Raises:
      VariantError: an unknown KEY, naming the known ones.
    """
    key, spec = parse_variant(variant)
    if key is None:
        return ablation.variant_config(base, spec), ablation.DESCRIPTIONS[spec]
    if key not in SPEC_KEYS:
        raise VariantError(f'unknown variant key {key!r} in {variant!r}; known keys: '
                           f'{list(SPEC_KEYS)} (KEY=SPEC), or a variant of '
                           f'{list(ablation.VARIANTS)}')
    on = SPEC_BASE.get(key, 'enla_k')
    config = ablation.variant_config(base, on)
    section, field = SPEC_KEYS[key].rsplit('.', 1)
    functools.reduce(lambda node, part: node[part], section.split('.'), config)[field] = spec
    return config, f'{on} with {SPEC_KEYS[key]}={spec}'


def check_variant(base: ml_collections.ConfigDict,
                  variant: str) -> tuple[ml_collections.ConfigDict, str]:
    """`variant_config`, validated as training validates a config (`loop.validate_config`:
    every function resolved and checked), so a bad variant fails before anything trains.

    Raises:
      VariantError: a one-line message naming the variant; for a plain name that is neither an
        ablation variant nor an attention, also the known variants.
    """
    config, description = variant_config(base, variant)
    try:
        loop.validate_config(config)
    except ValueError as e:
        if variant.strip().isidentifier():  # a bare name, read as an attention
            raise VariantError(f'unknown variant {variant!r}: not one of '
                               f'{list(ablation.VARIANTS)}, and as an attention: {e}') from None
        raise VariantError(f'variant {variant!r}: {e}') from None
    return config, description


class VariantTrainer:
    """Trains and scores one variant's network on the task, once per seed.

    The train step, the redraw and the scoring forward compile once and serve every seed.

    Args:
      config: the variant's config (`check_variant`).
      task: the task its data come from.
      test_images: the held-out set (`held_out_set`).
    """

    def __init__(self, config: ml_collections.ConfigDict, task: Task,
                 test_images: sources.SRDataset):
        self.config, self.task, self.test_images = config, task, test_images
        self.model = recipe.create_model(config)
        self.mesh = recipe.create_mesh()
        self.train_step = recipe.compile_train_step(config, self.mesh)
        self.redraw = recipe.compile_redraw(config, self.mesh)
        self._template: recipe.TrainState | None = None
        self._upscaler: inference.ModelUpscaler | None = None

    def initial_state(self, seed: int) -> recipe.TrainState:
        """The state training starts from: parameters and random features from `seed`."""
        state = recipe.create_train_state(self.config, self.model, jax.random.PRNGKey(seed))
        # Every seed's state keeps the first one's static fields (the model's apply, the
        # optimiser), so the compiled step recognises it and is not compiled again.
        if self._template is None:
            self._template = state
        state = self._template.replace(step=state.step, params=state.params,
                                       opt_state=state.opt_state,
                                       random_features=state.random_features, rng=state.rng)
        return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))

    def train(self, seed: int, steps: int) -> recipe.TrainState:
        """`steps` train steps from `initial_state(seed)` on `training_batches` of `seed`, with
        the random features redrawn on the config's schedule.

        Raises:
          FloatingPointError: the parameters are not finite after the last step.
        """
        state = self.initial_state(seed)
        batches = training_batches(self.task, seed, self.config.data.batch_size)
        for step in range(steps):
            index = recipe.redraw_index(step, self.config)
            if index is not None:
                state = self.redraw(state, index)
            state, _ = self.train_step(state, recipe.shard_batch(next(batches), self.mesh))
        if not all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(state.params)):
            raise FloatingPointError(f'the parameters are not finite after {steps} steps of '
                                     f'seed {seed}: training diverged')
        return state

    def score(self, state: recipe.TrainState) -> float:
        """Mean PSNR-Y (dB, `scale` pixels shaved) of `state`'s network on the test set, whole
        images, no padding (`evaluator.evaluate_in_memory`)."""
        variables = jax.tree.map(lambda x: x.addressable_data(0), state.variables)
        if self._upscaler is None:
            self._upscaler = inference.ModelUpscaler(self.model, variables, bucket=1)
        upscaler = self._upscaler.with_variables(variables)
        return evaluator.evaluate_in_memory(self.test_images, upscaler).summary()['psnr']


def run_proxy(variants: Sequence[str], workdir: str | Path, *, seeds: int = 3,
              steps: int = 800, task: Task = Task()) -> list[dict]:
    """Trains every variant `seeds` times (seeds 0 .. seeds - 1) and scores each run, printing a
    line per run; writes `<workdir>/proxy.md` and `proxy.json` after every variant and prints
    the table at the end.

    Args:
      variants: as `variant_config` takes them; all are checked before any trains.
      workdir: where the results go.
      seeds: runs per variant.
      steps: train steps per run.
      task: the task (`Task`).
    Returns:
      One row per variant: `variant`, `description`, `psnr` (per seed, dB), `psnr_mean`,
      `psnr_std` (sample std over the seeds, 0 for one seed), `seconds` (all its runs: training
      and scoring), `params`, `steps`, `seeds`, and once `none` has run, `gain_db` (mean PSNR
      over `none`'s) and `gain_in_std` (`gain_db` over the larger of the two stds).
    Raises:
      VariantError: a bad variant (before anything trains).
      FloatingPointError: a run that diverged.
    """
    base = base_config(task, steps)
    configs = [(variant, *check_variant(base, variant)) for variant in variants]
    test_images = held_out_set(task)
    bicubic = evaluator.evaluate_in_memory(
        test_images, inference.BicubicUpscaler(task.scale)).summary()['psnr']
    rows = []
    for variant, config, description in configs:
        start = time.perf_counter()
        trainer = VariantTrainer(config, task, test_images)
        psnrs = []
        for seed in range(seeds):
            run_start = time.perf_counter()
            state = trainer.train(seed, steps)
            psnrs.append(trainer.score(state))
            print(f'{variant} seed {seed}: PSNR-Y {psnrs[-1]:.2f} dB '
                  f'({time.perf_counter() - run_start:.0f} s)', flush=True)
        rows.append({'variant': variant, 'description': description, 'psnr': psnrs,
                     'psnr_mean': statistics.fmean(psnrs),
                     'psnr_std': statistics.stdev(psnrs) if seeds > 1 else 0.0,
                     'seconds': time.perf_counter() - start,
                     'params': models.count_params(state.params), 'steps': steps,
                     'seeds': seeds})
        add_gains(rows)
        table = write_results(rows, workdir, task, base, bicubic)
    print(table, flush=True)
    return rows


def add_gains(rows: list[dict]) -> None:
    """Sets `gain_db` and `gain_in_std` (see `run_proxy`) on every row once a `none` row exists
    (`gain_in_std` is None where both stds are 0)."""
    none = next((row for row in rows if row['variant'] == 'none'), None)
    if none is None:
        return
    for row in rows:
        row['gain_db'] = row['psnr_mean'] - none['psnr_mean']
        spread = max(row['psnr_std'], none['psnr_std'])
        row['gain_in_std'] = row['gain_db'] / spread if spread > 0 else None


def write_results(rows: list[dict], workdir: str | Path, task: Task,
                  base: ml_collections.ConfigDict, bicubic: float) -> str:
    """Writes `<workdir>/proxy.md` (a header line and a markdown table) and `proxy.json` (the
    rows); returns what proxy.md holds."""
    gains = 'gain_db' in rows[0]
    head = ['variant', 'PSNR-Y (dB)', *(['vs none (dB)', 'vs none / std'] if gains else []),
            'params', 's / run']
    cells = []
    for row in rows:
        gain = ([f"{row['gain_db']:+.2f}", '-' if row['gain_in_std'] is None or
                 row['variant'] == 'none' else f"{row['gain_in_std']:+.1f}"] if gains else [])
        cells.append([row['description'], f"{row['psnr_mean']:.2f} ± {row['psnr_std']:.2f}",
                      *gain, f"{row['params']:,}", f"{row['seconds'] / row['seeds']:.0f}"])
    model = base.model
    text = (f'Proxy task: x{task.scale} mosaics of {task.textures} textures in '
            f'{task.grid}x{task.grid} cells of {task.cell}^2 LR pixels ({task.lr_size}^2 LR), '
            f'grey cast std {task.cast}; ENLCN {model.n_resblocks} blocks x {model.n_feats} '
            f'features; {rows[0]["steps"]} steps of {base.data.batch_size} images; mean ± std '
            f'over seeds 0-{rows[0]["seeds"] - 1}; PSNR-Y on {TEST_IMAGES} held-out images '
            f'(bicubic {bicubic:.2f} dB); {jax.devices()[0].device_kind} '
            f'({time.strftime("%Y-%m-%d")}).\n\n{files.markdown_table(head, cells)}')
    workdir = Path(workdir)
    files.write_text(workdir / 'proxy.md', text + '\n')
    files.write_text(workdir / 'proxy.json', json.dumps(rows, indent=2))
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.proxy', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--variants', default=','.join(ablation.VARIANTS),
                        help='comma-separated: ablation variants ' +
                        ', '.join(ablation.VARIANTS) + ', or KEY=SPEC with KEY one of ' +
                        ', '.join(SPEC_KEYS) + ' (a bare SPEC is attention=SPEC)')
    parser.add_argument('--workdir', required=True, help='where proxy.md and proxy.json go')
    parser.add_argument('--seeds', type=int, default=3, help='runs per variant (seeds 0..N-1)')
    parser.add_argument('--steps', type=int, default=800, help='train steps per run')
    parser.add_argument('--size', type=int, default=Task.lr_size,
                        help=f'LR image side, a multiple of {Task.cell}')
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        parser.error(f'--seeds and --steps must be >= 1, got {args.seeds} and {args.steps}')
    try:
        task = Task(lr_size=args.size)
    except ValueError as e:
        parser.error(f'--size {args.size}: {e}')
    try:
        run_proxy(registry.split_specs(args.variants), args.workdir, seeds=args.seeds,
                  steps=args.steps, task=task)
    except (VariantError, FloatingPointError, files.WriteError) as e:
        sys.exit(f'{parser.prog}: {e}')


if __name__ == '__main__':
    main()
