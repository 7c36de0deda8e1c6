"""Training throughput: steps/s, images/s and GFLOP/s of the compiled train step; input-pipeline
patches/s.

`train_throughput_bench` times, for each config (default: the quickstart model and the paper's
x2 ENLCN, 32 blocks x 256 features), each compute precision (`config.model.dtype`: 'float32',
'bfloat16') and each device set ('1': the first local device; 'all': every local device, the
batch split over them), the jit-compiled `recipe.train_step` on one fixed batch (`batch_size`
LR patches of `lr_patch`^2, random init), in its two phases: before the contrastive warm-up ends
(L1 only: `lax.cond` skips the contrastive loss) and after (L1 + contrastive over every ENLCA
module). It also times the input pipeline alone: `input_pipeline.PatchLoader` on the skimage
photos plus `recipe.shard_batch`, in patches/s.

FLOP rate: `GFLOP/step` is XLA's cost analysis of the compiled step (per device, times the
devices) and `GFLOP/s` that over the measured step time; `% of matmul peak` compares it with
`common.matmul_peak_gflops` in the row's dtype (measured here, on one device) times the
devices. XLA counts a `lax.cond` at its costliest branch, so the step compiled for timing gives
the L1 + contrastive count; the L1-only count comes from the step compiled once more with a
contrastive loss that costs nothing (`l1_only_flops`; that compilation is not timed).

Memory: `MiB` is XLA's estimate for the compiled step on one device; `peak MiB` is the devices'
`peak_bytes_in_use` (GPUs; None on CPU) read after each row, a process-wide high-water mark: a
row's value is the largest of its own and every earlier row's.

    python -m enlcn_jax.bench train --configs x2 --steps 20 --dtypes float32,bfloat16 --devices 1,all
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from enlcn_jax.data import input_pipeline, sources

from enlcn_jax.nn import models

from enlcn_jax.train import config_check, recipe
from enlcn_jax.bench.common import (compiled_flops, load_config, matmul_peak_gflops, mib,
                                 peak_device_mib, write_results)
from enlcn_jax.evaluation.memory import compiled_bytes

DEVICE_SETS = ('1', 'all')


def local_device_sets(names: Sequence[str]) -> list[list[jax.Device]]:
    """The devices of each name in `DEVICE_SETS`; a set equal to an earlier one is left out (on a
    one-device machine '1,all' runs once)."""
    sets = []
    for name in names:
        if name not in DEVICE_SETS:
            raise ValueError(f'device set {name!r}; choose from {DEVICE_SETS}')
        devices = jax.local_devices()[:1] if name == '1' else jax.local_devices()
        if devices not in sets:
            sets.append(devices)
    return sets


def train_config(name: str, batch_size: int, lr_patch: int,
                 dtype: str) -> ml_collections.ConfigDict:
    """configs/<name>.py with the benchmark's global batch, LR patch and `model.dtype`, checked
    by `config_check.validate_config` (which refuses 'float16')."""
    config = load_config(name)
    config.data.batch_size, config.data.lr_patch = batch_size, lr_patch
    config.model.dtype = dtype
    config_check.validate_config(config)
    return config


def steps_per_second(step_fn, state, batch, steps: int) -> tuple[float, recipe.TrainState]:
    """Runs `steps` steps back to back (the state is donated); returns (steps/s, final state)."""
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start), state


def l1_only_flops(config: ml_collections.ConfigDict, mesh: Mesh, state: recipe.TrainState,
                  batch: dict) -> float | None:
    """Per-device FLOPs of the train step as it runs before the contrastive warm-up ends.

    XLA counts the step's `lax.cond` at its costliest branch, the contrastive loss that this
    phase skips; so this compiles (untimed) `recipe.compile_train_step` with a contrastive loss
    that costs nothing, on `mesh`.
    """
    step_fn = recipe.compile_train_step(config, mesh,
                                        contrastive_fn=lambda embeddings: jnp.float32(0.0))
    return compiled_flops(step_fn.lower(state, batch).compile())


def time_train_step(config: ml_collections.ConfigDict, initial_state: recipe.TrainState,
                    devices: list[jax.Device], steps: int, peak_gflops: float) -> list[dict]:
    """Times the train step of `config` on a mesh of `devices`, in both phases.

    Args:
      config: a validated training config; its `data.batch_size` (the global batch, which must
        split over `devices`) and `data.lr_patch` set the fixed batch that is timed.
      initial_state: `recipe.create_train_state` of `config`, on the host (`jax.device_get`):
        each call copies it to its mesh, where the timed steps consume it.
      devices: the mesh; the batch is split over them, the state replicated.
      steps: timed steps per phase, after one compiling first step.
      peak_gflops: the matmul peak of one device in `config.model.dtype`.
    Returns:
      One row per phase ('L1 only', 'L1 + contrastive'): `devices`, `params`, `first step s`
      (compilation plus one step), `steps`, `steps/s`, `images/s`, `GFLOP/step` (all devices),
      `GFLOP/s`, `matmul peak GFLOP/s` (of the devices), `% of matmul peak`, `MiB` (XLA's
      estimate, per device) and `peak MiB`.
    """
    mesh = recipe.create_mesh(devices)
    state = jax.device_put(initial_state, NamedSharding(mesh, PartitionSpec()))
    batch_size = config.data.batch_size
    dataset = sources.load_skimage_photos(('astronaut',), config.model.scale)
    batch = recipe.shard_batch(input_pipeline.PatchLoader(
        dataset, batch_size, config.data.lr_patch, num_workers=1).batch(0), mesh)
    start = time.perf_counter()
    step_fn = recipe.compile_train_step(config, mesh).lower(state, batch).compile()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    first_step_seconds = time.perf_counter() - start
    flops = {'L1 only': l1_only_flops(config, mesh, state, batch),
             'L1 + contrastive': compiled_flops(step_fn)}
    contrastive_start = config.train.contrastive.start_epoch * config.train.steps_per_epoch
    devices_peak_gflops = peak_gflops * len(devices)
    rows = []
    for phase, step in (('L1 only', 0), ('L1 + contrastive', contrastive_start)):
        # full_like keeps the step's dtype, weak type and sharding, as the compiled step needs.
        state = state.replace(step=jnp.full_like(state.step, step))
        rate, state = steps_per_second(step_fn, state, batch, steps)
        gflop = None if flops[phase] is None else flops[phase] * len(devices) / 1e9
        gflops = None if gflop is None else gflop * rate
        rows.append({'phase': phase, 'devices': len(devices),
                     'params': models.count_params(state.params),
                     'first step s': first_step_seconds, 'steps': steps, 'steps/s': rate,
                     'images/s': rate * batch_size, 'GFLOP/step': gflop, 'GFLOP/s': gflops,
                     'matmul peak GFLOP/s': devices_peak_gflops,
                     '% of matmul peak': (None if gflops is None
                                          else 100 * gflops / devices_peak_gflops),
                     'MiB': mib(compiled_bytes(step_fn)), 'peak MiB': peak_device_mib()})
    return rows


def pipeline_patches_per_second(config, batches: int) -> float:
    """Patches/s of `PatchLoader` (config's photos, batch, patch, workers) + `shard_batch`."""
    dataset = sources.load_skimage_photos(config.data.photos, config.model.scale)
    mesh = recipe.create_mesh()
    with input_pipeline.PatchLoader(dataset, config.data.batch_size, config.data.lr_patch,
                          num_workers=config.data.num_workers) as loader:
        jax.block_until_ready(recipe.shard_batch(next(loader), mesh))
        start = time.perf_counter()
        for _ in range(batches):
            batch = recipe.shard_batch(next(loader), mesh)
        jax.block_until_ready(batch)
    return batches * config.data.batch_size / (time.perf_counter() - start)


def train_throughput_bench(configs: Sequence[str] = ('quickstart', 'x2'),
                           steps: Sequence[int] = (20, 1), batch_size: int = 16,
                           lr_patch: int = 48, dtypes: Sequence[str] = ('float32',),
                           devices: Sequence[str] = ('all',), matmul_n: int = 2048,
                           pipeline_batches: int = 50,
                           out_dir: str | Path = 'bench_results') -> dict:
    """Times training steps per config, dtype and device set; writes
    `<out_dir>/train_throughput.json`.

    Args:
      configs: modules of `configs/` (their model, optimiser and contrastive settings are used).
      steps: timed steps per phase for each config, after one compiling warm-up step.
      batch_size: global batch, split over the devices of a row; `config_check.validate_config`
        requires it to split over all of jax's devices.
      lr_patch: LR patch side; the HR patch is `lr_patch * scale`.
      dtypes: values of `config.model.dtype` ('float16' is refused for training).
      devices: names of `DEVICE_SETS`.
      matmul_n: side of the square matmul that measures the peak (`matmul_peak_gflops`).
      pipeline_batches: batches timed for the input-pipeline row.
      out_dir: directory for the JSON (its extras: the one-device matmul peak per dtype).
    Returns:
      The report written (less the machine): `rows`, those of `time_train_step` with `model`
      and `dtype` per config, dtype and device set, then one for the input pipeline
      (`patches/s`); `batch_size`, `lr_patch`, `matmul peak GFLOP/s (one device)` (by dtype)
      and `matmul n`.
    """
    device_sets = local_device_sets(devices)
    # Every config checked before anything is timed.
    dtype_configs = [[train_config(name, batch_size, lr_patch, dtype) for dtype in dtypes]
                     for name in configs]
    peaks = {dtype: matmul_peak_gflops(dtype, matmul_n) for dtype in dtypes}
    rows = []
    for name, configs_of_name, n_steps in zip(configs, dtype_configs, steps, strict=True):
        model_config = configs_of_name[0].model
        label = f'{name} ({model_config.n_resblocks}x{model_config.n_feats})'
        # Parameters, optimiser state and random features are float32 whatever the compute
        # dtype: one initialisation serves every row, with the dtype's model as `apply_fn`.
        initial_state = jax.device_get(recipe.create_train_state(
            configs_of_name[0], recipe.create_model(configs_of_name[0]),
            jax.random.PRNGKey(0)))
        for dtype, config in zip(dtypes, configs_of_name):
            state = initial_state.replace(apply_fn=recipe.create_model(config).apply)
            for device_set in device_sets:
                for row in time_train_step(config, state, device_set, n_steps, peaks[dtype]):
                    rows.append({'model': label, 'dtype': dtype, **row})
                    print(f"{label}, {dtype}, {row['devices']} device(s), {row['phase']}: "
                          f"{row['steps/s']:.3g} steps/s, {row['images/s']:.3g} images/s")
    quickstart = load_config('quickstart')
    quickstart.data.batch_size, quickstart.data.lr_patch = batch_size, lr_patch
    rows.append({'model': 'input pipeline', 'phase': f'{quickstart.data.num_workers} workers',
                 'patches/s': pipeline_patches_per_second(quickstart, pipeline_batches)})
    columns = ['model', 'phase', 'dtype', 'devices', 'params', 'steps', 'steps/s', 'images/s',
               'GFLOP/step', 'GFLOP/s', '% of matmul peak', 'MiB', 'peak MiB', 'patches/s',
               'first step s']
    return write_results('train_throughput', rows, columns, out_dir,
                         {'batch_size': batch_size, 'lr_patch': lr_patch,
                          'matmul peak GFLOP/s (one device)': peaks, 'matmul n': matmul_n})
