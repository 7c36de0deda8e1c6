"""Timing and reporting helpers shared by the benchmarks (`bench_attention`, `bench_train`,
`bench_eval`): median wall time, the machine, a markdown table plus a JSON file. XLA's memory
estimate of a compiled program is `inference.compiled_bytes`."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import jax


def median_time(fn: Callable, args: tuple, repeats: int) -> float:
    """Median seconds of `fn(*args)` over `repeats` runs after one warm-up run."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    device = jax.devices()[0]
    return {'platform': device.platform, 'device': device.device_kind,
            'devices': jax.device_count(), 'host': platform.node(), 'jax': jax.__version__,
            'date': time.strftime('%Y-%m-%d %H:%M:%S')}


def write_results(name: str, rows: list[dict], columns: list[str], out_dir: str | Path,
                  extra: dict | None = None) -> Path:
    """Prints `rows` as a markdown table and writes them, with the machine, to `<out>/<name>.json`."""
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for row in rows:
        cells = [row.get(c) for c in columns]
        lines.append('| ' + ' | '.join('-' if c is None else f'{c:.4g}' if isinstance(c, float)
                                       else str(c) for c in cells) + ' |')
    print('\n'.join(lines))
    out = Path(out_dir) / f'{name}.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'machine': machine(), **(extra or {}), 'rows': rows}, indent=2))
    print(f'wrote {out}')
    return out
