"""A training workdir: its layout, one writer at a time, and resume only with the same run.

Layout (written by `loop.train_and_evaluate`):

    config.json            the latest run's full config (each checkpoint step records its own)
    model_config.json      the flat model config: `models.from_config`'s keyword arguments,
                           what `checkpoints.load_model` rebuilds the model from
    metrics.jsonl          one strict-JSON record per logged step or validation (`metric_writer`)
    events.out.tfevents.*  the same scalars for TensorBoard
    train.lock             held by the training process (`WorkdirLock`)
    checkpoints/<step>/    the latest `train.keep_checkpoints` steps, each with the items
        variables            {'params', 'random_features'}: the model
        train                {'step', 'opt_state', 'rng'}: the rest of the `recipe.TrainState`
        checksums            {'variables': {array path: CRC-32}, 'train': {...}}: verified on load
        record               {'format': 2, 'config': the run's config, 'data': fingerprints,
                              'code': the source fingerprints of its functions from outside
                              the package, `code_fingerprints`}
    best/<step>/           one step: the model with the best validation PSNR-Y so far
                           (`variables`, `checksums`, `record`)
    best.val-<sha256>/     a `best/` chosen on other validation images, moved aside
    best.run-<sha256>/     a `best/` trained by another run (another config), moved aside

`checkpoints` reads and writes the steps (orbax `CheckpointManager`s); `recipe.TrainState` says
what its `variables` and `train` items hold.

* `WorkdirLock`: an exclusive `fcntl` lock on `<workdir>/train.lock`, held for the whole run. A
  second training on the same workdir fails at once, naming the holder's pid and host (written
  into the file); the kernel drops the lock when the holder exits, however it exits, so a
  crashed run never leaves it stuck.
* `check_resume`: every checkpoint step carries the record of what trained it (the config and
  a fingerprint of the data, `checkpoints.saved_record`); `config.json` is the readable copy of
  the latest run's config, and the record of checkpoints written before records existed.
  Re-running a workdir with a different model, data, seed or recipe is refused before anything
  is written, naming the differing keys; the keys in `SAFE_TO_CHANGE` (more epochs, logging and
  checkpoint cadence, validation, the compute precision) may change, and `allow_changes` accepts
  the rest deliberately. A checkpoint with no record at all (and no `config.json`) is resumed
  only with `allow_changes`. A config recorded by an older version is read with today's keys
  (`RENAMED_KEYS`, `ADDED_KEYS`, `models.upgrade_recorded_config`): its workdir resumes.
* `check_data`: the same for the training images, by their fingerprint
  (`datasets.fingerprint`).
* `check_code`: the same for the source of the run's functions from outside the package. Resume
  imports only the functions of the config given on the command line: a recorded spec it does
  not repeat is a config change, refused (or, with `allow_changes`, replaced), never imported.
* `record_config`: writes `config.json` and `model_config.json` atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from enlcn_jax.nn import models, registry
from enlcn_jax.storage import checkpoints, files

CONFIG_FILE = 'config.json'
LOCK_FILE = 'train.lock'
# Keys a resumed run may change: how long, how often to log / save / validate, and on what.
SAFE_TO_CHANGE = (
    'train.epochs', 'train.log_every', 'train.checkpoint_every_steps', 'train.keep_checkpoints',
    'train.eval_every_epochs', 'train.eval_bucket', 'data.num_workers', 'data.cache_dir',
    'data.tfds_data_dir', 'data.val_source', 'data.val_hr_dir', 'data.val_lr_dir',
    'data.val_photos', 'data.val_limit', 'distributed', 'ablation', 'model.dtype')
# How a config recorded by an older version reads today, so that its workdir resumes: keys
# renamed since (old -> new), and keys added since, with the value that does what the older
# runs did.
RENAMED_KEYS = {'train.contrastive.variant': 'train.contrastive.loss'}
ADDED_KEYS = {'train.contrastive.margin': None, 'model.block': 'enlca'}


class WorkdirError(RuntimeError):
    """The workdir cannot be used for this run; the message says why and what to do."""


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    """A nested config dict as `{'dotted.key': value}` (tuples as lists, as JSON has them)."""
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f'{prefix}{key}.'))
        return flat
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def _is_safe(key: str) -> bool:
    return any(key == safe or key.startswith(safe + '.') for safe in SAFE_TO_CHANGE)


def config_changes(old: dict, new: dict) -> list[str]:
    """`'key: old -> new'` for every differing key that is not in `SAFE_TO_CHANGE`, the recorded
    config `old` read with today's keys (`RENAMED_KEYS`, `ADDED_KEYS`) and model spec names
    (`models.upgrade_recorded_config`)."""
    old = {**old, 'model': models.upgrade_recorded_config(old['model'])} if 'model' in old else old
    old_flat = {**ADDED_KEYS, **{RENAMED_KEYS.get(key, key): value
                                 for key, value in flatten(old).items()}}
    new_flat = flatten(json.loads(json.dumps(new)))
    missing = object()
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        before, after = old_flat.get(key, missing), new_flat.get(key, missing)
        if before != after and not _is_safe(key):
            show = lambda v: '(absent)' if v is missing else repr(v)
            changes.append(f'{key}: {show(before)} -> {show(after)}')
    return changes


def config_digest(config: dict) -> str:
    """12 hex digits of a SHA-256 of `config` (JSON, sorted keys): names a run's leftovers."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _refuse_or_warn(message: str, allow_changes: bool, refusal: str, continuing: str) -> None:
    """Raises `WorkdirError('<message>: <refusal>')`, or with `allow_changes` logs the warning
    `'<message>; <continuing>'`."""
    if not allow_changes:
        raise WorkdirError(f'{message}: {refusal}')
    logging.warning('%s; %s', message, continuing)


