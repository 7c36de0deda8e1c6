"""The training loop: `train_and_evaluate`.

After each train step (`recipe.compile_train_step`) come the periodic actions, in this order:
`MetricLogging` checks and logs the metrics of the steps since its last time, `Checkpointing`
saves the training state (and keeps the best model), `Validation` scores the model and offers it
to `best/`. Each fires every so many steps and after the run's last step; a Ctrl-C stops the run
after the step in flight, saved. What the workdir holds is described in `workdir`.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import math
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from enlcn_jax.data import input_pipeline
from enlcn_jax.data import sources as data_lib
from enlcn_jax.evaluation import evaluator, inference
from enlcn_jax.nn import models, precision, registry
from enlcn_jax.storage import checkpoints, files
from enlcn_jax.train import metric_writer, recipe
from enlcn_jax.train import workdir as workdir_lib

Array = jax.Array
SOURCES = ('tfds', 'folder', 'skimage')
REDRAW_SCHEDULES = ('epoch', 'steps', 'never')


class DataError(ValueError):
    """A configured dataset that cannot be trained on; the message names the config key."""


def _require_dir(key: str, value: str, why: str) -> None:
    if not value or not Path(value).is_dir():
        raise data_lib.DatasetNotFoundError(f'config.{key}={value!r} is not a directory ({why})')


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Cheap checks of a config before anything is loaded or compiled.

    Raises:
      ValueError: an unknown choice, a feature map / projection / attention / contrastive loss
        (when it is used) that cannot be imported or fails its check, a non-positive count, a
        patch too small for the contrastive loss, a batch that does not split over the devices,
        ...
      data_lib.DatasetNotFoundError: a dataset folder that does not exist.
    """
    model, data, train = config.model, config.data, config.train
    # Unknown keys or values, and every swappable function checked on a small input.
    models.from_config(model.to_dict())
    precision.check_trains(model.dtype)
    if data.source not in SOURCES:
        raise ValueError(f'config.data.source={data.source!r}; choose one of {SOURCES}')
    if data.val_source not in SOURCES + ('none',):
        raise ValueError(f"config.data.val_source={data.val_source!r}; choose one of "
                         f"{SOURCES + ('none',)}")
    if data.source == 'folder':
        _require_dir('data.hr_dir', data.hr_dir, 'data.source=folder needs the HR training images')
        if data.lr_dir:
            _require_dir('data.lr_dir', data.lr_dir, "DIV2K-layout LR images, or '' to make them")
    if data.val_source == 'folder':
        _require_dir('data.val_hr_dir', data.val_hr_dir, 'data.val_source=folder needs HR images')
        if data.val_lr_dir:
            _require_dir('data.val_lr_dir', data.val_lr_dir, "LR images, or '' to make them")
    if data.tfds_data_dir and 'tfds' in (data.source, data.val_source):
        _require_dir('data.tfds_data_dir', data.tfds_data_dir, 'the prepared TFDS data_dir')
    # The input pipeline's and the validation upscaler's own checks, naming the config keys.
    input_pipeline.check_counts('config.data.', lr_patch=data.lr_patch,
                                batch_size=data.batch_size, num_workers=data.num_workers)
    try:
        inference.ModelUpscaler.check_options(train.eval_bucket, None, 0)
    except ValueError as e:
        raise ValueError(f'config.train.eval_{e}') from None
    for key in ('train.epochs', 'train.steps_per_epoch', 'train.log_every',
                'train.checkpoint_every_steps', 'train.keep_checkpoints',
                'train.eval_every_epochs', 'train.redraw.steps'):
        section, *rest = key.split('.')
        value = functools.reduce(getattr, rest, config[section])
        if value < 1:
            raise ValueError(f'config.{key} must be >= 1, got {value}')
    for key, value, minimum in (('train.lr', train.lr, 0.0),
                                ('train.lr_decay_factor', train.lr_decay_factor, 0.0)):
        if not (value > minimum and math.isfinite(value)):
            raise ValueError(f'config.{key} must be finite and > {minimum}, got {value}')
    for key, source, photos in (('data.photos', data.source, data.photos),
                                ('data.val_photos', data.val_source, data.val_photos)):
        if source == 'skimage' and not photos:
            raise ValueError(f'config.{key} is empty: name at least one scikit-image photo')
    if train.contrastive.weight < 0:
        raise ValueError(f'config.train.contrastive.weight must be >= 0, got '
                         f'{train.contrastive.weight}')
    if data.batch_size % jax.device_count():
        raise ValueError(f'config.data.batch_size={data.batch_size} does not split over '
                         f'{jax.device_count()} devices')
    if train.redraw.every not in REDRAW_SCHEDULES:
        raise ValueError(f'config.train.redraw.every={train.redraw.every!r}; choose one of '
                         f'{REDRAW_SCHEDULES}')
    if list(train.lr_decay_epochs) != sorted(train.lr_decay_epochs):
        raise ValueError(f'config.train.lr_decay_epochs must be increasing, got '
                         f'{train.lr_decay_epochs}')
    if model.attention != 'none' and train.contrastive.weight > 0:
        _check_contrastive_loss(config)


