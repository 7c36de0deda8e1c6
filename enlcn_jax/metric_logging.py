"""Training metrics: per-step values gathered on device, checked and averaged at each flush, and
written to `<workdir>/metrics.jsonl` and TensorBoard event files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from tensorboardX import SummaryWriter

METRICS_FILE = 'metrics.jsonl'


class NonFiniteMetrics(FloatingPointError):
    """A step's loss or gradient norm was not finite; the message names the step."""


class StepMetrics:
    """The metrics dicts of the steps since the last flush, kept on device until `flush`.

    Fetching once per flush (not per step) keeps the host from waiting on every step.

    Args:
      start_step: the step count before the first appended step.
      batch_size: global images per step, for `train/images_per_s`.
    """

    def __init__(self, start_step: int, batch_size: int):
        self._pending: list[dict] = []
        self._batch_size = batch_size
        self.restart_clock(start_step)

    def append(self, metrics: dict) -> None:
        """Adds one step's metrics (scalars, on device)."""
        self._pending.append(metrics)

    def restart_clock(self, step: int) -> None:
        """Measures the next flush's speed from `step`, now (e.g. after a validation)."""
        self._clock = (step, time.perf_counter())

    def flush(self, step: int) -> dict[str, float] | None:
        """`{'train/<name>': mean over the pending steps, 'train/steps_per_s', ...}`, or None
        if no step is pending. `step` is the number of steps done after the last pending one.

        Raises:
          NonFiniteMetrics: a pending step had a non-finite `loss` or `grad_norm`.
        """
        if not self._pending:
            return None
        history = jax.device_get(self._pending)
        self._pending = []
        first = step - len(history) + 1
        for i, scalars in enumerate(history):
            if not (math.isfinite(scalars['loss']) and math.isfinite(scalars['grad_norm'])):
                raise NonFiniteMetrics(f'non-finite loss {scalars["loss"]} (gradient norm '
                                       f'{scalars["grad_norm"]}) at step {first + i}')
        now = time.perf_counter()
        steps_per_s = (step - self._clock[0]) / (now - self._clock[1])
        self._clock = (step, now)
        means = {f'train/{k}': float(np.mean([h[k] for h in history])) for k in history[0]}
        return {**means, 'train/steps_per_s': steps_per_s,
                'train/images_per_s': steps_per_s * self._batch_size}


class MetricLogger:
    """Appends scalars to `<workdir>/metrics.jsonl` (one object per call) and to TensorBoard.

    Disabled (a no-op) on processes other than 0.
    """

    def __init__(self, workdir: Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self._jsonl = open(Path(workdir) / METRICS_FILE, 'a', encoding='utf-8')
            self._tensorboard = SummaryWriter(str(workdir))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


def _records(workdir: Path) -> list[dict]:
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding='utf-8').splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            continue
    return records


def validated_steps(workdir: str | Path) -> set[int]:
    """Steps with a recorded validation (`val/psnr_y`) in `<workdir>/metrics.jsonl`."""
    return {r['step'] for r in _records(Path(workdir)) if 'val/psnr_y' in r}


def drop_records_after(workdir: str | Path, step: int) -> None:
    """Removes records of steps after `step` (a resumed run redoes them) and cut-short lines."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return
    kept = [r for r in _records(Path(workdir)) if r.get('step', 0) <= step]
    temporary = path.with_name(f'.{path.name}.tmp')
    temporary.write_text(''.join(json.dumps(r) + '\n' for r in kept), encoding='utf-8')
    temporary.replace(path)
