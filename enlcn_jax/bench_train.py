"""Training throughput: steps/s and images/s of the compiled train step; input-pipeline patches/s.

`train_throughput_bench` times, for each config (default: the quickstart model and the paper's
x2 ENLCN, 32 blocks x 256 features), the jit-compiled `train_lib.train_step` on one fixed batch
(`batch_size` LR patches of `lr_patch`^2, random init) on jax's default devices, in its two
phases: before the contrastive warm-up ends (L1 only: `lax.cond` skips the contrastive loss) and
after (L1 + contrastive over every ENLCA module). It also times the input pipeline alone:
`input_pipeline.PatchLoader` on the skimage photos plus `train_lib.shard_batch`, in patches/s.

    python -m enlcn_jax.bench train
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Sequence

import jax

from enlcn_jax import data, input_pipeline, models, train_lib
from enlcn_jax.bench_lib import write_results


def _steps_per_second(step_fn, state, batch, steps: int) -> tuple[float, train_lib.TrainState]:
    """Runs `steps` steps back to back (the state is donated); returns (steps/s, final state)."""
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start), state


def pipeline_patches_per_second(config, batches: int) -> float:
    """Patches/s of `PatchLoader` (config's photos, batch, patch, workers) + `shard_batch`."""
    dataset = data.load_skimage_photos(config.data.photos, config.model.scale)
    mesh = train_lib.create_mesh()
    with input_pipeline.PatchLoader(dataset, config.data.batch_size, config.data.lr_patch,
                          num_workers=config.data.num_workers) as loader:
        jax.block_until_ready(train_lib.shard_batch(next(loader), mesh))
        start = time.perf_counter()
        for _ in range(batches):
            batch = train_lib.shard_batch(next(loader), mesh)
        jax.block_until_ready(batch)
    return batches * config.data.batch_size / (time.perf_counter() - start)


def train_throughput_bench(configs: Sequence[str] = ('quickstart', 'x2'),
                           steps: Sequence[int] = (20, 1), batch_size: int = 16,
                           lr_patch: int = 48, pipeline_batches: int = 50,
                           out_dir: str | Path = 'bench_results') -> list[dict]:
    """Times training steps per config; writes `<out_dir>/train_throughput.json`.

    Args:
      configs: modules of `configs/` (their model, optimiser and contrastive settings are used).
      steps: timed steps per phase for each config, after one compiling warm-up step.
      batch_size: global batch (split over the default devices).
      lr_patch: LR patch side; the HR patch is `lr_patch * scale`.
      pipeline_batches: batches timed for the input-pipeline row.
      out_dir: directory for the JSON.
    Returns:
      One row per config and phase (`model`, `phase`, `params`, `first step s` (compilation
      plus one step), `steps`, `steps/s`, `images/s`), then one for the input pipeline
      (`patches/s`).
    """
    rows = []
    for name, n_steps in zip(configs, steps, strict=True):
        config = importlib.import_module(f'configs.{name}').get_config()
        config.data.batch_size, config.data.lr_patch = batch_size, lr_patch
        train_lib.validate_config(config)
        model = train_lib.create_model(config)
        mesh = train_lib.create_mesh()
        state = jax.device_put(train_lib.create_train_state(config, model, jax.random.PRNGKey(0)),
                               jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        dataset = data.load_skimage_photos(('astronaut',), config.model.scale)
        batch = train_lib.shard_batch(
            input_pipeline.PatchLoader(dataset, batch_size, lr_patch, num_workers=1).batch(0), mesh)
        step_fn = train_lib.compile_train_step(config, mesh)
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
        first_step_seconds = time.perf_counter() - start
        label = f'{name} ({config.model.n_resblocks}x{config.model.n_feats})'
        contrastive_start = (config.train.contrastive.start_epoch
                             * config.train.steps_per_epoch)
        for phase, step in (('L1 only', 0), ('L1 + contrastive', contrastive_start)):
            # full_like keeps the step's dtype, weak type and sharding: no recompilation.
            state = state.replace(step=jax.numpy.full_like(state.step, step))
            rate, state = _steps_per_second(step_fn, state, batch, n_steps)
            rows.append({'model': label, 'phase': phase,
                         'params': models.count_params(state.params),
                         'first step s': first_step_seconds, 'steps': n_steps, 'steps/s': rate,
                         'images/s': rate * batch_size})
            print(f'{label}, {phase}: {rate:.3g} steps/s, {rate * batch_size:.3g} images/s')
    quickstart = importlib.import_module('configs.quickstart').get_config()
    quickstart.data.batch_size, quickstart.data.lr_patch = batch_size, lr_patch
    rows.append({'model': 'input pipeline', 'phase': f'{quickstart.data.num_workers} workers',
                 'patches/s': pipeline_patches_per_second(quickstart, pipeline_batches)})
    columns = ['model', 'phase', 'params', 'steps', 'steps/s', 'images/s', 'patches/s',
               'first step s']
    write_results('train_throughput', rows, columns, out_dir,
                  {'batch_size': batch_size, 'lr_patch': lr_patch})
    return rows
