"""Contracts of `train/config_check.validate_config`: each refusal is one exact line naming the
config key; the boundaries pass; a check applies only where its source or model uses the key."""

import jax
import pytest

from conftest import error_message, tiny_config
from enlcn_jax.data import sources as data_lib
from enlcn_jax.train import config_check


def refusal(overrides: dict, error=ValueError) -> str:
    config = tiny_config()
    config.update_from_flattened_dict(overrides)
    return error_message(lambda: config_check.validate_config(config), error)


def passes(overrides: dict) -> None:
    config = tiny_config()
    config.update_from_flattened_dict(overrides)
    config_check.validate_config(config)


@pytest.mark.parametrize('overrides, message', [
    ({'data.source': 'web'}, "config.data.source='web'; choose one of ('tfds', 'folder', "
                             "'skimage')"),
    ({'data.val_source': 'web'}, "config.data.val_source='web'; choose one of ('tfds', "
                                 "'folder', 'skimage', 'none')"),
    ({'train.redraw.every': 'x'}, "config.train.redraw.every='x'; choose one of ('epoch', "
                                  "'steps', 'never')"),
    ({'train.lr_decay_epochs': (4, 2)}, 'config.train.lr_decay_epochs must be increasing, got '
                                        '(4, 2)'),
    ({'train.lr': 0.0}, 'config.train.lr must be finite and > 0.0, got 0.0'),
    ({'train.lr_decay_factor': 0.0}, 'config.train.lr_decay_factor must be finite and > 0.0, '
                                     'got 0.0'),
    ({'train.contrastive.weight': -0.5}, 'config.train.contrastive.weight must be >= 0, got -0.5'),
    ({'data.photos': ()}, 'config.data.photos is empty: name at least one scikit-image photo'),
    ({'data.val_photos': ()}, 'config.data.val_photos is empty: name at least one scikit-image '
                              'photo'),
    ({'data.lr_patch': 8}, "config.train.contrastive.loss='code' on config.data.lr_patch=8 (64 "
                           'positions per image): the loss needs at least 65 positions per '
                           'image for its rank windows, got 64 (use a larger patch)'),
])
def test_a_refused_value_is_one_line_naming_its_key(overrides, message):
    assert refusal(overrides) == message


@pytest.mark.parametrize('key', config_check.POSITIVE_COUNTS + (
    'data.lr_patch', 'data.batch_size', 'data.num_workers', 'train.eval_bucket'))
def test_every_count_must_be_at_least_one(key):
    assert refusal({key: 0}) == f'config.{key} must be >= 1, got 0'


def test_the_boundaries_pass():
    passes({key: 1 for key in config_check.POSITIVE_COUNTS})
    passes({'train.lr': 1e-30, 'train.lr_decay_factor': 1e-30, 'train.contrastive.weight': 0.0,
            'train.lr_decay_epochs': (2, 2)})
    passes({'data.val_source': 'none', 'data.val_photos': ()})
    for every in config_check.REDRAW_SCHEDULES:
        passes({'train.redraw.every': every})


def test_the_contrastive_loss_is_checked_only_where_it_is_used():
    passes({'data.lr_patch': 8, 'train.contrastive.weight': 0.0})
    passes({'data.lr_patch': 8, 'model.attention': 'none'})


def test_a_batch_that_does_not_split_over_the_devices_is_named(monkeypatch):
    monkeypatch.setattr(jax, 'device_count', lambda: 3)
    assert refusal({}) == 'config.data.batch_size=4 does not split over 3 devices'
    passes({'data.batch_size': 6})


@pytest.mark.parametrize('source_key, source, key, why', [
    ('data.source', 'folder', 'data.hr_dir', 'data.source=folder needs the HR training images'),
    ('data.source', 'folder', 'data.lr_dir', "DIV2K-layout LR images, or '' to make them"),
    ('data.val_source', 'folder', 'data.val_hr_dir', 'data.val_source=folder needs HR images'),
    ('data.val_source', 'folder', 'data.val_lr_dir', "LR images, or '' to make them"),
    ('data.source', 'tfds', 'data.tfds_data_dir', 'the prepared TFDS data_dir'),
    ('data.val_source', 'tfds', 'data.tfds_data_dir', 'the prepared TFDS data_dir'),
])
def test_a_folder_that_is_not_a_directory_is_named_with_why_it_is_needed(
        source_key, source, key, why, tmp_path):
    folders = {'data.hr_dir': str(tmp_path), 'data.val_hr_dir': str(tmp_path)}
    missing = str(tmp_path / 'missing')
    overrides = {**folders, source_key: source, key: missing}
    assert refusal(overrides, data_lib.DatasetNotFoundError) == (
        f'config.{key}={missing!r} is not a directory ({why})')
    passes({**overrides, key: str(tmp_path)})
    if key in ('data.hr_dir', 'data.val_hr_dir'):
        assert refusal({**overrides, key: ''}, data_lib.DatasetNotFoundError) == (
            f"config.{key}='' is not a directory ({why})")
    else:  # optional: '' makes the LR images, or uses TFDS's default data_dir
        passes({**overrides, key: ''})


def test_folders_are_checked_only_for_the_source_that_reads_them(tmp_path):
    missing = str(tmp_path / 'missing')
    passes({'data.hr_dir': missing, 'data.lr_dir': missing, 'data.val_hr_dir': missing,
            'data.val_lr_dir': missing, 'data.tfds_data_dir': missing})
    passes({'data.source': 'folder', 'data.hr_dir': str(tmp_path), 'data.photos': (),
            'data.tfds_data_dir': missing})
