"""Where a training step's time goes: the step cut into parts, each compiled and timed alone.

For one model and batch (default: the issue-12 step, ENLCN 16 blocks x 64 features, x2, batch
4, 48x48 LR patches, contrastive loss on), these programs are compiled and timed on one fixed
batch (median of `repeats`), and their FLOPs read from XLA's cost analysis:

  * `EDSR forward`: the same network without its ENLCA modules (the convolutions);
  * `forward`: the ENLCN forward of training (image and embeddings);
  * `forward + backward, L1`: value and gradient of the L1 loss;
  * `forward + backward, L1 + contrastive`: value and gradient of the whole loss;
  * `contrastive alone, fwd + bwd`: the contrastive term and its gradient w.r.t. (q, k);
  * `optimizer`: Adam's update and its application to the parameters;
  * `train step`: `recipe.compile_train_step`, steps run back to back (what training does).

The split reported is the difference of these: convolutions forward (EDSR forward), attention
forward (forward - EDSR forward), backward of the L1 path (fwd + bwd L1 - forward), contrastive
(fwd + bwd whole - fwd + bwd L1), optimizer, and the rest (train step - fwd + bwd whole -
optimizer: host dispatch, the metrics, what fusing the parts saves or costs). Each part's share
of the step, and the step's GFLOP/s against the machine's matmul peak (measured here).

    python -m enlcn_jax.bench profile [--n_resblocks 16 --n_feats 64 --batch_size 4 --lr_patch 48]
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from enlcn_jax.bench import train as bench_train

from enlcn_jax.data import input_pipeline, sources

from enlcn_jax.nn import losses, models

from enlcn_jax.train import loop, recipe
from enlcn_jax.bench.common import (compiled_flops, load_config, matmul_peak_gflops, median_time,
                                 write_results)


def _timed(fn, args: tuple, repeats: int) -> dict:
    """`{'ms', 'GFLOP'}` of `jax.jit(fn)(*args)`: median wall time and XLA's FLOP count."""
    compiled = jax.jit(fn).lower(*args).compile()
    flops = compiled_flops(compiled)
    return {'ms': 1e3 * median_time(compiled, args, repeats),
            'GFLOP': None if flops is None else flops / 1e9}