def _recorded_config(workdir: Path) -> tuple[dict | None, int | None, dict | None]:
    """`(config, latest step, its record)`: the config the latest checkpoint was trained with
    (its record's, else `config.json`'s), or None where neither says."""
    with checkpoints.latest_manager(workdir, read_only=True) as manager:
        step, record = checkpoints.latest_record(manager)
    if record is not None and 'config' in record:
        return record['config'], step, record
    path = workdir / CONFIG_FILE
    if not path.exists():
        return None, step, record
    try:
        return json.loads(path.read_text()), step, record
    except (OSError, ValueError) as e:
        what = ('nothing was trained in it yet: move it away to start afresh' if step is None else
                f'and checkpoint step {step} has no record of its config: use a new --workdir, '
                'or pass --allow_config_changes to resume it with this config')
        raise WorkdirError(f'{path} is unreadable ({e}); {what}') from e


def check_resume(workdir: str | os.PathLike, config: dict,
                 allow_changes: bool = False) -> dict | None:
    """Refuses to continue `workdir`'s run with a config that changes what is being trained.

    Args:
      workdir: the training workdir.
      config: the new run's config as a plain dict (`ConfigDict.to_dict()`).
      allow_changes: accept the changes (logged), e.g. a deliberate new lr.
    Returns:
      the record saved with the latest checkpoint (None without one, or for an older format).
    Raises:
      WorkdirError: listing the changed keys and how to proceed, or naming the missing record.
    """
    workdir = Path(workdir)
    try:
        old, step, record = _recorded_config(workdir)
    except WorkdirError:
        if not allow_changes:
            raise
        return None
    if old is None:
        if step is not None:
            _refuse_or_warn(
                f'{workdir} holds checkpoint step {step} but no record of the config that trained '
                f'it (no record in the checkpoint, no {CONFIG_FILE})', allow_changes,
                refusal='pass --allow_config_changes to resume it with this config, or use a new '
                '--workdir', continuing='resuming it with this config as asked')
        return record
    changes = config_changes(old, config)
    if changes:
        _refuse_or_warn(
            f'{workdir} holds a run with another config ({"; ".join(changes)})', allow_changes,
            refusal='use a new --workdir for a new run, or pass --allow_config_changes to '
            'continue this one with the change', continuing='continuing it with the change, as '
            'asked')
    return record


def check_data(record: dict | None, fingerprints: dict, allow_changes: bool = False) -> None:
    """Refuses to resume on other training images than the checkpoint's record names.

    Args:
      record: the latest checkpoint's record (`check_resume`), or None (nothing to compare).
      fingerprints: `{'train': datasets.fingerprint(...), 'val': ... or None}` of this run.
      allow_changes: accept other training images, with a warning that the run no longer
        repeats a straight one.
    Raises:
      WorkdirError: the training images differ, naming the image counts.
    """
    old = (record or {}).get('data', {}).get('train')
    new = fingerprints['train']
    if old is None or old == new:
        return
    _refuse_or_warn(
        f'the training images differ from the ones that trained the checkpoint ({old["images"]} '
        f'images, fingerprint {old["sha256"][:12]} -> {new["images"]}, {new["sha256"][:12]})',
        allow_changes, refusal='restore them, use a new --workdir, or pass '
        '--allow_config_changes to continue on these',
        continuing='continuing on them as asked: the run no longer repeats a straight one')


def code_fingerprints(config: ml_collections.ConfigDict) -> dict[str, str]:
    """`registry.code_fingerprints` of the functions a training config names from outside the
    package: the model's and the contrastive loss (`{}` for built-in names, at no cost)."""
    return {**checkpoints.code_fingerprints(config.model.to_dict()),
            **registry.code_fingerprints([config.train.contrastive.loss])}


def check_code(record: dict | None, fingerprints: dict[str, str],
               allow_changes: bool = False) -> None:
    """Refuses to resume with functions whose source changed since the checkpoint's record.

    Args:
      record: the latest checkpoint's record (`check_resume`), or None (nothing to compare).
      fingerprints: `code_fingerprints` of this run's config.
      allow_changes: continue with the functions as they are now, with a warning that the run
        no longer repeats a straight one.
    Raises:
      WorkdirError: naming the changed functions.
    """
    changed = registry.changed_code((record or {}).get('code') or {}, fingerprints)
    if not changed:
        return
    _refuse_or_warn(
        f'the source of {", ".join(changed)} changed since the checkpoint was trained with it '
        "(its file's fingerprint differs)", allow_changes, refusal='restore it, use a new '
        '--workdir, or pass --allow_config_changes to continue with it as it is now',
        continuing='continuing with it as it is now, as asked: the run no longer repeats a '
        'straight one')


def record_config(workdir: str | os.PathLike, config: dict, model_config: dict) -> None:
    """Writes `config.json` (the run) and `model_config.json` (what evaluation rebuilds)."""
    workdir = Path(workdir)
    files.write_text(workdir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))
    files.write_text(workdir / checkpoints.MODEL_CONFIG,
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

    def check_in_place(self) -> None:
        """Raises unless the workdir is still where the run started: its `train.lock` is the file
        this lock holds (same device and inode). Checked before each write of the run, so that a
        workdir moved or removed while training is not silently recreated at the old path.

        Raises:
          WorkdirError: naming the workdir and what to do.
        """
        held = os.fstat(self._file.fileno())
        try:
            now = os.stat(self.path)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise WorkdirError(f'{self.path.parent} was moved or removed while training (its '
                               f'{LOCK_FILE} is gone): stopped without writing there again; move '
                               'the workdir back (or pass its new path as --workdir) and run the '
                               'same command to resume')

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
