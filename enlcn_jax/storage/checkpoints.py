"""Model checkpoints on disk: a model config plus its variables, written with orbax.

A *model directory* holds `model_config.json` (keyword arguments of `models.ENLCN`) and
`variables/` (an orbax StandardCheckpointer tree of `params` and `random_features`). The
converter writes one with `save_model`.

A *training workdir* holds two orbax `CheckpointManager` directories, `checkpoints/` (the latest
steps) and `best/` (the best validation PSNR-Y), whose steps are composites of named items; the
workdir's layout is described in `enlcn_jax/train/workdir.py`. Items are trees by name:
`variables` (the model, the same tree as a model directory's) is what `load_model` reads; what
the others hold is their saver's (`recipe.TrainState.checkpoint_items`).

Orbax writes each step into a temporary directory and renames it when complete, so a crash during
a save leaves the previous steps intact. Every array's CRC-32 is saved with it (`checksums.json`
in a model directory, a `checksums` item in a step) and checked when it is read back, so a
damaged file is an error that names the array, not a silently broken model; `load_model` also
refuses non-finite weights. A checkpoint step written with a `record` (a model directory written
with `format.json`) must have its checksums: a missing one is damage, not an old format; only
checkpoints written before checksums existed load without them, with a warning. `load_model`
reads a model directory or a workdir.

A checkpoint names its functions by spec (`nn/registry.py`), and resolving a `MODULE:NAME` spec
imports MODULE, which runs it. `load_model` imports only the package's own code unless it is
told to trust the checkpoint's (`trust_code`): a model config naming a module outside
`enlcn_jax` is an `UntrustedCodeError`, raised before anything is imported. Every function a
checkpoint names from outside the package is recorded with the fingerprint of its source file
(`registry.code_fingerprints`: `code` in a step's record, in a model directory's `format.json`);
a function whose source changed since is an error naming it (the scores would be the edited
function's, not the trained model's) unless `allow_changed_code`, which warns.

The model config is recorded with the weights too (a step's `record['config']['model']`, a model
directory's `format.json`): a `model_config.json` edited since is refused, naming the keys that
differ. A workdir is read while a training run may write it: orbax lists only committed steps
(written in a temporary folder, renamed when complete, `commit_success.txt` in it) but deletes
steps it no longer keeps while they may be read, so `load_model` reads a step again, from the
steps then on disk, when it fails; only a step that fails twice, unchanged, is damaged.
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import os
import time
import zlib
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from enlcn_jax.nn import models, registry

from enlcn_jax.storage import files

MODEL_CONFIG = 'model_config.json'
VARIABLES = 'variables'
TRAIN = 'train'
CHECKSUMS = 'checksums'
RECORD = 'record'
FORMAT_FILE = 'format.json'
# Version of what is written: 2 = checksums always, and a record with every checkpoint step.
FORMAT = 2
CHECKPOINTS_DIR = 'checkpoints'
BEST_DIR = 'best'
BEST_METRIC = 'psnr_y'
# What orbax writes into a step's temporary directory last, before renaming it to the step.
COMMIT_FILE = 'commit_success.txt'
# A workdir step that fails to read is read again after this pause: while a training run
# deletes it, the step's folder changes or vanishes; only a step that fails twice, unchanged,
# is damaged. After READ_ATTEMPTS reads of steps that kept changing, the last failure stands.
RETRY_PAUSE_S = 0.25
READ_ATTEMPTS = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names it and why."""


# The help of the commands' flags that set `load_model`'s `trust_code` and `allow_changed_code`.
TRUST_CODE_HELP = ("import the modules outside enlcn_jax that the checkpoint's MODULE:NAME specs "
                   'name (importing runs them): only for a checkpoint whose code you trust')
ALLOW_CHANGED_CODE_HELP = ("run the checkpoint's MODULE:NAME functions although their source "
                           'changed since it was saved (warned)')


class UntrustedCodeError(CheckpointError):
    """A checkpoint's config names code outside the package, and its code is not trusted."""


