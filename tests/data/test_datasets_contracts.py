"""Contracts of `data/datasets.py`: which loader each `config.data` source calls with which
fields, the validation cut, the one-line `DataError` naming the config key, and the dataset
fingerprint (equal exactly when the same images are loaded in the same order)."""

from __future__ import annotations

import numpy as np
import pytest

from enlcn_jax.data import datasets, sources
from enlcn_jax.train import default_config


def small_dataset(names, scale=2, seed=0) -> sources.SRDataset:
    rng = np.random.default_rng(seed)
    hr = [rng.integers(0, 256, (4 * scale, 6 * scale, 3), dtype=np.uint8) for _ in names]
    lr = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in names]
    return sources.SRDataset(list(names), hr, lr, scale)


@pytest.fixture
def loaders(monkeypatch):
    """Replaces the three loaders by recorders: `calls` lists `(loader, args)`; each returns
    a 3-image dataset named after its loader and the call's position."""
    calls = []

    def recorder(kind):
        def load(*args):
            calls.append((kind, args))
            return small_dataset([f'{kind}{len(calls)}_{i}' for i in range(3)])
        return load

    for kind in ('load_folder', 'load_div2k_tfds', 'load_skimage_photos'):
        monkeypatch.setattr(sources, kind, recorder(kind))
    return calls


def config(**data):
    config = default_config.get_config()
    config.model.scale = 3
    config.data.update(data)
    return config


def test_each_source_calls_its_loader_with_its_fields(loaders):
    train, val = datasets.load_datasets(config(
        source='folder', hr_dir='/h', lr_dir='/l', cache_dir='/c', num_workers=7,
        val_source='tfds', tfds_data_dir='/t', val_limit=0))
    assert loaders == [('load_folder', ('/h', 3, '/l', '/c', 7)),
                       ('load_div2k_tfds', ('validation', 3, '/t'))]
    loaders.clear()
    datasets.load_datasets(config(source='skimage', val_source='folder', val_hr_dir='/vh',
                                  val_lr_dir='/vl', cache_dir='/c', num_workers=1, val_limit=0))
    assert loaders[1] == ('load_folder', ('/vh', 3, '/vl', '/c', 1))
    assert train.names == ['load_folder1_0', 'load_folder1_1', 'load_folder1_2']
    assert val.names == ['load_div2k_tfds2_0', 'load_div2k_tfds2_1', 'load_div2k_tfds2_2']

    loaders.clear()
    datasets.load_datasets(config(source='tfds', lr_dir='', cache_dir='', tfds_data_dir='',
                                  val_source='folder', val_hr_dir='/vh', val_lr_dir='',
                                  num_workers=2, val_limit=0))
    # Empty strings are "not given": None, never ''.
    assert loaders == [('load_div2k_tfds', ('train', 3, None)),
                       ('load_folder', ('/vh', 3, None, None, 2))]

    loaders.clear()
    datasets.load_datasets(config(source='skimage', photos=('coffee',), val_source='skimage',
                                  val_photos=('rocket', 'chelsea'), val_limit=0))
    assert loaders == [('load_skimage_photos', (('coffee',), 3)),
                       ('load_skimage_photos', (('rocket', 'chelsea'), 3))]


def test_no_validation_source_gives_none(loaders):
    train, val = datasets.load_datasets(config(source='skimage', val_source='none'))
    assert val is None and len(train) == 3 and [c[0] for c in loaders] == ['load_skimage_photos']


@pytest.mark.parametrize('limit', [1, 2, 3, 5])
def test_val_limit_keeps_the_first_images_and_asks_tfds_for_only_those(loaders, limit):
    _, val = datasets.load_datasets(config(source='skimage', val_source='tfds',
                                           val_limit=limit))
    assert loaders[1] == ('load_div2k_tfds', (f'validation[:{limit}]', 3, None))
    full = small_dataset([f'load_div2k_tfds2_{i}' for i in range(3)])
    kept = min(limit, 3)
    assert val.names == full.names[:kept] and val.scale == full.scale
    for got, want in zip(val.hr + val.lr, full.hr[:kept] + full.lr[:kept]):
        np.testing.assert_array_equal(got, want)
    assert len(val.hr) == len(val.lr) == kept


