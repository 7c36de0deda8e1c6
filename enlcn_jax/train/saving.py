"""What training saves: the latest steps in `<workdir>/checkpoints/` and the best model in
`<workdir>/best/` (`Checkpointing`), only ever finite parameters; `best/` moved aside when its
record belongs to another run or other validation images (`restart_best_tracking`).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from enlcn_jax.storage import checkpoints, files
from enlcn_jax.train import recipe
from enlcn_jax.train import workdir as workdir_lib


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Whether every float of `tree` is finite: a scalar bool (replicated like `tree`)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def process_0_value(flag) -> bool:
    """`flag` as process 0 has it (a replicated array's local copy, or a host bool), on every
    process: each then takes the same branch."""
    if isinstance(flag, jax.Array):
        flag = flag.addressable_data(0)
    value = np.asarray(flag, np.int32)
    if jax.process_count() > 1:
        value = multihost_utils.broadcast_one_to_all(value)
    return bool(value)


class Checkpointing:
    """Saves the training state to `<workdir>/checkpoints/` (the latest `keep` steps kept) and
    keeps the best model in `<workdir>/best/`.

    Only finite parameters are saved; a run stopped for non-finite values (`diverged`) names
    the last checkpoint, saved before them.

    Args:
      workdir: the training workdir.
      keep: steps kept in `checkpoints/`.
      record: what trains the run (`{'config', 'data', 'code'}`), saved with every step.
    """

    def __init__(self, workdir: Path, keep: int, record: dict):
        self.latest = checkpoints.latest_manager(workdir, keep)
        self.best = checkpoints.best_manager(workdir)
        self.record = record

    def save(self, step: int, state: recipe.TrainState) -> None:
        """Saves `state` as checkpoint `step` (in the background: `finish` waits for it)."""
        self.require_finite(step, state, 'as a checkpoint')
        checkpoints.save_checkpoint(self.latest, step, state.checkpoint_items(), self.record)

    def save_best(self, step: int, state: recipe.TrainState, psnr_y: float) -> None:
        """Offers the model to `best/` (kept if `psnr_y` is the highest yet), waiting for it."""
        self.require_finite(step, state, 'as the best model')
        checkpoints.save_best(self.best, step, state.variables, psnr_y, self.record)
        checkpoints.wait_until_saved(self.best)

    def require_finite(self, step: int, state: recipe.TrainState, what: str) -> None:
        """Raises `diverged` if the parameters of `state` are not all finite."""
        if not process_0_value(_all_finite(state.params)):
            raise self.diverged(f'the parameters after step {step} are not finite (the loss '
                                f'was): training stopped without saving them {what}')

    def last_saved(self) -> str:
        """A sentence naming the last checkpoint (or saying there is none)."""
        step = self.latest.latest_step()
        if step is None:
            return 'no checkpoint was saved.'
        return (f'the last checkpoint, step {step} in {self.latest.directory}, was saved before '
                'it and is intact.')

    def diverged(self, why: str) -> FloatingPointError:
        """The error that stops training for `why`, naming the last checkpoint once the save in
        flight is written."""
        checkpoints.wait_until_saved(self.latest)
        return FloatingPointError(f'{why}; {self.last_saved()}')

    def finish(self) -> None:
        """Waits for the saves in flight and closes the managers; a failed save raises
        `files.WriteError` (after both were closed)."""
        errors = []
        for manager in (self.latest, self.best):
            try:
                checkpoints.wait_until_saved(manager)
            except files.WriteError as e:
                errors.append(e)
            with contextlib.suppress(Exception):  # its save's failure is the error above
                manager.close()
        if errors:
            raise errors[0]


def restart_best_tracking(workdir: Path, config: dict, val_fingerprint: dict | None,
                          is_main: bool) -> None:
    """Moves `best/` aside when its record says it belongs to another run: trained with another
    config (keys outside `workdir.SAFE_TO_CHANGE` differ from this run's `config`: a workdir
    whose checkpoints were deleted and that now trains a new run), or scored on other validation
    images than `val_fingerprint`; best/ then tracks this run from scratch. Every process calls
    it (opening best/ is collective); process 0 (`is_main`) moves it.

    Raises:
      checkpoints.CheckpointError: best/'s record cannot be read.
    """
    best_dir = workdir / checkpoints.BEST_DIR
    if not best_dir.is_dir():
        return
    with checkpoints.best_manager(workdir, read_only=True) as manager:
        step, record = checkpoints.latest_record(manager)
    if not record:
        return  # empty, or saved before records existed
    old_val = record.get('data', {}).get('val')
    changes = workdir_lib.config_changes(record['config'], config) if 'config' in record else []
    if changes:
        why, suffix = (f'was trained by another run ({"; ".join(changes)})',
                       f'run-{workdir_lib.config_digest(record["config"])}')
    elif old_val and val_fingerprint and old_val != val_fingerprint:
        why, suffix = (f'was chosen on other validation images ({old_val["images"]} -> '
                       f'{val_fingerprint["images"]} images)', f'val-{old_val["sha256"][:12]}')
    else:
        return
    if not is_main:
        return
    aside = best_dir.with_name(f'{checkpoints.BEST_DIR}.{suffix}')
    shutil.rmtree(aside, ignore_errors=True)
    best_dir.rename(aside)
    logging.warning('best/ (step %d) %s: moved to %s; best/ starts again with this run', step,
                    why, aside)
