"""Damage is one line naming the folder, and a checkpoint being written or deleted by a training
run is never called damaged: an empty or half-deleted step on resume, `best/` read while it is
rewritten."""

import json
import shutil
import threading

import numpy as np
import pytest

from conftest import cli_overrides, run, tiny_config
from enlcn_jax.nn import models
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import loop


def short_config(**overrides):
    return tiny_config(**{'train__epochs': 1, 'data__val_source': 'none', **overrides})


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A workdir after one epoch of the tiny config (checkpoint step 3)."""
    workdir = tmp_path_factory.mktemp('run')
    loop.train_and_evaluate(short_config(), workdir)
    return workdir


def copy_of(workdir, tmp_path):
    shutil.copytree(workdir, tmp_path / 'copy')
    return tmp_path / 'copy'


def delete_data_files(step_dir):
    """Deletes the array data (orbax's `d/` files) of every item of a step, keeping its
    metadata."""
    data = [p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'd']
    assert data
    for path in data:
        path.unlink()


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
    delete_data_files(step_dir)
    reason = loop.run_training(short_config(train__epochs=2), workdir)
    assert reason is not None and '\n' not in reason, reason
    assert reason.startswith(f'{step_dir} cannot be read (') and 'damaged' in reason, reason
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
