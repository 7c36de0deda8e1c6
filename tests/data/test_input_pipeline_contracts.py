"""enlcn_jax.data.input_pipeline: the documented draw of every sample (checked against a
re-derivation from `np.random.default_rng([seed, step, row])`), the defaults, how far ahead and
on how many threads the loader computes, the `step` counter, and the exact one-line errors."""

import re
import threading
import time

import numpy as np
import pytest

from enlcn_jax.data.input_pipeline import (PatchLoader, check_counts, prefetch_to_device,
                                           random_crop_pair)
from enlcn_jax.data.sources import SRDataset
from enlcn_jax.data.transforms import dihedral

SCALE = 2


def _dataset(sizes=((9, 12), (14, 8), (10, 10))):
    rng = np.random.default_rng(0)
    lrs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    hrs = [rng.integers(0, 256, (h * SCALE, w * SCALE, 3), dtype=np.uint8) for h, w in sizes]
    return SRDataset(names=[f'im{i}' for i in range(len(sizes))], hr=hrs, lr=lrs, scale=SCALE)


def _reference_batch(ds, batch_size, p, seed, step, augment):
    """Batch `step` as the class docstring describes it, drawn row by row: image index, crop
    row y, crop column x, then (with `augment`) the dihedral index. Returns (batch, indices)."""
    lr, hr, ks = [], [], []
    for row in range(batch_size):
        rng = np.random.default_rng([seed, step, row])
        j = int(rng.integers(len(ds)))
        y = int(rng.integers(ds.lr[j].shape[0] - p + 1))
        x = int(rng.integers(ds.lr[j].shape[1] - p + 1))
        k = int(rng.integers(8)) if augment else 0
        ks.append(k)
        lr.append(dihedral(ds.lr[j][y:y + p, x:x + p], k))
        hr.append(dihedral(ds.hr[j][SCALE * y:SCALE * (y + p), SCALE * x:SCALE * (x + p)], k))
    return {'lr': np.stack(lr), 'hr': np.stack(hr)}, ks


def _assert_batches_equal(got, want):
    assert set(got) == {'lr', 'hr'}
    for key in ('lr', 'hr'):
        assert got[key].dtype == np.uint8
        np.testing.assert_array_equal(got[key], want[key])


# --- what a batch holds --------------------------------------------------------------------


def test_by_default_batches_are_seed_0_and_augmented():
    ds = _dataset()
    with PatchLoader(ds, 6, 4, start_step=3, num_workers=1, prefetch=1) as loader:
        for step in (3, 4):
            want, ks = _reference_batch(ds, 6, 4, seed=0, step=step, augment=True)
            assert any(ks), 'the reference batch should hold a transformed sample'
            _assert_batches_equal(next(loader), want)


@pytest.mark.parametrize('augment', [True, False])
def test_a_batch_is_the_documented_draw_for_its_seed_and_step(augment):
    ds = _dataset()
    with PatchLoader(ds, 5, 3, seed=11, augment=augment, num_workers=1, prefetch=1) as loader:
        for step in (0, 1):
            want, ks = _reference_batch(ds, 5, 3, seed=11, step=step, augment=augment)
            assert any(ks) == augment
            _assert_batches_equal(next(loader), want)


def test_step_is_the_step_of_the_batch_next_returns():
    ds = _dataset()
    with PatchLoader(ds, 2, 4, seed=5, start_step=3, num_workers=1, prefetch=1) as loader:
        for expected_step in (3, 4, 5):
            assert loader.step == expected_step
            want = loader.batch(loader.step)
            _assert_batches_equal(next(loader), want)
        assert loader.step == 6


# --- threads and look-ahead ----------------------------------------------------------------


class _Recording(PatchLoader):
    """A PatchLoader that records which steps its workers computed and how many at once."""

    def __init__(self, *args, delay=0.0, **kwargs):
        self.steps, self.active, self.max_active = [], 0, 0
        self._lock, self._delay = threading.Lock(), delay
        super().__init__(*args, **kwargs)

    def batch(self, step):
        with self._lock:
            self.steps.append(step)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self._delay)
            return super().batch(step)
        finally:
            with self._lock:
                self.active -= 1

    def settled_steps(self, expected):
        """The steps computed once at least `expected` are and nothing more comes in 0.2 s."""
        deadline = time.monotonic() + 10
        while len(self.steps) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        with self._lock:
            return sorted(self.steps)


@pytest.mark.parametrize('options, ahead', [({}, 8), ({'prefetch': 1}, 1),
                                            ({'prefetch': 3, 'num_workers': 1}, 3)])
def test_the_workers_compute_prefetch_batches_ahead_of_the_one_returned(options, ahead):
    """After `next()` returned batch `t`, batches up to `t + prefetch` and no further are
    computed (default prefetch: 8)."""
    with _Recording(_dataset(), 1, 4, start_step=5, **options) as loader:
        next(loader)
        assert loader.settled_steps(1 + ahead) == list(range(5, 6 + ahead))
        next(loader)
        assert loader.settled_steps(2 + ahead) == list(range(5, 7 + ahead))