def _check_contrastive_loss(config: ml_collections.ConfigDict) -> None:
    """Resolves the configured contrastive loss (`recipe.contrastive_loss_fn`) and traces it on
    one LR patch's embeddings, `q, k [lr_patch^2, n_feats / reduction]` (`jax.eval_shape`).

    Raises:
      ValueError: a loss that cannot be resolved, or that refuses the patch (the registered
        losses need as many positions as their rank windows reach), naming the config keys.
    """
    loss = recipe.contrastive_loss_fn(config)
    patch = config.data.lr_patch
    embedding = jax.ShapeDtypeStruct((patch ** 2, config.model.n_feats // config.model.reduction),
                                     jnp.float32)
    try:
        jax.eval_shape(loss, embedding, embedding)
    except ValueError as e:
        raise ValueError(f'config.train.contrastive.loss={config.train.contrastive.loss!r} on '
                         f'config.data.lr_patch={patch} ({patch ** 2} positions per image): '
                         f'{e}') from e


def load_datasets(config: ml_collections.ConfigDict) -> tuple[data_lib.SRDataset,
                                                               data_lib.SRDataset | None]:
    """`(train, validation or None)` as configured; `validation` cut to `data.val_limit` images.

    Raises:
      data_lib.DatasetNotFoundError: a dataset folder or TFDS dataset that does not exist.
      DataError: a dataset of which no image can be used, naming its config key.
    """
    data, scale = config.data, config.model.scale

    def load(source: str, split: str, hr_dir: str, lr_dir: str, photos,
             key: str) -> data_lib.SRDataset:
        try:
            if source == 'folder':
                return data_lib.load_folder(hr_dir, scale, lr_dir or None,
                                            data.cache_dir or None, data.num_workers)
            if source == 'tfds':
                return data_lib.load_div2k_tfds(split, scale, data.tfds_data_dir or None)
            return data_lib.load_skimage_photos(photos, scale)
        except data_lib.DatasetNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(f'config.{key}: no image can be used ({e})') from e

    train_ds = load(data.source, 'train', data.hr_dir, data.lr_dir, data.photos,
                    'data.hr_dir' if data.source == 'folder' else 'data.source')
    if data.val_source == 'none':
        return train_ds, None
    split = f'validation[:{data.val_limit}]' if data.val_limit else 'validation'
    val_ds = load(data.val_source, split, data.val_hr_dir, data.val_lr_dir, data.val_photos,
                  'data.val_hr_dir' if data.val_source == 'folder' else 'data.val_source')
    if data.val_limit:
        n = data.val_limit
        val_ds = data_lib.SRDataset(val_ds.names[:n], val_ds.hr[:n], val_ds.lr[:n], val_ds.scale)
    return train_ds, val_ds


def dataset_fingerprint(dataset: data_lib.SRDataset | None) -> dict | None:
    """`{'images': count, 'sha256': hex}` over the names, shapes and pixels of every pair (None
    for no dataset): equal exactly when the same images are loaded in the same order."""
    if dataset is None:
        return None
    digest = hashlib.sha256()
    for name, hr, lr in zip(dataset.names, dataset.hr, dataset.lr):
        digest.update(f'{name}|{hr.shape}|{lr.shape}|'.encode())
        digest.update(np.ascontiguousarray(hr).data)
        digest.update(np.ascontiguousarray(lr).data)
    return {'images': len(dataset), 'sha256': digest.hexdigest()}


def code_fingerprints(config: ml_collections.ConfigDict) -> dict[str, str]:
    """`registry.code_fingerprints` of the functions a training config names from outside the
    package: the model's and the contrastive loss (`{}` for built-in names, at no cost)."""
    return {**checkpoints.code_fingerprints(config.model.to_dict()),
            **registry.code_fingerprints([config.train.contrastive.loss])}


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training, raised once the checkpoint in flight is written."""


def _defer_ctrl_c() -> threading.Event:
    """The first Ctrl-C sets the returned event, which the loop checks after each step (so a
    save is never cut in half); a second one interrupts at once. Main thread only."""
    requested = threading.Event()
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum, frame):
            del signum, frame
            requested.set()
            logging.warning('Ctrl-C: stopping after this step (press again to stop now)')
            signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGINT, on_sigint)
    return requested


def _restore_ctrl_c() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


@jax.jit
def _all_finite(tree) -> Array:
    """Whether every float of `tree` is finite: a scalar bool (replicated like `tree`)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _on_every_process(flag) -> bool:
    """`flag` as process 0 has it (a replicated array's local copy, or a host bool)."""
    if isinstance(flag, jax.Array):
        flag = flag.addressable_data(0)
    value = np.asarray(flag, np.int32)
    if jax.process_count() > 1:
        value = multihost_utils.broadcast_one_to_all(value)
    return bool(value)


def run_training(config: ml_collections.ConfigDict, workdir: str | Path,
                 allow_config_changes: bool = False) -> str | None:
    """`train_and_evaluate` for a command line: returns the one-line reason of a failure the
    user can act on (a bad config, a missing or unusable dataset, a workdir or checkpoint that
    cannot be used, a diverged run, Ctrl-C, a full disk), or None when training finished.
    Anything else (a bug) raises."""
    try:
        validate_config(config)
    except (ValueError, data_lib.DatasetNotFoundError) as e:
        return f'invalid config: {e}'
    try:
        _train_valid_config(config, workdir, allow_config_changes)
    except data_lib.DatasetNotFoundError as e:
        return f'dataset not found: {e}'
    except (DataError, workdir_lib.WorkdirError, checkpoints.CheckpointError, files.WriteError,
            FloatingPointError, TrainingInterrupted) as e:
        return str(e)
    except KeyboardInterrupt:
        return 'interrupted while starting: no step was trained and nothing was saved'
    return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       allow_config_changes: bool = False) -> recipe.TrainState:
    """Trains (resuming from `<workdir>/checkpoints` if it holds a step), validates, saves.

    What the workdir holds is described in `enlcn_jax/train/workdir.py`.

    Args:
      config: the run's config.
      workdir: where everything is written.
      allow_config_changes: resume even if the config changes keys outside
        `workdir.SAFE_TO_CHANGE` (the model, the data, the seed, the recipe), or the training
        images or the source of its functions from outside the package changed.
    Raises:
      FloatingPointError: a non-finite loss, gradient or parameter; the message names the step
        and the last checkpoint, which was saved before it and is left as it was, and for a
        loss, the configured function that turns non-finite on that checkpoint and the step's
        batch, if one does (`recipe.explain_non_finite`).
      workdir.WorkdirError: another process trains this workdir, or it holds another run.
      checkpoints.CheckpointError: the latest checkpoint is damaged or holds another model.
      DataError, data_lib.DatasetNotFoundError: a dataset that cannot be used.
      files.WriteError: an output could not be written (a full disk), naming it.
      TrainingInterrupted: Ctrl-C; the message names the last checkpoint.
    Returns:
      the final state.
    """
    validate_config(config)
    return _train_valid_config(config, workdir, allow_config_changes)


