"""Benchmarks: each prints a markdown table and writes a JSON file.

    python -m enlcn_jax.bench attention [--sizes 50,100,150,200] [--out bench_results]
    python -m enlcn_jax.bench train [--configs quickstart,x2] [--steps 20,1]
    python -m enlcn_jax.bench eval [--sizes 256,512] [--repeats 3]

`attention`: a jit-compiled ENLCA block (64 channels, m = 128) with ENLA against the same block
with exact softmax NLA, forward and forward+backward, at several square feature-map sizes:
median wall time over repeats and XLA's compiled memory estimate (arguments + outputs +
temporaries; on GPU also the measured peak). Ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from enlcn_jax import models


def median_time(fn: Callable, args: tuple, repeats: int) -> float:
    """Median seconds of `fn(*args)` over `repeats` runs after one warm-up run."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compiled_bytes(compiled) -> int | None:
    """XLA's memory estimate of a compiled program: arguments + outputs + temporaries."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes)


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


def attention_bench(sizes: list[int], channels: int = 64, m: int = 128, repeats: int = 5,
                    max_gib: float = 8.0, out_dir: str = 'bench_results') -> list[dict]:
    """Times ENLCA (ENLA) against exact NLA; programs XLA estimates above `max_gib` are not run."""
    rows = []
    for side in sizes:
        x = jax.random.normal(jax.random.key(0), (1, side, side, channels))
        for kind in ('enla', 'softmax'):
            module = models.ENLCA(attention=kind, num_random_features=m)
            variables = module.init({'params': jax.random.key(1),
                                     models.RANDOM_FEATURES: jax.random.key(2)}, x[:, :8, :8])
            forward = lambda v, x, module=module: module.apply(v, x)[0]
            backward = jax.grad(lambda v, x, forward=forward: jnp.sum(forward(v, x) ** 2))
            row = {'size': f'{side}x{side}', 'positions': side * side, 'attention': kind}
            for label, fn in (('fwd', forward), ('fwd+bwd', backward)):
                compiled = jax.jit(fn).lower(variables, x).compile()
                estimate = compiled_bytes(compiled)
                row[f'{label} MiB'] = None if estimate is None else estimate / 2 ** 20
                if estimate is not None and estimate > max_gib * 2 ** 30:
                    row[f'{label} ms'] = None
                    continue
                row[f'{label} ms'] = 1e3 * median_time(compiled, (variables, x), repeats)
            rows.append(row)
    by_key = {(r['size'], r['attention']): r for r in rows}
    for row in rows:
        if row['attention'] == 'softmax':
            enla = by_key[(row['size'], 'enla')]
            for label in ('fwd', 'fwd+bwd'):
                if row[f'{label} ms'] and enla[f'{label} ms']:
                    enla[f'{label} speedup vs NLA'] = row[f'{label} ms'] / enla[f'{label} ms']
    columns = ['size', 'attention', 'fwd ms', 'fwd+bwd ms', 'fwd MiB', 'fwd+bwd MiB',
               'fwd speedup vs NLA', 'fwd+bwd speedup vs NLA']
    enla_rows = [r for r in rows if r['attention'] == 'enla']
    growth = {}
    if len(enla_rows) >= 2:
        first, last = enla_rows[0], enla_rows[-1]
        growth = {'positions ratio': last['positions'] / first['positions'],
                  'enla fwd time ratio': last['fwd ms'] / first['fwd ms'],
                  'enla fwd+bwd time ratio': last['fwd+bwd ms'] / first['fwd+bwd ms']}
        print(f"ENLA {last['size']} over {first['size']}: {growth['positions ratio']:.1f}x positions, "
              f"{growth['enla fwd time ratio']:.2f}x fwd time, "
              f"{growth['enla fwd+bwd time ratio']:.2f}x fwd+bwd time")
    write_results('attention', rows, columns, out_dir,
                  {'channels': channels, 'm': m, 'repeats': repeats, 'growth': growth})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.bench', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    attn = sub.add_parser('attention', help='ENLCA (ENLA) vs exact NLA: time and memory')
    attn.add_argument('--sizes', default='50,100,150,200', help='square feature-map sides')
    attn.add_argument('--channels', type=int, default=64)
    attn.add_argument('--m', type=int, default=128, help='number of random features')
    attn.add_argument('--repeats', type=int, default=5)
    attn.add_argument('--max_gib', type=float, default=8.0,
                      help='skip running programs whose XLA memory estimate exceeds this')
    train = sub.add_parser('train', help='training steps/s, images/s and input-pipeline patches/s')
    train.add_argument('--configs', default='quickstart,x2', help='modules of configs/')
    train.add_argument('--steps', default='20,1', help='timed steps per config')
    train.add_argument('--batch_size', type=int, default=16)
    train.add_argument('--lr_patch', type=int, default=48)
    evaluation = sub.add_parser('eval', help='eval throughput of the paper model (SR MP/s)')
    evaluation.add_argument('--sizes', default='256,512', help='square LR sides')
    evaluation.add_argument('--repeats', type=int, default=3)
    for p in (attn, train, evaluation):
        p.add_argument('--out', default='bench_results', help='directory for the JSON file')
    args = parser.parse_args(argv)
    ints = lambda text: [int(v) for v in text.split(',')]
    if args.command == 'attention':
        attention_bench(ints(args.sizes), args.channels, args.m, args.repeats, args.max_gib, args.out)
    elif args.command == 'train':
        from enlcn_jax import bench_train  # pylint: disable=import-outside-toplevel
        bench_train.train_throughput_bench(args.configs.split(','), ints(args.steps),
                                           args.batch_size, args.lr_patch, out_dir=args.out)
    else:
        from enlcn_jax import bench_eval  # pylint: disable=import-outside-toplevel
        bench_eval.eval_throughput_bench(ints(args.sizes), args.out, args.repeats)


if __name__ == '__main__':
    main()
