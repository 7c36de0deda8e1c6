"""ENLCA (ENLA) against the same block with exact softmax NLA: time and memory.

A jit-compiled ENLCA block (64 channels, m = 128), forward and forward+backward, at several
square feature-map sizes: median wall time over repeats and XLA's compiled memory estimate
(arguments + outputs + temporaries). Ratios are measured side by side in one run.

Memory: `fwd MiB` and `fwd+bwd MiB` are XLA's estimates for each compiled program (on a GPU,
where XLA assigns every buffer at compile time, the device memory the program takes); `peak MiB`
the devices' `peak_bytes_in_use` (GPUs; None on CPU) read after the row, a process-wide
high-water mark. The rows run ENLA at every size, then exact NLA at every size, so that each
row's memory exceeds the earlier rows' and the mark is the row's own peak whenever that holds.

At 100x100 and 150x150 the rows carry the paper's forward times (Table 5: a 2080Ti, 64
channels, the mean of 1000 runs) in `paper fwd ms (2080Ti)`: ENLCA-m128 0.9 / 1.6 ms, NLA
42.8 / 107.2 ms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from enlcn_jax.nn import models
from enlcn_jax.bench.common import median_time, mib, peak_device_mib, write_results
from enlcn_jax.evaluation.memory import compiled_bytes

# The paper's Table 5: forward ms on a 2080Ti by (side, attention).
PAPER_FWD_MS = {(100, 'enla'): 0.9, (150, 'enla'): 1.6, (100, 'exact'): 42.8,
                (150, 'exact'): 107.2}


def attention_bench(sizes: list[int], channels: int = 64, m: int = 128, repeats: int = 5,
                    max_gib: float = 8.0, out_dir: str = 'bench_results') -> dict:
    """Times ENLCA (ENLA) against exact NLA; programs XLA estimates above `max_gib` are not run.

    Returns:
      The report written to `<out_dir>/attention.json` (less the machine): `rows` (one per
      attention and size, ENLA's first), `channels`, `m`, `repeats`, `growth` and
      `paper fwd ms (2080Ti)`.
    """
    rows = []
    for kind in ('enla', 'exact'):
        for side in sizes:
            x = jax.random.normal(jax.random.key(0), (1, side, side, channels))
            module = models.ENLCA(models.ENLCAConfig(attention=kind, num_random_features=m))
            variables = module.init({'params': jax.random.key(1),
                                     models.RANDOM_FEATURES: jax.random.key(2)}, x[:, :8, :8])
            forward = lambda v, x, module=module: module.apply(v, x)[0]
            backward = jax.grad(lambda v, x, forward=forward: jnp.sum(forward(v, x) ** 2))
            row = {'size': f'{side}x{side}', 'positions': side * side, 'attention': kind,
                   'paper fwd ms (2080Ti)': PAPER_FWD_MS.get((side, kind))}
            for label, fn in (('fwd', forward), ('fwd+bwd', backward)):
                compiled = jax.jit(fn).lower(variables, x).compile()
                estimate = compiled_bytes(compiled)
                row[f'{label} MiB'] = mib(estimate)
                if estimate is not None and estimate > max_gib * 2 ** 30:
                    row[f'{label} ms'] = None
                    continue
                row[f'{label} ms'] = 1e3 * median_time(compiled, (variables, x), repeats)
            row['peak MiB'] = peak_device_mib()
            rows.append(row)
    by_key = {(r['size'], r['attention']): r for r in rows}
    for row in rows:
        if row['attention'] == 'exact':
            enla = by_key[(row['size'], 'enla')]
            for label in ('fwd', 'fwd+bwd'):
                if row[f'{label} ms'] and enla[f'{label} ms']:
                    enla[f'{label} speedup vs NLA'] = row[f'{label} ms'] / enla[f'{label} ms']
    columns = ['size', 'attention', 'fwd ms', 'paper fwd ms (2080Ti)', 'fwd+bwd ms', 'fwd MiB',
               'fwd+bwd MiB', 'peak MiB', 'fwd speedup vs NLA', 'fwd+bwd speedup vs NLA']
    enla_rows = [r for r in rows if r['attention'] == 'enla']
    growth = {}
    if len(enla_rows) >= 2:
        first, last = enla_rows[0], enla_rows[-1]
        growth = {'positions ratio': last['positions'] / first['positions'],
                  'enla fwd time ratio': last['fwd ms'] / first['fwd ms'],
                  'enla fwd+bwd time ratio': last['fwd+bwd ms'] / first['fwd+bwd ms']}
        print(f"ENLA {last['size']} over {first['size']}: "
              f"{growth['positions ratio']:.1f}x positions, "
              f"{growth['enla fwd time ratio']:.2f}x fwd time, "
              f"{growth['enla fwd+bwd time ratio']:.2f}x fwd+bwd time")
    paper = {f'{side}x{side} {kind}': ms for (side, kind), ms in PAPER_FWD_MS.items()}
    return write_results('attention', rows, columns, out_dir,
                         {'channels': channels, 'm': m, 'repeats': repeats, 'growth': growth,
                          'paper fwd ms (2080Ti)': paper})