def _train_valid_config(config: ml_collections.ConfigDict, workdir: str | Path,
                        allow_config_changes: bool) -> recipe.TrainState:
    """`train_and_evaluate` of a config that `validate_config` accepted."""
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    with workdir_lib.WorkdirLock(workdir) if is_main else contextlib.nullcontext():
        record = workdir_lib.check_resume(workdir, config.to_dict(), allow_config_changes)
        return _train_and_evaluate(config, workdir, is_main, record, allow_config_changes)


class PeriodicAction(abc.ABC):
    """Something done during training every `every_steps` steps and after its last step.

    Calling it after a step runs `run` if `due`: `step` is the number of steps done, `state`
    the `recipe.TrainState` after them, `stopping` whether training stops after this step
    (Ctrl-C).

    Args:
      every_steps: the cadence, in steps.
      last_step: the run's last step.
    """

    def __init__(self, every_steps: int, last_step: int):
        self.every_steps = every_steps
        self.last_step = last_step

    def due(self, step: int, stopping: bool) -> bool:
        """Whether the action runs after `step`; here by the cadence and the last step alone."""
        del stopping
        return step % self.every_steps == 0 or step == self.last_step

    def __call__(self, step: int, state: recipe.TrainState, stopping: bool = False) -> None:
        if self.due(step, stopping):
            self.run(step, state)

    @abc.abstractmethod
    def run(self, step: int, state: recipe.TrainState) -> None:
        """Does it now."""


