"""Contracts of `train/workdir.py` checked without training: the resume check against a
`config.json` or a checkpoint's record (checkpoints of two tiny arrays), the data and code
checks, the files `record_config` writes, the config digest, and the workdir lock."""

import hashlib
import json
import logging
import os
import socket
import textwrap
import time

import ml_collections
import numpy as np
import pytest

from enlcn_jax.nn import registry
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import workdir as workdir_lib

CONFIG = {'model': {'n_feats': 16, 'block': 'enlca'}, 'train': {'lr': 0.001, 'epochs': 2,
                                                               'contrastive': {'margin': None}}}


def save_step(workdir, step, record):
    """A checkpoint `step` of two tiny arrays with `record` (None: a checkpoint written before
    records existed, without the record item)."""
    with checkpoints.latest_manager(workdir) as manager:
        checkpoints.save_checkpoint(manager, step, {
            checkpoints.VARIABLES: {'w': np.zeros(2, np.float32)},
            checkpoints.TRAIN: {'step': np.array(step)}}, record)
        checkpoints.wait_until_saved(manager)
    if record is None:
        for item in (workdir / checkpoints.CHECKPOINTS_DIR / str(step)).glob('record*'):
            for path in item.rglob('*'):
                path.unlink()
            item.rmdir()


def assert_refused_then_warned(check, why, refusal, continuing, caplog):
    """`check(allow_changes)` raises `WorkdirError('<why>: <refusal>')` without leave, and with
    it returns, logging only the warning `'<why>; <continuing>'`; gives what it returned."""
    with pytest.raises(workdir_lib.WorkdirError) as raised:
        check(False)
    assert str(raised.value) == f'{why}: {refusal}'
    with caplog.at_level(logging.WARNING):
        result = check(True)
    assert [r.getMessage() for r in caplog.records] == [f'{why}; {continuing}']
    return result


def test_the_config_digest_is_12_hex_digits_of_the_sha256_of_sorted_json():
    expected = hashlib.sha256(b'{"a": [1, 2], "b": {"c": null}}').hexdigest()[:12]
    assert workdir_lib.config_digest({'b': {'c': None}, 'a': [1, 2]}) == expected


def test_a_workdir_with_nothing_in_it_resumes_anything_and_is_left_untouched(tmp_path):
    assert workdir_lib.check_resume(tmp_path, CONFIG) is None
    assert workdir_lib.check_resume(tmp_path / 'not-there', CONFIG) is None
    assert list(tmp_path.iterdir()) == []  # the check reads: no checkpoints/ made


def test_a_config_recorded_with_old_spec_names_or_without_a_model_has_no_changes():
    old = {'model': {'attention': 'softmax', 'feature_map': 'softmax(eps=0.0)', 'n_feats': 16}}
    new = {'model': {'attention': 'exact', 'feature_map': 'softmax_kernel(eps=0.0)',
                     'n_feats': 16, 'block': 'enlca'}, 'train': {'contrastive': {'margin': None}}}
    assert workdir_lib.config_changes(old, new) == []
    assert workdir_lib.config_changes({'seed': 1}, {**new, 'seed': 1}) == [
        'model.attention: (absent) -> \'exact\'',
        'model.feature_map: (absent) -> \'softmax_kernel(eps=0.0)\'',
        'model.n_feats: (absent) -> 16']


def test_a_recorded_key_the_new_config_lacks_is_a_change_even_when_it_was_none():
    old = {'seed': None, 'train': {'lr': 0.5, 'epochs': 1}}
    new = {'train': {'lr': 0.5, 'epochs': 1, 'contrastive': {'margin': None}},
           'model': {'block': 'enlca'}}
    assert workdir_lib.config_changes(old, new) == ['seed: None -> (absent)']


def test_code_fingerprints_cover_the_model_s_and_the_contrastive_loss_s_outside_functions():
    config = ml_collections.ConfigDict({
        'model': {'attention': 'exact', 'feature_map': 'json:dumps', 'projection': None},
        'train': {'contrastive': {'loss': 'textwrap:dedent'}}})
    assert workdir_lib.code_fingerprints(config) == {
        'json:dumps': registry.source_fingerprint(json.dumps),
        'textwrap:dedent': registry.source_fingerprint(textwrap.dedent)}