@pytest.mark.parametrize('options, workers', [({}, 2), ({'num_workers': 1}, 1),
                                              ({'num_workers': 3}, 3)])
def test_at_most_num_workers_batches_are_computed_at_once(options, workers):
    """Slow batches, 8 queued at once: no more than `num_workers` (default 2) run together."""
    with _Recording(_dataset(), 1, 4, delay=0.03, **options) as loader:
        for _ in range(4):
            next(loader)
        loader.settled_steps(4 + 8)
    assert 1 <= loader.max_active <= workers


def test_prefetch_to_device_of_size_one_keeps_one_item_ahead():
    consumed = []

    def source():
        for i in range(3):
            consumed.append(i)
            yield i

    it = prefetch_to_device(source(), 1, lambda x: -x)
    assert next(it) == 0 and consumed == [0]
    assert next(it) == -1 and consumed == [0, 1]
    assert list(it) == [-2]


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize('size', [0, -1])
def test_prefetch_to_device_names_a_size_under_one(size):
    with pytest.raises(ValueError, match=rf'^prefetch_to_device: size must be >= 1, got {size}$'):
        prefetch_to_device(iter([]), size, lambda x: x)


def test_check_counts_without_where_starts_with_the_count_s_name():
    check_counts(lr_patch=1, batch_size=1)
    with pytest.raises(ValueError, match=r'^lr_patch must be >= 1, got 0$'):
        check_counts(lr_patch=0)


@pytest.mark.parametrize('name', ['batch_size', 'lr_patch', 'num_workers', 'prefetch'])
@pytest.mark.parametrize('value', [0, -1])
def test_a_count_under_one_is_named(name, value):
    counts = {'batch_size': 1, 'lr_patch': 1, 'num_workers': 1, 'prefetch': 1}
    PatchLoader(_dataset(), **counts).close()  # every count at its limit passes
    counts[name] = value
    with pytest.raises(ValueError, match=rf'^PatchLoader: {name} must be >= 1, got {value}$'):
        PatchLoader(_dataset(), **counts)


def test_an_empty_dataset_and_a_negative_start_step_are_named():
    with pytest.raises(ValueError, match=r'^PatchLoader: the dataset is empty$'):
        PatchLoader(SRDataset(names=[], hr=[], lr=[], scale=SCALE), 1, 4)
    with pytest.raises(ValueError, match=r'^PatchLoader: start_step must be >= 0, got -1$'):
        PatchLoader(_dataset(), 1, 4, start_step=-1)


@pytest.mark.parametrize('shard', [(2, 2), (-1, 2), (0, 3), (0, 0)])
def test_a_shard_outside_the_processes_or_not_dividing_the_batch_is_refused(shard):
    """Batch 4: (2, 2) and (-1, 2) name no process, 3 does not divide 4, 0 processes is none."""
    message = (f'PatchLoader: shard {shard} of a batch of 4: need 0 <= index < count and count '
               'dividing the batch')
    with pytest.raises(ValueError, match=f'^{re.escape(message)}$'):
        PatchLoader(_dataset(), 4, 4, shard=shard)


@pytest.mark.parametrize('shard', [(0, 2), (1, 2), (3, 4)])
def test_every_process_of_a_dividing_count_gets_its_rows(shard):
    index, count = shard
    with PatchLoader(_dataset(), 4, 4, seed=2, shard=shard, num_workers=1, prefetch=1) as loader:
        want, _ = _reference_batch(_dataset(), 4, 4, seed=2, step=0, augment=True)
        rows = slice(index * 4 // count, (index + 1) * 4 // count)
        _assert_batches_equal(next(loader), {key: want[key][rows] for key in want})


@pytest.mark.parametrize('h, w', [(9, 40), (40, 9)])
def test_an_image_smaller_than_the_patch_is_named_with_its_width_and_height(h, w):
    ds = _dataset(sizes=((10, 10), (h, w)))
    message = rf'^{{}}: LR image {w}x{h} \(WxH\) is smaller than the LR patch 10x10$'
    with pytest.raises(ValueError, match=message.format('im1')):
        PatchLoader(ds, 1, 10)
    with pytest.raises(ValueError, match=message.format('image')):
        random_crop_pair(ds.hr[1], ds.lr[1], 10, SCALE, np.random.default_rng(0))
    PatchLoader(ds, 1, 9).close()  # a side equal to the patch fits


def test_next_after_close_is_one_line():
    loader = PatchLoader(_dataset(), 1, 4, num_workers=1, prefetch=1)
    with loader:
        next(loader)
    with pytest.raises(RuntimeError, match=r'^PatchLoader is closed$'):
        next(loader)