def check_trusted(config: Mapping, where: Path, trust_code: bool) -> None:
    """Refuses a flat model config (`model_config.json` at `where`) that would import modules
    outside the package, unless `trust_code`. Reads the strings only: nothing is imported.

    Raises:
      UntrustedCodeError: naming the modules and the functions, and how to accept them.
      CheckpointError: a spec that does not parse.
    """
    try:
        targets = registry.external_targets(_specs(config))
    except ValueError as e:
        raise CheckpointError(f'{where} builds no model: {e}') from e
    if targets and not trust_code:
        modules = sorted({target.split(':')[0] for target in targets})
        raise UntrustedCodeError(
            f'{where} names code outside {registry.PACKAGE} ({", ".join(targets)}): loading it '
            f'imports, and so runs, module(s) {", ".join(modules)}; pass --trust_code '
            '(trust_code=True) to import them if you trust whoever made the checkpoint')


def _specs(config) -> list:
    """The specs a flat model config names (none for a value that is not a config: `from_config`
    refuses it)."""
    return [config.get(key) for key in models.SPEC_KEYS] if isinstance(config, Mapping) else []


def code_fingerprints(config: Mapping) -> dict[str, str]:
    """`registry.code_fingerprints` of the functions a flat model config names."""
    return registry.code_fingerprints(_specs(config))


def check_code(config: Mapping, recorded: Mapping[str, str] | None, where: Path,
               allow_changed_code: bool) -> None:
    """Refuses a model config whose functions from outside the package no longer have the
    source recorded with the checkpoint at `where` (`recorded`: `code_fingerprints` when it was
    saved; None for a checkpoint saved before code was fingerprinted: nothing to compare).

    Raises:
      CheckpointError: naming the changed functions, unless `allow_changed_code` (a warning).
    """
    if not recorded:
        return
    changed = registry.changed_code(recorded, code_fingerprints(config))
    if not changed:
        return
    message = (f'{where}: the source of {", ".join(changed)} changed since the checkpoint was '
               'saved (its file\'s fingerprint differs)')
    if not allow_changed_code:
        raise CheckpointError(f'{message}: restore it, or pass --allow_changed_code '
                              '(allow_changed_code=True) to run it as it is now')
    logging.warning('%s; running it as it is now, as asked: the scores no longer belong to the '
                    'trained model', message)


def _comparable(config: Mapping) -> dict:
    """A flat model config as `model_config.json` records it today (`upgrade_recorded_config`,
    `recordable_config`, JSON values): equal configs build the same model."""
    config = models.upgrade_recorded_config(config)
    try:
        config = models.recordable_config(config)
    except ValueError:  # a function not recordable by name: compared as it is
        pass
    return json.loads(json.dumps(config, sort_keys=True, default=repr))


def check_model_config(config: Mapping, recorded: Mapping | None, config_path: Path,
                       where: Path) -> None:
    """Refuses a model config (read from `config_path`) that differs from the one recorded with
    the checkpoint at `where` (`recorded`: a step's `record['config']['model']`, a model
    directory's `format.json` `model`; None for a checkpoint saved before it was recorded:
    nothing to compare). The weights were trained as the recorded model: an edited
    `amplification` or another attention would score some other model with them.

    Raises:
      CheckpointError: one line naming the keys that differ, with both values.
    """
    if not isinstance(recorded, Mapping):
        return
    now, then = _comparable(config), _comparable(recorded)
    absent = '(absent)'
    differing = [f'{key}: {then.get(key, absent)!r} recorded, {now.get(key, absent)!r} in the file'
                 for key in sorted(set(now) | set(then))
                 if now.get(key, absent) != then.get(key, absent)]
    if differing:
        raise CheckpointError(f'{config_path} differs from the model config recorded with {where} '
                              f'({"; ".join(differing)}): the weights belong to the recorded '
                              f'model; restore {config_path.name} to it')