class Checkpointing(PeriodicAction):
    """Saves the training state to `<workdir>/checkpoints/` (the latest `keep` steps kept), also
    on a Ctrl-C stop, and keeps the best model in `<workdir>/best/` (`save_best`).

    Only finite parameters are saved; a run stopped for non-finite values (`diverged`) names
    the last checkpoint, saved before them.

    Args:
      every_steps, last_step: the cadence (`PeriodicAction`).
      workdir: the training workdir.
      keep: steps kept in `checkpoints/`.
      record: what trains the run (`{'config', 'data'}`), saved with every step.
    """

    def __init__(self, every_steps: int, last_step: int, workdir: Path, keep: int,
                 record: dict):
        super().__init__(every_steps, last_step)
        self.latest = checkpoints.latest_manager(workdir, keep)
        self.best = checkpoints.best_manager(workdir)
        self.record = record

    def due(self, step: int, stopping: bool) -> bool:
        return stopping or super().due(step, stopping)

    def run(self, step: int, state: recipe.TrainState) -> None:
        self.require_finite(step, state, 'as a checkpoint')
        checkpoints.save_checkpoint(self.latest, step, state.checkpoint_items(), self.record)

    def save_best(self, step: int, state: recipe.TrainState, psnr_y: float) -> None:
        """Offers the model to `best/` (kept if `psnr_y` is the highest yet), waiting for it."""
        self.require_finite(step, state, 'as the best model')
        checkpoints.save_best(self.best, step, state.variables, psnr_y, self.record)
        checkpoints.wait_until_saved(self.best)

    def require_finite(self, step: int, state: recipe.TrainState, what: str) -> None:
        """Raises `diverged` if the parameters of `state` are not all finite."""
        if not _on_every_process(_all_finite(state.params)):
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


