"""enlcn_jax.storage.checkpoints: what a model directory and a workdir's `checkpoints/` and
`best/` hold, every refusal in its exact one line (untrusted or changed code, an edited
`model_config.json`, damage, non-finite weights, another model), the retries of a step read
while a training run replaces it, and the CRC-32 checksums against `zlib` on the arrays' bytes.

Checkpoints are written with the module's own save functions, on a few tiny NumPy arrays (the
model config builds the tiny network; `load_model` does not compare variables with it), in
`tmp_path`: no training, a few orbax saves per test.
"""

import json
import logging as std_logging
import os
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging

from conftest import REPO, delete_array_data, error_message
from enlcn_jax.nn import features, models, registry
from enlcn_jax.storage import checkpoints, files

CONFIG = dict(scale=2, n_resblocks=1, n_feats=4, attention_every=1, num_random_features=4)
KERNELS = (REPO / 'examples' / 'my_kernels.py').read_text()
MAPS = 'ckpt_contract_maps'  # the module of researcher code the tests write and import
RELU = 'enlcn_jax.nn.features:relu_features'  # the spec that records the function


def tiny_variables(offset: float = 0.0) -> dict:
    """A variables tree of the shape `load_model` returns: float arrays and an integer one."""
    return {'params': {'conv': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3) + offset,
                                'bias': np.array([0.5, -1.5], np.float32)}},
            'random_features': {'count': np.array([3, 1], np.int32)}}


def record(config=None, **more) -> dict:
    return {'config': {'model': dict(CONFIG if config is None else config)}, **more}


def make_workdir(workdir, steps=(1,), config=None, keep=None, **record_items):
    """A workdir as training leaves it: `model_config.json` and `checkpoints/` with `steps`
    (variables offset by the step, a `train` item), each with its record; the manager keeps
    `keep` steps (None: its default)."""
    config = dict(CONFIG if config is None else config)
    (workdir / checkpoints.CHECKPOINTS_DIR).mkdir(parents=True)
    files.write_text(workdir / checkpoints.MODEL_CONFIG, json.dumps(config))
    with checkpoints.latest_manager(workdir, **({} if keep is None else {'keep': keep})) as manager:
        for step in steps:
            checkpoints.save_checkpoint(
                manager, step, {checkpoints.VARIABLES: tiny_variables(step),
                                checkpoints.TRAIN: {'step': np.array(step, np.int32)}},
                record(config, **record_items))
        checkpoints.wait_until_saved(manager)
    return workdir


def save_best(workdir, psnrs: dict, config=None, **record_items):
    """Offers `{step: psnr_y}` in order to `best/`."""
    with checkpoints.best_manager(workdir) as best:
        for step, psnr in psnrs.items():
            checkpoints.save_best(best, step, tiny_variables(step), psnr,
                                  record(config, **record_items))
        checkpoints.wait_until_saved(best)


def assert_trees_equal(tree, reference):
    assert tree.keys() == reference.keys()
    for key in reference:
        if isinstance(reference[key], dict):
            assert_trees_equal(tree[key], reference[key])
        else:
            assert type(tree[key]) is np.ndarray and tree[key].dtype == reference[key].dtype
            np.testing.assert_array_equal(tree[key], reference[key])