@pytest.mark.parametrize('source, val_source, failing, key', [
    ('folder', 'none', 'load_folder', 'data.hr_dir'),
    ('tfds', 'none', 'load_div2k_tfds', 'data.source'),
    ('skimage', 'none', 'load_skimage_photos', 'data.source'),
    # The train loader works (another source); the validation one fails.
    ('skimage', 'folder', 'load_folder', 'data.val_hr_dir'),
    ('folder', 'tfds', 'load_div2k_tfds', 'data.val_source'),
    ('tfds', 'skimage', 'load_skimage_photos', 'data.val_source'),
])
@pytest.mark.parametrize('error', [OSError('bad file'), ValueError('bad file')])
def test_an_unusable_dataset_is_one_line_naming_its_config_key(
        monkeypatch, source, val_source, failing, key, error):
    def fails(*args):
        raise error

    for kind in ('load_folder', 'load_div2k_tfds', 'load_skimage_photos'):
        monkeypatch.setattr(sources, kind,
                            fails if kind == failing else lambda *args: small_dataset(['a']))
    with pytest.raises(datasets.DataError) as raised:
        datasets.load_datasets(config(source=source, val_source=val_source))
    assert str(raised.value) == f'config.{key}: no image can be used (bad file)'
    assert raised.value.__cause__ is error


def test_a_missing_dataset_is_raised_as_is_not_as_a_data_error(monkeypatch):
    missing = sources.DatasetNotFoundError('DIV2K is not prepared: see the help')

    def load(*args):
        raise missing

    monkeypatch.setattr(sources, 'load_div2k_tfds', load)
    with pytest.raises(sources.DatasetNotFoundError) as raised:
        datasets.load_datasets(config(source='tfds'))
    assert raised.value is missing


def test_the_fingerdigestcounts_the_images_and_is_sha256_over_names_shapes_and_pixels():
    assert datasets.fingerprint(None) is None
    dataset = small_dataset(['a', 'b', 'c'])
    digest = datasets.fingerprint(dataset)
    assert digest['images'] == 3 and len(digest['sha256']) == 64
    int(digest['sha256'], 16)
    copy = sources.SRDataset(list(dataset.names), [h.copy() for h in dataset.hr],
                             [l.copy() for l in dataset.lr], dataset.scale)
    assert datasets.fingerprint(copy) == digest
    # A non-contiguous view of the same pixels fingerprints as its contiguous copy.
    strided = sources.SRDataset(list(dataset.names), [np.repeat(h, 2, axis=1)[:, ::2]
                                                      for h in dataset.hr],
                                list(dataset.lr), dataset.scale)
    assert not strided.hr[0].flags['C_CONTIGUOUS']
    assert datasets.fingerprint(strided) == digest


def changed(dataset: sources.SRDataset, what: str) -> sources.SRDataset:
    names, hr, lr = list(dataset.names), [h.copy() for h in dataset.hr], \
        [l.copy() for l in dataset.lr]
    if what == 'name':
        names[1] = 'b2'
    elif what == 'hr pixel':
        hr[2][0, 0, 0] ^= 1
    elif what == 'lr pixel':
        lr[0][-1, -1, -1] ^= 1
    elif what == 'order':
        names, hr, lr = names[::-1], hr[::-1], lr[::-1]
    elif what == 'shape':  # the same bytes in another shape
        hr[0] = hr[0].reshape(hr[0].shape[1], hr[0].shape[0], 3)
        lr[0] = lr[0].reshape(lr[0].shape[1], lr[0].shape[0], 3)
    elif what == 'one image fewer':
        names, hr, lr = names[:2], hr[:2], lr[:2]
    elif what == 'name and pixels moved':  # the boundary between name and pixels moved
        names[0] = names[0] + '|'
    return sources.SRDataset(names, hr, lr, dataset.scale)


@pytest.mark.parametrize('what', ['name', 'hr pixel', 'lr pixel', 'order', 'shape',
                                  'one image fewer', 'name and pixels moved'])
def test_any_change_of_the_images_changes_the_fingerprint(what):
    dataset = small_dataset(['a', 'b', 'c'])
    before, after = datasets.fingerprint(dataset), datasets.fingerprint(changed(dataset, what))
    assert after['sha256'] != before['sha256']
    assert after['images'] == (2 if what == 'one image fewer' else 3)
