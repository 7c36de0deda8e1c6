"""Where a training step's time goes: the step cut into parts, each compiled and timed alone.

For one model and batch (default: ENLCN 16 blocks x 64 features, x2, batch
4, 48x48 LR patches, contrastive loss on), these programs are compiled and timed on one fixed
batch (median of `repeats`), and their FLOPs read from XLA's cost analysis:

  * `EDSR forward`: the same network without its ENLCA modules (the convolutions);
  * `forward`: the ENLCN forward of training (image and embeddings);
  * `forward + backward, L1`: value and gradient of the train step's loss, `recipe.loss_fn`,
    with a contrastive term that costs nothing;
  * `forward + backward, L1 + contrastive`: value and gradient of `recipe.loss_fn`;
  * `contrastive alone, fwd + bwd`: `recipe.contrastive_term` and its gradient w.r.t. (q, k);
  * `optimizer`: the train step's Adam update and its application to the parameters
    (`TrainState.apply_gradients`);
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
from typing import Any

import jax
import jax.numpy as jnp

from enlcn_jax.bench import train as bench_train

from enlcn_jax.bench.common import compiled_flops, matmul_peak_gflops, median_time, write_results
from enlcn_jax.data import input_pipeline, sources
from enlcn_jax.nn import models
from enlcn_jax.train import config_check, default_config, recipe


def _timed(fn, args: tuple, repeats: int) -> tuple[dict, Any]:
    """`({'ms', 'GFLOP'}, output)` of `jax.jit(fn)(*args)`: median wall time, XLA's FLOP count
    and what it returns."""
    compiled = jax.jit(fn).lower(*args).compile()
    flops = compiled_flops(compiled)
    row = {'ms': 1e3 * median_time(compiled, args, repeats),
           'GFLOP': None if flops is None else flops / 1e9}
    return row, compiled(*args)


def train_step_profile(n_resblocks: int = 16, n_feats: int = 64, batch_size: int = 4,
                       lr_patch: int = 48, dtype: str = 'float32', repeats: int = 5,
                       matmul_n: int = 2048, out_dir: str | Path = 'bench_results') -> dict:
    """Times the parts of a training step; writes `<out_dir>/train_profile.json`.

    Args:
      n_resblocks, n_feats: the ENLCN backbone (x2, train/default_config.py's other settings, an
        ENLCA module first and then after every 8th block; quickstart's every 2nd below 8 blocks).
      batch_size: LR patches per step; lr_patch: their side.
      dtype: `model.dtype`.
      repeats: timed runs of each program after one warm-up run.
      matmul_n: side of the matmul that measures the peak (`common.matmul_peak_gflops`).
    Returns:
      The report written (less the machine): `rows`, one per part (`part`, `ms`, `% of step`,
      `GFLOP`, `GFLOP/s`, `% of matmul peak`), the timed programs first, then the split;
      `model`, `batch_size`, `lr_patch`, `repeats`, `matmul peak GFLOP/s`.
    """
    config = default_config.get_config()
    config.model.update(n_resblocks=n_resblocks, n_feats=n_feats, dtype=dtype,
                        attention_every=min(8, max(1, n_resblocks // 2)))
    config.data.update(batch_size=batch_size, lr_patch=lr_patch)
    config.train.contrastive.start_epoch = 0  # the contrastive loss is on from step 0
    config_check.validate_config(config)
    model = recipe.create_model(config)
    edsr = models.from_config({**config.model.to_dict(), 'attention': 'none'})
    state = recipe.create_train_state(config, model, jax.random.key(0))
    dataset = sources.load_skimage_photos(('astronaut',), config.model.scale)
    batch = input_pipeline.PatchLoader(dataset, batch_size, lr_patch, num_workers=1).batch(0)
    lr_images, _ = recipe.batch_images(batch)
    weight = recipe.create_contrastive_weight_fn(config)(state.step)
    contrastive = functools.partial(recipe.contrastive_term, config=config)

    def forward(params):
        return model.apply({**state.variables, 'params': params}, lr_images,
                           return_embeddings=True)

    def loss(params, contrastive_fn):
        """The train step's loss; without the contrastive term, one that costs nothing."""
        return recipe.loss_fn(params, state, batch, weight, contrastive_fn)

    def value_and_grad(contrastive_fn):
        return jax.value_and_grad(functools.partial(loss, contrastive_fn=contrastive_fn),
                                  has_aux=True)

    rows = {}

    def timed(part: str, fn, *args):
        """Times `fn` as `part` (a row of `rows`); returns its output."""
        row, output = _timed(fn, args, repeats)
        rows[part] = {'part': part, **row}
        return output

    edsr_params = models.init_variables(edsr, jax.random.key(0), (lr_patch, lr_patch))['params']
    timed('EDSR forward', lambda p: edsr.apply({'params': p}, lr_images), edsr_params)
    _, embeddings = timed('forward', forward, state.params)
    timed('forward + backward, L1', value_and_grad(lambda embeddings: jnp.float32(0.0)),
          state.params)
    _, grads = timed('forward + backward, L1 + contrastive', value_and_grad(contrastive),
                     state.params)
    timed('contrastive alone, fwd + bwd', jax.value_and_grad(contrastive), embeddings)
    timed('optimizer', lambda state, grads: state.apply_gradients(grads=grads), state, grads)
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
    return write_results('train_profile', table, columns, out_dir,
                         {'model': {'n_resblocks': n_resblocks, 'n_feats': n_feats, 'scale': 2,
                                    'dtype': dtype, 'params': models.count_params(state.params)},
                          'batch_size': batch_size, 'lr_patch': lr_patch, 'repeats': repeats,
                          'matmul peak GFLOP/s': peak})


def _train_step_time(config, state: recipe.TrainState, batch: dict, repeats: int) -> dict:
    """`{'ms', 'GFLOP'}` of the jit-compiled train step on one device, run back to back
    (`bench/train.py`'s `steps_per_second`, after one warm-up step)."""
    mesh = recipe.create_mesh(jax.devices()[:1])
    sharded = recipe.shard_batch(batch, mesh)
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    compiled = recipe.compile_train_step(config, mesh).lower(state, sharded).compile()
    flops = compiled_flops(compiled)
    _, state = bench_train.steps_per_second(compiled, state, sharded, 1)  # warm-up
    rate, _ = bench_train.steps_per_second(compiled, state, sharded, repeats)
    return {'ms': 1e3 / rate, 'GFLOP': None if flops is None else flops / 1e9}
