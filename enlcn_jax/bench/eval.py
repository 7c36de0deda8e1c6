"""Evaluation throughput of the paper's model: megapixels of SR output per second.

`eval_throughput_bench` times one jit-compiled whole-image forward (batch of one, random init)
of a config's model (default configs/x2.py, the paper's ENLCN: x2, 32 blocks, 256 features,
5 ENLCA modules, m = 128) at LR sizes `WIDTHxHEIGHT` (512x384 is an Urban100-sized image at x2:
1024x768 SR), in each compute precision (the model's `dtype`), on jax's default device, as
`inference.ModelUpscaler` runs it with no padding. Host-side work (image decoding, padding,
quantisation, metrics) is not included.

Memory: `MiB` is XLA's estimate for the compiled forward; `peak MiB` the devices'
`peak_bytes_in_use` (GPUs; None on CPU) read after each row, a process-wide high-water mark: a
row's value is the largest of its own and every earlier row's.

    python -m enlcn_jax.bench eval --sizes 512x384 --dtypes float32,bfloat16
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import jax

from enlcn_jax.nn import models
from enlcn_jax.bench.common import load_config, median_time, mib, peak_device_mib, write_results
from enlcn_jax.evaluation.memory import compiled_bytes


def time_forward(model: models.ENLCN, variables: dict, size: tuple[int, int],
                 repeats: int) -> dict:
    """Times `model` on one `[1, height, width, 3]` float32 input, `size = (width, height)`.

    Returns:
      `lr size`, `sr size` (both WIDTHxHEIGHT), `compile s`, `ms` (median forward), `SR MP/s`
      (output megapixels per second), `MiB` (XLA's estimate, or None) and `peak MiB`.
    """
    width, height = size
    x = jax.random.uniform(jax.random.key(1), (1, height, width, 3))
    start = time.perf_counter()
    compiled = jax.jit(model.apply).lower(variables, x).compile()
    compile_seconds = time.perf_counter() - start
    seconds = median_time(compiled, (variables, x), repeats)
    scale = model.scale
    return {'lr size': f'{width}x{height}', 'sr size': f'{width * scale}x{height * scale}',
            'compile s': compile_seconds, 'ms': 1e3 * seconds,
            'SR MP/s': width * height * scale ** 2 / seconds / 1e6,
            'MiB': mib(compiled_bytes(compiled)), 'peak MiB': peak_device_mib()}


def eval_throughput_bench(sizes: Sequence[tuple[int, int]] = ((256, 256), (512, 512)),
                          config: str = 'x2', dtypes: Sequence[str] = ('float32',),
                          out_dir: str | Path = 'bench_results', repeats: int = 3) -> dict:
    """Times the SR forward at each LR size and dtype; writes `<out_dir>/eval_throughput.json`.

    Args:
      sizes: LR `(width, height)`s (`common.parse_size`).
      config: module of `configs/` whose `model` is timed.
      dtypes: the model's compute precisions ('float32', 'bfloat16', 'float16'); one set of
        float32 parameters serves them all.
      out_dir: directory for the JSON.
      repeats: timed runs per row after one warm-up run (the median is reported).
    Returns:
      The report written (less the machine): `rows`, one per dtype and size (`dtype` and the
      fields of `time_forward`), `model` and `repeats`.
    """
    model_config = load_config(config).model.to_dict()
    # Eager on purpose: under jax 0.10.2 on CPU, jit-compiled init of this model never returns.
    variables = models.init_variables(models.from_config(model_config), jax.random.key(0))
    rows = []
    for dtype in dtypes:
        model = models.from_config({**model_config, 'dtype': dtype})
        for size in sizes:
            rows.append({'dtype': dtype, **time_forward(model, variables, size, repeats)})
            print(f"{rows[-1]['lr size']}, {dtype}: {rows[-1]['ms']:.0f} ms, "
                  f"{rows[-1]['SR MP/s']:.3g} SR MP/s")
    columns = ['lr size', 'sr size', 'dtype', 'ms', 'SR MP/s', 'compile s', 'MiB', 'peak MiB']
    return write_results('eval_throughput', rows, columns, out_dir,
                         {'model': {'config': config, 'scale': model_config['scale'],
                                    'n_resblocks': model_config['n_resblocks'],
                                    'n_feats': model_config['n_feats'],
                                    'params': models.count_params(variables['params'])},
                          'repeats': repeats})