def _not_orbax_info(record: std_logging.LogRecord) -> bool:
    """Keeps orbax's warnings and errors, drops its per-save INFO lines."""
    return record.levelno > std_logging.INFO or '/orbax/' not in record.pathname


def quiet_orbax_logs() -> None:
    """Drops orbax's INFO lines (a dozen per save) from the absl log; warnings stay."""
    logging.get_absl_handler().addFilter(_not_orbax_info)


def _not_read_only_notice(record: std_logging.LogRecord) -> bool:
    """Drops orbax's warning that a directory opened for reading is read only (as asked)."""
    return not record.getMessage().startswith('Given directory is read only')


def _manager(directory: Path, item_handlers: dict,
             options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    """An orbax `CheckpointManager`. Every read of a workdir's checkpoints opens them read-only,
    for which orbax warns while making the manager: that warning is dropped."""
    absl_logger = std_logging.getLogger('absl')
    absl_logger.addFilter(_not_read_only_notice)
    try:
        manager = ocp.CheckpointManager(directory, item_handlers=item_handlers, options=options)
    finally:
        absl_logger.removeFilter(_not_read_only_notice)
    if not options.read_only:
        # A writer deletes the leftovers of interrupted saves in a background thread that only
        # `save` waits for, not `close`: waited for here, it cannot outlive a run that stops at
        # once (at interpreter exit it fails with a traceback).
        manager._maybe_await_cleanup_tmp_directory()  # pylint: disable=protected-access
    return manager


def save_model(directory: str | Path, model_config: dict, variables: dict) -> Path:
    """Writes `model_config` and `variables` to `directory` (created; must not hold a model yet).

    Functions given in code in `model_config` are recorded by the spec that imports them again
    (`models.recordable_config`; ValueError for one that cannot be); those from outside the
    package with the fingerprint of their source (`code` in `format.json`, with the config as
    `model`, which loading checks `model_config.json` against).
    """
    directory = Path(directory).absolute()
    model_config = models.recordable_config(model_config)
    if (directory / VARIABLES).exists():
        raise FileExistsError(f'{directory / VARIABLES} already exists; choose another --out')
    directory.mkdir(parents=True, exist_ok=True)
    files.write_text(directory / FORMAT_FILE, json.dumps(
        {'format': FORMAT, 'code': code_fingerprints(model_config), 'model': model_config}))
    files.write_text(directory / f'{CHECKSUMS}.json', json.dumps(checksums(variables), indent=2))
    files.write_text(directory / MODEL_CONFIG, json.dumps(model_config, indent=2, sort_keys=True))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(directory / VARIABLES, variables)
    except OSError as e:
        raise files.write_error(directory / VARIABLES, e) from e
    return directory


def _damaged(where: Path, reason: str, then: str) -> CheckpointError:
    """The one-line error for a checkpoint at `where` that cannot be read for `reason` (without
    the spec JSON tensorstore appends to it); `then` says what to do (the folder to move away,
    or another checkpoint to use)."""
    reason = reason.split(' [tensorstore_spec=')[0]
    return CheckpointError(f'{where} cannot be read ({reason}): the checkpoint is damaged; {then}')


@contextlib.contextmanager
def _read_as_damage(where: Path, then: str = 'use another checkpoint'):
    """Turns orbax's and tensorstore's errors reading `where` into one `CheckpointError` (`then`:
    what to do about it); a `CheckpointError` passes unchanged."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # re-raised unless a read error
        cause = _read_error(e)
        if cause is None:
            raise
        raise _damaged(where, files.reason(cause), then) from e


def _read_error(error: BaseException) -> BaseException | None:
    """The orbax or tensorstore read error (`OSError`, `ValueError`, `KeyError`) that `error` is,
    or that a bare `Exception` wraps (orbax's array reads raise one, "Encountered error while
    reading array index", caused by tensorstore's); None for any other error."""
    while error is not None and not isinstance(error, (OSError, ValueError, KeyError)):
        if type(error) is not Exception:  # pylint: disable=unidiomatic-typecheck
            return None
        error = error.__cause__ or error.__context__
    return error


def _items_metadata(manager: ocp.CheckpointManager, step: int, names, then: str) -> dict:
    """The saved metadata (array shapes and dtypes) of the items `names` of `step`.

    Raises:
      CheckpointError: an item's metadata is absent or unreadable (orbax then gives None), or
        the step was never committed (no `COMMIT_FILE`: a save that did not finish), naming the
        step's folder and `then`, what to do.
      OSError, ValueError: orbax's own errors reading it.
    """
    where = manager.directory / str(step)
    metadata = manager.item_metadata(step)
    missing = [name for name in names if name not in metadata.keys() or metadata[name] is None]
    if missing:
        reason = (f'no {COMMIT_FILE}: its save never finished'
                  if not (where / COMMIT_FILE).exists()
                  else f'the metadata of {", ".join(missing)} is missing or unreadable')
        raise _damaged(where, reason, then)
    return {name: metadata[name] for name in names}


def _read_json(path: Path):
    """The JSON value of `path`; an unreadable or truncated file is a `CheckpointError` naming
    it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f'{path} is unreadable ({e}): the checkpoint is damaged') from e


def load_model_dir(directory: str | Path) -> tuple[dict, dict]:
    """Reads a model directory written by `save_model`. Returns `(model_config, variables)`."""
    directory = Path(directory).absolute()
    config_path = directory / MODEL_CONFIG
    if not config_path.exists() or not (directory / VARIABLES).exists():
        raise FileNotFoundError(f'{directory} is not a model directory '
                                f'(needs {MODEL_CONFIG} and {VARIABLES}/)')
    config = _read_json(config_path)
    with _read_as_damage(directory / VARIABLES), ocp.StandardCheckpointer() as checkpointer:
        target = _numpy_like(checkpointer.metadata(directory / VARIABLES).item_metadata)
        variables = _as_numpy(checkpointer.restore(directory / VARIABLES, target))
    checksum_file = directory / f'{CHECKSUMS}.json'
    if checksum_file.exists():
        verify_checksums(variables, _read_json(checksum_file), directory)
    elif (directory / FORMAT_FILE).exists():
        raise CheckpointError(f'{checksum_file} is missing: the model directory is damaged')
    else:
        logging.warning('%s was written without checksums: its arrays cannot be verified',
                        directory)
    check_finite(variables, directory)
    return config, variables


def _options(name: str, read_only: bool,
             preservation_policy: ocp.checkpoint_managers.PreservationPolicy,
             **kwargs) -> ocp.CheckpointManagerOptions:
    """Writers keep what `preservation_policy` keeps and delete leftovers of interrupted saves;
    readers touch nothing (a training run may be writing to the same directory).

    `name` prefixes the manager's cross-process barriers: with several processes, the two
    managers of a workdir save concurrently, and barriers of one name would collide.
    """
    kwargs['multiprocessing_options'] = ocp.options.MultiprocessingOptions(
        barrier_sync_key_prefix=name)
    if read_only:
        return ocp.CheckpointManagerOptions(read_only=True, create=False,
                                            save_interval_steps=0, **kwargs)
    return ocp.CheckpointManagerOptions(preservation_policy=preservation_policy,
                                        cleanup_tmp_directories=True, **kwargs)


def latest_manager(workdir: str | Path, keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
    """The workdir's `checkpoints/` manager: `variables` and `train` items, the latest `keep`
    steps kept."""
    return _manager(
        Path(workdir).absolute() / CHECKPOINTS_DIR,
        {VARIABLES: ocp.StandardCheckpointHandler(), TRAIN: ocp.StandardCheckpointHandler(),
         CHECKSUMS: ocp.JsonCheckpointHandler(), RECORD: ocp.JsonCheckpointHandler()},
        _options(CHECKPOINTS_DIR, read_only, ocp.checkpoint_managers.LatestN(n=keep)))


def _best_metric(metrics: dict) -> float:
    return metrics[BEST_METRIC]


def best_manager(workdir: str | Path, read_only: bool = False) -> ocp.CheckpointManager:
    """The workdir's `best/` manager: model variables of the highest `metrics['psnr_y']`."""
    return _manager(
        Path(workdir).absolute() / BEST_DIR,
        {VARIABLES: ocp.StandardCheckpointHandler(), CHECKSUMS: ocp.JsonCheckpointHandler(),
         RECORD: ocp.JsonCheckpointHandler()},
        # best_fn too: orbax writes a step's metrics, and `best_step` reads them, only with it.
        _options(BEST_DIR, read_only,
                 ocp.checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1),
                 best_fn=_best_metric, best_mode='max'))


def load_model(path: str | Path, which: str = 'latest', *, trust_code: bool = False,
               allow_changed_code: bool = False) -> tuple[models.ENLCN, dict, int | None]:
    """Reads a model from a model directory (`save_model`) or a training workdir.

    Args:
      path: a model directory, or a training workdir.
      which: for a workdir, `'latest'` (last saved step of `checkpoints/`) or `'best'` (the step
        with the best validation PSNR-Y, `best/`). A model directory holds one model and
        ignores it.
      trust_code: import the modules outside the package that `model_config.json` names
        (`MODULE:NAME` specs); without it such a checkpoint is refused before any is imported.
      allow_changed_code: load with functions whose source changed since the checkpoint was
        saved, with a warning.
    Returns:
      `(model, variables, step)`: the `models.ENLCN` of `model_config.json`,
      `{'params': ..., 'random_features': ...}` as numpy arrays, and the training step the
      variables were saved at (None for a model directory).
    Raises:
      FileNotFoundError: `path` is neither, or the workdir has no checkpoint of that kind yet.
      UntrustedCodeError: `model_config.json` names modules outside the package, without
        `trust_code`.
      CheckpointError: a damaged checkpoint, non-finite weights, a `model_config.json` that
        is unreadable, builds no model or differs from the model config recorded with the
        weights (`check_model_config`), or a function whose source changed (above). A workdir
        step that a training run deletes or replaces while it is read is read again
        (`_read_workdir_step`), not called damaged.
    """
    if which not in ('latest', 'best'):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    path = Path(path).absolute()
    if (path / VARIABLES).exists():
        config, variables = load_model_dir(path)
        model = _build(config, path / MODEL_CONFIG, trust_code)
        recorded = _read_json(path / FORMAT_FILE) if (path / FORMAT_FILE).exists() else {}
        check_model_config(config, recorded.get('model'), path / MODEL_CONFIG,
                           path / FORMAT_FILE)
        check_code(config, recorded.get('code'), path, allow_changed_code)
        return model, variables, None
    if not (path / MODEL_CONFIG).exists() or not (path / CHECKPOINTS_DIR).is_dir():
        raise FileNotFoundError(f'{path} is neither a model directory ({MODEL_CONFIG} and '
                                f'{VARIABLES}/) nor a training workdir ({MODEL_CONFIG} and '
                                f'{CHECKPOINTS_DIR}/)')
    config = _read_json(path / MODEL_CONFIG)
    model = _build(config, path / MODEL_CONFIG, trust_code)
    variables, record, step, where = _read_workdir_step(path, which)
    check_finite(variables, where)
    check_model_config(config, record.get('config', {}).get('model'), path / MODEL_CONFIG, where)
    check_code(config, record.get('code'), where, allow_changed_code)
    return model, variables, step


def _folder_identity(where: Path) -> tuple[int, int, int] | None:
    """`(inode, mtime, ctime)` of the folder `where`, None once it is gone: a step deleted, or
    deleted and written again, changes it."""
    try:
        stat = os.stat(where)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns


def _read_step(manager: ocp.CheckpointManager, step: int, where: Path) -> tuple[dict, dict]:
    """`(variables, record)` of a workdir's committed `step` (at `where`), checksums verified.

    Raises:
      CheckpointError: it cannot be read, or a checksum differs.
    """
    with _read_as_damage(where):
        target = _numpy_like(_items_metadata(manager, step, [VARIABLES],
                                             'use another checkpoint')[VARIABLES])
        restored = manager.restore(
            step, args=ocp.args.Composite(**{VARIABLES: ocp.args.StandardRestore(target)}))
        variables = _as_numpy(restored[VARIABLES])
        saved = _saved_checksums(manager, step)
        if saved is not None:
            verify_checksums(variables, saved[VARIABLES], where)
        return variables, saved_record(manager, step) or {}


def _save_in_flight(directory: Path) -> bool:
    """Whether `directory` holds a step orbax is still writing (its temporary folder), or a
    step now (one renamed into place since the manager listed the steps)."""
    try:
        return any('.orbax-checkpoint-tmp' in path.name or path.name.isdigit()
                   for path in directory.iterdir())
    except OSError:
        return False


def _read_workdir_step(workdir: Path, which: str) -> tuple[dict, dict, int, Path]:
    """`(variables, record, step, folder)` of the `which` step of a workdir, which a training run
    may be writing meanwhile: orbax lists only committed steps (written in a temporary folder,
    renamed when complete), but deletes the steps it no longer keeps (`best/` keeps one) while
    they may be read. A read that fails is tried again, with the steps on disk then, after
    `RETRY_PAUSE_S`; damage is a step that fails twice with its folder unchanged in between.
    Costs one read per attempt (one, unless a run replaced the step).

    Raises:
      FileNotFoundError: no `which` step.
      CheckpointError: the step is damaged (or the steps kept changing for `READ_ATTEMPTS`
        reads: the last failure).
    """
    failed = None  # (step, folder identity) of the last failure, when its folder was unchanged
    for attempt in range(1, READ_ATTEMPTS + 1):
        last = attempt == READ_ATTEMPTS
        try:
            manager = (best_manager(workdir, read_only=True) if which == 'best'
                       else latest_manager(workdir, read_only=True))
        except FileNotFoundError:  # a step deleted while orbax listed the steps
            if last:
                raise
            time.sleep(RETRY_PAUSE_S)
            continue
        with manager:
            step = manager.best_step() if which == 'best' else manager.latest_step()
            # Steps but no best: its metrics were read while the step was being deleted; no
            # step but one being written, or renamed since: the old one was deleted before the
            # new one's rename.
            if step is None and (last or not (manager.all_steps()
                                              or _save_in_flight(manager.directory))):
                raise FileNotFoundError(f'no {which} checkpoint in {manager.directory}')
            if step is not None:
                where = manager.directory / str(step)
                before = _folder_identity(where)
                try:
                    return (*_read_step(manager, step, where), step, where)
                except CheckpointError:
                    unchanged = before is not None and _folder_identity(where) == before
                    if (unchanged and failed == (step, before)) or last:
                        raise
                    failed = (step, before) if unchanged else None
        time.sleep(RETRY_PAUSE_S)


def _build(config: dict, config_path: Path, trust_code: bool) -> models.ENLCN:
    """`models.from_config(config)` once `check_trusted`; a config that builds no model is a
    `CheckpointError` naming `config_path`. Spec names an older version recorded are read as
    today's (`models.upgrade_recorded_config`)."""
    config = models.upgrade_recorded_config(config)
    check_trusted(config, config_path, trust_code)
    try:
        return models.from_config(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f'{config_path} builds no model: {e}') from e


def _save(manager: ocp.CheckpointManager, step: int, items: dict, record: dict | None,
          **kwargs) -> None:
    """Saves `items` (name -> tree) as `step` with their checksums and `record` (asynchronously).

    Raises:
      files.WriteError: orbax could not write (a full disk), naming the directory.
    """
    args = ocp.args.Composite(
        **{name: ocp.args.StandardSave(tree) for name, tree in items.items()},
        **{CHECKSUMS: ocp.args.JsonSave({name: checksums(tree) for name, tree in items.items()}),
           RECORD: ocp.args.JsonSave({'format': FORMAT, **(record or {})})})
    try:
        manager.save(step, args=args, **kwargs)
    except (OSError, ValueError) as e:  # tensorstore reports a full disk as a ValueError
        raise files.write_error(manager.directory / str(step), e) from e


def wait_until_saved(manager: ocp.CheckpointManager) -> None:
    """Waits for `manager`'s save in flight; a failed one is a `files.WriteError` naming it."""
    try:
        manager.wait_until_finished()
    except (OSError, ValueError) as e:  # tensorstore reports a full disk as a ValueError
        raise files.write_error(manager.directory, e) from e


def save_checkpoint(manager: ocp.CheckpointManager, step: int, items: dict,
                     record: dict | None = None) -> None:
    """Saves `items` (`{VARIABLES: the model's variables, TRAIN: the rest of the training
    state}`, e.g. `recipe.TrainState.checkpoint_items()`) as `step` of `checkpoints/`
    (asynchronously), with the checksums of their arrays and `record` (what trained it: config,
    data)."""
    _save(manager, step, items, record)


def save_best(manager: ocp.CheckpointManager, step: int, variables: dict, psnr_y: float,
              record: dict | None = None) -> None:
    """Offers the model `variables` of `step` to the `best/` manager, which keeps them only if
    `psnr_y` is the highest."""
    _save(manager, step, {VARIABLES: variables}, record, metrics={BEST_METRIC: psnr_y})


def latest_record(manager: ocp.CheckpointManager) -> tuple[int | None, dict | None]:
    """`(step, record)` of `manager`'s latest step (`saved_record`); `(None, None)` when its
    folder is missing or holds no step.

    Raises:
      CheckpointError: the record is there but cannot be read.
    """
    step = manager.latest_step() if manager.directory.is_dir() else None
    return step, (None if step is None else saved_record(manager, step))


def saved_record(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The record saved with `step` (`{'format', 'config', 'data'}`), or None for a checkpoint
    written before records existed.

    Raises:
      CheckpointError: the record is there but cannot be read (names the step's folder).
    """
    if not (manager.directory / str(step) / RECORD).exists():
        return None
    try:
        return manager.restore(step, args=ocp.args.Composite(
            **{RECORD: ocp.args.JsonRestore()}))[RECORD]
    except (OSError, ValueError) as e:
        raise CheckpointError(f'{manager.directory / str(step) / RECORD} is unreadable ({e}): '
                              f'the checkpoint is damaged; {resume_hint(manager, step)}') from e


def resume_hint(manager: ocp.CheckpointManager, step: int) -> str:
    """What to do with a damaged `step`: the folder to move away and the step training would
    then resume from."""
    earlier = [s for s in manager.all_steps() if s < step]
    then = f'resume from step {max(earlier)}' if earlier else 'start afresh'
    return f'move {manager.directory / str(step)} out of the workdir to {then}'


def restore_latest(manager: ocp.CheckpointManager, target: dict) -> dict | None:
    """The items of the latest step of `manager` (None without one), restored like `target`.

    Args:
      manager: a workdir's `checkpoints/` manager.
      target: items as `save_checkpoint` takes them; their tree structures, dtypes and
        shardings are the restored arrays'.
    Raises:
      CheckpointError: the checkpoint's model variables do not have the shapes of `target`'s
        (another model), naming the first differing arrays; or the checkpoint is damaged (a
        folder with no committed save, unreadable metadata or data, a checksum that differs),
        in one line naming the folder to move away to resume from the step before it.
    """
    step = manager.latest_step()
    if step is None:
        return None
    where = manager.directory / str(step)
    then = resume_hint(manager, step)
    with _read_as_damage(where, then):
        saved_variables = _items_metadata(manager, step, [VARIABLES], then)[VARIABLES]
    mismatches = _shape_mismatches(saved_variables, target[VARIABLES])
    if mismatches:
        raise CheckpointError(f'step {step} in {manager.directory} holds another model than the '
                              f'config builds ({"; ".join(mismatches[:3])}'
                              f'{"; ..." if len(mismatches) > 3 else ""})')
    with _read_as_damage(where, then):
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**{
                name: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                            tree))
                for name, tree in target.items()}))
            saved = _saved_checksums(manager, step)
            if saved is not None:
                for name in target:
                    verify_checksums(restored[name], saved[name], where)
        except CheckpointError as e:
            raise CheckpointError(f'{e}; {then}') from e
    return {name: restored[name] for name in target}


def _host_leaves(tree) -> dict[str, np.ndarray]:
    """`{path: numpy array}`; of an array replicated over several processes, the local copy."""
    def host(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        return np.asarray(jax.device_get(leaf))
    return {jax.tree_util.keystr(path): host(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def checksums(tree) -> dict[str, int]:
    """CRC-32 of every array's bytes, by tree path (`"['params']['head']['kernel']"`)."""
    return {path: zlib.crc32(np.ascontiguousarray(leaf).tobytes())
            for path, leaf in _host_leaves(tree).items()}


def verify_checksums(tree, saved: dict[str, int], where: Path) -> None:
    """Raises `CheckpointError` naming the first array of `tree` whose CRC-32 is not `saved`'s."""
    for path, value in checksums(tree).items():
        if saved.get(path) != value:
            raise CheckpointError(f'{where}: {path} does not match the checksum saved with it '
                                  '(the file is damaged); use another checkpoint')


def first_non_finite(arrays: Mapping[str, np.ndarray]) -> tuple[str, int, int] | None:
    """`(name, non-finite count, size)` of the first float array of `arrays` (in order) with a
    NaN or infinity; None when every one is finite."""
    for name, value in arrays.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.inexact):
            finite = np.count_nonzero(np.isfinite(value))
            if finite < value.size:
                return name, value.size - finite, value.size
    return None


def check_finite(tree, where: Path) -> None:
    """Raises `CheckpointError` naming the first array of `tree` with a NaN or infinity."""
    bad = first_non_finite(_host_leaves(tree))
    if bad is not None:
        raise CheckpointError(f'{where}: {bad[0]} holds non-finite values (a diverged run); '
                              'use an earlier checkpoint')


def _saved_checksums(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The checksums item of `step`, or None (with a warning) for a checkpoint written before
    checksums existed.

    Raises:
      CheckpointError: a checkpoint written with a record has no checksums (damaged).
    """
    where = manager.directory / str(step)
    if not (where / CHECKSUMS).exists():
        if (where / RECORD).exists():
            raise CheckpointError(f'{where / CHECKSUMS} is missing: the checkpoint is damaged; '
                                  'use another checkpoint')
        logging.warning('%s was written without checksums: its arrays cannot be verified', where)
        return None
    return manager.restore(step, args=ocp.args.Composite(
        **{CHECKSUMS: ocp.args.JsonRestore()}))[CHECKSUMS]


def _shape_mismatches(saved, expected) -> list[str]:
    """`'path: saved shape vs expected shape'` for arrays that differ or exist on one side only."""
    flat = lambda tree: {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in
                         jax.tree_util.tree_flatten_with_path(tree)[0]}
    saved, expected = flat(saved), flat(expected)
    return [f'{path}: {saved.get(path, "absent")} in the checkpoint, '
            f'{expected.get(path, "absent")} in the model'
            for path in sorted(set(saved) | set(expected)) if saved.get(path) != expected.get(path)]


def _numpy_like(metadata):
    """A numpy target for a saved tree: restores on the host whatever devices saved it."""
    return jax.tree.map(lambda leaf: np.empty(leaf.shape, leaf.dtype), metadata)


def _as_numpy(tree):
    if isinstance(tree, dict):
        return {k: _as_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