class Validation(PeriodicAction):
    """Scores the model on the validation set with eval.py's evaluator, offers it to `best/`
    (before the score is recorded) and logs `val/psnr_y`, `val/ssim_y`, `val/bicubic_psnr_y`.
    Not on a Ctrl-C stop.

    Args:
      every_steps, last_step: the cadence (`PeriodicAction`).
      dataset: the validation images.
      upscaler: the model's upscaler; its compiled forwards serve every validation (each with
        the state's variables, `with_variables`).
      saving: keeps the best model.
      logger: where the scores are written.
      history: the training metrics, whose speed excludes the validation's time.
    """

    def __init__(self, every_steps: int, last_step: int, dataset: data_lib.SRDataset,
                 upscaler: inference.ModelUpscaler, saving: Checkpointing,
                 logger: metric_writer.MetricLogger, history: metric_writer.StepMetrics):
        super().__init__(every_steps, last_step)
        self.dataset, self.upscaler, self.saving = dataset, upscaler, saving
        self.logger, self.history = logger, history
        self.bicubic_psnr = evaluator.evaluate_in_memory(
            dataset, inference.BicubicUpscaler(dataset.scale)).summary()['psnr']
        self.psnr = None  # of the last validation

    def due(self, step: int, stopping: bool) -> bool:
        return not stopping and super().due(step, stopping)

    def run(self, step: int, state: recipe.TrainState) -> None:
        local = jax.tree.map(lambda x: x.addressable_data(0), state.variables)
        scores = evaluator.evaluate_in_memory(self.dataset,
                                              self.upscaler.with_variables(local)).summary()
        self.psnr = scores['psnr']
        self.saving.save_best(step, state, self.psnr)
        self.logger.write(step, {'val/psnr_y': self.psnr, 'val/ssim_y': scores['ssim'],
                                 'val/bicubic_psnr_y': self.bicubic_psnr})
        logging.info('step %d: validation PSNR-Y %.3f dB (bicubic %.3f dB)', step, self.psnr,
                     self.bicubic_psnr)
        self.history.restart_clock(step)  # validation time is not training speed

    def redo_if_cut_off(self, step: int, state: recipe.TrainState, validated: set[int]) -> None:
        """Validates `step`, where training resumes, if it was due and its validation is not
        among the `validated` steps: a run killed between a checkpoint and its validation."""
        if step and self.due(step, stopping=False) and _on_every_process(step not in validated):
            logging.info('Step %d was saved but its validation not recorded: validating it.', step)
            self.run(step, state)


class MetricLogging(PeriodicAction):
    """Checks the metrics of the steps since the last time (a non-finite loss stops training)
    and logs their means; also whenever an action of `flush_before` is due, which it is called
    before: a checkpoint or a validation follows checked metrics.

    Args:
      every_steps, last_step: the cadence (`PeriodicAction`).
      history: the steps' metrics.
      logger: where they are written.
      progress: the progress bar, which shows the loss, the learning rate and the speed.
      learning_rate_fn: the schedule shown.
      saving: names the last checkpoint when training stops.
      explain: `step -> sentence` saying what made the loss of `step` (as logged) non-finite,
        added to the error that stops training.
      flush_before: actions that need the metrics before them checked.
    """

    def __init__(self, every_steps: int, last_step: int, history: metric_writer.StepMetrics,
                 logger: metric_writer.MetricLogger, progress: tqdm.tqdm,
                 learning_rate_fn: optax.Schedule, saving: Checkpointing,
                 explain: Callable[[int], str], flush_before: tuple[PeriodicAction, ...] = ()):
        super().__init__(every_steps, last_step)
        self.history, self.logger, self.progress = history, logger, progress
        self.learning_rate_fn, self.saving, self.explain = learning_rate_fn, saving, explain
        self.flush_before = flush_before

    def due(self, step: int, stopping: bool) -> bool:
        return super().due(step, stopping) or any(action.due(step, stopping)
                                                  for action in self.flush_before)

    def run(self, step: int, state: recipe.TrainState) -> None:
        del state
        try:
            scalars = self.history.flush(step)
        except metric_writer.NonFiniteMetrics as e:
            error = self.saving.diverged(f'{e}: training stopped')  # waits for the save
            raise FloatingPointError(f'{error} {self.explain(e.step)}') from e
        if scalars is None:
            return
        self.logger.write(step, scalars)
        self.progress.set_postfix(loss=f'{scalars["train/loss"]:.4f}',
                                  lr=f'{float(self.learning_rate_fn(step - 1)):.2e}',
                                  steps_per_s=f'{scalars["train/steps_per_s"]:.2f}')


