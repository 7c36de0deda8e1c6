"""A workdir is resumed only by the run it holds, and trained by one process at a time."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, cli_overrides, run, tiny_config
from enlcn_jax import checkpoints, train_lib
from enlcn_jax import workdir as workdir_lib


def short_config(**overrides):
    return tiny_config(**{'train__epochs': 1, 'data__val_source': 'none', **overrides})


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A workdir after one epoch of the tiny config: `(workdir, its files' bytes)`."""
    workdir = tmp_path_factory.mktemp('run')
    train_lib.train_and_evaluate(short_config(), workdir)
    files = {name: (workdir / name).read_bytes()
             for name in (workdir_lib.CONFIG_FILE, checkpoints.MODEL_CONFIG)}
    return workdir, files


def unchanged(trained):
    workdir, files = trained
    return all((workdir / name).read_bytes() == data for name, data in files.items())


@pytest.mark.parametrize('overrides, listed', [
    ({'model__n_feats': 24}, 'model.n_feats: 16 -> 24'),
    ({'model__amplification': 2.0}, 'model.amplification: 6.0 -> 2.0'),  # same array shapes
    ({'model__feature_map': 'relu'}, "model.feature_map: 'softmax_kernel' -> 'relu'"),
    ({'train__seed': 1}, 'train.seed: 0 -> 1'),
    ({'data__lr_patch': 16}, 'data.lr_patch: 12 -> 16'),
])
def test_resuming_with_another_model_data_or_seed_is_refused_before_any_write(
        trained, overrides, listed):
    with pytest.raises(workdir_lib.WorkdirError, match='holds a run with another config') as info:
        train_lib.train_and_evaluate(short_config(**overrides), trained[0])
    assert listed in str(info.value) and '--allow_config_changes' in str(info.value)
    assert '\n' not in str(info.value)
    assert unchanged(trained)
    checkpoints.load_model(trained[0])  # evaluation still reads the workdir


def test_safe_changes_resume_and_a_forced_model_change_is_a_clear_error(trained, tmp_path):
    workdir = tmp_path / 'copy'
    subprocess.run(['cp', '-r', str(trained[0]), str(workdir)], check=True)
    state = train_lib.train_and_evaluate(short_config(train__epochs=2, train__log_every=2),
                                         workdir)
    assert int(state.step) == 6  # resumed at 3, trained 3 more
    files = {n: (workdir / n).read_bytes() for n in (workdir_lib.CONFIG_FILE,
                                                      checkpoints.MODEL_CONFIG)}
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"step 6 .* holds another model .*\['params'\]\['body_0'\]"):
        train_lib.train_and_evaluate(short_config(train__epochs=2, model__n_feats=24), workdir,
                                     allow_config_changes=True)
    assert all((workdir / n).read_bytes() == data for n, data in files.items())


def test_cli_refusal_is_one_line(trained, env):
    result = run(['train.py', '--config', 'configs/quickstart.py', '--workdir', str(trained[0]),
                  *cli_overrides(train__epochs=1, data__val_source='none', model__n_feats=24)],
                 env, check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    fatal = [line for line in result.stderr.splitlines() if 'FATAL' in line]
    assert len(fatal) == 1 and 'model.n_feats: 16 -> 24' in fatal[0]
    assert unchanged(trained)


HOLD_LOCK = """
import sys, time
from enlcn_jax.workdir import WorkdirLock
with WorkdirLock(sys.argv[1]):
    print('locked', flush=True)
    time.sleep(600)
"""


def test_a_second_training_is_refused_naming_the_holder_and_a_killed_holder_frees_it(
        tmp_path, env):
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        result = run(['train.py', '--config', 'configs/quickstart.py', '--workdir',
                      str(tmp_path), *cli_overrides(train__epochs=1, data__val_source='none')],
                     env, check=False)
        assert result.returncode != 0 and 'Traceback' not in result.stderr
        assert f'is being trained by pid {holder.pid} on host ' in result.stderr
        assert not (tmp_path / 'checkpoints').exists() and not (tmp_path / 'config.json').exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with workdir_lib.WorkdirLock(tmp_path):  # the kernel released the killed holder's lock
        assert f'pid {os.getpid()} ' in (tmp_path / workdir_lib.LOCK_FILE).read_text()


def test_unusable_workdirs_are_one_line_errors(tmp_path):
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    with pytest.raises(workdir_lib.WorkdirError, match='cannot use .*file as a workdir'):
        with workdir_lib.WorkdirLock(a_file):
            pass
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'config.json').write_text('{not json')
    with pytest.raises(workdir_lib.WorkdirError, match='config.json is unreadable'):
        workdir_lib.check_resume(tmp_path / 'run', {})


