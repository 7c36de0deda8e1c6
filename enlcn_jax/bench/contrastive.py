"""The contrastive loss, forward and forward+backward, as a training step computes it.

Batch 4 of 48x48 LR patches (N = 2304 positions per image), d = 16, queries and keys L2-normalised
and amplified by k = 6, the per-image loss batched with `vmap` and averaged: median wall time
over repeats of the jit-compiled function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from enlcn_jax.nn import losses
from enlcn_jax.bench.common import median_time, write_results


def contrastive_bench(sides=(48,), batch: int = 4, d: int = 16, repeats: int = 10,
                      loss: str = 'code', out_dir: str = 'bench_results') -> dict:
    """Times `mean(vmap(loss))` and its gradient for `[batch, side^2, d]` inputs, `loss` a spec
    of `train.contrastive.loss` (`losses.get_contrastive_loss`).

    Returns:
      The report written to `<out_dir>/contrastive.json` (less the machine): `rows` (one per
      side), `loss` and `repeats`.
    """
    per_image = jax.vmap(losses.get_contrastive_loss(loss))
    mean_loss = lambda q, k: jnp.mean(per_image(q, k))
    rows = []
    for side in sides:
        keys = jax.random.split(jax.random.key(0), 2)
        unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        q, k = (jnp.sqrt(6.0) * unit(jax.random.normal(key, (batch, side * side, d)))
                for key in keys)
        row = {'size': f'{side}x{side}', 'positions': side * side, 'batch': batch, 'd': d}
        for label, fn in (('fwd', mean_loss),
                          ('fwd+bwd', jax.value_and_grad(mean_loss, (0, 1)))):
            compiled = jax.jit(fn).lower(q, k).compile()
            row[f'{label} ms'] = 1e3 * median_time(compiled, (q, k), repeats)
        rows.append(row)
    return write_results('contrastive', rows, ['size', 'batch', 'd', 'fwd ms', 'fwd+bwd ms'],
                         out_dir, {'loss': loss, 'repeats': repeats})