def test_a_changed_config_json_is_refused_in_one_line_or_continued_with_a_warning(
        tmp_path, caplog):
    workdir_lib.record_config(tmp_path, CONFIG, {'n_feats': 16})
    assert workdir_lib.check_resume(tmp_path, {**CONFIG, 'train': {**CONFIG['train'],
                                                                   'epochs': 9}}) is None
    changed = {**CONFIG, 'train': {**CONFIG['train'], 'lr': 0.002}, 'seed': 3}
    assert assert_refused_then_warned(
        lambda allow: workdir_lib.check_resume(tmp_path, changed, allow_changes=allow),
        f'{tmp_path} holds a run with another config (seed: (absent) -> 3; train.lr: 0.001 -> '
        '0.002)', 'use a new --workdir for a new run, or pass --allow_config_changes to '
        'continue this one with the change', 'continuing it with the change, as asked',
        caplog) is None


def test_an_unreadable_config_json_with_nothing_trained_says_to_move_it(tmp_path):
    (tmp_path / workdir_lib.CONFIG_FILE).write_text('{"model": ')
    with pytest.raises(workdir_lib.WorkdirError, match=(
            r'^\S*config.json is unreadable \(Expecting value: line 1 column 11 \(char 10\)\); '
            r'nothing was trained in it yet: move it away to start afresh$')):
        workdir_lib.check_resume(tmp_path, CONFIG)
    assert workdir_lib.check_resume(tmp_path, CONFIG, allow_changes=True) is None


def test_a_checkpoint_s_record_is_what_the_config_is_compared_with(tmp_path):
    workdir_lib.record_config(tmp_path, {**CONFIG, 'seed': 5}, {})  # not the latest step's
    record = {'config': CONFIG, 'data': {'train': None}}
    save_step(tmp_path, 3, record)
    assert workdir_lib.check_resume(tmp_path, CONFIG) == {'format': checkpoints.FORMAT, **record}
    with pytest.raises(workdir_lib.WorkdirError, match=r'\(seed: \(absent\) -> 5\)'):
        workdir_lib.check_resume(tmp_path, {**CONFIG, 'seed': 5})


def test_a_record_without_a_config_falls_back_to_config_json(tmp_path):
    workdir_lib.record_config(tmp_path, CONFIG, {})
    save_step(tmp_path, 2, {'data': {}})
    assert workdir_lib.check_resume(tmp_path, CONFIG) == {'format': checkpoints.FORMAT,
                                                          'data': {}}
    with pytest.raises(workdir_lib.WorkdirError, match=r'\(seed: \(absent\) -> 1\)'):
        workdir_lib.check_resume(tmp_path, {**CONFIG, 'seed': 1})
    (tmp_path / workdir_lib.CONFIG_FILE).write_text('[')
    with pytest.raises(workdir_lib.WorkdirError, match=(
            r'config.json is unreadable \(.*\); and checkpoint step 2 has no record of its '
            r'config: use a new --workdir, or pass --allow_config_changes to resume it with '
            r'this config$')):
        workdir_lib.check_resume(tmp_path, CONFIG)


def test_a_checkpoint_with_no_record_and_no_config_json_resumes_only_when_allowed(
        tmp_path, caplog):
    save_step(tmp_path, 4, None)
    assert assert_refused_then_warned(
        lambda allow: workdir_lib.check_resume(tmp_path, CONFIG, allow_changes=allow),
        f'{tmp_path} holds checkpoint step 4 but no record of the config that trained it (no '
        'record in the checkpoint, no config.json)', 'pass --allow_config_changes to resume it '
        'with this config, or use a new --workdir', 'resuming it with this config as asked',
        caplog) is None


TRAIN_A = {'images': 800, 'sha256': 'a' * 64}
TRAIN_B = {'images': 20, 'sha256': 'b' * 64}


def test_other_training_images_are_refused_naming_both_or_continued_with_a_warning(caplog):
    for record in (None, {}, {'data': {}}, {'data': {'train': None}},
                   {'data': {'train': TRAIN_A}}):
        workdir_lib.check_data(record, {'train': TRAIN_A, 'val': None})
    assert_refused_then_warned(
        lambda allow: workdir_lib.check_data({'data': {'train': TRAIN_A}}, {'train': TRAIN_B},
                                             allow_changes=allow),
        'the training images differ from the ones that trained the checkpoint (800 images, '
        f'fingerprint {"a" * 12} -> 20, {"b" * 12})', 'restore them, use a new --workdir, or '
        'pass --allow_config_changes to continue on these',
        'continuing on them as asked: the run no longer repeats a straight one', caplog)


