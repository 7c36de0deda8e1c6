"""The training loop: `train_and_evaluate`.

After each train step (`recipe.compile_train_step`) come, in this order:

1. the metrics of the steps since the last log are checked (a non-finite loss stops training)
   and logged: every `train.log_every` steps, and before each save and validation, so that those
   always follow checked steps;
2. the training state is saved to `checkpoints/`: every `train.checkpoint_every_steps` steps, and
   on a Ctrl-C stop;
3. the model is validated and offered to `best/` (`saving.Checkpointing.save_best`), then the
   scores are logged: every `train.eval_every_epochs` epochs, not on a Ctrl-C stop.

Each of the three also comes after the run's last step (`is_due`). A Ctrl-C stops the run after
the step in flight, saved (`interruption`). A run killed between a save and its validation
validates that step when it resumes. What the workdir holds is described in `workdir`; the
config is checked by `config_check` first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax
import ml_collections
import tqdm
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from enlcn_jax.data import datasets, input_pipeline
from enlcn_jax.data import sources as data_lib
from enlcn_jax.evaluation import evaluator, inference
from enlcn_jax.storage import checkpoints, files
from enlcn_jax.train import (config_check, interruption, metric_writer, processes, recipe,
                             saving)
from enlcn_jax.train import workdir as workdir_lib


def is_due(step: int, every_steps: int, last_step: int) -> bool:
    """Whether an action done every `every_steps` steps and after the run's last step,
    `last_step`, comes after step `step` (1-based: the number of steps done)."""
    return step % every_steps == 0 or step == last_step


def run_training(config: ml_collections.ConfigDict, workdir: str | Path,
                 allow_config_changes: bool = False) -> str | None:
    """`train_and_evaluate` for a command line: returns the one-line reason of a failure the
    user can act on (a bad config, a missing or unusable dataset, a workdir or checkpoint that
    cannot be used, a diverged run, Ctrl-C, a full disk), or None when training finished.
    Anything else (a bug) raises."""
    try:
        config_check.validate_config(config)
    except (ValueError, data_lib.DatasetNotFoundError) as e:
        return f'invalid config: {e}'
    try:
        _train_valid_config(config, workdir, allow_config_changes)
    except data_lib.DatasetNotFoundError as e:
        return f'dataset not found: {e}'
    except (datasets.DataError, workdir_lib.WorkdirError, checkpoints.CheckpointError,
            files.WriteError, FloatingPointError, interruption.TrainingInterrupted,
            processes.ProcessMismatchError) as e:
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
      ValueError: a config that `config_check.validate_config` refuses.
      FloatingPointError: a non-finite loss, gradient or parameter; the message names the step
        and the last checkpoint, which was saved before it and is left as it was, and for a
        loss, the configured function that turns non-finite on that checkpoint and the step's
        batch, if one does (`recipe.explain_non_finite`).
      workdir.WorkdirError: another process trains this workdir, or it holds another run.
      checkpoints.CheckpointError: the latest checkpoint is damaged or holds another model.
      datasets.DataError, data_lib.DatasetNotFoundError: a dataset that cannot be used.
      files.WriteError: an output could not be written (a full disk), naming it.
      interruption.TrainingInterrupted: Ctrl-C; the message names the last checkpoint.
      processes.ProcessMismatchError: the processes run different configs.
    Returns:
      the final state.
    """
    config_check.validate_config(config)
    return _train_valid_config(config, workdir, allow_config_changes)


