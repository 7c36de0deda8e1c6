"""Contracts of `train/saving.py` checked without training: `Checkpointing` on a stand-in state
of two tiny arrays (only finite parameters saved, the latest `keep` steps and the best model
kept, the last checkpoint named when training stops, a failed save raised after both managers
closed), `process_0_value` on one process, and `restart_best_tracking` (best/ moved aside only
for another run's config or other validation images, by process 0)."""

import dataclasses
import logging

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from enlcn_jax.storage import checkpoints, files
from enlcn_jax.train import saving
from enlcn_jax.train import workdir as workdir_lib

CONFIG = {'model': {'n_feats': 16, 'block': 'enlca'},
          'train': {'lr': 0.001, 'epochs': 2, 'contrastive': {'margin': None}}}
VAL = {'images': 5, 'sha256': 'c' * 64}
RECORD = {'config': CONFIG, 'data': {'train': None, 'val': VAL}}


@dataclasses.dataclass
class State:
    """What `Checkpointing` reads of a `recipe.TrainState`."""
    params: dict

    @property
    def variables(self) -> dict:
        return {'params': self.params}

    def checkpoint_items(self) -> dict:
        return {checkpoints.VARIABLES: self.variables,
                checkpoints.TRAIN: {'step': np.array(1)}}


def state(value: float) -> State:
    return State({'w': np.full(2, value, np.float32), 'b': np.zeros(1, np.float32)})


def test_process_0_value_is_the_flag_as_a_bool():
    for flag in (True, False, np.bool_(True), jnp.array(False), jnp.array(True), 0, 1):
        assert saving.process_0_value(flag) is bool(flag)


def test_with_several_processes_every_process_takes_process_0_s_flag(monkeypatch):
    sent = []

    def broadcast(value):
        sent.append(value)
        return np.asarray(0, np.int32)  # process 0's flag: false
    monkeypatch.setattr(saving.multihost_utils, 'broadcast_one_to_all', broadcast)
    assert saving.process_0_value(True) is True  # one process: nothing is broadcast
    assert sent == []
    monkeypatch.setattr(saving.jax, 'process_count', lambda: 2)
    assert saving.process_0_value(jnp.array(True)) is False
    [value] = sent
    assert value.dtype == np.int32 and value.shape == () and value == 1


def test_saves_keep_the_latest_steps_and_the_best_model(tmp_path):
    saver = saving.Checkpointing(tmp_path, keep=2, record=RECORD)
    for step in (1, 2, 3):
        saver.save(step, state(step))
    for step, psnr in ((1, 30.0), (2, 31.0), (3, 30.5)):
        saver.save_best(step, state(step), psnr)
    saver.finish()
    latest = checkpoints.latest_manager(tmp_path, read_only=True)
    assert latest.all_steps() == [2, 3]
    best = checkpoints.best_manager(tmp_path, read_only=True)
    assert best.all_steps() == [2]
    assert checkpoints.latest_record(latest) == (3, {'format': checkpoints.FORMAT, **RECORD})
    assert checkpoints.latest_record(best) == (2, {'format': checkpoints.FORMAT, **RECORD})
    restored = best.restore(2, args=ocp.args.Composite(
        **{checkpoints.VARIABLES: ocp.args.StandardRestore()}))
    np.testing.assert_array_equal(restored[checkpoints.VARIABLES]['params']['w'], [2.0, 2.0])


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_parameters_are_never_saved_and_the_error_names_the_last_checkpoint(
        tmp_path, bad):
    saver = saving.Checkpointing(tmp_path, keep=3, record=RECORD)
    with pytest.raises(FloatingPointError) as raised:
        saver.save(4, state(bad))
    assert str(raised.value) == (
        'the parameters after step 4 are not finite (the loss was): training stopped without '
        'saving them as a checkpoint; no checkpoint was saved.')
    saver.save(5, state(1.0))
    with pytest.raises(FloatingPointError) as raised:
        saver.save_best(6, state(bad), 40.0)
    assert str(raised.value) == (
        'the parameters after step 6 are not finite (the loss was): training stopped without '
        f'saving them as the best model; the last checkpoint, step 5 in '
        f'{tmp_path / checkpoints.CHECKPOINTS_DIR}, was saved before it and is intact.')
    assert str(saver.diverged('why')).startswith('why; the last checkpoint, step 5 in ')
    saver.finish()
    assert checkpoints.latest_manager(tmp_path, read_only=True).all_steps() == [5]
    assert not (tmp_path / checkpoints.BEST_DIR).exists() or not checkpoints.best_manager(
        tmp_path, read_only=True).all_steps()


