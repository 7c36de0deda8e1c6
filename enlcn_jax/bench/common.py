"""Timing and reporting helpers shared by the benchmarks (`bench/attention.py`,
`bench/train.py`, `bench/eval.py`, `bench/gpu.py`): median wall time, XLA's FLOP count of a compiled program, the matmul
peak and the peak device memory of the machine, a markdown table plus a JSON file. XLA's memory
estimate of a compiled program is `memory.compiled_bytes`."""

from __future__ import annotations

import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from enlcn_jax.storage import files


def median_time(fn: Callable, args: tuple, repeats: int) -> float:
    """Median seconds of `fn(*args)` over `repeats` runs after one warm-up run."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_config(name: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file: `name` is its path, or `x2` for `configs/x2.py` under the
    working directory (the repository root), loaded by path as `--config` loads one.

    Raises:
      FileNotFoundError: no such file, naming it.
    """
    path = Path(name if name.endswith('.py') else Path('configs') / f'{name}.py')
    if not path.is_file():
        raise FileNotFoundError(f'config {name!r}: no file {path.absolute()} (give a config '
                                'file, or a name of configs/ run from the repository root)')
    spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_size(text: str) -> tuple[int, int]:
    """An image size as `(width, height)`: `'512x384'` -> (512, 384); `'256'` -> (256, 256)."""
    sides = [int(side) for side in text.lower().split('x')]
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise ValueError(f'image size {text!r}: give WIDTHxHEIGHT (512x384) or one side (256)')
    return sides[0], sides[-1]


def mib(n_bytes: float | None) -> float | None:
    """Bytes in MiB (None stays None)."""
    return None if n_bytes is None else n_bytes / 2 ** 20


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
    """FLOPs of one run of `compiled` on one device, from XLA's cost analysis; None without one.

    `cost_analysis()` gives a dict, or in some jax versions a list of dicts (one per program, the
    first being the main one). A program split over a mesh is analysed after partitioning, i.e.
    per device. A `lax.cond` is counted at its costliest branch, whichever one runs.
    """
    try:
        analysis = compiled.cost_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or 'flops' not in analysis:
        return None
    return float(analysis['flops'])


def matmul_peak_gflops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a jit-compiled `[n, n] @ [n, n]` matmul in `dtype` on the default device.

    `2 n^3` FLOPs over its `median_time`: the machine's practical matmul peak at jax's default
    precision (the one the model's convolutions run at), against which a program's achieved
    FLOP rate is compared. At small `n` the call overhead lowers it.
    """
    a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.dtype(dtype))
    seconds = median_time(jax.jit(jnp.matmul), (a, b), repeats)
    return 2 * n ** 3 / seconds / 1e9


def peak_device_mib() -> float | None:
    """The largest `peak_bytes_in_use` of the local devices in MiB; None where `memory_stats()`
    has none (CPU).

    This is a high-water mark of the whole process since it started, not of one program: read
    after each benchmark row, a row's value is the largest of its own and every earlier row's.
    """
    peaks = [stats['peak_bytes_in_use'] for stats in
             (device.memory_stats() for device in jax.local_devices())
             if stats and 'peak_bytes_in_use' in stats]
    return mib(max(peaks)) if peaks else None


def machine() -> dict:
    device = jax.devices()[0]
    return {'platform': device.platform, 'device': device.device_kind,
            'devices': jax.device_count(), 'host': platform.node(), 'jax': jax.__version__,
            'date': time.strftime('%Y-%m-%d %H:%M:%S')}


def write_report(name: str, report: dict, out_dir: str | Path) -> Path:
    """Writes `{'machine': machine(), **report}` to `<out_dir>/<name>.json`."""
    out = files.write_text(Path(out_dir) / f'{name}.json',
                           json.dumps({'machine': machine(), **report}, indent=2))
    print(f'wrote {out}')
    return out


def write_results(name: str, rows: list[dict], columns: list[str], out_dir: str | Path,
                  extra: dict | None = None) -> dict:
    """Prints `rows` as a markdown table and writes them, with `extra` and the machine, to
    `<out>/<name>.json`. Returns the report written less the machine: `{**extra, 'rows'}`."""
    cell = lambda c: '-' if c is None else f'{c:.4g}' if isinstance(c, float) else str(c)
    print(files.markdown_table(columns, [[cell(row.get(c)) for c in columns] for row in rows]))
    report = {**(extra or {}), 'rows': rows}
    write_report(name, report, out_dir)
    return report
