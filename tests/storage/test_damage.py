"""Damage is one line naming the folder, and a checkpoint being written or deleted by a training
run is never called damaged: an empty or half-deleted step on resume, `best/` read while it is
rewritten; and a `model_config.json` edited after the weights were saved is refused."""

import json
import shutil
import threading

import jax
import numpy as np
import pytest

from conftest import cli_overrides, delete_array_data, run, short_config, tiny_config
from enlcn_jax.nn import models
from enlcn_jax.storage import checkpoints, files
from enlcn_jax.train import loop


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A workdir after one epoch of the tiny config (checkpoint step 3)."""
    workdir = tmp_path_factory.mktemp('run')
    loop.train_and_evaluate(short_config(), workdir)
    return workdir


def copy_of(workdir, tmp_path):
    shutil.copytree(workdir, tmp_path / 'copy')
    return tmp_path / 'copy'


def test_an_empty_step_folder_on_resume_is_one_line_naming_it(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    empty = workdir / checkpoints.CHECKPOINTS_DIR / '99'
    empty.mkdir()
    reason = loop.run_training(short_config(train__epochs=2), workdir)
    assert reason is not None and '\n' not in reason, reason
    assert f'{empty} cannot be read (no {checkpoints.COMMIT_FILE}' in reason
    assert f'move {empty} out of the workdir to resume from step 3' in reason
    shutil.move(empty, tmp_path / 'aside')
    assert loop.run_training(short_config(train__epochs=2), workdir) is None


def test_a_step_whose_data_files_were_deleted_is_one_line_naming_it(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    step_dir = workdir / checkpoints.CHECKPOINTS_DIR / '3'
    delete_array_data(step_dir)
    reason = loop.run_training(short_config(train__epochs=2), workdir)
    assert reason is not None and '\n' not in reason, reason
    assert reason.startswith(f'{step_dir} cannot be read (') and 'damaged' in reason, reason
    assert 'tensorstore_spec' not in reason  # the cause, without tensorstore's spec JSON
    assert reason.endswith(f'move {step_dir} out of the workdir to start afresh'), reason
    with pytest.raises(checkpoints.CheckpointError, match=f'{step_dir} cannot be read'):
        checkpoints.load_model(workdir)


def test_a_step_without_its_metadata_is_damage_not_another_model(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    step_dir = workdir / checkpoints.CHECKPOINTS_DIR / '3'
    for path in step_dir.rglob('_METADATA'):
        path.unlink()
    with checkpoints.latest_manager(workdir) as manager:
        with pytest.raises(checkpoints.CheckpointError,
                           match='metadata of variables is missing or unreadable.*damaged; move'):
            checkpoints.restore_latest(manager, {checkpoints.VARIABLES: {}})


def test_the_command_line_says_an_empty_step_folder_in_one_line(trained, tmp_path, env):
    workdir = copy_of(trained, tmp_path)
    (workdir / checkpoints.CHECKPOINTS_DIR / '99').mkdir()
    result = run(['train.py', '--config', 'configs/quickstart.py', '--workdir', str(workdir),
                  *cli_overrides(train__epochs=2, data__val_source='none')], env, check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    fatal = [line for line in result.stderr.splitlines() if 'FATAL' in line]
    assert len(fatal) == 1, result.stderr[-2000:]
    assert f'move {workdir / checkpoints.CHECKPOINTS_DIR / "99"} out of the workdir' in fatal[0]


@pytest.mark.parametrize('manager', [checkpoints.latest_manager, checkpoints.best_manager])
def test_a_writer_has_removed_leftovers_of_interrupted_saves_when_it_is_returned(manager,
                                                                                 tmp_path):
    """Nothing of the manager works on after an early error: the leftovers are gone already
    (orbax deletes them in a background thread that `close` does not wait for)."""
    folder = manager(tmp_path, read_only=True).directory
    leftover = folder / '7.orbax-checkpoint-tmp-1'
    leftover.mkdir(parents=True)
    with manager(tmp_path, read_only=True):
        assert leftover.is_dir()  # a reader leaves them
    with manager(tmp_path):
        assert not leftover.exists()


# --- best/ read while a training run rewrites it ------------------------------------------------

def tiny_model():
    """`(model config, numpy variables)` of the tiny config's model."""
    model_config = tiny_config().model.to_dict()
    model = models.from_config(model_config)
    variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8))
    return model_config, jax.tree.map(np.asarray, variables)