def test_a_failed_save_is_raised_after_both_managers_are_closed(tmp_path, monkeypatch):
    saver = saving.Checkpointing(tmp_path, keep=3, record=RECORD)
    closed = []
    for manager in (saver.latest, saver.best):
        monkeypatch.setattr(manager, 'close', lambda m=manager: closed.append(m))
    failures = {saver.latest: files.WriteError('latest failed'),
                saver.best: files.WriteError('best failed')}

    def wait(manager):
        raise failures[manager]
    monkeypatch.setattr(checkpoints, 'wait_until_saved', wait)
    with pytest.raises(files.WriteError, match='^latest failed$'):
        saver.finish()
    assert closed == [saver.latest, saver.best]

    def close_fails(manager):
        closed.append(manager)
        raise RuntimeError('close failed too')
    for manager in (saver.latest, saver.best):
        monkeypatch.setattr(manager, 'close', lambda m=manager: close_fails(m))
    with pytest.raises(files.WriteError, match='^latest failed$'):  # the save's error, not close's
        saver.finish()
    assert closed[2:] == [saver.latest, saver.best]


def make_best(workdir, record, step=7):
    with checkpoints.best_manager(workdir) as manager:
        checkpoints.save_best(manager, step, state(1.0).variables, 30.0, record)
        checkpoints.wait_until_saved(manager)


def test_best_of_the_same_run_and_validation_images_stays_and_is_only_read(tmp_path):
    saving.restart_best_tracking(tmp_path, CONFIG, VAL, is_main=True)  # no best/: nothing
    assert list(tmp_path.iterdir()) == []
    make_best(tmp_path, RECORD)
    # A save in flight (orbax's temporary folder) is left alone: best/ is opened read-only.
    in_flight = tmp_path / checkpoints.BEST_DIR / '9.orbax-checkpoint-tmp-1'
    in_flight.mkdir()
    saving.restart_best_tracking(tmp_path, {**CONFIG, 'train': {**CONFIG['train'],
                                                                'epochs': 9}}, VAL, True)
    saving.restart_best_tracking(tmp_path, CONFIG, None, True)  # no validation images to compare
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoints.BEST_DIR]
    assert in_flight.is_dir()


def test_best_without_a_record_stays(tmp_path):
    make_best(tmp_path, None)
    saving.restart_best_tracking(tmp_path, {'seed': 1}, VAL, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoints.BEST_DIR]


@pytest.mark.parametrize('leftover', [True, False])
@pytest.mark.parametrize('change', ['config', 'val'])
def test_best_of_another_run_or_other_validation_images_is_moved_aside_by_process_0(
        tmp_path, caplog, change, leftover):
    make_best(tmp_path, RECORD)
    config, val = CONFIG, VAL
    if change == 'config':
        config = {**CONFIG, 'seed': 3, 'train': {**CONFIG['train'], 'lr': 0.5}}
        aside = f'{checkpoints.BEST_DIR}.run-{workdir_lib.config_digest(CONFIG)}'
        why = 'was trained by another run (seed: (absent) -> 3; train.lr: 0.001 -> 0.5)'
    else:
        val = {'images': 9, 'sha256': 'd' * 64}
        aside = f'{checkpoints.BEST_DIR}.val-{"c" * 12}'
        why = 'was chosen on other validation images (5 -> 9 images)'
    saving.restart_best_tracking(tmp_path, config, val, is_main=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoints.BEST_DIR]
    if leftover:  # an older leftover of the same name is replaced
        (tmp_path / aside).mkdir()
        (tmp_path / aside / 'old').write_text('')
    with caplog.at_level(logging.WARNING):
        saving.restart_best_tracking(tmp_path, config, val, is_main=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside]
    assert not (tmp_path / aside / 'old').exists()
    assert (tmp_path / aside / '7').is_dir()
    assert [r.getMessage() for r in caplog.records] == [
        f'best/ (step 7) {why}: moved to {tmp_path / aside}; best/ starts again with this run']
