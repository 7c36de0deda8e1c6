"""The GPU benchmark set in one command: one combined JSON plus each part's table.

  * attention, first, so that no larger program's memory hides its rows' peaks: ENLCA (and exact
    NLA) forward and forward+backward at 100x100 and 150x150 beside the paper's Table 5 (0.9 /
    1.6 ms for ENLCA on a 2080Ti), and at 300x300, where exact NLA's memory is many times ENLCA's
    (`bench/attention.py`);
  * train: the x2 ENLCN (configs/x2.py: 32 blocks x 256 features, 5 ENLCA modules), images/s at
    batch 16 of 48x48 LR patches, float32 and bfloat16, on one and on all local devices, both
    phases (L1 only, L1 + contrastive), with GFLOP/s and % of the matmul peak (`bench/train.py`);
  * eval: SR megapixels/s of the same model on an Urban100-sized image, 512x384 LR -> 1024x768,
    float32 and bfloat16 (`bench/eval.py`);
  * peak device memory: the attention, train and eval rows' `peak MiB` and the whole run's
    `peak MiB` (GPUs; None on CPU, where XLA's estimates, the `MiB` columns, remain).

Every size is an option: with the quickstart model and small sizes the command runs in under
a minute on a 2-core CPU (the tests run it so):

    python -m enlcn_jax.bench gpu
    python -m enlcn_jax.bench gpu --config quickstart --batch_size 2 --lr_patch 24 --steps 1 \\
        --attention_sizes 16 --eval_size 32x24 --repeats 1 --matmul_n 256
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from enlcn_jax.bench import attention as bench_attention, eval as bench_eval, train as bench_train
from enlcn_jax.bench.common import peak_device_mib, write_report

DTYPES = ('float32', 'bfloat16')


def gpu_bench(config: str = 'x2', batch_size: int = 16, lr_patch: int = 48, steps: int = 20,
              attention_sizes: Sequence[int] = (100, 150, 300),
              eval_size: tuple[int, int] = (512, 384), repeats: int = 5, matmul_n: int = 2048,
              max_gib: float = 32.0, out_dir: str | Path = 'bench_results') -> dict:
    """Runs the three parts; writes their JSON files and `<out_dir>/gpu.json`.

    Args:
      config: module of `configs/` trained and evaluated.
      batch_size, lr_patch: the training batch (global) and LR patch side.
      steps: timed training steps per phase.
      attention_sizes: square feature-map sides of the attention part.
      eval_size: the LR `(width, height)` of the eval part.
      repeats: timed runs of the attention and eval parts (medians).
      matmul_n: side of the matmul that measures the peak.
      max_gib: attention programs whose XLA memory estimate exceeds this are not run.
      out_dir: directory for the JSON files.
    Returns:
      The combined report: `{'attention', 'train', 'eval'}` (each part's report, as its JSON
      file holds it less the machine) and `peak MiB`.
    """
    report = {
        'attention': bench_attention.attention_bench(list(attention_sizes), repeats=repeats,
                                                     max_gib=max_gib, out_dir=out_dir),
        'train': bench_train.train_throughput_bench(
            [config], [steps], batch_size, lr_patch, DTYPES, bench_train.DEVICE_SETS, matmul_n,
            out_dir=out_dir),
        'eval': bench_eval.eval_throughput_bench([eval_size], config, DTYPES, out_dir, repeats),
        'peak MiB': peak_device_mib(),
    }
    write_report('gpu', report, out_dir)
    return report