def records(workdir):
    return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_a_validation_cut_off_by_a_kill_is_redone_on_resume_and_best_follows_it(
        tmp_path, monkeypatch):
    config = tiny_config(train__epochs=2)  # validates at steps 3 and 6, saves at 3 and 6
    real_save_best = checkpoints.save_best

    def killed_at_step_6(manager, state, psnr):
        if int(state.step) == 6:
            raise KeyboardInterrupt  # after step 6's checkpoint, before its validation counts
        real_save_best(manager, state, psnr)

    monkeypatch.setattr(checkpoints, 'save_best', killed_at_step_6)
    with pytest.raises(train_lib.TrainingInterrupted, match='after step 6; the last checkpoint, '
                                                         'step 6 in'):
        train_lib.train_and_evaluate(config, tmp_path)
    assert checkpoints.latest_manager(tmp_path, read_only=True).latest_step() == 6
    assert sorted(r['step'] for r in records(tmp_path) if 'val/psnr_y' in r) == [3]
    monkeypatch.setattr(checkpoints, 'save_best', real_save_best)
    train_lib.train_and_evaluate(config, tmp_path)  # "resumes" at 6 of 6: validates step 6
    validations = {r['step']: r['val/psnr_y'] for r in records(tmp_path) if 'val/psnr_y' in r}
    assert sorted(validations) == [3, 6]
    best_step = checkpoints.best_manager(tmp_path, read_only=True).best_step()
    assert best_step == max(validations, key=validations.get)
    train_steps = [r['step'] for r in records(tmp_path) if 'train/loss' in r]
    assert train_steps == sorted(set(train_steps))  # no step logged twice


@pytest.mark.filterwarnings('ignore:overflow encountered in cast:RuntimeWarning')  # lr 1e39
def test_diverged_parameters_are_never_saved(tmp_path):
    """lr 1e39: the first step's loss is finite, its update is not."""
    config = tiny_config(train__lr=1e39, train__checkpoint_every_steps=1, train__epochs=1,
                         data__val_source='none')
    with pytest.raises(FloatingPointError,
                       match='parameters after step 1 are not finite.*no checkpoint was saved'):
        train_lib.train_and_evaluate(config, tmp_path)
    assert checkpoints.latest_manager(tmp_path, read_only=True).all_steps() == []


def data_files(directory):
    """The largest files under `directory` (orbax's array data), largest first."""
    return sorted((p for p in directory.rglob('*') if p.is_file()),
                  key=lambda p: p.stat().st_size, reverse=True)


def flip_byte(path, offset_fraction=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_checkpoint_is_a_clear_error(trained, tmp_path):
    workdir = tmp_path / 'copy'
    subprocess.run(['cp', '-r', str(trained[0]), str(workdir)], check=True)
    step_dir = workdir / 'checkpoints' / '3' / checkpoints.VARIABLES
    flip_byte(data_files(step_dir)[0])
    with pytest.raises(checkpoints.CheckpointError, match=r"3: \[.*\] does not match the checksum"):
        checkpoints.load_model(workdir)
    with pytest.raises(checkpoints.CheckpointError, match='does not match the checksum'):
        train_lib.train_and_evaluate(short_config(train__epochs=2), workdir)


def test_evaluation_refuses_non_finite_weights(reference, tmp_path, env):
    from conftest import save_fixture_model  # pylint: disable=import-outside-toplevel
    model = save_fixture_model(reference, tmp_path / 'model')
    config, variables, _ = checkpoints.load_model(model)
    variables['params']['head']['bias'][0] = np.nan
    checkpoints.save_model(tmp_path / 'nan_model', config, variables)
    with pytest.raises(checkpoints.CheckpointError, match=r"\['params'\]\['head'\]\['bias'\] "
                                                          'holds non-finite values'):
        checkpoints.load_model(tmp_path / 'nan_model')
    result = run(['-m', 'enlcn_jax.upscale', str(REPO / 'tests/data/benchmark/Set5/HR/img_003.png'),
                  str(tmp_path / 'out.png'), '--checkpoint', str(tmp_path / 'nan_model')],
                 env, check=False)
    assert result.returncode != 0 and 'non-finite values' in result.stderr
    assert 'Traceback' not in result.stderr and not (tmp_path / 'out.png').exists()


def test_ctrl_c_finishes_the_checkpoint_in_flight_and_exits_with_one_line(tmp_path, env):
    process = subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir',
         str(tmp_path), *cli_overrides(train__epochs=200, data__val_source='none')],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list((tmp_path / 'checkpoints').glob('[0-9]*')) and time.time() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode != 0 and 'Traceback' not in stderr, stderr[-3000:]
    fatal = [line for line in stderr.splitlines() if 'FATAL' in line]
    assert len(fatal) == 1 and 'interrupted after step' in fatal[0]
    assert 'Run the same command to resume' in fatal[0]
    step = checkpoints.latest_manager(tmp_path, read_only=True).latest_step()
    assert step and f'step {step} in' in fatal[0]
    checkpoints.load_model(tmp_path)  # the checkpoint named is complete and verified
