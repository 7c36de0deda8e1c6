"""A workdir is resumed only by the run it holds, and trained by one process at a time."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, cli_overrides, run, short_config, tiny_config, tmpfs
from configs.default import get_config as default_config
from enlcn_jax import upscale
from enlcn_jax.data import datasets, image_io
from enlcn_jax.storage import checkpoints, files
from enlcn_jax.train import interruption, loop, metric_writer, saving
from enlcn_jax.train import workdir as workdir_lib


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A workdir after one epoch of the tiny config: `(workdir, its files' bytes)`."""
    workdir = tmp_path_factory.mktemp('run')
    loop.train_and_evaluate(short_config(), workdir)
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
        loop.train_and_evaluate(short_config(**overrides), trained[0])
    assert listed in str(info.value) and '--allow_config_changes' in str(info.value)
    assert '\n' not in str(info.value)
    assert unchanged(trained)
    checkpoints.load_model(trained[0])  # evaluation still reads the workdir


def test_safe_changes_resume_and_a_forced_model_change_is_a_clear_error(trained, tmp_path):
    workdir = tmp_path / 'copy'
    subprocess.run(['cp', '-r', str(trained[0]), str(workdir)], check=True)
    state = loop.train_and_evaluate(short_config(train__epochs=2, train__log_every=2),
                                         workdir)
    assert int(state.step) == 6  # resumed at 3, trained 3 more
    files = {n: (workdir / n).read_bytes() for n in (workdir_lib.CONFIG_FILE,
                                                      checkpoints.MODEL_CONFIG)}
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"step 6 .* holds another model .*\['params'\]\['body_0'\]"):
        loop.train_and_evaluate(short_config(train__epochs=2, model__n_feats=24), workdir,
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
from enlcn_jax.train.workdir import WorkdirLock
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

    def killed_at_step_6(manager, step, *args):
        if step == 6:
            raise KeyboardInterrupt  # after step 6's checkpoint, before its validation counts
        real_save_best(manager, step, *args)

    monkeypatch.setattr(checkpoints, 'save_best', killed_at_step_6)
    with pytest.raises(interruption.TrainingInterrupted, match='after step 6; the last checkpoint, '
                                                         'step 6 in'):
        loop.train_and_evaluate(config, tmp_path)
    assert checkpoints.latest_manager(tmp_path, read_only=True).latest_step() == 6
    assert sorted(r['step'] for r in records(tmp_path) if 'val/psnr_y' in r) == [3]
    monkeypatch.setattr(checkpoints, 'save_best', real_save_best)
    loop.train_and_evaluate(config, tmp_path)  # "resumes" at 6 of 6: validates step 6
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
        loop.train_and_evaluate(config, tmp_path)
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
        loop.train_and_evaluate(short_config(train__epochs=2), workdir)


def test_evaluation_refuses_non_finite_weights(x2_model_dir, tmp_path, capsys):
    config, variables = checkpoints.load_model_dir(x2_model_dir)
    variables['params']['head']['bias'][0] = np.nan
    checkpoints.save_model(tmp_path / 'nan_model', config, variables)
    with pytest.raises(checkpoints.CheckpointError, match=r"\['params'\]\['head'\]\['bias'\] "
                                                          'holds non-finite values'):
        checkpoints.load_model(tmp_path / 'nan_model')
    with pytest.raises(SystemExit) as exit_:  # anything else would be a traceback
        upscale.main([str(REPO / 'tests/fixtures/benchmark/Set5/HR/img_003.png'),
                      str(tmp_path / 'out.png'), '--checkpoint', str(tmp_path / 'nan_model')])
    assert exit_.value.code != 0 and 'non-finite values' in capsys.readouterr().err
    assert not (tmp_path / 'out.png').exists()


def test_ctrl_c_finishes_the_checkpoint_in_flight_and_exits_with_one_line(tmp_path, env):
    process = subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir',
         str(tmp_path), *cli_overrides(train__epochs=200, data__val_source='none',
                                       train__checkpoint_every_steps=50)],
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
    # The step the Ctrl-C finished is saved, whatever the checkpoint cadence.
    step = checkpoints.latest_manager(tmp_path, read_only=True).latest_step()
    assert step and f'interrupted after step {step}; the last checkpoint, step {step} in' \
        in fatal[0]
    checkpoints.load_model(tmp_path)  # the checkpoint named is complete and verified