def crc32_by_path(tree, prefix='') -> dict:
    """The reference: CRC-32 of every array's elements, their bytes in row-major order."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(crc32_by_path(value, f"{prefix}['{key}']"))
        else:
            value = np.asarray(value)
            data = b''.join(value[index].tobytes() for index in np.ndindex(value.shape))
            out[f"{prefix}['{key}']"] = zlib.crc32(data)
    return out


@pytest.fixture
def maps_module(tmp_path, monkeypatch):
    """`ckpt_contract_maps.py` (the example kernels) importable from `tmp_path`; returns its
    path. The module is forgotten after the test. The feature-map registry does not run its
    behaviour check on it (seconds of eager JAX ops; `tests/nn` test the check) and its cache
    of resolved specs is this test's own."""
    path = tmp_path / f'{MAPS}.py'
    path.write_text(KERNELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(features.FEATURE_MAPS, '_check', lambda fn, **sizes: None)
    monkeypatch.setattr(features.FEATURE_MAPS, '_checked', {})
    yield path
    sys.modules.pop(MAPS, None)


@pytest.fixture
def no_pause(monkeypatch):
    monkeypatch.setattr(checkpoints, 'RETRY_PAUSE_S', 0.0)


# --- trusted code ----------------------------------------------------------------------------

def test_code_outside_the_package_is_refused_naming_targets_and_modules_once(tmp_path):
    config = {**CONFIG, 'feature_map': 'zz_maps:phi(rho=0.5)', 'projection': 'aa.proj:draw',
              'attention': 'zz_maps:attend', 'block': 'mm.blocks:Block'}
    where = tmp_path / 'model_config.json'
    message = error_message(lambda: checkpoints.check_trusted(config, where, False),
                            checkpoints.UntrustedCodeError)
    assert message == (f'{where} names code outside enlcn_jax (aa.proj:draw, mm.blocks:Block, '
                       'zz_maps:attend, zz_maps:phi): loading it imports, and so runs, module(s) '
                       'aa.proj, mm.blocks, zz_maps; pass --trust_code (trust_code=True) to import '
                       'them if you trust whoever made the checkpoint')
    assert issubclass(checkpoints.UntrustedCodeError, checkpoints.CheckpointError)
    checkpoints.check_trusted(config, where, True)  # trusted: nothing to refuse
    checkpoints.check_trusted({**CONFIG, 'feature_map': 'enlcn_jax.nn.features:relu'}, where,
                              False)
    checkpoints.check_trusted(['not', 'a', 'config'], where, False)  # from_config refuses it


def test_a_spec_that_does_not_parse_builds_no_model(tmp_path):
    where = tmp_path / 'model_config.json'
    bad = 'mod:fn(rho='
    cause = error_message(lambda: registry.parse_spec(bad))
    message = error_message(lambda: checkpoints.check_trusted({'feature_map': bad}, where, True),
                            checkpoints.CheckpointError)
    assert message == f'{where} builds no model: {cause}'


def test_load_model_refuses_untrusted_code_before_importing_it(tmp_path, maps_module):
    config = {**CONFIG, 'feature_map': f'{MAPS}:relu_squared'}
    model_dir = checkpoints.save_model(tmp_path / 'model', config, tiny_variables())
    sys.modules.pop(MAPS)  # saving imported it to fingerprint it
    message = error_message(lambda: checkpoints.load_model(model_dir),
                            checkpoints.UntrustedCodeError)
    assert message.startswith(f'{model_dir / checkpoints.MODEL_CONFIG} names code outside '
                              f'enlcn_jax ({MAPS}:relu_squared)')
    assert MAPS not in sys.modules
    model, _, _ = checkpoints.load_model(model_dir, trust_code=True)
    assert model.enlca.feature_map_fn() is sys.modules[MAPS].relu_squared


# --- code fingerprints -------------------------------------------------------------------------

def fingerprint(source: str) -> str:
    import hashlib  # pylint: disable=import-outside-toplevel
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def test_code_fingerprints_are_the_external_functions_source_hashes(maps_module):
    config = {**CONFIG, 'feature_map': f'{MAPS}:relu_squared', 'attention': 'enla'}
    assert checkpoints.code_fingerprints(config) == {f'{MAPS}:relu_squared': fingerprint(KERNELS)}
    assert checkpoints.code_fingerprints(CONFIG) == {}


def test_changed_code_is_refused_naming_it_unless_allowed_which_warns(tmp_path, maps_module,
                                                                     caplog):
    source = KERNELS + '\n\ndef sampler(key, m, d):\n    return None\n'
    maps_module.write_text(source)
    config = {**CONFIG, 'feature_map': f'{MAPS}:relu_squared'}
    target = f'{MAPS}:relu_squared'
    where = tmp_path / 'ckpt'
    now = {target: fingerprint(source)}
    for recorded in (None, {}, now, {'other_module:fn': '0' * 16}):  # nothing that changed
        checkpoints.check_code(config, recorded, where, False)
    changed = {target: '0' * 16}
    said = (f'{where}: the source of {target} changed since the checkpoint was saved (its '
            "file's fingerprint differs)")
    message = error_message(lambda: checkpoints.check_code(config, changed, where, False),
                            checkpoints.CheckpointError)
    assert message == (f'{said}: restore it, or pass --allow_changed_code '
                       '(allow_changed_code=True) to run it as it is now')
    caplog.clear()
    with caplog.at_level(std_logging.WARNING):
        checkpoints.check_code(config, changed, where, True)
    assert [r.getMessage() for r in caplog.records] == [
        f'{said}; running it as it is now, as asked: the scores no longer belong to the trained '
        'model']
    both = {**config, 'projection': f'{MAPS}:sampler'}
    message = error_message(lambda: checkpoints.check_code(
        both, {target: '0' * 16, f'{MAPS}:sampler': '1' * 16}, where, False),
        checkpoints.CheckpointError)
    assert message.startswith(f'{where}: the source of {target}, {MAPS}:sampler changed since')


def test_a_workdir_step_refuses_code_changed_since_it_was_saved(tmp_path, maps_module):
    config = {**CONFIG, 'feature_map': f'{MAPS}:relu_squared'}
    target = f'{MAPS}:relu_squared'
    workdir = make_workdir(tmp_path / 'w', steps=(2,), config=config,
                           code={target: fingerprint(KERNELS)})
    checkpoints.load_model(workdir, trust_code=True)
    maps_module.write_text(KERNELS + '\n# edited\n')
    message = error_message(lambda: checkpoints.load_model(workdir, trust_code=True),
                            checkpoints.CheckpointError)
    step_dir = workdir / checkpoints.CHECKPOINTS_DIR / '2'
    assert message.startswith(f'{step_dir}: the source of {target} changed since')
    _, _, step = checkpoints.load_model(workdir, trust_code=True, allow_changed_code=True)
    assert step == 2


def test_a_model_directory_records_and_checks_its_code(tmp_path, maps_module):
    config = {**CONFIG, 'feature_map': f'{MAPS}:relu_squared'}
    model_dir = checkpoints.save_model(tmp_path / 'model', config, tiny_variables())
    maps_module.write_text(KERNELS + '\n# edited\n')
    message = error_message(lambda: checkpoints.load_model(model_dir, trust_code=True),
                            checkpoints.CheckpointError)
    assert message.startswith(f'{model_dir}: the source of {MAPS}:relu_squared changed since')
    checkpoints.load_model(model_dir, trust_code=True, allow_changed_code=True)


# --- the model config recorded with the weights ------------------------------------------------

def test_an_edited_model_config_is_refused_naming_each_differing_key(tmp_path):
    path, where = tmp_path / 'model_config.json', tmp_path / 'best' / '4'
    recorded = {**CONFIG, 'attention': 'enla', 'gone': 1}
    edited = {**CONFIG, 'attention': 'exact', 'n_feats': 8, 'new': 'x'}
    message = error_message(lambda: checkpoints.check_model_config(edited, recorded, path, where),
                            checkpoints.CheckpointError)
    assert message == (
        f"{path} differs from the model config recorded with {where} (attention: 'enla' "
        "recorded, 'exact' in the file; gone: 1 recorded, '(absent)' in the file; n_feats: 4 "
        "recorded, 8 in the file; new: '(absent)' recorded, 'x' in the file): the weights belong "
        'to the recorded model; restore model_config.json to it')


def test_a_key_absent_on_one_side_differs_from_none_on_the_other(tmp_path):
    path, where = tmp_path / 'model_config.json', tmp_path / 'step'
    with_none = {**CONFIG, 'projection': None}
    for recorded, now, said in ((with_none, CONFIG, "None recorded, '(absent)' in the file"),
                                (CONFIG, with_none, "'(absent)' recorded, None in the file")):
        message = error_message(lambda: checkpoints.check_model_config(now, recorded, path, where),
                                checkpoints.CheckpointError)
        assert f'(projection: {said})' in message


def test_a_model_config_equal_once_recorded_as_today_passes(tmp_path):
    path, where = tmp_path / 'model_config.json', tmp_path / 'step'
    for recorded in (None, 'not a mapping', dict(CONFIG)):
        checkpoints.check_model_config(CONFIG, recorded, path, where)
    # An old spec name is today's; a function given in code is its spec; a tuple is a list.
    checkpoints.check_model_config({**CONFIG, 'attention': 'exact'},
                                   {**CONFIG, 'attention': 'softmax'}, path, where)
    checkpoints.check_model_config({**CONFIG, 'feature_map': features.relu_features},
                                   {**CONFIG, 'feature_map': RELU}, path, where)
    checkpoints.check_model_config({**CONFIG, 'shape': (1, 2)}, {**CONFIG, 'shape': [1, 2]},
                                   path, where)
    # A function that has no spec is compared as it is: the same one passes, another does not.
    fn = lambda x: x  # noqa: E731
    checkpoints.check_model_config({**CONFIG, 'feature_map': fn}, {**CONFIG, 'feature_map': fn},
                                   path, where)
    message = error_message(lambda: checkpoints.check_model_config(
        {**CONFIG, 'feature_map': fn}, {**CONFIG, 'feature_map': RELU}, path, where),
        checkpoints.CheckpointError)
    assert f"feature_map: '{RELU}' recorded, {repr(repr(fn))} in the file" in message


def test_load_model_checks_model_config_against_each_kind_of_record(tmp_path):
    model_dir = checkpoints.save_model(tmp_path / 'model', CONFIG, tiny_variables())
    workdir = make_workdir(tmp_path / 'w', steps=(3,))
    save_best(workdir, {3: 30.0})
    for path in (model_dir, workdir):
        files.write_text(path / checkpoints.MODEL_CONFIG, json.dumps({**CONFIG, 'n_feats': 8}))
    expected = {
        (model_dir, 'latest'): model_dir / checkpoints.FORMAT_FILE,
        (workdir, 'latest'): workdir / checkpoints.CHECKPOINTS_DIR / '3',
        (workdir, 'best'): workdir / checkpoints.BEST_DIR / '3'}
    for (path, which), where in expected.items():
        message = error_message(lambda: checkpoints.load_model(path, which),
                                checkpoints.CheckpointError)
        assert message == (f'{path / checkpoints.MODEL_CONFIG} differs from the model config '
                           f'recorded with {where} (n_feats: 4 recorded, 8 in the file): the '
                           'weights belong to the recorded model; restore model_config.json to it')


# --- orbax's log lines -------------------------------------------------------------------------

def log_record(level, pathname, message='m'):
    return std_logging.LogRecord('absl', level, pathname, 1, message, (), None)


def test_orbax_info_lines_are_dropped_and_its_warnings_kept():
    orbax_file = '/venv/lib/python3.11/site-packages/orbax/checkpoint/manager.py'
    keep = checkpoints._not_orbax_info  # pylint: disable=protected-access
    assert not keep(log_record(std_logging.INFO, orbax_file))
    assert not keep(log_record(std_logging.DEBUG, orbax_file))
    assert keep(log_record(std_logging.WARNING, orbax_file))
    assert keep(log_record(std_logging.INFO, '/repo/enlcn_jax/train/loop.py'))
    handler = logging.get_absl_handler()
    try:
        checkpoints.quiet_orbax_logs()
        assert keep in handler.filters
    finally:
        handler.removeFilter(keep)


def test_only_orbax_s_read_only_notice_is_dropped_while_a_reader_is_made(tmp_path, caplog):
    keep = checkpoints._not_read_only_notice  # pylint: disable=protected-access
    assert not keep(log_record(std_logging.WARNING, 'x', 'Given directory is read only=/a'))
    assert keep(log_record(std_logging.WARNING, 'x', 'The directory is read only'))
    make_workdir(tmp_path)
    with caplog.at_level(std_logging.WARNING):
        checkpoints.latest_manager(tmp_path, read_only=True).close()
    # Neither the notice nor orbax's warnings about options a reader would not need.
    assert [r.getMessage() for r in caplog.records if r.levelno >= std_logging.WARNING] == []
    assert keep not in std_logging.getLogger('absl').filters  # dropped only while making it


# --- managers ----------------------------------------------------------------------------------

def test_reader_and_writer_options():
    policy = object()
    options = checkpoints._options  # pylint: disable=protected-access
    reader = options('best', True, policy, best_mode='max')
    assert (reader.read_only, reader.create, reader.save_interval_steps, reader.best_mode) == (
        True, False, 0, 'max')
    assert reader.multiprocessing_options.barrier_sync_key_prefix == 'best'
    writer = options('checkpoints', False, policy)
    assert (writer.read_only, writer.preservation_policy, writer.cleanup_tmp_directories) == (
        False, policy, True)
    assert writer.multiprocessing_options.barrier_sync_key_prefix == 'checkpoints'


def test_each_manager_has_its_own_barriers_policy_and_metric(tmp_path, monkeypatch):
    """With several processes the two managers of a workdir save concurrently: their barriers
    are named after their folders; readers are read-only."""
    calls, options = [], checkpoints._options  # pylint: disable=protected-access

    def spy(name, read_only, policy, **kwargs):
        calls.append((name, read_only, policy, kwargs))
        return options(name, read_only, policy, **kwargs)
    monkeypatch.setattr(checkpoints, '_options', spy)
    checkpoints.latest_manager(tmp_path, read_only=True).close()
    checkpoints.best_manager(tmp_path, read_only=True).close()
    checkpoints.latest_manager(tmp_path, keep=5).close()
    (latest, best, writer) = calls
    assert latest[:3] == ('checkpoints', True, checkpoints.ocp.checkpoint_managers.LatestN(n=3))
    assert latest[3] == {} and writer[:2] == ('checkpoints', False) and writer[2].n == 5
    assert best[:2] == ('best', True) and best[2].n == 1
    metric = checkpoints._best_metric  # pylint: disable=protected-access
    assert best[2].get_metric_fn is metric and best[3] == {'best_fn': metric, 'best_mode': 'max'}
    assert metric({'psnr_y': 31.5, 'loss': 0.1}) == 31.5


def test_latest_keeps_the_last_steps_and_best_the_highest_psnr(tmp_path):
    workdir = make_workdir(tmp_path / 'w', steps=(1, 2, 3, 4, 5))
    with checkpoints.latest_manager(workdir, read_only=True) as manager:
        assert manager.directory == workdir / checkpoints.CHECKPOINTS_DIR
        assert manager.all_steps() == [3, 4, 5]
    other = make_workdir(tmp_path / 'two', steps=(1, 2, 3), keep=2)
    with checkpoints.latest_manager(other, read_only=True) as manager:
        assert manager.all_steps() == [2, 3]
    save_best(workdir, {1: 30.0, 2: 32.5, 3: 31.0})
    with checkpoints.best_manager(workdir, read_only=True) as best:
        assert best.directory == workdir / checkpoints.BEST_DIR
        assert best.all_steps() == [2] and best.best_step() == 2
    model, variables, step = checkpoints.load_model(workdir, 'best')
    assert step == 2 and isinstance(model, models.ENLCN)
    assert_trees_equal(variables, tiny_variables(2))
    _, variables, step = checkpoints.load_model(workdir)
    assert step == 5
    assert_trees_equal(variables, tiny_variables(5))


def test_a_relative_workdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with checkpoints.latest_manager('w') as manager:
        assert manager.directory == tmp_path / 'w' / checkpoints.CHECKPOINTS_DIR
    with checkpoints.best_manager('w') as manager:
        assert manager.directory == tmp_path / 'w' / checkpoints.BEST_DIR


def test_a_step_holds_its_items_checksums_and_record(tmp_path):
    workdir = make_workdir(tmp_path / 'w', steps=(7,), data={'fingerprint': 'abc'})
    step_dir = workdir / checkpoints.CHECKPOINTS_DIR / '7'
    items = {checkpoints.VARIABLES: tiny_variables(7),
             checkpoints.TRAIN: {'step': np.array(7, np.int32)}}
    saved = json.loads((step_dir / checkpoints.CHECKSUMS / 'metadata').read_text())
    assert saved == {name: crc32_by_path(tree) for name, tree in items.items()}
    with checkpoints.latest_manager(workdir, read_only=True) as manager:
        assert checkpoints.saved_record(manager, 7) == {
            'format': 2, **record(data={'fingerprint': 'abc'})}
        assert checkpoints.latest_record(manager) == (7, checkpoints.saved_record(manager, 7))
    delete_array_data(step_dir / checkpoints.VARIABLES)  # the record is read alone
    with checkpoints.latest_manager(workdir, read_only=True) as manager:
        assert checkpoints.saved_record(manager, 7)['data'] == {'fingerprint': 'abc'}
    with checkpoints.latest_manager(tmp_path / 'none') as manager:
        checkpoints.save_checkpoint(manager, 1, items)  # no record: the format alone
        checkpoints.wait_until_saved(manager)
        assert checkpoints.saved_record(manager, 1) == {'format': checkpoints.FORMAT}
    files.write_text(tmp_path / 'none' / checkpoints.MODEL_CONFIG, json.dumps(CONFIG))
    assert checkpoints.load_model(tmp_path / 'none')[2] == 1  # no model config to compare


def test_latest_record_without_a_folder_a_step_or_a_record(tmp_path):
    with checkpoints.best_manager(tmp_path, read_only=True) as manager:  # no best/
        assert checkpoints.latest_record(manager) == (None, None)
    (tmp_path / checkpoints.BEST_DIR).mkdir()
    with checkpoints.best_manager(tmp_path, read_only=True) as manager:
        assert checkpoints.latest_record(manager) == (None, None)
    workdir = make_workdir(tmp_path / 'w', steps=(1, 4))
    for step in (1, 4):
        remove_tree(workdir / checkpoints.CHECKPOINTS_DIR / str(step) / checkpoints.RECORD)
    with checkpoints.latest_manager(workdir, read_only=True) as manager:
        assert checkpoints.latest_record(manager) == (4, None)
        remove_tree(workdir / checkpoints.CHECKPOINTS_DIR)  # gone since the manager listed it
        assert checkpoints.latest_record(manager) == (None, None)


def remove_tree(path):
    for child in sorted(path.rglob('*'), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


def test_an_unreadable_record_is_damage_naming_it_and_the_step_to_resume_from(tmp_path):
    workdir = make_workdir(tmp_path / 'w', steps=(2, 5, 9))
    folder = workdir / checkpoints.CHECKPOINTS_DIR
    for step in (9, 2):
        (folder / str(step) / checkpoints.RECORD / 'metadata').write_text('{"format": 2')
    with checkpoints.latest_manager(workdir, read_only=True) as manager:
        message = error_message(lambda: checkpoints.latest_record(manager),
                                checkpoints.CheckpointError)
        prefix = f'{folder / "9" / checkpoints.RECORD} is unreadable ('
        assert message.startswith(prefix) and '\n' not in message
        assert message.endswith('): the checkpoint is damaged; move '
                                f'{folder / "9"} out of the workdir to resume from step 5')
        message = error_message(lambda: checkpoints.saved_record(manager, 2),
                                checkpoints.CheckpointError)
        assert message.endswith(f'; move {folder / "2"} out of the workdir to start afresh')


def test_the_resume_hint_names_the_folder_and_the_step_before_it(tmp_path):
    workdir = make_workdir(tmp_path / 'w', steps=(3, 6, 9))
    folder = workdir / checkpoints.CHECKPOINTS_DIR
    with checkpoints.latest_manager(workdir, read_only=True) as manager:
        hint = lambda step: checkpoints.resume_hint(manager, step)  # noqa: E731
        assert hint(9) == f'move {folder / "9"} out of the workdir to resume from step 6'
        assert hint(6) == f'move {folder / "6"} out of the workdir to resume from step 3'
        assert hint(3) == f'move {folder / "3"} out of the workdir to start afresh'


class FailingManager:
    """A manager whose save and wait fail as orbax's do on a full disk (a ValueError from
    tensorstore) or with `error`."""
    def __init__(self, directory, error):
        self.directory, self.error = directory, error

    def save(self, *args, **kwargs):
        raise self.error

    def wait_until_finished(self):
        raise self.error


@pytest.mark.parametrize('error', [ValueError('tensorstore: out of room\ndetails'),
                                   OSError(28, 'No space left on device')])
def test_a_failed_save_is_one_write_error_naming_the_folder(tmp_path, error):
    manager = FailingManager(tmp_path / 'best', error)
    items = {checkpoints.VARIABLES: tiny_variables()}
    reason = files.reason(error)
    with pytest.raises(files.WriteError) as raised:
        checkpoints.save_checkpoint(manager, 12, items)
    assert str(raised.value) == f'cannot write {tmp_path / "best" / "12"}: {reason}'
    with pytest.raises(files.WriteError) as raised:
        checkpoints.save_best(manager, 12, tiny_variables(), 30.0)
    assert str(raised.value) == f'cannot write {tmp_path / "best" / "12"}: {reason}'
    with pytest.raises(files.WriteError) as raised:
        checkpoints.wait_until_saved(manager)
    assert str(raised.value) == f'cannot write {tmp_path / "best"}: {reason}'


def test_other_errors_of_a_save_pass_unchanged(tmp_path):
    manager = FailingManager(tmp_path, KeyError('bug'))
    with pytest.raises(KeyError):
        checkpoints.save_checkpoint(manager, 1, {checkpoints.VARIABLES: tiny_variables()})
    with pytest.raises(KeyError):
        checkpoints.wait_until_saved(manager)


# --- model directories -------------------------------------------------------------------------

def test_save_model_writes_its_files_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {**CONFIG, 'feature_map': features.relu_features}
    directory = checkpoints.save_model('model', config, tiny_variables())
    assert directory == tmp_path / 'model'
    recorded = {**CONFIG, 'feature_map': RELU}
    assert json.loads((directory / checkpoints.FORMAT_FILE).read_text()) == {
        'format': 2, 'code': {}, 'model': recorded}
    assert (directory / checkpoints.MODEL_CONFIG).read_text() == json.dumps(
        recorded, indent=2, sort_keys=True)
    assert json.loads((directory / 'checksums.json').read_text()) == crc32_by_path(
        tiny_variables())
    config_read, variables = checkpoints.load_model_dir(directory)
    assert config_read == recorded
    assert_trees_equal(variables, tiny_variables())
    model, variables, step = checkpoints.load_model('model', 'best')  # `which` is ignored
    assert step is None and model.enlca.feature_map_fn() is features.relu_features
    assert_trees_equal(variables, tiny_variables())
    message = error_message(lambda: checkpoints.save_model('model', CONFIG, tiny_variables()),
                            FileExistsError)
    assert message == f'{tmp_path / "model" / "variables"} already exists; choose another --out'
    message = error_message(lambda: checkpoints.save_model(
        'other', {**CONFIG, 'feature_map': lambda x: x}, tiny_variables()))
    assert message.startswith('model.feature_map: ') and not (tmp_path / 'other').exists()
    (tmp_path / 'empty').mkdir()  # an existing folder without a model, or a missing parent
    for folder in ('empty', 'a/b/model'):
        checkpoints.save_model(folder, CONFIG, tiny_variables())
        assert_trees_equal(checkpoints.load_model(folder)[1], tiny_variables())


class FailingCheckpointer:
    """An orbax `StandardCheckpointer` whose save fails as on a full disk."""
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False

    def save(self, *args):
        raise OSError(28, 'No space left on device')


def test_a_model_directory_that_cannot_be_written_is_one_write_error(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.ocp, 'StandardCheckpointer', FailingCheckpointer)
    with pytest.raises(files.WriteError) as raised:
        checkpoints.save_model(tmp_path / 'model', CONFIG, tiny_variables())
    assert str(raised.value) == (f'cannot write {tmp_path / "model" / "variables"}: no space left '
                                 'on the device')


def test_a_folder_that_is_not_a_model_or_a_workdir_is_named(tmp_path):
    message = error_message(lambda: checkpoints.load_model_dir(tmp_path), FileNotFoundError)
    not_a_model = f'{tmp_path} is not a model directory (needs model_config.json and variables/)'
    assert message == not_a_model
    (tmp_path / 'variables').mkdir()
    assert error_message(lambda: checkpoints.load_model(tmp_path), FileNotFoundError) == not_a_model
    workdir = tmp_path / 'w'
    workdir.mkdir()
    neither = (f'{workdir} is neither a model directory (model_config.json and variables/) nor a '
               'training workdir (model_config.json and checkpoints/)')
    assert error_message(lambda: checkpoints.load_model(workdir), FileNotFoundError) == neither
    files.write_text(workdir / checkpoints.MODEL_CONFIG, json.dumps(CONFIG))
    assert error_message(lambda: checkpoints.load_model(workdir), FileNotFoundError) == neither
    (workdir / checkpoints.MODEL_CONFIG).unlink()
    (workdir / checkpoints.CHECKPOINTS_DIR).mkdir()
    assert error_message(lambda: checkpoints.load_model(workdir), FileNotFoundError) == neither
    message = error_message(lambda: checkpoints.load_model(workdir, 'last'))
    assert message == "which must be 'latest' or 'best', got 'last'"


def test_a_model_directory_s_checksums(tmp_path, caplog):
    directory = checkpoints.save_model(tmp_path / 'model', CONFIG, tiny_variables())
    checksum_file = directory / 'checksums.json'
    saved = json.loads(checksum_file.read_text())
    path = "['params']['conv']['bias']"
    checksum_file.write_text(json.dumps({**saved, path: saved[path] + 1}))
    message = error_message(lambda: checkpoints.load_model(directory), checkpoints.CheckpointError)
    assert message == (f'{directory}: {path} does not match the checksum saved with it (the file '
                       'is damaged); use another checkpoint')
    checksum_file.unlink()
    message = error_message(lambda: checkpoints.load_model(directory), checkpoints.CheckpointError)
    assert message == f'{checksum_file} is missing: the model directory is damaged'
    (directory / checkpoints.FORMAT_FILE).unlink()  # written before checksums existed
    caplog.clear()
    with caplog.at_level(std_logging.WARNING):
        _, variables, _ = checkpoints.load_model(directory)
    assert_trees_equal(variables, tiny_variables())
    assert [r.getMessage() for r in caplog.records] == [
        f'{directory} was written without checksums: its arrays cannot be verified']


def test_unreadable_json_of_a_checkpoint_is_damage_naming_the_file(tmp_path):
    directory = checkpoints.save_model(tmp_path / 'model', CONFIG, tiny_variables())
    for name in (checkpoints.MODEL_CONFIG, 'checksums.json', checkpoints.FORMAT_FILE):
        path = directory / name
        kept = path.read_text()
        path.write_text(kept[:-3])
        try:
            json.loads(path.read_text())
        except ValueError as e:
            cause = e
        message = error_message(lambda: checkpoints.load_model(directory),
                                checkpoints.CheckpointError)
        assert message == f'{path} is unreadable ({cause}): the checkpoint is damaged'
        path.write_text(kept)
    workdir = make_workdir(tmp_path / 'w')
    (workdir / checkpoints.MODEL_CONFIG).write_text('{')
    message = error_message(lambda: checkpoints.load_model(workdir), checkpoints.CheckpointError)
    assert message.startswith(f'{workdir / checkpoints.MODEL_CONFIG} is unreadable (')


def test_damaged_model_variables_are_one_line_naming_the_folder(tmp_path):
    directory = checkpoints.save_model(tmp_path / 'model', CONFIG, tiny_variables())
    delete_array_data(directory / 'variables')
    message = error_message(lambda: checkpoints.load_model(directory), checkpoints.CheckpointError)
    assert message.startswith(f'{directory / "variables"} cannot be read (') and '\n' not in message
    assert message.endswith('): the checkpoint is damaged; use another checkpoint')
    assert 'tensorstore_spec' not in message


def test_a_config_that_builds_no_model_is_named(tmp_path):
    directory = checkpoints.save_model(tmp_path / 'model', CONFIG, tiny_variables())
    bad = {**CONFIG, 'n_feat': 4}
    files.write_text(directory / checkpoints.MODEL_CONFIG, json.dumps(bad))
    cause = error_message(lambda: models.from_config(bad))
    message = error_message(lambda: checkpoints.load_model(directory), checkpoints.CheckpointError)
    assert message == f'{directory / checkpoints.MODEL_CONFIG} builds no model: {cause}'
    files.write_text(directory / checkpoints.MODEL_CONFIG, json.dumps(['a list']))
    message = error_message(lambda: checkpoints.load_model(directory), checkpoints.CheckpointError)
    assert message.startswith(f'{directory / checkpoints.MODEL_CONFIG} builds no model: ')


def test_a_workdir_config_that_builds_no_model_is_named(tmp_path):
    workdir = make_workdir(tmp_path / 'w')
    bad = {**CONFIG, 'n_feat': 4}
    files.write_text(workdir / checkpoints.MODEL_CONFIG, json.dumps(bad))
    cause = error_message(lambda: models.from_config(bad))
    message = error_message(lambda: checkpoints.load_model(workdir), checkpoints.CheckpointError)
    assert message == f'{workdir / checkpoints.MODEL_CONFIG} builds no model: {cause}'


def test_an_old_spec_name_recorded_in_model_config_still_loads(tmp_path):
    workdir = make_workdir(tmp_path / 'w', config={**CONFIG, 'attention': 'softmax'})
    model, _, _ = checkpoints.load_model(workdir)
    assert model.enlca.attention == 'exact'


def test_non_finite_weights_are_refused_naming_the_first_array(tmp_path):
    variables = tiny_variables()
    variables['params']['conv']['kernel'][1, 2] = np.inf
    variables['params']['conv']['bias'][0] = np.nan
    directory = checkpoints.save_model(tmp_path / 'model', CONFIG, variables)
    message = error_message(lambda: checkpoints.load_model(directory), checkpoints.CheckpointError)
    assert message == (f"{directory}: ['params']['conv']['bias'] holds non-finite values (a "
                       'diverged run); use an earlier checkpoint')
    workdir = tmp_path / 'w'
    (workdir / checkpoints.CHECKPOINTS_DIR).mkdir(parents=True)
    files.write_text(workdir / checkpoints.MODEL_CONFIG, json.dumps(CONFIG))
    save_best(workdir, {4: 30.0})
    with checkpoints.best_manager(workdir) as best:
        checkpoints.save_best(best, 6, variables, 31.0, record())
    message = error_message(lambda: checkpoints.load_model(workdir, 'best'),
                            checkpoints.CheckpointError)
    assert message.startswith(f'{workdir / checkpoints.BEST_DIR / "6"}: ')


# --- checksums and finiteness ------------------------------------------------------------------

def test_checksums_are_the_crc32_of_each_array_in_row_major_order():
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    tree = {'a': grid.T, 'b': {'c': np.array(7, np.int64)}, 'd': jnp.asarray(grid)}
    assert not tree['a'].flags.c_contiguous
    assert checkpoints.checksums(tree) == crc32_by_path(
        {'a': np.ascontiguousarray(grid.T), 'b': {'c': np.array(7, np.int64)}, 'd': grid})


def test_verify_checksums_names_the_first_array_that_differs_or_is_not_saved(tmp_path):
    tree = tiny_variables()
    saved = checkpoints.checksums(tree)
    checkpoints.verify_checksums(tree, saved, tmp_path)
    paths = list(saved)
    wrong = {**saved, paths[1]: saved[paths[1]] ^ 1, paths[2]: saved[paths[2]] ^ 1}
    expected = lambda path: (  # noqa: E731
        f'{tmp_path}: {path} does not match the checksum saved with it (the file is damaged); use '
        'another checkpoint')
    message = error_message(lambda: checkpoints.verify_checksums(tree, wrong, tmp_path),
                            checkpoints.CheckpointError)
    assert message == expected(paths[1])
    del saved[paths[0]]
    message = error_message(lambda: checkpoints.verify_checksums(tree, saved, tmp_path),
                            checkpoints.CheckpointError)
    assert message == expected(paths[0])


def test_first_non_finite_counts_the_first_float_array_with_nan_or_inf():
    assert checkpoints.first_non_finite({}) is None
    arrays = {'ints': np.array([1, 2]), 'fine': np.zeros(3, np.float16),
              'bad': np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32),
              'later': np.array([np.nan]), 'complex': np.array([1j])}
    assert checkpoints.first_non_finite(arrays) == ('bad', 3, 4)
    assert checkpoints.first_non_finite({'one': [np.nan, 0.0, 1.0]}) == ('one', 1, 3)
    assert checkpoints.first_non_finite({'c': np.array([np.inf * 1j, 0])}) == ('c', 1, 2)
    assert checkpoints.first_non_finite({k: arrays[k] for k in ('ints', 'fine')}) is None
    checkpoints.check_finite(tiny_variables(), 'where')


def test_shape_mismatches_name_each_array_that_differs_or_is_absent():
    saved = {'a': np.zeros((2, 3)), 'b': np.zeros(4), 'same': np.zeros(1)}
    expected = {'a': np.zeros((3, 2)), 'c': np.zeros(()), 'same': np.zeros(1)}
    assert checkpoints._shape_mismatches(saved, expected) == [  # pylint: disable=protected-access
        "['a']: (2, 3) in the checkpoint, (3, 2) in the model",
        "['b']: (4,) in the checkpoint, absent in the model",
        "['c']: absent in the checkpoint, () in the model"]


# --- restoring the latest step (resume) --------------------------------------------------------

def target(variables=None, step=0):
    return {checkpoints.VARIABLES: tiny_variables() if variables is None else variables,
            checkpoints.TRAIN: {'step': np.array(step, np.int32)}}


def test_restore_latest_restores_the_items_of_the_latest_step(tmp_path):
    with checkpoints.latest_manager(tmp_path) as manager:
        assert checkpoints.restore_latest(manager, target()) is None
    make_workdir(tmp_path / 'w', steps=(2, 5))
    with checkpoints.latest_manager(tmp_path / 'w', read_only=True) as manager:
        restored = checkpoints.restore_latest(manager, target())
        assert restored.keys() == {checkpoints.VARIABLES, checkpoints.TRAIN}
        for name, tree in target(tiny_variables(5), 5).items():
            assert checkpoints.checksums(restored[name]) == checkpoints.checksums(tree)
        only = checkpoints.restore_latest(manager, {checkpoints.VARIABLES: tiny_variables()})
        assert only.keys() == {checkpoints.VARIABLES}
        like = jax.tree.map(jnp.asarray, target())  # device arrays: restored as device arrays
        restored = checkpoints.restore_latest(manager, like)
        for leaf, model in zip(jax.tree.leaves(restored), jax.tree.leaves(like)):
            assert isinstance(leaf, jax.Array) and leaf.sharding == model.sharding


def test_a_train_state_that_cannot_be_restored_is_one_line_naming_the_folder(tmp_path):
    make_workdir(tmp_path / 'w', steps=(3, 6))
    folder = tmp_path / 'w' / checkpoints.CHECKPOINTS_DIR
    other = {**target(), checkpoints.TRAIN: {'step': np.array(0, np.int32),
                                             'momentum': np.zeros(3, np.float32)}}
    with checkpoints.latest_manager(tmp_path / 'w', read_only=True) as manager:
        with pytest.raises(checkpoints.CheckpointError) as raised:
            checkpoints.restore_latest(manager, other)
    cause = str(raised.value.__cause__).splitlines()[0]
    assert str(raised.value) == (f"{folder / '6'} cannot be read ({cause}): the checkpoint is "
                                 f"damaged; move {folder / '6'} out of the workdir to resume from "
                                 'step 3')


def test_restore_latest_refuses_another_model_naming_three_arrays(tmp_path):
    make_workdir(tmp_path / 'w', steps=(4,))
    folder = tmp_path / 'w' / checkpoints.CHECKPOINTS_DIR
    other = {'params': {'conv': {'kernel': np.zeros((3, 2), np.float32),
                                 'bias': np.zeros(3, np.float32)}},
             'random_features': {'count': np.zeros(2, np.int32), 'extra': np.zeros(1)}}
    with checkpoints.latest_manager(tmp_path / 'w', read_only=True) as manager:
        message = error_message(lambda: checkpoints.restore_latest(manager, target(other)),
                                checkpoints.CheckpointError)
        assert message == (
            f"step 4 in {folder} holds another model than the config builds (['params']['conv']"
            "['bias']: (2,) in the checkpoint, (3,) in the model; ['params']['conv']['kernel']: "
            "(2, 3) in the checkpoint, (3, 2) in the model; ['random_features']['extra']: absent "
            'in the checkpoint, (1,) in the model)')
        other['random_features']['more'] = np.zeros(1)
        message = error_message(lambda: checkpoints.restore_latest(manager, target(other)),
                                checkpoints.CheckpointError)
        assert message.endswith("['random_features']['extra']: absent in the checkpoint, (1,) in "
                                'the model; ...)')


def set_checksum(step_dir, name, path, value):
    checksum_file = step_dir / checkpoints.CHECKSUMS / 'metadata'
    saved = json.loads(checksum_file.read_text())
    saved[name][path] = value
    checksum_file.write_text(json.dumps(saved))


def restore_refusal(workdir) -> str:
    """The one-line `CheckpointError` that `restore_latest` raises for `workdir`'s latest step."""
    with checkpoints.latest_manager(workdir, read_only=True) as manager:
        return error_message(lambda: checkpoints.restore_latest(manager, target()),
                             checkpoints.CheckpointError)


def test_restore_latest_verifies_every_item_and_names_the_folder_to_move(tmp_path):
    make_workdir(tmp_path / 'w', steps=(3, 6))
    folder = tmp_path / 'w' / checkpoints.CHECKPOINTS_DIR
    set_checksum(folder / '6', checkpoints.TRAIN, "['step']", 0)
    message = restore_refusal(tmp_path / 'w')
    assert message == (f"{folder / '6'}: ['step'] does not match the checksum saved with it (the "
                       'file is damaged); use another checkpoint; move '
                       f"{folder / '6'} out of the workdir to resume from step 3")


def test_restore_latest_calls_missing_or_broken_files_damage(tmp_path):
    make_workdir(tmp_path / 'w', steps=(3, 6))
    folder = tmp_path / 'w' / checkpoints.CHECKPOINTS_DIR
    hint = f"move {folder / '6'} out of the workdir to resume from step 3"
    remove_tree(folder / '6' / checkpoints.CHECKSUMS)
    message = restore_refusal(tmp_path / 'w')
    assert message == (f"{folder / '6' / 'checksums'} is missing: the checkpoint is damaged; use "
                       f'another checkpoint; {hint}')
    delete_array_data(folder / '3' / checkpoints.TRAIN)
    remove_tree(folder / '6')
    message = restore_refusal(tmp_path / 'w')
    assert message.startswith(f"{folder / '3'} cannot be read (") and '\n' not in message
    assert message.endswith(f"): the checkpoint is damaged; move {folder / '3'} out of the "
                            'workdir to start afresh')


def test_a_step_folder_without_a_commit_or_metadata_is_damage(tmp_path, no_pause):
    make_workdir(tmp_path / 'w', steps=(3,))
    folder = tmp_path / 'w' / checkpoints.CHECKPOINTS_DIR
    (folder / '8').mkdir()
    message = restore_refusal(tmp_path / 'w')
    assert message == (f"{folder / '8'} cannot be read (no commit_success.txt: its save never "
                       f"finished): the checkpoint is damaged; move {folder / '8'} out of the "
                       'workdir to resume from step 3')
    remove_tree(folder / '8')
    metadata = folder / '3' / checkpoints.VARIABLES / '_METADATA'
    kept = metadata.read_text()
    metadata.write_text('{')
    cause = error_message(lambda: json.loads('{'))
    message = restore_refusal(tmp_path / 'w')
    assert message == (f"{folder / '3'} cannot be read ({cause}): the checkpoint is damaged; move "
                       f"{folder / '3'} out of the workdir to start afresh")
    metadata.write_text(kept)
    assert checkpoints.load_model(tmp_path / 'w')[2] == 3
    metadata.unlink()
    message = restore_refusal(tmp_path / 'w')
    assert message == (f"{folder / '3'} cannot be read (the metadata of variables is missing or "
                       f"unreadable): the checkpoint is damaged; move {folder / '3'} out of the "
                       'workdir to start afresh')
    message = error_message(lambda: checkpoints.load_model(tmp_path / 'w'),
                            checkpoints.CheckpointError)
    assert message == (f"{folder / '3'} cannot be read (the metadata of variables is missing or "
                       'unreadable): the checkpoint is damaged; use another checkpoint')


def test_damage_reasons_lose_tensorstore_s_spec(tmp_path):
    damaged = checkpoints._damaged(  # pylint: disable=protected-access
        tmp_path, 'NOT_FOUND: gone [tensorstore_spec={"a": 1}] [source_location=x]', 'then')
    assert str(damaged) == (f'{tmp_path} cannot be read (NOT_FOUND: gone): the checkpoint is '
                            'damaged; then')
    read_as_damage = checkpoints._read_as_damage  # pylint: disable=protected-access
    for error in (OSError(5, 'I/O error'), ValueError('bad\nvalue'), KeyError('k')):
        with pytest.raises(checkpoints.CheckpointError) as raised:
            with read_as_damage(tmp_path):
                raise error
        assert str(raised.value) == (f'{tmp_path} cannot be read ({files.reason(error)}): the '
                                     'checkpoint is damaged; use another checkpoint')
        assert raised.value.__cause__ is error
    original = checkpoints.CheckpointError('as it was')
    with pytest.raises(checkpoints.CheckpointError) as raised:
        with read_as_damage(tmp_path, 'move it'):
            raise original
    assert raised.value is original
    with pytest.raises(TypeError):
        with read_as_damage(tmp_path):
            raise TypeError('a bug, not damage')


# --- a workdir's step read while a training run writes it --------------------------------------

def test_a_step_written_without_checksums_or_record_loads_with_a_warning(tmp_path, caplog):
    workdir = make_workdir(tmp_path / 'w', steps=(2,))
    step_dir = workdir / checkpoints.CHECKPOINTS_DIR / '2'
    remove_tree(step_dir / checkpoints.CHECKSUMS)
    message = error_message(lambda: checkpoints.load_model(workdir), checkpoints.CheckpointError)
    assert message == (f'{step_dir / "checksums"} is missing: the checkpoint is damaged; use '
                       'another checkpoint')
    remove_tree(step_dir / checkpoints.RECORD)
    caplog.clear()
    with caplog.at_level(std_logging.WARNING):
        _, variables, step = checkpoints.load_model(workdir)
    assert step == 2
    assert_trees_equal(variables, tiny_variables(2))
    assert f'{step_dir} was written without checksums: its arrays cannot be verified' in [
        r.getMessage() for r in caplog.records]


def test_a_flipped_checksum_of_a_workdir_step_names_the_array(tmp_path, no_pause):
    workdir = make_workdir(tmp_path / 'w', steps=(2,))
    step_dir = workdir / checkpoints.CHECKPOINTS_DIR / '2'
    set_checksum(step_dir, checkpoints.VARIABLES, "['params']['conv']['kernel']", 1)
    message = error_message(lambda: checkpoints.load_model(workdir), checkpoints.CheckpointError)
    assert message == (f"{step_dir}: ['params']['conv']['kernel'] does not match the checksum "
                       'saved with it (the file is damaged); use another checkpoint')
    delete_array_data(step_dir / checkpoints.VARIABLES)
    message = error_message(lambda: checkpoints.load_model(workdir), checkpoints.CheckpointError)
    assert message.startswith(f'{step_dir} cannot be read (') and '\n' not in message
    assert message.endswith('): the checkpoint is damaged; use another checkpoint')


def test_no_step_of_a_kind_is_file_not_found_at_once(tmp_path, no_pause, monkeypatch):
    workdir = make_workdir(tmp_path / 'w', steps=())
    opened = count_managers(monkeypatch)
    for which, folder in (('latest', checkpoints.CHECKPOINTS_DIR), ('best', checkpoints.BEST_DIR)):
        message = error_message(lambda: checkpoints.load_model(workdir, which), FileNotFoundError)
        assert message == f'no {which} checkpoint in {workdir / folder}'
    assert opened == ['latest', 'best']


def count_managers(monkeypatch, fail_first: int = 0):
    """Records each manager `_read_workdir_step` opens; the first `fail_first` raise
    FileNotFoundError, as orbax does for a step deleted while it lists them."""
    opened = []
    for which, make in (('latest', checkpoints.latest_manager),
                        ('best', checkpoints.best_manager)):
        def opener(workdir, read_only=False, which=which, make=make):
            assert read_only
            opened.append(which)
            if len(opened) <= fail_first:
                raise FileNotFoundError('a step deleted while listing')
            return make(workdir, read_only=True)
        monkeypatch.setattr(checkpoints, f'{which}_manager', opener)
    return opened


def test_a_save_in_flight_is_waited_for_at_most_read_attempts_times(tmp_path, no_pause,
                                                                    monkeypatch):
    workdir = make_workdir(tmp_path / 'w', steps=())
    (workdir / checkpoints.CHECKPOINTS_DIR / '3.orbax-checkpoint-tmp-12').mkdir()
    opened = count_managers(monkeypatch)
    message = error_message(lambda: checkpoints.load_model(workdir), FileNotFoundError)
    assert message == f'no latest checkpoint in {workdir / checkpoints.CHECKPOINTS_DIR}'
    assert opened == ['latest'] * checkpoints.READ_ATTEMPTS


def test_a_manager_that_fails_while_listing_is_made_again(tmp_path, no_pause, monkeypatch):
    workdir = make_workdir(tmp_path / 'w', steps=(2,))
    opened = count_managers(monkeypatch, fail_first=checkpoints.READ_ATTEMPTS - 1)
    assert checkpoints.load_model(workdir)[2] == 2
    assert len(opened) == checkpoints.READ_ATTEMPTS
    opened = count_managers(monkeypatch, fail_first=checkpoints.READ_ATTEMPTS)
    assert error_message(lambda: checkpoints.load_model(workdir),
                         FileNotFoundError) == 'a step deleted while listing'
    assert len(opened) == checkpoints.READ_ATTEMPTS


def test_best_steps_without_a_best_are_read_again(tmp_path, no_pause, monkeypatch):
    """Steps listed but no best step: its metrics were read while the step was deleted."""
    workdir = make_workdir(tmp_path / 'w', steps=(1,))
    save_best(workdir, {2: 30.0})
    (workdir / checkpoints.BEST_DIR / '2' / 'metrics' / 'metrics').unlink()
    opened = count_managers(monkeypatch)
    message = error_message(lambda: checkpoints.load_model(workdir, 'best'), FileNotFoundError)
    assert message == f'no best checkpoint in {workdir / checkpoints.BEST_DIR}'
    assert opened == ['best'] * checkpoints.READ_ATTEMPTS


def test_a_damaged_step_is_read_twice_and_a_changing_one_until_the_last_attempt(
        tmp_path, no_pause, monkeypatch):
    workdir = make_workdir(tmp_path / 'w', steps=(2,))
    step_dir = workdir / checkpoints.CHECKPOINTS_DIR / '2'
    reads = []

    def read_step(manager, step, where):
        reads.append((step, where))
        raise checkpoints.CheckpointError(f'damaged {len(reads)}')
    monkeypatch.setattr(checkpoints, '_read_step', read_step)
    assert error_message(lambda: checkpoints.load_model(workdir),
                         checkpoints.CheckpointError) == 'damaged 2'
    assert reads == [(2, step_dir)] * 2
    # The step's folder changes at every read (a run deleting and writing it again).
    identities = iter(range(100))
    monkeypatch.setattr(checkpoints, '_folder_identity', lambda where: (next(identities), 0, 0))
    reads.clear()
    assert error_message(lambda: checkpoints.load_model(workdir),
                         checkpoints.CheckpointError) == f'damaged {checkpoints.READ_ATTEMPTS}'
    assert len(reads) == checkpoints.READ_ATTEMPTS
    # Gone after the read (deleted): read again, with the steps then on disk.
    calls = iter(range(100))
    monkeypatch.setattr(checkpoints, '_folder_identity',
                        lambda where: None if next(calls) % 2 else (1, 1, 1))
    reads.clear()
    assert error_message(lambda: checkpoints.load_model(workdir),
                         checkpoints.CheckpointError) == f'damaged {checkpoints.READ_ATTEMPTS}'
    # Gone before and after each read: never the same folder twice.
    monkeypatch.setattr(checkpoints, '_folder_identity', lambda where: None)
    reads.clear()
    assert error_message(lambda: checkpoints.load_model(workdir),
                         checkpoints.CheckpointError) == f'damaged {checkpoints.READ_ATTEMPTS}'
    # Changed during the first read and back as it was: not unchanged between two reads.
    sequence = iter([(1, 0, 0), (2, 0, 0)] + [(1, 0, 0)] * 4)
    monkeypatch.setattr(checkpoints, '_folder_identity', lambda where: next(sequence))
    reads.clear()
    assert error_message(lambda: checkpoints.load_model(workdir),
                         checkpoints.CheckpointError) == 'damaged 3'
    # Damaged, then written again and damaged: two failures of the new folder are needed.
    sequence = iter([(1, 0, 0), (1, 0, 0), (2, 0, 0), (2, 0, 0), (2, 0, 0), (2, 0, 0)])
    monkeypatch.setattr(checkpoints, '_folder_identity', lambda where: next(sequence))
    reads.clear()
    assert error_message(lambda: checkpoints.load_model(workdir),
                         checkpoints.CheckpointError) == 'damaged 3'


def test_a_step_read_again_after_a_failure_loads(tmp_path, no_pause, monkeypatch):
    workdir = make_workdir(tmp_path / 'w', steps=(2,))
    read_step, reads = checkpoints._read_step, []  # pylint: disable=protected-access

    def fail_once(*args):
        reads.append(args[1])
        if len(reads) == 1:
            raise checkpoints.CheckpointError('being deleted')
        return read_step(*args)
    monkeypatch.setattr(checkpoints, '_read_step', fail_once)
    _, variables, step = checkpoints.load_model(workdir)
    assert (step, reads) == (2, [2, 2])
    assert_trees_equal(variables, tiny_variables(2))


def test_a_step_that_is_not_the_latest_is_read_as_itself(tmp_path):
    """Reading a step reads that step's metadata, arrays, checksums and record, whatever step is
    the latest (in `best/`, a worse step is on disk until orbax deletes it)."""
    later = {**tiny_variables(9), 'extra': {'w': np.ones(4, np.float32)}}
    with checkpoints.latest_manager(tmp_path) as manager:
        for step, variables in ((1, tiny_variables(1)), (4, later)):
            checkpoints.save_checkpoint(manager, step, {checkpoints.VARIABLES: variables},
                                        {'step': step})
        checkpoints.wait_until_saved(manager)
        where = manager.directory / '1'
        variables, saved = checkpoints._read_step(  # pylint: disable=protected-access
            manager, 1, where)
        assert_trees_equal(variables, tiny_variables(1))
        assert saved == {'format': 2, 'step': 1}
        delete_array_data(tmp_path / checkpoints.CHECKPOINTS_DIR / '1' / checkpoints.VARIABLES)
        assert checkpoints._saved_checksums(manager, 1) == {  # pylint: disable=protected-access
            checkpoints.VARIABLES: crc32_by_path(tiny_variables(1))}
        assert checkpoints.saved_record(manager, 1) == {'format': 2, 'step': 1}


def test_the_identity_of_a_step_folder(tmp_path):
    folder_identity = checkpoints._folder_identity  # pylint: disable=protected-access
    assert folder_identity(tmp_path / 'gone') is None
    (tmp_path / 'step').mkdir()
    stat = os.stat(tmp_path / 'step')
    assert folder_identity(tmp_path / 'step') == (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)


def test_a_save_in_flight_is_a_temporary_folder_or_a_step_renamed_since(tmp_path):
    in_flight = checkpoints._save_in_flight  # pylint: disable=protected-access
    assert not in_flight(tmp_path / 'missing')
    assert not in_flight(tmp_path)
    (tmp_path / 'notes').mkdir()
    (tmp_path / '7a').mkdir()
    assert not in_flight(tmp_path)
    (tmp_path / '5.orbax-checkpoint-tmp-1733').mkdir()
    assert in_flight(tmp_path)
    (tmp_path / '5.orbax-checkpoint-tmp-1733').rmdir()
    (tmp_path / '12').mkdir()
    assert in_flight(tmp_path)


def test_a_read_error_orbax_wraps_in_a_bare_exception_is_damage_in_one_line(tmp_path):
    """orbax's array reads raise a bare `Exception` caused by tensorstore's `ValueError` (a
    flipped byte of compressed data): still one line, naming the step and what to do."""
    def wrapped():
        try:
            raise ValueError('FAILED_PRECONDITION: Data corruption detected')
        except ValueError as e:
            raise Exception('Encountered error while reading array index') from e  # pylint: disable=broad-exception-raised

    with pytest.raises(checkpoints.CheckpointError) as raised:
        with checkpoints._read_as_damage(tmp_path, 'then'):  # pylint: disable=protected-access
            wrapped()
    assert str(raised.value) == (f'{tmp_path} cannot be read (FAILED_PRECONDITION: Data '
                                 'corruption detected): the checkpoint is damaged; then')
    with pytest.raises(Exception, match='^other$'):  # any other bare Exception passes unchanged
        with checkpoints._read_as_damage(tmp_path, 'then'):  # pylint: disable=protected-access
            raise Exception('other')  # pylint: disable=broad-exception-raised
    with pytest.raises(TypeError):
        with checkpoints._read_as_damage(tmp_path, 'then'):  # pylint: disable=protected-access
            raise TypeError('not a read error')