def _restart_best_tracking(workdir: Path, record: dict | None, val_fingerprint: dict | None,
                           is_main: bool) -> None:
    """Moves `best/` aside when its PSNRs were measured on other validation images than this
    run's: best/ then tracks this validation set from scratch."""
    old = (record or {}).get('data', {}).get('val')
    best_dir = workdir / checkpoints.BEST_DIR
    if not (is_main and old and val_fingerprint and old != val_fingerprint and best_dir.is_dir()):
        return
    aside = best_dir.with_name(f'{checkpoints.BEST_DIR}.val-{old["sha256"][:12]}')
    shutil.rmtree(aside, ignore_errors=True)
    best_dir.rename(aside)
    logging.warning('the validation images changed (%d -> %d images): best/ was chosen on the '
                    'old ones and is moved to %s; best/ starts again on these', old['images'],
                    val_fingerprint['images'], aside)


def _explain_non_finite_loss(config: ml_collections.ConfigDict, model: models.ENLCN,
                             saving: Checkpointing, loader: input_pipeline.PatchLoader,
                             step: int) -> str:
    """`recipe.explain_non_finite` on the last finite state (the last checkpoint's, or the
    initial state if none was saved) and the batch of `step` (as logged: its loss was not
    finite), as a sentence for the error that stops training."""
    # As training starts from it (on a device: the checkpoint's arrays have its dtypes).
    state = jax.device_put(recipe.create_train_state(config, model,
                                                     jax.random.PRNGKey(config.train.seed)))
    try:
        restored = checkpoints.restore_latest(saving.latest, state.checkpoint_items())
        if restored is not None:
            state = state.from_checkpoint_items(restored)
        elif (index := recipe.redraw_index(0, config)) is not None:  # as the first step has them
            state = state.replace(random_features=recipe.draw_random_features(
                model, state.random_features, state.rng, index))
        explanation = recipe.explain_non_finite(config, state, loader.batch(step - 1), step - 1)
    except Exception as e:  # pylint: disable=broad-except  # never hide the error it explains
        return f'(Running the configured functions again failed: {type(e).__name__}: {e}.)'
    where = (f'the checkpoint of step {int(state.step)}' if restored is not None
             else 'the initial state')
    return (f'Run again on the last finite state ({where}) with the batch of step {step}: '
            f'{explanation}')


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path, is_main: bool,
                        record: dict | None, allow_config_changes: bool) -> recipe.TrainState:
    train_cfg = config.train
    train_ds, val_ds = load_datasets(config)
    fingerprints = {'train': dataset_fingerprint(train_ds), 'val': dataset_fingerprint(val_ds)}
    workdir_lib.check_data(record, fingerprints, allow_config_changes)
    code = code_fingerprints(config)
    workdir_lib.check_code(record, code, allow_config_changes)
    _restart_best_tracking(workdir, record, fingerprints['val'], is_main)

    model = recipe.create_model(config)
    mesh = recipe.create_mesh()
    state = jax.device_put(
        recipe.create_train_state(config, model, jax.random.PRNGKey(train_cfg.seed)),
        NamedSharding(mesh, PartitionSpec()))
    total_steps = train_cfg.epochs * train_cfg.steps_per_epoch
    saving = Checkpointing(train_cfg.checkpoint_every_steps, total_steps, workdir,
                           train_cfg.keep_checkpoints,
                           {'config': config.to_dict(), 'data': fingerprints, 'code': code})
    restored = checkpoints.restore_latest(saving.latest, state.checkpoint_items())
    if restored is not None:
        state = state.from_checkpoint_items(restored)
    start_step = int(state.step)
    # Every process draws the same global batches and feeds its rows: the result does not
    # depend on the number of processes.
    try:
        loader = input_pipeline.PatchLoader(
            train_ds, config.data.batch_size, config.data.lr_patch, seed=train_cfg.seed,
            start_step=start_step, num_workers=config.data.num_workers,
            shard=(jax.process_index(), jax.process_count()))
    except ValueError as e:
        raise DataError(f'config.data.lr_patch={config.data.lr_patch}: {e}') from e
    if is_main:  # only once the run is known to resume (or start) cleanly
        workdir_lib.record_config(workdir, config.to_dict(), config.model.to_dict())
    if start_step:
        logging.info('Resuming from step %d of %d (%s).', start_step, total_steps,
                     saving.latest.directory)
    if is_main:  # steps after the checkpoint are redone: their old records would be duplicates
        metric_writer.drop_records_after(workdir, start_step)

    train_step = recipe.compile_train_step(config, mesh)
    redraw = recipe.compile_redraw(config, mesh)
    logger = metric_writer.MetricLogger(workdir, is_main)
    history = metric_writer.StepMetrics(start_step, config.data.batch_size)
    progress = tqdm.tqdm(total=total_steps, initial=start_step, unit='step', disable=not is_main,
                         dynamic_ncols=True)
    validation = None
    if val_ds is not None:
        upscaler = inference.ModelUpscaler(
            model, jax.tree.map(lambda x: x.addressable_data(0), state.variables),
            bucket=train_cfg.eval_bucket, name='validation')
        validation = Validation(train_cfg.eval_every_epochs * train_cfg.steps_per_epoch,
                                total_steps, val_ds, upscaler, saving, logger, history)
    after_metrics = (saving,) if validation is None else (saving, validation)
    # The metrics are checked and logged first: a save or a validation follows checked steps.
    explain = functools.partial(_explain_non_finite_loss, config, model, saving, loader)
    actions = (MetricLogging(train_cfg.log_every, total_steps, history, logger, progress,
                             recipe.create_learning_rate_fn(config), saving, explain,
                             flush_before=after_metrics), *after_metrics)
    batches = input_pipeline.prefetch_to_device(loader, 2, lambda b: recipe.shard_batch(b, mesh))
    stop_requested = _defer_ctrl_c()
    try:
        if validation is not None:
            validation.redo_if_cut_off(start_step, state, metric_writer.validated_steps(workdir))
        for step in range(start_step, total_steps):
            index = recipe.redraw_index(step, config)
            if index is not None:
                state = redraw(state, index)
            state, step_metrics = train_step(state, next(batches))
            history.append(step_metrics)
            progress.update()
            stopping = stop_requested.is_set()
            for action in actions:
                action(step + 1, state, stopping)
            if stopping:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        saving.finish()
        raise TrainingInterrupted(f'interrupted after step {int(state.step)}; '
                                  f'{saving.last_saved()} Run the same command to resume.'
                                  ) from None
    except BaseException:
        # With several processes a failure here may be another process's death: a save in
        # flight then waits at a barrier for ever. Orbax commits a step only once it is
        # complete, so leaving it unfinished loses nothing.
        if jax.process_count() == 1:
            with contextlib.suppress(files.WriteError):  # the error in flight is the one to tell
                saving.finish()
        raise
    else:
        saving.finish()
    finally:
        _restore_ctrl_c()
        progress.close()
        loader.close()
        logger.close()
    if validation is not None and validation.psnr is not None:
        logging.info('final validation PSNR-Y %.3f dB vs bicubic %.3f dB (%+.3f dB) on %d image(s)',
                     validation.psnr, validation.bicubic_psnr,
                     validation.psnr - validation.bicubic_psnr, len(val_ds))
    return state