def workdir_with_best(workdir, model_config, variables):
    """A workdir as training leaves it, whose `best/` holds step 1 (recorded with its model
    config); `checkpoints/` is there, empty."""
    (workdir / checkpoints.CHECKPOINTS_DIR).mkdir(parents=True)
    files.write_text(workdir / checkpoints.MODEL_CONFIG, json.dumps(model_config))
    with checkpoints.best_manager(workdir) as best:
        checkpoints.save_best(best, 1, variables, 1.0, {'config': {'model': model_config}})
    return workdir


READS = 30


def test_best_read_while_training_rewrites_it_is_never_called_damaged(tmp_path):
    model_config, variables = tiny_model()
    workdir = workdir_with_best(tmp_path / 'w', model_config, variables)
    stop = threading.Event()
    saved = []

    def train():  # a better model at every step: best/ keeps it and deletes the one before
        with checkpoints.best_manager(workdir) as best:
            for step in range(2, 10_000):
                if stop.is_set():
                    return
                checkpoints.save_best(best, step, variables, float(step),
                                      {'config': {'model': model_config}})
                checkpoints.wait_until_saved(best)
                saved.append(step)

    writer = threading.Thread(target=train)
    writer.start()
    failures, steps = [], []
    try:
        for _ in range(READS):
            try:
                _, loaded, step = checkpoints.load_model(workdir, 'best')
                steps.append(step)
                assert checksums_equal(loaded, variables)
            except Exception as e:  # pylint: disable=broad-except  # any failure counts
                failures.append(f'{type(e).__name__}: {e}')
    finally:
        stop.set()
        writer.join()
    assert failures == [], f'{len(failures)} of {READS} reads failed: {failures[:3]}'
    assert len(saved) >= 5 and len(set(steps)) >= 3  # the reads overlapped saves


def checksums_equal(tree, reference):
    return checkpoints.checksums(tree) == checkpoints.checksums(reference)


def test_a_damaged_best_step_is_still_damage_after_a_second_read(tmp_path, monkeypatch):
    model_config, variables = tiny_model()
    workdir = workdir_with_best(tmp_path / 'w', model_config, variables)
    step_dir = workdir / checkpoints.BEST_DIR / '1'
    delete_array_data(step_dir)
    reads = []
    read_step = checkpoints._read_step  # pylint: disable=protected-access
    monkeypatch.setattr(checkpoints, '_read_step', lambda *args: reads.append(args[1]) or
                        read_step(*args))
    with pytest.raises(checkpoints.CheckpointError,
                       match=f'{step_dir} cannot be read .*the checkpoint is damaged'):
        checkpoints.load_model(workdir, 'best')
    assert reads == [1, 1]  # read again once: unchanged, it is damaged


# --- model_config.json checked against the config recorded with the weights ---------------------

EDITS = {'amplification': 1.0, 'attention': 'exact'}


def edit_model_config(path):
    config = json.loads(path.read_text())
    assert config['amplification'] == 6.0 and config['attention'] == 'enla'
    files.write_text(path, json.dumps({**config, **EDITS}))


def refused_naming_the_edits(path, *args):
    with pytest.raises(checkpoints.CheckpointError, match='differs from the model config '
                       'recorded with') as info:
        checkpoints.load_model(path, *args)
    message = str(info.value)
    assert '\n' not in message
    assert "amplification: 6.0 recorded, 1.0 in the file" in message, message
    assert "attention: 'enla' recorded, 'exact' in the file" in message, message
    assert 'n_feats' not in message  # only the keys that differ


def test_an_edited_model_config_is_refused_naming_the_keys(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    checkpoints.load_model(workdir)  # as training wrote it
    edit_model_config(workdir / checkpoints.MODEL_CONFIG)
    refused_naming_the_edits(workdir, 'latest')
    model_config, variables = tiny_model()
    with_best = workdir_with_best(tmp_path / 'w', model_config, variables)
    checkpoints.load_model(with_best, 'best')
    edit_model_config(with_best / checkpoints.MODEL_CONFIG)
    refused_naming_the_edits(with_best, 'best')
    model_dir = checkpoints.save_model(tmp_path / 'model', model_config, variables)
    checkpoints.load_model(model_dir)
    edit_model_config(model_dir / checkpoints.MODEL_CONFIG)
    refused_naming_the_edits(model_dir)