def train_step_profile(n_resblocks: int = 16, n_feats: int = 64, batch_size: int = 4,
                       lr_patch: int = 48, dtype: str = 'float32', repeats: int = 5,
                       matmul_n: int = 2048, out_dir: str | Path = 'bench_results') -> list[dict]:
    """Times the parts of a training step; writes `<out_dir>/train_profile.json`.

    Args:
      n_resblocks, n_feats: the ENLCN backbone (x2, configs/default.py's other settings, an
        ENLCA module first and then after every 8th block; quickstart's every 2nd below 8 blocks).
      batch_size: LR patches per step; lr_patch: their side.
      dtype: `model.dtype`.
      repeats: timed runs of each program after one warm-up run.
      matmul_n: side of the matmul that measures the peak (`bench_lib.matmul_peak_gflops`).
    Returns:
      One row per part: `part`, `ms`, `% of step`, `GFLOP`, `GFLOP/s`; the timed programs
      first, then the split.
    """
    config = load_config('default')
    config.model.update(n_resblocks=n_resblocks, n_feats=n_feats, dtype=dtype,
                        attention_every=min(8, max(1, n_resblocks // 2)))
    config.data.update(batch_size=batch_size, lr_patch=lr_patch)
    config.train.contrastive.start_epoch = 0  # the contrastive loss is on from step 0
    loop.validate_config(config)
    model = recipe.create_model(config)
    edsr = models.from_config({**config.model.to_dict(), 'attention': 'none'})
    state = recipe.create_train_state(config, model, jax.random.key(0))
    dataset = sources.load_skimage_photos(('astronaut',), config.model.scale)
    batch = input_pipeline.PatchLoader(dataset, batch_size, lr_patch, num_workers=1).batch(0)
    lr_images = jnp.asarray(batch['lr'], jnp.float32) / 255.0
    hr_images = jnp.asarray(batch['hr'], jnp.float32) / 255.0
    weight = config.train.contrastive.weight
    contrastive = functools.partial(recipe.contrastive_term, config=config)

    def forward(params):
        return model.apply({**state.variables, 'params': params}, lr_images,
                           return_embeddings=True)

    def loss(params, with_contrastive: bool):
        sr, embeddings = forward(params)
        l1 = losses.l1_loss(sr, hr_images)
        return l1 + weight * contrastive(embeddings) if with_contrastive else l1

    edsr_params = models.init_variables(edsr, jax.random.key(0), (lr_patch, lr_patch))['params']
    grads = jax.grad(loss)(state.params, True)
    embeddings = jax.lax.stop_gradient(forward(state.params)[1])
    parts = {
        'EDSR forward': (lambda p: edsr.apply({'params': p}, lr_images), (edsr_params,)),
        'forward': (forward, (state.params,)),
        'forward + backward, L1': (jax.value_and_grad(functools.partial(loss,
                                                                        with_contrastive=False)),
                                   (state.params,)),
        'forward + backward, L1 + contrastive': (
            jax.value_and_grad(functools.partial(loss, with_contrastive=True)), (state.params,)),
        'contrastive alone, fwd + bwd': (jax.value_and_grad(contrastive), (embeddings,)),
        'optimizer': (_adam_step(state.tx), (grads, state.opt_state, state.params)),
    }
    rows = {name: {'part': name, **_timed(fn, args, repeats)} for name, (fn, args) in parts.items()}
    rows['train step'] = {'part': 'train step', **_train_step_time(config, state, batch, repeats)}

    ms = {name: row['ms'] for name, row in rows.items()}
    split = {
        'convolutions, forward': ms['EDSR forward'],
        'attention, forward': ms['forward'] - ms['EDSR forward'],
        'backward of the L1 path': ms['forward + backward, L1'] - ms['forward'],
        'contrastive, fwd + bwd': (ms['forward + backward, L1 + contrastive']
                                   - ms['forward + backward, L1']),
        'optimizer': ms['optimizer'],
        'rest (dispatch, metrics, fusion)': (ms['train step']
                                             - ms['forward + backward, L1 + contrastive']
                                             - ms['optimizer']),
    }
    step_ms = ms['train step']
    peak = matmul_peak_gflops(dtype, matmul_n)
    table = list(rows.values()) + [{'part': f'split: {name}', 'ms': value}
                                   for name, value in split.items()]
    for row in table:
        row['% of step'] = 100 * row['ms'] / step_ms
        if row.get('GFLOP') is not None:
            row['GFLOP/s'] = row['GFLOP'] / row['ms'] * 1e3
            row['% of matmul peak'] = 100 * row['GFLOP/s'] / peak
    columns = ['part', 'ms', '% of step', 'GFLOP', 'GFLOP/s', '% of matmul peak']
    write_results('train_profile', table, columns, out_dir,
                  {'model': {'n_resblocks': n_resblocks, 'n_feats': n_feats, 'scale': 2,
                             'dtype': dtype, 'params': models.count_params(state.params)},
                   'batch_size': batch_size, 'lr_patch': lr_patch, 'repeats': repeats,
                   'matmul peak GFLOP/s': peak})
    return table


def _adam_step(tx: optax.GradientTransformation):
    """`(grads, opt_state, params) -> (new params, new opt_state)`: the optimizer's part of a step."""
    def step(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state
    return step


def _train_step_time(config, state: recipe.TrainState, batch: dict, repeats: int) -> dict:
    """`{'ms', 'GFLOP'}` of the jit-compiled train step on one device, run back to back
    (`bench_train.steps_per_second`, after one warm-up step)."""
    mesh = recipe.create_mesh(jax.devices()[:1])
    sharded = recipe.shard_batch(batch, mesh)
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    compiled = recipe.compile_train_step(config, mesh).lower(state, sharded).compile()
    flops = compiled_flops(compiled)
    _, state = bench_train.steps_per_second(compiled, state, sharded, 1)  # warm-up
    rate, _ = bench_train.steps_per_second(compiled, state, sharded, repeats)
    return {'ms': 1e3 / rate, 'GFLOP': None if flops is None else flops / 1e9}
