"""Model checkpoints on disk: a model config plus its variables, written with orbax.

A *model directory* holds `model_config.json` (keyword arguments of `models.ENLCN`) and
`variables/` (an orbax StandardCheckpointer tree of `params` and `random_features`). The
converter writes one with `save_model`.

A *training workdir* (see `train_lib.train_and_evaluate`) holds `model_config.json` too, and two
orbax `CheckpointManager` directories whose steps are composites of items:

    checkpoints/<step>/variables   {'params', 'random_features'}: the model (same tree as above)
    checkpoints/<step>/train       {'step', 'opt_state', 'rng'}: the rest of the TrainState
    best/<step>/variables          the model with the best validation PSNR-Y so far

`checkpoints/` keeps the latest `train.keep_checkpoints` steps, `best/` one step. Orbax writes
each step into a temporary directory and renames it when complete, so a crash during a save
leaves the previous steps intact. `load_model` reads a model directory or a workdir.
"""

from __future__ import annotations

import json
import logging as std_logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from enlcn_jax import models

MODEL_CONFIG = 'model_config.json'
VARIABLES = 'variables'
TRAIN = 'train'
CHECKPOINTS_DIR = 'checkpoints'
BEST_DIR = 'best'
BEST_METRIC = 'psnr_y'


def _not_orbax_info(record: std_logging.LogRecord) -> bool:
    """Keeps orbax's warnings and errors, drops its per-save INFO lines."""
    return record.levelno > std_logging.INFO or '/orbax/' not in record.pathname


def quiet_orbax_logs() -> None:
    """Drops orbax's INFO lines (a dozen per save) from the absl log; warnings stay."""
    logging.get_absl_handler().addFilter(_not_orbax_info)


def save_model(directory: str | Path, model_config: dict, variables: dict) -> Path:
    """Writes `model_config` and `variables` to `directory` (created; must not hold a model yet)."""
    directory = Path(directory).absolute()
    if (directory / VARIABLES).exists():
        raise FileExistsError(f'{directory / VARIABLES} already exists; choose another --out')
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / VARIABLES, variables)
    (directory / MODEL_CONFIG).write_text(json.dumps(model_config, indent=2, sort_keys=True))
    return directory


def load_model_dir(directory: str | Path) -> tuple[dict, dict]:
    """Reads a model directory written by `save_model`. Returns `(model_config, variables)`."""
    directory = Path(directory).absolute()
    config_path = directory / MODEL_CONFIG
    if not config_path.exists() or not (directory / VARIABLES).exists():
        raise FileNotFoundError(f'{directory} is not a model directory '
                                f'(needs {MODEL_CONFIG} and {VARIABLES}/)')
    config = json.loads(config_path.read_text())
    with ocp.StandardCheckpointer() as checkpointer:
        target = _numpy_like(checkpointer.metadata(directory / VARIABLES).item_metadata)
        variables = checkpointer.restore(directory / VARIABLES, target)
    return config, _as_numpy(variables)


def _options(read_only: bool, preservation_policy: ocp.checkpoint_managers.PreservationPolicy,
             **kwargs) -> ocp.CheckpointManagerOptions:
    """Writers keep what `preservation_policy` keeps and delete leftovers of interrupted saves;
    readers touch nothing (a training run may be writing to the same directory)."""
    if read_only:
        return ocp.CheckpointManagerOptions(read_only=True, create=False,
                                            save_interval_steps=0, **kwargs)
    return ocp.CheckpointManagerOptions(preservation_policy=preservation_policy,
                                        cleanup_tmp_directories=True, **kwargs)


def latest_manager(workdir: str | Path, keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
    """The workdir's `checkpoints/` manager: full train states, the latest `keep` kept."""
    return ocp.CheckpointManager(
        Path(workdir).absolute() / CHECKPOINTS_DIR,
        item_handlers={VARIABLES: ocp.StandardCheckpointHandler(),
                       TRAIN: ocp.StandardCheckpointHandler()},
        options=_options(read_only, ocp.checkpoint_managers.LatestN(n=keep)))


def _best_metric(metrics: dict) -> float:
    return metrics[BEST_METRIC]


def best_manager(workdir: str | Path, read_only: bool = False) -> ocp.CheckpointManager:
    """The workdir's `best/` manager: model variables of the highest `metrics['psnr_y']`."""
    return ocp.CheckpointManager(
        Path(workdir).absolute() / BEST_DIR,
        item_handlers={VARIABLES: ocp.StandardCheckpointHandler()},
        # best_fn too: orbax writes a step's metrics, and `best_step` reads them, only with it.
        options=_options(read_only, ocp.checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1),
                         best_fn=_best_metric, best_mode='max'))