# --- what trained a checkpoint is recorded with it ---------------------------------------------

def copy_of(trained, tmp_path):
    workdir = tmp_path / 'copy'
    shutil.copytree(trained[0], workdir)
    return workdir


def test_a_missing_config_json_does_not_turn_the_resume_check_off(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    (workdir / workdir_lib.CONFIG_FILE).unlink()
    with pytest.raises(workdir_lib.WorkdirError, match=r'train.lr: 0.001 -> 0.0005; train.seed: 0 -> 1'):
        loop.train_and_evaluate(short_config(train__seed=1, train__lr=5e-4), workdir)
    assert not (workdir / workdir_lib.CONFIG_FILE).exists()  # no record rewritten


def test_a_checkpoint_with_no_record_of_its_config_resumes_only_when_allowed(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    (workdir / workdir_lib.CONFIG_FILE).unlink()
    shutil.rmtree(workdir / 'checkpoints' / '3' / checkpoints.RECORD)
    shutil.rmtree(workdir / 'checkpoints' / '3' / checkpoints.CHECKSUMS)  # an older format
    with pytest.raises(workdir_lib.WorkdirError, match='holds checkpoint step 3 but no record '
                                                       'of the config that trained it'):
        loop.train_and_evaluate(short_config(train__epochs=2), workdir)
    state = loop.train_and_evaluate(short_config(train__epochs=2), workdir,
                                         allow_config_changes=True)
    assert int(state.step) == 6


def test_an_unreadable_config_json_is_checked_against_the_checkpoint_record(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    (workdir / workdir_lib.CONFIG_FILE).write_text('{"train": ')
    with pytest.raises(workdir_lib.WorkdirError, match='train.seed: 0 -> 1'):
        loop.train_and_evaluate(short_config(train__seed=1), workdir)


def test_a_run_recorded_with_the_contrastive_variant_key_resumes(trained, tmp_path):
    """A workdir recorded when the contrastive loss was `train.contrastive.variant` (and had no
    margin key) reads as `loss` of the same value: it resumes, and another loss is refused."""
    workdir = copy_of(trained, tmp_path)
    # The readable copy and the checkpoint's own record (orbax's JSON item).
    for path in (workdir / workdir_lib.CONFIG_FILE,
                 workdir / 'checkpoints' / '3' / checkpoints.RECORD / 'metadata'):
        recorded = json.loads(path.read_text())
        contrastive = recorded.get('config', recorded)['train']['contrastive']
        contrastive['variant'] = contrastive.pop('loss')
        del contrastive['margin']
        path.write_text(json.dumps(recorded))
    with pytest.raises(workdir_lib.WorkdirError, match="train.contrastive.loss: 'code' -> 'paper'"):
        loop.train_and_evaluate(short_config(train__contrastive__loss='paper'), workdir)
    assert int(loop.train_and_evaluate(short_config(train__epochs=2), workdir).step) == 6


def test_a_run_recorded_with_the_softmax_names_resumes_and_loads(trained, tmp_path):
    """A workdir recorded when 'softmax' named exact attention (`model.attention`) and the
    softmax-kernel map (`model.feature_map`) reads as 'exact' and 'softmax_kernel': evaluation
    loads it, it resumes with those names and refuses others; a new config saying 'softmax' is
    an unknown name. (The tiny run's parameters are the same for ENLA and exact attention.)"""
    workdir = copy_of(trained, tmp_path)
    for path in (workdir / workdir_lib.CONFIG_FILE, workdir / checkpoints.MODEL_CONFIG,
                 workdir / 'checkpoints' / '3' / checkpoints.RECORD / 'metadata'):
        recorded = json.loads(path.read_text())
        model = recorded.get('config', recorded)
        model.get('model', model).update(attention='softmax', feature_map='softmax')
        path.write_text(json.dumps(recorded))
    model, _, _ = checkpoints.load_model(workdir)
    assert (model.enlca.attention, model.enlca.feature_map) == ('exact', 'softmax_kernel')
    with pytest.raises(ValueError, match=r"^model.attention='softmax': unknown attention; known"):
        loop.train_and_evaluate(short_config(model__attention='softmax'), workdir)
    with pytest.raises(workdir_lib.WorkdirError, match="model.attention: 'exact' -> 'enla'"):
        loop.train_and_evaluate(short_config(train__epochs=2), workdir)
    state = loop.train_and_evaluate(short_config(train__epochs=2, model__attention='exact'),
                                    workdir)
    assert int(state.step) == 6


def test_every_key_outside_the_safe_list_is_a_refused_change():
    """Each leaf of the full config, changed alone: refused unless `SAFE_TO_CHANGE` names it."""
    config = default_config().to_dict()
    flat = workdir_lib.flatten(config)
    assert 'train.lr_decay_epochs' in flat and 'train.contrastive.start_epoch' in flat
    for key, value in flat.items():
        changed = json.loads(json.dumps(config))
        *parents, leaf = key.split('.')
        node = functools.reduce(lambda d, k: d[k], parents, changed)
        node[leaf] = ['changed'] if isinstance(value, list) else f'{value!r}-changed'
        listed = workdir_lib.config_changes(config, changed)
        safe = any(key == s or key.startswith(s + '.') for s in workdir_lib.SAFE_TO_CHANGE)
        assert listed == ([] if safe else [f'{key}: {value!r} -> {node[leaf]!r}']), key
    recipe = [k for k in flat if k.startswith('train.') and not any(
        k == s for s in workdir_lib.SAFE_TO_CHANGE)]
    assert {'train.lr', 'train.lr_decay_epochs', 'train.lr_decay_factor', 'train.seed',
            'train.steps_per_epoch', 'train.contrastive.weight'} <= set(recipe)


def write_images(folder, count, size=48):
    folder.mkdir(exist_ok=True)
    photo = image_io.load_image(REPO / 'tests/fixtures/benchmark/Set5/HR/img_002.png')
    for i in range(count):
        image_io.save_image(folder / f'{i}.png', photo[i * 8:i * 8 + size, :size])


def test_changed_training_images_are_refused_and_changed_validation_restarts_best(tmp_path):
    train_dir, val_dir = tmp_path / 'train', tmp_path / 'val'
    write_images(train_dir, 2)
    write_images(val_dir, 1)
    folders = dict(data__source='folder', data__hr_dir=str(train_dir), data__val_source='folder',
                   data__val_hr_dir=str(val_dir), data__val_limit=0)
    workdir = tmp_path / 'run'
    loop.train_and_evaluate(short_config(**folders), workdir)
    write_images(train_dir, 3)
    with pytest.raises(workdir_lib.WorkdirError,
                       match=r'training images differ .*\(2 images, .* -> 3, '):
        loop.train_and_evaluate(short_config(**folders, train__epochs=2), workdir)
    assert checkpoints.latest_manager(workdir, read_only=True).all_steps() == [3]
    # Forced, on other validation images too: best/ moves aside and starts again.
    old_best = checkpoints.best_manager(workdir, read_only=True).all_steps()
    write_images(val_dir, 2)
    state = loop.train_and_evaluate(short_config(**folders, train__epochs=2), workdir,
                                         allow_config_changes=True)
    assert int(state.step) == 6 and old_best == [3]
    assert checkpoints.best_manager(workdir, read_only=True).all_steps() == [6]
    aside = [p.name for p in workdir.iterdir() if p.name.startswith('best.val-')]
    assert len(aside) == 1 and (workdir / aside[0] / '3').is_dir()


# --- damaged checkpoints ------------------------------------------------------------------------

def test_deleted_checksums_are_damage_not_an_old_format(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    step_dir = workdir / 'checkpoints' / '3'
    shutil.rmtree(step_dir / checkpoints.CHECKSUMS)
    flip_byte(data_files(step_dir / checkpoints.VARIABLES)[0])
    with pytest.raises(checkpoints.CheckpointError, match='checksums is missing'):
        checkpoints.load_model(workdir)
    with pytest.raises(checkpoints.CheckpointError,
                       match=f'checksums is missing.*move {step_dir} out of the workdir to start '
                             'afresh'):
        loop.train_and_evaluate(short_config(train__epochs=2), workdir)


def test_a_model_directory_without_its_checksums_is_damaged_unless_older(x2_model_dir, tmp_path,
                                                                         caplog):
    model = shutil.copytree(x2_model_dir, tmp_path / 'model')
    (model / 'checksums.json').unlink()
    with pytest.raises(checkpoints.CheckpointError, match='checksums.json is missing'):
        checkpoints.load_model(model)
    (model / checkpoints.FORMAT_FILE).unlink()  # as written before checksums existed
    checkpoints.load_model(model)
    assert any('written without checksums' in r.getMessage() for r in caplog.records)


def test_a_damaged_optimizer_state_or_latest_step_names_the_folder_to_move(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    # Step 6 from a second epoch, then a flipped byte in its optimizer state.
    loop.train_and_evaluate(short_config(train__epochs=2), workdir)
    step_dir = workdir / 'checkpoints' / '6'
    flip_byte(data_files(step_dir / checkpoints.TRAIN)[0])
    checkpoints.load_model(workdir)  # the model itself is intact
    # Depending on where the byte lands, the data decodes to other values (the checksum) or not
    # at all (compressed data that no longer decompresses): damage either way, in one line.
    with pytest.raises(checkpoints.CheckpointError,
                       match=rf"6(: \['opt_state'\].* does not match the checksum| cannot be "
                             rf"read \(.*\): the checkpoint is damaged).*move "
                             f'{step_dir} out of the workdir to resume from step 3'):
        loop.train_and_evaluate(short_config(train__epochs=3), workdir)
    shutil.move(step_dir, tmp_path / 'aside')
    state = loop.train_and_evaluate(short_config(train__epochs=2), workdir)
    assert int(state.step) == 6


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_evaluation_refuses_nan_and_infinite_weights(x2_model_dir, tmp_path, bad):
    config, variables = checkpoints.load_model_dir(x2_model_dir)
    variables['params']['tail_conv']['kernel'][0, 0, 0, 0] = bad
    checkpoints.save_model(tmp_path / 'bad', config, variables)
    with pytest.raises(checkpoints.CheckpointError, match='holds non-finite values'):
        checkpoints.load_model(tmp_path / 'bad')


def test_a_truncated_model_config_is_an_error_naming_it(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    (workdir / checkpoints.MODEL_CONFIG).write_text('{"scale": ')
    with pytest.raises(checkpoints.CheckpointError,
                       match=f'{workdir / checkpoints.MODEL_CONFIG} is unreadable'):
        checkpoints.load_model(workdir)


# --- the best model, metrics.jsonl, a full disk ---------------------------------------------------

@pytest.mark.filterwarnings('ignore:overflow encountered in cast:RuntimeWarning')  # lr 1e39
def test_best_never_holds_non_finite_weights(tmp_path):
    """lr 1e39, one step per epoch: step 1's loss is finite, its update is not; its validation
    must not offer the parameters to best/."""
    config = tiny_config(train__lr=1e39, train__steps_per_epoch=1, train__epochs=3,
                         train__checkpoint_every_steps=3)
    with pytest.raises(FloatingPointError, match='after step 1 are not finite.*as the best model'):
        loop.train_and_evaluate(config, tmp_path)
    assert checkpoints.best_manager(tmp_path, read_only=True).all_steps() == []


def test_metrics_are_strict_json_with_non_finite_values_flagged(tmp_path):
    logger = metric_writer.MetricLogger(tmp_path)
    logger.write(3, {'val/psnr_y': float('nan'), 'val/ssim_y': 0.5, 'train/loss': float('inf')})
    logger.close()
    line = (tmp_path / 'metrics.jsonl').read_text()

    def refuse(constant):
        raise ValueError(constant)

    record = json.loads(line, parse_constant=refuse)
    assert record == {'step': 3, 'val/psnr_y': None, 'val/ssim_y': 0.5, 'train/loss': None,
                      'nonfinite': ['val/psnr_y', 'train/loss']}


def test_lines_of_metrics_jsonl_that_are_not_records_are_left_out(tmp_path, caplog):
    lines = ['{"step": 3, "val/psnr_y": 30.0}', '123', '{"step": "x"}', '{"step": 9, "tr',
             '{"step": 6, "val/psnr_y": 31.0}', '{"step": 7, "train/loss": 0.1}']
    (tmp_path / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
    assert metric_writer.validated_steps(tmp_path) == {3, 6}
    metric_writer.drop_records_after(tmp_path, 6)
    assert (tmp_path / 'metrics.jsonl').read_text().splitlines() == [
        '{"step": 3, "val/psnr_y": 30.0}', '{"step": 6, "val/psnr_y": 31.0}']
    warned = sorted({r.getMessage() for r in caplog.records
                     if 'not a metrics record' in r.getMessage()})
    assert len(warned) == 3 and 'line 2 ' in warned[0] and 'line 4 ' in warned[2]


def test_a_full_disk_stops_training_with_one_error_and_keeps_the_checkpoints(tmp_path):
    with tmpfs(tmp_path / 'disk', '1300K') as disk:
        workdir = disk / 'run'
        with pytest.raises(files.WriteError, match=f'cannot write {workdir}/.*no space left'):
            loop.train_and_evaluate(tiny_config(train__epochs=50), workdir)
        steps = checkpoints.latest_manager(workdir, read_only=True).all_steps()
        assert steps, 'the disk filled before the first checkpoint: enlarge the tmpfs'
        _, _, step = checkpoints.load_model(workdir)  # the latest complete step is intact
        assert step == steps[-1]
        json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())
        assert all(json.loads(line) for line in
                   (workdir / 'metrics.jsonl').read_text().splitlines())


def test_a_checkpoint_write_failing_in_the_background_is_one_write_error(tmp_path):
    """Orbax writes arrays after `save` returns; a full disk found then surfaces when the save is
    waited for (tensorstore raises a ValueError) and must be the same one-line WriteError."""
    with tmpfs(tmp_path / 'disk', '300K') as disk:
        manager = checkpoints.latest_manager(disk / 'run')
        noise = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
        items = {checkpoints.VARIABLES: {'w': noise},
                 checkpoints.TRAIN: {'step': np.int32(1)}}
        checkpoints.save_checkpoint(manager, 1, items)
        with pytest.raises(files.WriteError, match=f'cannot write {disk}/run.*no space left'):
            checkpoints.wait_until_saved(manager)


def test_data_that_cannot_be_trained_on_is_a_one_line_error(tmp_path):
    folder = tmp_path / 'truncated'
    write_images(folder, 2)
    for path in folder.iterdir():
        path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(datasets.DataError, match=r"config.data.hr_dir: no image can be used"):
        loop.train_and_evaluate(short_config(data__source='folder',
                                                  data__hr_dir=str(folder)), tmp_path / 'a')
    with pytest.raises(datasets.DataError,
                       match=r'config.data.lr_patch=400: .*smaller than the LR patch 400x400'):
        loop.train_and_evaluate(short_config(data__lr_patch=400), tmp_path / 'b')
    assert not (tmp_path / 'b' / 'config.json').exists()


def test_ctrl_c_while_starting_is_one_line(tmp_path, monkeypatch):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, 'load_datasets', interrupted)
    try:
        error = loop.run_training(short_config(), tmp_path)
    except KeyboardInterrupt:
        pytest.fail('Ctrl-C while starting escaped as a traceback')
    assert error == 'interrupted while starting: no step was trained and nothing was saved'
    assert not (tmp_path / 'config.json').exists()


# --- a workdir that stays whole ----------------------------------------------------------------

def test_a_workdir_moved_while_training_stops_the_run_and_is_not_recreated(tmp_path, monkeypatch):
    workdir, moved = tmp_path / 'W', tmp_path / 'W2'
    real_save = checkpoints.save_checkpoint

    def save_then_move(manager, step, *args, **kwargs):
        real_save(manager, step, *args, **kwargs)
        if step == 3:
            checkpoints.wait_until_saved(manager)
            workdir.rename(moved)

    monkeypatch.setattr(checkpoints, 'save_checkpoint', save_then_move)
    config = short_config(train__epochs=2, train__checkpoint_every_steps=3, train__log_every=1)
    with pytest.raises(workdir_lib.WorkdirError,
                       match=rf'^{workdir} was moved or removed while training \(its train.lock '
                             r'is gone\): stopped without writing there again; move the workdir '
                             r'back \(or pass its new path as --workdir\) and run the same '
                             r'command to resume$'):
        loop.train_and_evaluate(config, workdir)
    assert not workdir.exists()
    assert checkpoints.latest_manager(moved, read_only=True).all_steps() == [3]
    assert (moved / workdir_lib.CONFIG_FILE).exists()
    steps = [json.loads(line)['step'] for line in (moved / 'metrics.jsonl').read_text().splitlines()]
    assert steps == [1, 2, 3]
    monkeypatch.setattr(checkpoints, 'save_checkpoint', real_save)
    state = loop.train_and_evaluate(config, moved)  # resumes where it was moved to
    assert int(state.step) == 6 and not workdir.exists()


def test_a_best_model_of_another_run_is_moved_aside_not_scored_as_this_run_s(tmp_path):
    workdir = tmp_path / 'W'
    loop.train_and_evaluate(tiny_config(train__epochs=1), workdir)
    best = checkpoints.best_manager(workdir, read_only=True)
    (old_step,) = best.all_steps()
    assert checkpoints.saved_record(best, old_step)['config']['train']['seed'] == 0
    shutil.rmtree(workdir / 'checkpoints')
    (workdir / workdir_lib.CONFIG_FILE).unlink()
    loop.train_and_evaluate(tiny_config(train__epochs=1, train__seed=3, train__lr=5e-4), workdir)
    best = checkpoints.best_manager(workdir, read_only=True)
    record = checkpoints.saved_record(best, best.latest_step())
    assert (record['config']['train']['seed'], record['config']['train']['lr']) == (3, 5e-4)
    aside = [p for p in workdir.iterdir() if p.name.startswith('best.run-')]
    assert len(aside) == 1 and (aside[0] / str(old_step)).is_dir()
    # The same run (more epochs: a safe change) keeps its best/.
    saving.restart_best_tracking(
        workdir, tiny_config(train__epochs=2, train__seed=3, train__lr=5e-4).to_dict(),
        record['data']['val'], is_main=True)
    assert (workdir / 'best').is_dir()
    assert len([p for p in workdir.iterdir() if p.name.startswith('best.')]) == 1


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (not an Exception, not a Ctrl-C)."""


def test_a_kill_right_after_a_save_loses_no_logged_step(tmp_path, monkeypatch):
    """A checkpoint between two log steps: the steps since the last log are checked and written
    before it is saved, so a kill right after the save loses none of them on resume."""
    real_save = checkpoints.save_checkpoint

    def save_then_die(manager, step, *args, **kwargs):
        real_save(manager, step, *args, **kwargs)
        checkpoints.wait_until_saved(manager)
        raise Killed

    monkeypatch.setattr(checkpoints, 'save_checkpoint', save_then_die)
    config = short_config(train__epochs=2, train__log_every=4, train__checkpoint_every_steps=3)
    with pytest.raises(Killed):
        loop.train_and_evaluate(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records] == [3]  # steps 1-3, logged before the save at 3
    monkeypatch.setattr(checkpoints, 'save_checkpoint', real_save)
    loop.train_and_evaluate(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records] == [3, 4, 6]  # every step is in one logged window
