"""A training workdir's bookkeeping: one writer at a time, and resume only with the same run.

* `WorkdirLock`: an exclusive `fcntl` lock on `<workdir>/train.lock`, held for the whole run. A
  second training on the same workdir fails at once, naming the holder's pid and host (written
  into the file); the kernel drops the lock when the holder exits, however it exits, so a
  crashed run never leaves it stuck.
* `check_resume`: a workdir remembers its run's config (`config.json`). Re-running it with a
  different model, data, seed or recipe is refused before anything is written, naming the
  differing keys; the keys in `SAFE_TO_CHANGE` (more epochs, logging and checkpoint cadence,
  validation, the compute precision) may change, and `allow_changes` accepts the rest deliberately.
* `record_config`: writes `config.json` and `model_config.json` atomically (temp file, rename).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from enlcn_jax import checkpoints

CONFIG_FILE = 'config.json'
LOCK_FILE = 'train.lock'
# Keys a resumed run may change: how long, how often to log / save / validate, and on what.
SAFE_TO_CHANGE = (
    'train.epochs', 'train.log_every', 'train.checkpoint_every_steps', 'train.keep_checkpoints',
    'train.eval_every_epochs', 'train.eval_bucket', 'data.num_workers', 'data.cache_dir',
    'data.tfds_data_dir', 'data.val_source', 'data.val_hr_dir', 'data.val_lr_dir',
    'data.val_photos', 'data.val_limit', 'distributed', 'ablation', 'model.dtype')


class WorkdirError(RuntimeError):
    """The workdir cannot be used for this run; the message says why and what to do."""


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f'{prefix}{key}.'))
        return flat
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def _is_safe(key: str) -> bool:
    return any(key == safe or key.startswith(safe + '.') for safe in SAFE_TO_CHANGE)


def config_changes(old: dict, new: dict) -> list[str]:
    """`'key: old -> new'` for every differing key that is not in `SAFE_TO_CHANGE`."""
    old_flat, new_flat = _flatten(old), _flatten(json.loads(json.dumps(new)))
    missing = object()
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        before, after = old_flat.get(key, missing), new_flat.get(key, missing)
        if before != after and not _is_safe(key):
            show = lambda v: '(absent)' if v is missing else repr(v)
            changes.append(f'{key}: {show(before)} -> {show(after)}')
    return changes


def check_resume(workdir: str | os.PathLike, config: dict, allow_changes: bool = False) -> None:
    """Refuses to continue `workdir`'s run with a config that changes what is being trained.

    Args:
      workdir: the training workdir (nothing to check if it has no `config.json`).
      config: the new run's config as a plain dict (`ConfigDict.to_dict()`).
      allow_changes: accept the changes (logged by the caller), e.g. a deliberate new lr.
    Raises:
      WorkdirError: listing the changed keys and how to proceed.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(f'{path} is unreadable ({e}); move it away to start this workdir '
                           'afresh') from e
    changes = config_changes(old, config)
    if changes and not allow_changes:
        raise WorkdirError(
            f'{workdir} holds a run with another config ({"; ".join(changes)}): use a new '
            '--workdir for a new run, or pass --allow_config_changes to continue this one '
            'with the change')


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    temporary.write_text(text)
    os.replace(temporary, path)


def record_config(workdir: str | os.PathLike, config: dict, model_config: dict) -> None:
    """Writes `config.json` (the run) and `model_config.json` (what evaluation rebuilds)."""
    workdir = Path(workdir)
    _atomic_write(workdir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))
    _atomic_write(workdir / checkpoints.MODEL_CONFIG,
                  json.dumps(model_config, indent=2, sort_keys=True))


class WorkdirLock:
    """Exclusive lock of a training workdir, as a context manager (see the module docstring).

    Raises (on enter):
      WorkdirError: another process holds it (its pid and host named), or the workdir cannot
        be created or written.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / LOCK_FILE
        self._file = None

    def __enter__(self) -> 'WorkdirLock':
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
        except OSError as e:
            raise WorkdirError(f'cannot use {self.path.parent} as a workdir: {e.strerror or e}') \
                from e
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or 'another process'
            handle.close()
            raise WorkdirError(f'{self.path.parent} is being trained by {holder}; wait for it '
                               'to finish or use another --workdir') from None
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()} on host {socket.gethostname()} since '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
