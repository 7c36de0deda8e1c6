"""enlcn_jax.data.sources at the edges of its documented contract: every error's exact line, the
scale that passes and the ones refused, the DIV2K TFDS reader on a stand-in `tensorflow_datasets`
(no network here), the LR cache's file names, how far `iter_folder` loads ahead and in how many
threads, the bundled-photo source, and where `find_dataset` looks for each set."""

import errno
import hashlib
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from conftest import SHARED, benchmark_images, require_data
from enlcn_jax.data import sources
from enlcn_jax.data.image_io import load_image, save_image
from enlcn_jax.data.imresize import bicubic_downscale
from enlcn_jax.storage import files


def _random(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- SRDataset and the scale ---------------------------------------------------------------------


def test_srdataset_names_the_counts_that_differ():
    with pytest.raises(ValueError, match=r'^SRDataset: 2 names, 1 HR and 0 LR images$'):
        sources.SRDataset(names=['a', 'b'], hr=[np.zeros((2, 2, 3), np.uint8)], lr=[], scale=1)


@pytest.mark.parametrize('hr_dtype, lr_shape, message', [
    (np.float32, (4, 5, 3), 'got HR float32 [8, 10, 3]'),  # a float HR beside a uint8 LR
    (np.uint8, (4, 5), 'got HR uint8 [8, 10, 3]'),  # a gray LR whose HR has the right size
])
def test_srdataset_refuses_a_float_hr_and_a_gray_lr(hr_dtype, lr_shape, message):
    lr = np.zeros(lr_shape, np.uint8)
    with pytest.raises(ValueError) as info:
        sources.SRDataset(names=['p'], hr=[np.zeros((8, 10, 3), hr_dtype)], lr=[lr], scale=2)
    assert str(info.value) == (f'p: expected uint8 HR [8, 10, 3] for LR uint8 {list(lr_shape)} '
                               f'at x2, {message}')


def test_srdataset_message_gives_the_expected_hr_height_then_width():
    with pytest.raises(ValueError) as info:
        sources.SRDataset(names=['p'], hr=[np.zeros((8, 8, 3), np.uint8)],
                          lr=[np.zeros((4, 5, 3), np.uint8)], scale=2)
    assert str(info.value) == ('p: expected uint8 HR [8, 10, 3] for LR uint8 [4, 5, 3] at x2, '
                               'got HR uint8 [8, 8, 3]')


@pytest.mark.parametrize('scale', [0, -2, 2.5, '2'])
def test_a_scale_that_is_not_a_positive_integer_is_named(tmp_path, scale):
    save_image(tmp_path / 'a.png', _random((4, 4, 3)))
    with pytest.raises(ValueError) as info:
        sources.load_pair(tmp_path / 'a.png', scale)
    assert str(info.value) == f'scale must be a positive integer, got {scale!r}'


def test_scale_one_and_an_integral_float_are_accepted(tmp_path):
    hr = _random((5, 7, 3))
    save_image(tmp_path / 'a.png', hr)
    hr_1, lr_1 = sources.load_pair(tmp_path / 'a.png', 1)
    np.testing.assert_array_equal(hr_1, hr)
    assert lr_1.shape == hr.shape
    ds = sources.load_folder(tmp_path, 2.0)
    assert ds.scale == 2 and type(ds.scale) is int and ds.hr[0].shape == (4, 6, 3)


# --- load_pair with an LR folder, and the LR cache --------------------------------------------


def test_an_lr_of_the_wrong_size_is_named_with_both_sizes_width_first(tmp_path):
    hr_path, lr_dir = tmp_path / 'hr' / '0001.png', tmp_path / 'lr'
    save_image(hr_path, _random((41, 30, 3)))
    lr_path = sources.div2k_lr_path(lr_dir, '0001', 2)
    save_image(lr_path, _random((20, 14, 3)))
    with pytest.raises(ValueError) as info:
        sources.load_pair(hr_path, 2, lr_dir=lr_dir)
    assert str(info.value) == (f'{lr_path} (HR {hr_path}): LR size 14x20 (WxH) does not match '
                               'HR size 30x41 / 2 = 15x20')


def test_the_cache_file_is_named_by_stem_scale_and_a_hash_of_shape_and_pixels(tmp_path):
    """The name is the cache's key on disk: a cache filled by an earlier run is found by it."""
    hr = _random((12, 10, 3))
    save_image(tmp_path / 'hr' / 'img_001.png', hr)
    digest = hashlib.blake2b(repr(hr.shape).encode() + hr.tobytes(), digest_size=8).hexdigest()
    expected = tmp_path / 'cache' / 'X2' / f'img_001x2_{digest}.png'
    sources.load_pair(tmp_path / 'hr' / 'img_001.png', 2, cache_dir=tmp_path / 'cache')
    assert list((tmp_path / 'cache' / 'X2').iterdir()) == [expected]
    np.testing.assert_array_equal(load_image(expected), bicubic_downscale(hr, 2)[1])


def test_equal_pixels_in_another_shape_get_their_own_cached_lr(tmp_path):
    """Same stem, same bytes, transposed shape: the shape is part of the cache key."""
    wide = _random((8, 12, 3))
    tall = wide.reshape(12, 8, 3)
    cache = tmp_path / 'cache'
    for folder, hr in (('wide', wide), ('tall', tall)):
        save_image(tmp_path / folder / 'img.png', hr)
        hr_out, lr = sources.load_pair(tmp_path / folder / 'img.png', 2, cache_dir=cache)
        np.testing.assert_array_equal(lr, bicubic_downscale(hr, 2)[1])
        np.testing.assert_array_equal(hr_out, hr)
    assert len(list((cache / 'X2').iterdir())) == 2


def test_a_cached_lr_of_the_wrong_size_is_named(tmp_path):
    hr_path, cache = tmp_path / 'hr' / 'img.png', tmp_path / 'cache'
    save_image(hr_path, _random((9, 12, 3)))
    sources.load_pair(hr_path, 2, cache_dir=cache)
    (cached,) = (cache / 'X2').iterdir()
    save_image(cached, _random((4, 5, 3)))
    with pytest.raises(ValueError) as info:
        sources.load_pair(hr_path, 2, cache_dir=cache)
    assert str(info.value) == (f'{cached}: LR size 5x4 (WxH) does not match HR size 12x9 / 2 = '
                               '6x4')


def test_an_unwritable_cache_warns_with_the_write_error(tmp_path, monkeypatch, caplog):
    hr = _random((8, 6, 3))
    save_image(tmp_path / 'img.png', hr)

    def full_disk(path, image):
        raise files.write_error(path, OSError(errno.ENOSPC, 'No space left on device'))

    monkeypatch.setattr(sources, 'save_image', full_disk)
    with caplog.at_level('WARNING'):
        _, lr = sources.load_pair(tmp_path / 'img.png', 2, cache_dir=tmp_path / 'cache')
    np.testing.assert_array_equal(lr, bicubic_downscale(hr, 2)[1])
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith('LR cache not written: cannot write ')
    assert message.endswith('.png: no space left on the device')


# --- list_hr_images, iter_folder, load_folder ----------------------------------------------------


def test_hr_images_sharing_a_stem_are_refused_in_one_exact_line(tmp_path):
    for name in ('a.png', 'a.bmp'):
        save_image(tmp_path / name, _random((4, 4, 3)))
    with pytest.raises(sources.AmbiguousLRError) as info:
        sources.list_hr_images(tmp_path, 3, tmp_path / 'lr')
    assert str(info.value) == (
        f"HR images {tmp_path / 'a.bmp'} and {tmp_path / 'a.png'} share the stem 'a', so both "
        f"would be paired with the LR image {tmp_path / 'lr' / 'X3' / 'ax3.png'}: rename one of them")


def _div2k_folder(tmp_path, stems=('0001', '0002', '0003')):
    """HR images and LR images that are not their bicubic downscale (so the source shows)."""
    hr_dir, lr_dir = tmp_path / 'HR', tmp_path / 'LR'
    pairs = {}
    for i, stem in enumerate(stems):
        hr, lr = _random((10, 12, 3), seed=i), _random((5, 6, 3), seed=100 + i)
        save_image(hr_dir / f'{stem}.png', hr)
        save_image(sources.div2k_lr_path(lr_dir, stem, 2), lr)
        pairs[stem] = hr, lr
    return hr_dir, lr_dir, pairs


@pytest.mark.parametrize('prefetch', [0, 1, 2])
def test_iter_folder_yields_each_pair_from_the_lr_folder_in_file_order(tmp_path, prefetch):
    hr_dir, lr_dir, pairs = _div2k_folder(tmp_path)
    (hr_dir / '0002.png').write_bytes(b'not a png')
    items = list(sources.iter_folder(hr_dir, 2, lr_dir, prefetch=prefetch))
    assert [path for path, _ in items] == [hr_dir / f'{s}.png' for s in ('0001', '0002', '0003')]
    assert isinstance(items[1][1], ValueError) and '0002.png' in str(items[1][1])
    for (_, (hr, lr)), stem in zip([items[0], items[2]], ('0001', '0003')):
        np.testing.assert_array_equal(hr, pairs[stem][0])
        np.testing.assert_array_equal(lr, pairs[stem][1])


def test_iter_folder_makes_bicubic_lr_through_the_cache(tmp_path):
    hr = _random((9, 8, 3))
    save_image(tmp_path / 'hr' / 'img.png', hr)
    ((path, (hr_out, lr)),) = sources.iter_folder(tmp_path / 'hr', 2, cache_dir=tmp_path / 'c')
    hr_ref, lr_ref = bicubic_downscale(hr, 2)
    assert path == tmp_path / 'hr' / 'img.png'
    np.testing.assert_array_equal(hr_out, hr_ref)
    np.testing.assert_array_equal(lr, lr_ref)
    (cached,) = (tmp_path / 'c' / 'X2').iterdir()
    np.testing.assert_array_equal(load_image(cached), lr_ref)


def test_a_negative_prefetch_is_named(tmp_path):
    with pytest.raises(ValueError) as info:
        next(sources.iter_folder(tmp_path, 2, prefetch=-1))
    assert str(info.value) == 'iter_folder: prefetch must be >= 0, got -1'


class _Loads:
    """A stand-in for `sources.load_pair`: records which images started loading, and the most
    loads that ran at once (each takes `seconds`)."""

    def __init__(self, seconds=0.0):
        self.seconds = seconds
        self.started: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.running = self.most = 0

    def event(self, stem: str) -> threading.Event:
        return self.started.setdefault(stem, threading.Event())

    def __call__(self, path, scale, lr_dir=None, cache_dir=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.event(Path(path).stem).set()
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return np.zeros((2 * scale, 2 * scale, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)


def _folder_of(tmp_path, n):
    for i in range(n):
        save_image(tmp_path / f'{i}.png', np.zeros((2, 2, 3), np.uint8))
    return tmp_path


@pytest.mark.parametrize('prefetch', [None, 0, 1])
def test_iter_folder_loads_prefetch_images_ahead_and_no_more(tmp_path, monkeypatch, prefetch):
    """When the consumer holds the first pair, images 1..prefetch (default 2) are asked for,
    image prefetch + 1 is not."""
    folder = _folder_of(tmp_path, 5)
    loads = _Loads()
    monkeypatch.setattr(sources, 'load_pair', loads)
    kwargs = {} if prefetch is None else {'prefetch': prefetch}
    ahead = 2 if prefetch is None else prefetch
    items = sources.iter_folder(folder, 2, **kwargs)
    assert next(items)[0] == folder / '0.png'
    assert loads.event(str(ahead)).wait(2)
    assert not loads.event(str(ahead + 1)).wait(0.3)
    assert [path.name for path, _ in items] == ['1.png', '2.png', '3.png', '4.png']


def test_iter_folder_loads_in_one_background_thread(tmp_path, monkeypatch):
    loads = _Loads(seconds=0.05)
    monkeypatch.setattr(sources, 'load_pair', loads)
    assert len(list(sources.iter_folder(_folder_of(tmp_path, 4), 2, prefetch=3))) == 4
    assert loads.most == 1


@pytest.mark.parametrize('num_workers', [0, 1])
def test_load_folder_with_one_worker_decodes_one_image_at_a_time(tmp_path, monkeypatch,
                                                                  num_workers):
    loads = _Loads(seconds=0.05)
    monkeypatch.setattr(sources, 'load_pair', loads)
    ds = sources.load_folder(_folder_of(tmp_path, 3), 2, num_workers=num_workers)
    assert ds.names == ['0', '1', '2'] and loads.most == 1


def test_an_image_left_out_is_warned_of_with_its_path_and_error(tmp_path, caplog):
    hr_dir, lr_dir, pairs = _div2k_folder(tmp_path, stems=('0001', '0002'))
    missing = sources.div2k_lr_path(lr_dir, '0002', 2)
    missing.unlink()
    with caplog.at_level('WARNING'):
        ds = sources.load_folder(hr_dir, 2, lr_dir=lr_dir)
    assert ds.names == ['0001']
    np.testing.assert_array_equal(ds.lr[0], pairs['0001'][1])
    assert [r.getMessage() for r in caplog.records] == [
        f"left out of the dataset: {hr_dir / '0002.png'} (LR image for {hr_dir / '0002.png'} not "
        f"found: expected {missing} (DIV2K layout <lr_dir>/X2/<stem>x2.png))"]


def test_set5_and_set14_images_of_one_name_share_a_cache_without_mixing(tmp_path):
    """The real Set5 and Set14 both have an `img_001.png` (of other sizes): a cache keyed by the
    file name alone would hand Set14 the LR of Set5."""
    cache = tmp_path / 'cache'
    for name in ('Set5', 'Set14'):
        path = benchmark_images(name)[0]
        assert path.name == 'img_001.png'
        hr, lr = sources.load_pair(path, 4, cache_dir=cache)
        hr_ref, lr_ref = bicubic_downscale(load_image(path), 4)
        np.testing.assert_array_equal(hr, hr_ref)
        np.testing.assert_array_equal(lr, lr_ref)
    assert len(list((cache / 'X4').iterdir())) == 2


# --- DIV2K through tensorflow-datasets, on a stand-in ------------------------------------------


class _Builder:
    """What `load_div2k_tfds` uses of a TFDS builder: `data_dir`, `is_prepared`,
    `as_data_source(split=...)` (a sequence of `{'hr', 'lr'}` examples)."""

    def __init__(self, name, data_dir, examples, prepared):
        self.name, self.examples, self.prepared = name, examples, prepared
        self.data_dir = f'{data_dir or "/home/u/tensorflow_datasets"}/{name}/1.0.0'
        self.splits = []

    def is_prepared(self):
        return self.prepared

    def as_data_source(self, split):
        self.splits.append(split)
        return self.examples


@pytest.fixture
def fake_tfds(monkeypatch):
    """Installs a stand-in `tensorflow_datasets` module; returns the record of builders made.
    Set `record['examples']`, `record['prepared']` or `record['error']` before loading."""
    record = {'examples': [], 'prepared': True, 'error': None, 'builders': []}

    def builder(name, data_dir=None):
        if record['error'] is not None:
            raise record['error']
        made = _Builder(name, data_dir, record['examples'], record['prepared'])
        record['builders'].append(made)
        return made

    monkeypatch.setitem(sys.modules, 'tensorflow_datasets',
                        types.SimpleNamespace(builder=builder))
    return record


def test_div2k_examples_become_uint8_pairs_named_by_split_and_index(fake_tfds, tmp_path):
    hr0, lr0 = _random((33, 50, 3)), _random((16, 25, 3), seed=1)  # odd HR height: modcropped
    hr1, lr1 = _random((8, 6, 3), seed=2), _random((4, 3, 3), seed=3)
    # Nested lists: the reader converts whatever array-likes the source gives to uint8.
    fake_tfds['examples'] = [{'hr': hr0.tolist(), 'lr': lr0.tolist()},
                             {'hr': hr1.tolist(), 'lr': lr1.tolist()}]
    ds = sources.load_div2k_tfds('train[:2]', 2, data_dir=tmp_path)
    (builder,) = fake_tfds['builders']
    assert builder.name == 'div2k/bicubic_x2'
    assert builder.data_dir == f'{tmp_path}/div2k/bicubic_x2/1.0.0'
    assert builder.splits == ['train[:2]']
    assert ds.names == ['train[:2]/0', 'train[:2]/1'] and ds.scale == 2
    for got, want in zip([*ds.hr, *ds.lr], [hr0[:32], hr1, lr0, lr1]):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)


def test_a_div2k_example_whose_sizes_disagree_is_named(fake_tfds):
    fake_tfds['examples'] = [{'hr': _random((12, 9, 3)), 'lr': _random((4, 3, 3))},
                             {'hr': _random((8, 6, 3)), 'lr': _random((4, 3, 3))}]
    with pytest.raises(ValueError) as info:
        sources.load_div2k_tfds('validation', 3)
    assert str(info.value) == ('div2k/bicubic_x3 validation/1: LR size 3x4 (WxH) does not match '
                               'HR size 6x8 / 3 = 2x2')


DIV2K_HELP_VALID_X3 = (
    'DIV2K (div2k/bicubic_x3) must be prepared as array_record under ~/tensorflow_datasets; '
    'it cannot be downloaded without network access. Either\n'
    '  * prepare it on a machine with network access (needs tensorflow there):\n'
    '      tfds build div2k/bicubic_x3 --data_dir DIR --file_format=array_record\n'
    '    then copy DIR here and pass it as data_dir; or\n'
    '  * use the extracted DIV2K folders instead:\n'
    '      data.source=folder data.hr_dir=/path/DIV2K_valid_HR '
    'data.lr_dir=/path/DIV2K_valid_LR_bicubic')


def test_an_unprepared_div2k_gives_the_whole_help(fake_tfds):
    fake_tfds['prepared'] = False
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.load_div2k_tfds('validation', 3)
    assert str(info.value) == (
        "cannot open div2k/bicubic_x3 split 'validation': FileNotFoundError: div2k/bicubic_x3 "
        "not prepared in /home/u/tensorflow_datasets/div2k/bicubic_x3/1.0.0\n"
        + DIV2K_HELP_VALID_X3)


def test_the_help_names_the_data_dir_given_and_the_train_folders(fake_tfds, tmp_path):
    fake_tfds['error'] = RuntimeError('array_record files missing')
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.load_div2k_tfds('train', 4, data_dir=tmp_path / 'tfds')
    assert str(info.value) == (
        "cannot open div2k/bicubic_x4 split 'train': RuntimeError: array_record files missing\n"
        + DIV2K_HELP_VALID_X3.replace('x3', 'x4').replace('valid', 'train')
        .replace('~/tensorflow_datasets', str(tmp_path / 'tfds')))


def test_a_missing_tensorflow_datasets_is_a_dataset_not_found(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.load_div2k_tfds('validation', 3)
    first, help_text = str(info.value).split('\n', 1)
    assert first.startswith("cannot open div2k/bicubic_x3 split 'validation': ModuleNotFoundError: ")
    assert help_text == DIV2K_HELP_VALID_X3


def test_a_sliced_train_split_points_to_the_train_folders(fake_tfds):
    fake_tfds['prepared'] = False
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.load_div2k_tfds('train[:100]', 2)
    assert 'data.hr_dir=/path/DIV2K_train_HR' in str(info.value)


@pytest.mark.parametrize('scale', [1, 5])
def test_a_scale_div2k_does_not_have_is_named(scale):
    with pytest.raises(ValueError) as info:
        sources.load_div2k_tfds('train', scale)
    assert str(info.value) == f'DIV2K bicubic scale must be one of (2, 3, 4, 8), got {scale}'


# --- photos bundled with scikit-image -------------------------------------------------------------


def test_bundled_photos_in_the_given_order_with_gray_repeated_and_alpha_dropped(monkeypatch):
    gray, rgba = _random((7, 9)), _random((6, 5, 4), seed=1)
    monkeypatch.setattr(skimage.data, 'tiny_gray', lambda: gray, raising=False)
    monkeypatch.setattr(skimage.data, 'tiny_rgba', lambda: rgba, raising=False)
    ds = sources.load_skimage_photos(iter(['tiny_rgba', 'tiny_gray']), 2)
    assert ds.names == ['tiny_rgba', 'tiny_gray'] and ds.scale == 2
    for hr, lr, rgb in zip(ds.hr, ds.lr, [rgba[..., :3], np.stack([gray] * 3, axis=-1)]):
        hr_ref, lr_ref = bicubic_downscale(np.ascontiguousarray(rgb), 2)
        np.testing.assert_array_equal(hr, hr_ref)
        np.testing.assert_array_equal(lr, lr_ref)


def test_a_real_bundled_photo_is_loaded_offline():
    ds = sources.load_skimage_photos(['camera'], 4)
    camera = skimage.data.camera()
    np.testing.assert_array_equal(ds.hr[0][..., 1], camera)
    assert ds.lr[0].shape == (128, 128, 3)


def test_a_photo_that_cannot_be_had_offline_is_named(monkeypatch):
    def remote():
        raise OSError('no network')

    monkeypatch.setattr(skimage.data, 'remote_photo', remote, raising=False)
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.load_skimage_photos(['remote_photo'], 2)
    assert str(info.value) == 'skimage.data.remote_photo() is not available offline: OSError: no network'
    with pytest.raises(sources.DatasetNotFoundError,
                       match=r'^skimage\.data\.no_such_photo\(\) is not available offline: '
                             r'AttributeError: '):
        sources.load_skimage_photos(['no_such_photo'], 2)


@pytest.mark.parametrize('image, described', [
    (np.zeros((4, 4), np.float32), 'float32 [4, 4]'),
    (np.zeros((2, 4, 4, 3), np.uint8), 'uint8 [2, 4, 4, 3]'),
    (np.zeros((4,), np.uint8), 'uint8 [4]'),
])
def test_an_image_that_is_not_an_8_bit_photo_is_named(monkeypatch, image, described):
    monkeypatch.setattr(skimage.data, 'odd', lambda: image, raising=False)
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.load_skimage_photos(['odd'], 2)
    assert str(info.value) == f'skimage.data.odd() is not an 8-bit photo: {described}'


def test_binary_blobs_is_not_a_photo():
    with pytest.raises(sources.DatasetNotFoundError,
                       match=r'^skimage\.data\.binary_blobs\(\) is not an 8-bit photo: bool '
                             r'\[512, 512\]$'):
        sources.load_skimage_photos(['binary_blobs'], 2)


# --- find_dataset -------------------------------------------------------------------------------


@pytest.fixture
def in_empty_dir(tmp_path, monkeypatch):
    """cwd is an empty folder and $ENLCN_DATA unset: the default data dir is ./datasets."""
    work = tmp_path / 'cwd'
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(sources.DATA_ENV, raising=False)
    return work


def test_the_data_dir_is_the_argument_else_the_environment_else_datasets(in_empty_dir,
                                                                         monkeypatch):
    assert sources.data_dir_or_default() == Path('datasets')
    monkeypatch.setenv(sources.DATA_ENV, '/env/data')
    assert sources.data_dir_or_default() == Path('/env/data')
    assert sources.data_dir_or_default('/arg/data') == Path('/arg/data')


def _hr_dir(path: Path) -> Path:
    save_image(path / 'a.png', np.zeros((4, 4, 3), np.uint8))
    return path


def test_a_benchmark_is_found_by_any_case_with_its_lr_only_at_that_scale(tmp_path, in_empty_dir):
    root = tmp_path / 'data'
    hr = _hr_dir(root / 'Set5' / 'HR')
    (root / 'Set5' / 'LR_bicubic' / 'X4').mkdir(parents=True)
    assert sources.find_dataset('sET5', 4, data_dir=root) == sources.DatasetSource(
        'Set5', hr, root / 'Set5' / 'LR_bicubic')
    assert sources.find_dataset('SET5', 2, data_dir=root) == sources.DatasetSource('Set5', hr, None)


def test_the_default_data_dir_and_the_benchmark_subfolder_are_searched(tmp_path, in_empty_dir,
                                                                       monkeypatch):
    _hr_dir(in_empty_dir / 'datasets' / 'benchmark' / 'Urban100' / 'HR')
    assert sources.find_dataset('urban100', 2) == sources.DatasetSource(
        'Urban100', Path('datasets/benchmark/Urban100/HR'), None)
    # <root>/<Name>/HR is looked at before <root>/benchmark/<Name>/HR
    first = _hr_dir(in_empty_dir / 'datasets' / 'Urban100' / 'HR')
    assert sources.find_dataset('Urban100', 2).hr_dir.resolve() == first
    monkeypatch.setenv(sources.DATA_ENV, str(tmp_path / 'elsewhere'))
    with pytest.raises(sources.DatasetNotFoundError):
        sources.find_dataset('Urban100', 2)
    assert sources.find_dataset('Urban100', 2, data_dir='datasets').hr_dir.resolve() == first


def test_b100_is_found_under_its_other_name(tmp_path, in_empty_dir):
    root = tmp_path / 'data'
    hr = _hr_dir(root / 'benchmark' / 'BSD100' / 'HR')
    (root / 'benchmark' / 'BSD100' / 'LR_bicubic' / 'X3').mkdir(parents=True)
    assert sources.find_dataset('b100', 3, data_dir=root) == sources.DatasetSource(
        'B100', hr, root / 'benchmark' / 'BSD100' / 'LR_bicubic')
    b100 = _hr_dir(root / 'B100' / 'HR')
    assert sources.find_dataset('B100', 3, data_dir=root) == sources.DatasetSource(
        'B100', b100, None)


def test_div2k_validation_is_found_in_both_places_with_its_lr_beside_it(tmp_path, in_empty_dir):
    root = tmp_path / 'data'
    flat = _hr_dir(root / 'DIV2K_valid_HR')
    (root / 'DIV2K_valid_LR_bicubic' / 'X2').mkdir(parents=True)
    assert sources.find_dataset('div2k', 2, data_dir=root) == sources.DatasetSource(
        'DIV2K', flat, root / 'DIV2K_valid_LR_bicubic')
    assert sources.find_dataset('DIV2K', 4, data_dir=root).lr_dir is None
    nested = _hr_dir(root / 'DIV2K' / 'DIV2K_valid_HR')
    (root / 'DIV2K' / 'DIV2K_valid_LR_bicubic' / 'X4').mkdir(parents=True)
    assert sources.find_dataset('DIV2K', 4, data_dir=root) == sources.DatasetSource(
        'DIV2K', nested, root / 'DIV2K' / 'DIV2K_valid_LR_bicubic')


def test_a_folder_path_is_the_dataset_itself_named_after_the_folder(tmp_path, in_empty_dir,
                                                                    monkeypatch):
    plain = _hr_dir(tmp_path / 'mine')
    (plain / 'sub').mkdir()
    assert sources.find_dataset(str(plain / 'sub' / '..'), 2) == sources.DatasetSource(
        'mine', plain / 'sub' / '..', None)
    assert sources.find_dataset(str(plain), 2) == sources.DatasetSource('mine', plain, None)
    edsr = _hr_dir(tmp_path / 'edsr' / 'HR').parent
    (edsr / 'LR_bicubic' / 'X2').mkdir(parents=True)
    assert sources.find_dataset(str(edsr), 2) == sources.DatasetSource(
        'edsr', edsr / 'HR', edsr / 'LR_bicubic')
    assert sources.find_dataset(str(edsr), 3) == sources.DatasetSource('edsr', edsr / 'HR', None)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert sources.find_dataset('~/mine', 2) == sources.DatasetSource('mine', plain, None)


def test_a_relative_folder_path_is_named_after_the_folder_it_resolves_to(tmp_path, in_empty_dir):
    _hr_dir(in_empty_dir / 'photos')
    assert sources.find_dataset('.', 2) == sources.DatasetSource('cwd', Path('.'), None)
    assert sources.find_dataset('photos', 2) == sources.DatasetSource('photos', Path('photos'),
                                                                       None)


def test_an_unknown_name_lists_the_known_sets_and_how_to_get_them(in_empty_dir):
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.find_dataset('Set6', 2)
    assert str(info.value) == ("unknown dataset 'Set6': not a folder, nor one of Set5, Set14, "
                               'B100, Urban100, Manga109, DIV2K\n' + sources.HOW_TO_GET)


@pytest.mark.parametrize('name, places', [
    ('manga109', ['Manga109/HR', 'benchmark/Manga109/HR']),
    ('B100', ['B100/HR', 'BSD100/HR', 'benchmark/B100/HR', 'benchmark/BSD100/HR']),
    ('div2k', ['DIV2K/DIV2K_valid_HR', 'DIV2K_valid_HR']),
])
def test_a_set_not_found_lists_every_place_looked_at(tmp_path, in_empty_dir, name, places):
    root = tmp_path / 'data'
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.find_dataset(name, 2, data_dir=root)
    canonical = {'manga109': 'Manga109', 'B100': 'B100', 'div2k': 'DIV2K'}[name]
    looked = '\n'.join(f'  {root / p}' for p in places)
    assert str(info.value) == (f'dataset {canonical} not found (data dir {root}); looked in:\n'
                               f'{looked}\n' + sources.HOW_TO_GET)


def test_the_not_found_message_gives_absolute_paths(in_empty_dir):
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.find_dataset('Set14', 2)
    assert str(info.value).startswith(
        f'dataset Set14 not found (data dir {in_empty_dir / "datasets"}); looked in:\n'
        f'  {in_empty_dir / "datasets" / "Set14" / "HR"}\n')


def test_the_shared_benchmarks_are_found_in_their_edsr_layout():
    data_dir = require_data(SHARED / 'data')
    require_data(data_dir / 'benchmark' / 'Set14' / 'HR')
    source = sources.find_dataset('set14', 2, data_dir=data_dir)
    assert source == sources.DatasetSource('Set14', data_dir / 'benchmark' / 'Set14' / 'HR', None)
    assert len(sources.list_hr_images(source.hr_dir, 2)) == 14