def _train_valid_config(config: ml_collections.ConfigDict, workdir: str | Path,
                        allow_config_changes: bool) -> recipe.TrainState:
    """`train_and_evaluate` of a config that `validate_config` accepted."""
    processes.check_same_run({'config': config.to_dict(), 'workdir': str(workdir),
                              'allow_config_changes': allow_config_changes})
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    with workdir_lib.WorkdirLock(workdir) if is_main else contextlib.nullcontext() as lock:
        record = workdir_lib.check_resume(workdir, config.to_dict(), allow_config_changes)
        return _train_and_evaluate(config, workdir, lock, record, allow_config_changes)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path,
                        lock: workdir_lib.WorkdirLock | None, record: dict | None,
                        allow_config_changes: bool) -> recipe.TrainState:
    """The run, `lock` held (process 0; None on the others, which do not write)."""
    is_main = lock is not None
    train_cfg = config.train
    train_ds, val_ds = datasets.load_datasets(config)
    fingerprints = {'train': datasets.fingerprint(train_ds), 'val': datasets.fingerprint(val_ds)}
    workdir_lib.check_data(record, fingerprints, allow_config_changes)
    code = workdir_lib.code_fingerprints(config)
    workdir_lib.check_code(record, code, allow_config_changes)
    saving.restart_best_tracking(workdir, config.to_dict(), fingerprints['val'], is_main)

    model = recipe.create_model(config)
    mesh = recipe.create_mesh()
    state = jax.device_put(
        recipe.create_train_state(config, model, jax.random.PRNGKey(train_cfg.seed)),
        NamedSharding(mesh, PartitionSpec()))
    total_steps = train_cfg.epochs * train_cfg.steps_per_epoch
    val_every = train_cfg.eval_every_epochs * train_cfg.steps_per_epoch
    saves = saving.Checkpointing(workdir, train_cfg.keep_checkpoints,
                                 {'config': config.to_dict(), 'data': fingerprints, 'code': code})
    try:
        restored = checkpoints.restore_latest(saves.latest, state.checkpoint_items())
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
            raise datasets.DataError(f'config.data.lr_patch={config.data.lr_patch}: {e}') from e
    except BaseException:
        # Closed now, so that no background work of the managers outlives the error.
        with contextlib.suppress(files.WriteError):
            saves.finish()
        raise
    if is_main:  # only once the run is known to resume (or start) cleanly
        workdir_lib.record_config(workdir, config.to_dict(), config.model.to_dict())
    if start_step:
        logging.info('Resuming from step %d of %d (%s).', start_step, total_steps,
                     saves.latest.directory)
    if is_main:  # steps after the checkpoint are redone: their old records would be duplicates
        metric_writer.drop_records_after(workdir, start_step)

    train_step = recipe.compile_train_step(config, mesh)
    redraw = recipe.compile_redraw(config, mesh)
    learning_rate_fn = recipe.create_learning_rate_fn(config)
    logger = metric_writer.MetricLogger(workdir, is_main)
    history = metric_writer.StepMetrics(start_step, config.data.batch_size)
    progress = tqdm.tqdm(total=total_steps, initial=start_step, unit='step', disable=not is_main,
                         dynamic_ncols=True)

    def log_metrics(step: int) -> None:
        """Checks the metrics of the steps since the last log and writes their means."""
        try:
            scalars = history.flush(step)
        except metric_writer.NonFiniteMetrics as e:
            error = saves.diverged(f'{e}: training stopped')  # waits for the save in flight
            explanation = recipe.explain_non_finite_loss(config, model, saves.latest,
                                                         loader.batch, e.step)
            raise FloatingPointError(f'{error} {explanation}') from e
        if scalars is None:
            return
        logger.write(step, scalars)
        progress.set_postfix(loss=f'{scalars["train/loss"]:.4f}',
                             lr=f'{float(learning_rate_fn(step - 1)):.2e}',
                             steps_per_s=f'{scalars["train/steps_per_s"]:.2f}')

    val_psnr = bicubic_psnr = None
    if val_ds is not None:
        upscaler = inference.ModelUpscaler(
            model, jax.tree.map(lambda x: x.addressable_data(0), state.variables),
            bucket=train_cfg.eval_bucket, name='validation')
        bicubic_psnr = evaluator.evaluate_in_memory(
            val_ds, inference.BicubicUpscaler(val_ds.scale)).summary()['psnr']

    def validate(step: int, state: recipe.TrainState) -> float:
        """Scores `state` on the validation images with eval.py's evaluator, offers it to
        `best/` (before the score is recorded), logs the scores; returns the PSNR-Y."""
        local = jax.tree.map(lambda x: x.addressable_data(0), state.variables)
        scores = evaluator.evaluate_in_memory(val_ds, upscaler.with_variables(local)).summary()
        saves.save_best(step, state, scores['psnr'])
        logger.write(step, {'val/psnr_y': scores['psnr'], 'val/ssim_y': scores['ssim'],
                            'val/bicubic_psnr_y': bicubic_psnr})
        logging.info('step %d: validation PSNR-Y %.3f dB (bicubic %.3f dB)', step,
                     scores['psnr'], bicubic_psnr)
        history.restart_clock(step)  # validation time is not training speed
        return scores['psnr']

    batches = input_pipeline.prefetch_to_device(loader, 2, lambda b: recipe.shard_batch(b, mesh))
    try:
        with interruption.deferred_ctrl_c() as stop_requested:
            if (val_ds is not None and start_step and is_due(start_step, val_every, total_steps)
                    and saving.process_0_value(
                        start_step not in metric_writer.validated_steps(workdir))):
                logging.info('Step %d was saved but its validation not recorded: validating it.',
                             start_step)
                val_psnr = validate(start_step, state)
            for step in range(start_step, total_steps):
                index = recipe.redraw_index(step, config)
                if index is not None:
                    state = redraw(state, index)
                state, step_metrics = train_step(state, next(batches))
                history.append(step_metrics)
                progress.update()
                done = step + 1
                stopping = stop_requested.is_set()
                save = stopping or is_due(done, train_cfg.checkpoint_every_steps, total_steps)
                validating = (val_ds is not None and not stopping
                              and is_due(done, val_every, total_steps))
                if save or validating or is_due(done, train_cfg.log_every, total_steps):
                    if is_main:
                        lock.check_in_place()
                    log_metrics(done)
                if save:
                    saves.save(done, state)
                if validating:
                    val_psnr = validate(done, state)
                if stopping:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        saves.finish()
        raise interruption.TrainingInterrupted(
            f'interrupted after step {int(state.step)}; {saves.last_saved()} Run the same '
            'command to resume.') from None
    except BaseException:
        # With several processes a failure here may be another process's death: a save in
        # flight then waits at a barrier for ever. Orbax commits a step only once it is
        # complete, so leaving it unfinished loses nothing.
        if jax.process_count() == 1:
            with contextlib.suppress(files.WriteError):  # the error in flight is the one to tell
                saves.finish()
        raise
    else:
        saves.finish()
    finally:
        progress.close()
        loader.close()
        logger.close()
    if val_psnr is not None:
        logging.info('final validation PSNR-Y %.3f dB vs bicubic %.3f dB (%+.3f dB) on %d image(s)',
                     val_psnr, bicubic_psnr, val_psnr - bicubic_psnr, len(val_ds))
    return state
