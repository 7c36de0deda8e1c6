"""Training metrics: per-step values gathered on device, checked and averaged at each flush, and
written to `<workdir>/metrics.jsonl` and TensorBoard event files.

`metrics.jsonl` is strict JSON, one object per line: `{"step": int, "<name>": float, ...}`. A
value that is not finite (a diverging validation) is written as `null` and its name listed under
`"nonfinite"`, e.g. `{"step": 6, "val/psnr_y": null, "nonfinite": ["val/psnr_y"]}`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from tensorboardX import SummaryWriter

from enlcn_jax.storage import files

METRICS_FILE = 'metrics.jsonl'


class NonFiniteMetrics(FloatingPointError):
    """A step's loss or gradient norm was not finite; the message names the step, `step` holds
    it (the number of steps done after it, as metrics are logged)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


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
                                       f'{scalars["grad_norm"]}) at step {first + i}',
                                       first + i)
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
        self._path = Path(workdir) / METRICS_FILE
        if enabled:
            self._tensorboard = SummaryWriter(str(workdir))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Appends one record (see the module docstring); `files.WriteError` if it cannot."""
        if not self.enabled:
            return
        files.append_line(self._path, json_record(step, scalars))
        try:
            for name, value in scalars.items():
                self._tensorboard.add_scalar(name, value, step)
            self._tensorboard.flush()
        except OSError as e:
            raise files.write_error(self._tensorboard.logdir, e) from e

    def close(self) -> None:
        """Closes the event file; a failure to flush it is a warning (metrics.jsonl has every
        record), so it never hides the error that ended a run."""
        if self.enabled:
            try:
                self._tensorboard.close()
            except OSError as e:
                logging.warning('TensorBoard events not flushed: %s', files.write_error(
                    self._tensorboard.logdir, e))


def json_record(step: int, scalars: dict[str, float]) -> str:
    """One line of `metrics.jsonl`: strict JSON, non-finite values as null listed in
    `nonfinite`."""
    record = {'step': step}
    nonfinite = []
    for name, value in scalars.items():
        finite = value is None or math.isfinite(value)
        record[name] = value if finite else None
        if not finite:
            nonfinite.append(name)
    if nonfinite:
        record['nonfinite'] = nonfinite
    return json.dumps(record, allow_nan=False)


def _records(workdir: Path) -> list[dict]:
    """The records of `metrics.jsonl`; a line that is not one (cut short by a kill, or edited)
    is left out with a warning naming it."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and type(record.get('step')) is int):
            logging.warning('%s line %d is not a metrics record (a JSON object with an integer '
                            '"step"); left out: %.80s', path, number, line)
            continue
        records.append(record)
    return records


def validated_steps(workdir: str | Path) -> set[int]:
    """Steps with a recorded validation (`val/psnr_y`) in `<workdir>/metrics.jsonl`."""
    return {r['step'] for r in _records(Path(workdir)) if 'val/psnr_y' in r}


def drop_records_after(workdir: str | Path, step: int) -> None:
    """Removes records of steps after `step` (a resumed run redoes them) and cut-short lines."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return
    kept = [r for r in _records(Path(workdir)) if r['step'] <= step]
    files.write_text(path, ''.join(json.dumps(r) + '\n' for r in kept))
