"""Properties of the training batches for all batch sizes, process counts and steps (hypothesis;
settings pinned in tests/conftest.py)."""

import hypothesis
import numpy as np
from hypothesis import strategies as st

from enlcn_jax.data.input_pipeline import PatchLoader, random_crop_pair
from enlcn_jax.data.sources import SRDataset

SCALE = 2
_RNG = np.random.default_rng(0)
_LR = [_RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((9, 12), (14, 8), (10, 10))]
DATASET = SRDataset(names=['a', 'b', 'c'], lr=_LR, scale=SCALE,
                    hr=[_RNG.integers(0, 256, (h * SCALE, w * SCALE, 3), dtype=np.uint8)
                        for h, w, _ in (lr.shape for lr in _LR)])


def batch(batch_size, step, shard=(0, 1), **options):
    """Batch number `step` of a loader's `shard`, computed without starting its workers."""
    loader = PatchLoader(DATASET, batch_size, 4, num_workers=1, prefetch=1, shard=shard,
                         **options)
    loader.close()
    return loader.batch(step)


@st.composite
def batches_and_counts(draw):
    count = draw(st.integers(1, 4))
    return count * draw(st.integers(1, 3)), count


@hypothesis.given(batches_and_counts(), st.integers(0, 10**6), st.integers(0, 3),
                  st.booleans())
def test_the_shards_of_n_processes_concatenate_to_the_one_process_batch(size_count, step, seed,
                                                                       augment):
    batch_size, count = size_count
    whole = batch(batch_size, step, seed=seed, augment=augment)
    shards = [batch(batch_size, step, (index, count), seed=seed, augment=augment)
              for index in range(count)]
    for key, shape in (('lr', (4, 4, 3)), ('hr', (4 * SCALE, 4 * SCALE, 3))):
        assert whole[key].shape == (batch_size,) + shape
        assert all(shard[key].shape == (batch_size // count,) + shape for shard in shards)
        np.testing.assert_array_equal(np.concatenate([shard[key] for shard in shards]),
                                      whole[key])


@hypothesis.given(st.integers(0, 10**6), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_every_sample_is_an_aligned_crop_of_one_image(step, batch_size, seed):
    """Without augmentation, every row's LR patch is some image's LR crop at (y, x) and its HR
    patch is that image's HR crop at (s y, s x) (brute force over images and positions)."""
    got = batch(batch_size, step, seed=seed, augment=False)
    for lr, hr in zip(got['lr'], got['hr']):
        found = [(j, y, x) for j, image in enumerate(DATASET.lr)
                 for y in range(image.shape[0] - 3) for x in range(image.shape[1] - 3)
                 if np.array_equal(image[y:y + 4, x:x + 4], lr)]
        assert any(np.array_equal(DATASET.hr[j][SCALE * y:SCALE * (y + 4),
                                                SCALE * x:SCALE * (x + 4)], hr)
                   for j, y, x in found)


@hypothesis.given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3),
                  st.integers(0, 2**32 - 1))
def test_a_crop_pair_lies_inside_both_images_at_aligned_positions(h, w, p, scale, seed):
    """`random_crop_pair` on index images: the LR crop is a p x p block of the LR image, and the
    HR crop is the block of the HR image that the LR block covers."""
    lr = np.arange(h * w).reshape(h, w, 1) * 10
    hr = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    hypothesis.assume(p <= min(h, w))
    hr_patch, lr_patch = random_crop_pair(hr, lr, p, scale, np.random.default_rng(seed))
    assert lr_patch.shape == (p, p, 1) and hr_patch.shape == (p * scale, p * scale, 1)
    np.testing.assert_array_equal(
        hr_patch, np.repeat(np.repeat(lr_patch, scale, axis=0), scale, axis=1))
    y, x = np.argwhere(lr == lr_patch[0, 0, 0])[0][:2]
    np.testing.assert_array_equal(lr[y:y + p, x:x + p], lr_patch)