def load_model(path: str | Path, which: str = 'latest') -> tuple[dict, dict]:
    """Reads a model from a model directory (`save_model`) or a training workdir.

    Args:
      path: a model directory, or a training workdir.
      which: for a workdir, `'latest'` (last saved step of `checkpoints/`) or `'best'` (the step
        with the best validation PSNR-Y, `best/`). A model directory holds one model and
        ignores it.
    Returns:
      `(model_config, variables)`: keyword arguments of `models.ENLCN`, and
      `{'params': ..., 'random_features': ...}` as numpy arrays.
    Raises:
      FileNotFoundError: `path` is neither, or the workdir has no checkpoint of that kind yet.
    """
    if which not in ('latest', 'best'):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    path = Path(path).absolute()
    if (path / VARIABLES).exists():
        return load_model_dir(path)
    if not (path / MODEL_CONFIG).exists() or not (path / CHECKPOINTS_DIR).is_dir():
        raise FileNotFoundError(f'{path} is neither a model directory ({MODEL_CONFIG} and '
                                f'{VARIABLES}/) nor a training workdir ({MODEL_CONFIG} and '
                                f'{CHECKPOINTS_DIR}/)')
    config = json.loads((path / MODEL_CONFIG).read_text())
    with (best_manager(path, read_only=True) if which == 'best'
          else latest_manager(path, read_only=True)) as manager:
        step = manager.best_step() if which == 'best' else manager.latest_step()
        if step is None:
            raise FileNotFoundError(f'no {which} checkpoint in {manager.directory}')
        target = _numpy_like(manager.item_metadata(step)[VARIABLES])
        restored = manager.restore(
            step, args=ocp.args.Composite(**{VARIABLES: ocp.args.StandardRestore(target)}))
    return config, _as_numpy(restored[VARIABLES])


def _train_items(state) -> dict:
    return {'step': state.step, 'opt_state': state.opt_state, 'rng': state.rng}


def save_train_state(manager: ocp.CheckpointManager, state) -> None:
    """Saves a `train_lib.TrainState` as step `state.step` of `checkpoints/` (asynchronously)."""
    manager.save(int(state.step), args=ocp.args.Composite(**{
        VARIABLES: ocp.args.StandardSave(state.variables),
        TRAIN: ocp.args.StandardSave(_train_items(state))}))


def save_best(manager: ocp.CheckpointManager, state, psnr_y: float) -> None:
    """Offers the model to the `best/` manager, which keeps it only if `psnr_y` is the highest."""
    manager.save(int(state.step), metrics={BEST_METRIC: psnr_y},
                 args=ocp.args.Composite(**{
                     VARIABLES: ocp.args.StandardSave(state.variables)}))


def restore_train_state(manager: ocp.CheckpointManager, state):
    """`state` (a `train_lib.TrainState`) with everything replaced by the latest step of
    `manager` (if there is one).

    `state` gives the tree structure, dtypes and shardings the arrays are restored with.
    """
    step = manager.latest_step()
    if step is None:
        return state
    target = {VARIABLES: state.variables, TRAIN: _train_items(state)}
    restored = manager.restore(step, args=ocp.args.Composite(**{
        name: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))
        for name, tree in target.items()}))
    variables, train = restored[VARIABLES], restored[TRAIN]
    return state.replace(params=variables['params'],
                         random_features=variables.get(models.RANDOM_FEATURES, {}),
                         step=train['step'], opt_state=train['opt_state'], rng=train['rng'])


def _numpy_like(metadata):
    """A numpy target for a saved tree: restores on the host whatever devices saved it."""
    return jax.tree.map(lambda leaf: np.empty(leaf.shape, leaf.dtype), metadata)


def _as_numpy(tree):
    if isinstance(tree, dict):
        return {k: _as_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