def test_changed_functions_are_refused_naming_them_or_continued_with_a_warning(caplog):
    now = {'mine:attend': '1' * 16, 'mine:loss': '2' * 16}
    for record in (None, {}, {'code': None}, {'code': now}, {'code': {'mine:attend': '1' * 16}}):
        workdir_lib.check_code(record, now)
    record = {'code': {'mine:attend': '0' * 16, 'mine:loss': '3' * 16}}
    assert_refused_then_warned(
        lambda allow: workdir_lib.check_code(record, now, allow_changes=allow),
        "the source of mine:attend, mine:loss changed since the checkpoint was trained with it "
        "(its file's fingerprint differs)", 'restore it, use a new --workdir, or pass '
        '--allow_config_changes to continue with it as it is now', 'continuing with it as it '
        'is now, as asked: the run no longer repeats a straight one', caplog)


def test_record_config_writes_both_files_as_indented_sorted_json(tmp_path):
    workdir_lib.record_config(tmp_path / 'new', {'b': 1, 'a': (1, 2)}, {'z': None, 'y': 'x'})
    assert (tmp_path / 'new' / 'config.json').read_text() == json.dumps(
        {'a': [1, 2], 'b': 1}, indent=2)
    assert (tmp_path / 'new' / checkpoints.MODEL_CONFIG).read_text() == json.dumps(
        {'y': 'x', 'z': None}, indent=2)


def test_the_lock_names_its_holder_and_refuses_a_second_writer_until_released(tmp_path):
    workdir = tmp_path / 'run'
    lock_file = workdir / workdir_lib.LOCK_FILE
    lock_file.parent.mkdir()
    lock_file.write_text('an old holder that is gone\n' * 3)
    before = time.time()
    with workdir_lib.WorkdirLock(workdir) as lock:
        holder = lock_file.read_text()
        assert holder.startswith(f'pid {os.getpid()} on host {socket.gethostname()} since ')
        assert holder.endswith('\n') and holder.count('\n') == 1
        since = time.mktime(time.strptime(holder.split(' since ')[1].strip(),
                                          '%Y-%m-%d %H:%M:%S'))
        assert int(before) - 1 <= since <= time.time()
        with pytest.raises(workdir_lib.WorkdirError) as raised:
            with workdir_lib.WorkdirLock(workdir):
                pass
        assert str(raised.value) == (f'{workdir} is being trained by {holder.strip()}; wait for '
                                     'it to finish or use another --workdir')
        lock.check_in_place()
    with workdir_lib.WorkdirLock(workdir):  # released on exit
        pass


def test_a_holder_that_wrote_nothing_is_another_process(tmp_path):
    with workdir_lib.WorkdirLock(tmp_path):
        (tmp_path / workdir_lib.LOCK_FILE).write_text('')
        with pytest.raises(workdir_lib.WorkdirError, match=(
                r'is being trained by another process; wait')):
            with workdir_lib.WorkdirLock(tmp_path):
                pass


def test_a_new_workdir_is_made_with_its_missing_parents(tmp_path):
    with workdir_lib.WorkdirLock(tmp_path / 'runs' / 'x2' / 'try1'):
        assert (tmp_path / 'runs' / 'x2' / 'try1' / workdir_lib.LOCK_FILE).is_file()


def test_a_workdir_that_cannot_be_made_is_named_with_the_reason(tmp_path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(workdir_lib.WorkdirError, match=(
            rf'^cannot use {tmp_path}/file/run as a workdir: Not a directory$')):
        with workdir_lib.WorkdirLock(tmp_path / 'file' / 'run'):
            pass


@pytest.mark.parametrize('how', ['moved', 'removed', 'replaced'])
def test_a_workdir_moved_or_removed_while_locked_is_caught(tmp_path, how):
    workdir = tmp_path / 'run'
    with workdir_lib.WorkdirLock(workdir) as lock:
        if how == 'moved':
            workdir.rename(tmp_path / 'elsewhere')
        elif how == 'removed':
            (workdir / workdir_lib.LOCK_FILE).unlink()
        else:  # another file at the same path
            (workdir / workdir_lib.LOCK_FILE).rename(tmp_path / 'old.lock')
            (workdir / workdir_lib.LOCK_FILE).write_text('')
        with pytest.raises(workdir_lib.WorkdirError) as raised:
            lock.check_in_place()
    assert str(raised.value) == (
        f'{workdir} was moved or removed while training (its train.lock is gone): stopped '
        'without writing there again; move the workdir back (or pass its new path as '
        '--workdir) and run the same command to resume')
