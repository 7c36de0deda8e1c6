"""Evaluation throughput of the paper's model: megapixels of SR output per second.

`eval_throughput_bench` times one jit-compiled whole-image forward (batch of one, float32, the
paper's ENLCN: x2, 32 blocks, 256 features, 5 ENLCA modules, m = 128; random init) at square LR
sizes on jax's default device, as `inference.ModelUpscaler` runs it with no padding. Host-side
work (image decoding, padding, quantisation, metrics) is not included.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import jax

from enlcn_jax import models
from enlcn_jax.bench_lib import median_time, write_results
from enlcn_jax.inference import compiled_bytes


def eval_throughput_bench(sizes: Sequence[int] = (256, 512), out_dir: str | Path = 'bench_results',
                          repeats: int = 3, scale: int = 2, n_resblocks: int = 32,
                          n_feats: int = 256) -> list[dict]:
    """Times the SR forward at each square LR size; writes `<out_dir>/eval_throughput.json`.

    Args:
      sizes: LR sides (the forward runs on `[1, side, side, 3]` float32).
      out_dir: directory for the JSON.
      repeats: timed runs per size after one warm-up run (the median is reported).
      scale, n_resblocks, n_feats: the model (default: the paper's x2 ENLCN).
    Returns:
      One row per size: `lr size`, `sr size`, `compile s`, `ms` (median forward), `SR MP/s`
      (output megapixels per second) and `MiB` (XLA's compiled memory estimate, or None).
    """
    model = models.ENLCN(scale=scale, n_resblocks=n_resblocks, n_feats=n_feats)
    # Eager on purpose: under jax 0.10.2 on CPU, jit-compiled init of this model never returns.
    variables = models.init_variables(model, jax.random.key(0))
    rows = []
    for side in sizes:
        x = jax.random.uniform(jax.random.key(1), (1, side, side, 3))
        start = time.perf_counter()
        compiled = jax.jit(model.apply).lower(variables, x).compile()
        compile_seconds = time.perf_counter() - start
        seconds = median_time(compiled, (variables, x), repeats)
        estimate = compiled_bytes(compiled)
        rows.append({'lr size': f'{side}x{side}', 'sr size': f'{side * scale}x{side * scale}',
                     'compile s': compile_seconds, 'ms': 1e3 * seconds,
                     'SR MP/s': (side * scale) ** 2 / seconds / 1e6,
                     'MiB': None if estimate is None else estimate / 2 ** 20})
        print(f"{rows[-1]['lr size']}: {rows[-1]['ms']:.0f} ms, {rows[-1]['SR MP/s']:.3g} SR MP/s")
    columns = ['lr size', 'sr size', 'ms', 'SR MP/s', 'compile s', 'MiB']
    write_results('eval_throughput', rows, columns, out_dir,
                  {'model': {'scale': scale, 'n_resblocks': n_resblocks, 'n_feats': n_feats,
                             'params': models.count_params(variables['params'])},
                   'repeats': repeats})
    return rows
