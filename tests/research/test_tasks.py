"""The research tasks: deterministic images, held-out sets apart from training, repeats that
repeat, reference estimates that are what they claim, and ceilings where they should be."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from enlcn_jax.data import imresize
from enlcn_jax.evaluation import metrics
from enlcn_jax.nn import models
from enlcn_jax.research import tasks

NAMES = list(tasks.TASKS)


def cells_of(image: np.ndarray, grid: int) -> np.ndarray:
    """`[G, G, c, c, 3]` the cells of an `[G c, G c, 3]` image."""
    c = image.shape[0] // grid
    return image.reshape(grid, c, grid, c, 3).transpose(0, 2, 1, 3, 4)


@pytest.mark.parametrize('name', NAMES)
def test_every_task_is_deterministic_from_the_seed_and_holds_its_test_images_out(name):
    task = tasks.get_task(name)
    assert task.name == name and '\n' not in task.describe()
    size = task.lr_size
    first = tasks.draw_batch(task, np.random.default_rng(5), 3)
    assert first['lr'].shape == (3, size, size, 3) and first['lr'].dtype == np.uint8
    assert first['hr'].shape == (3, 2 * size, 2 * size, 3) and first['hr'].dtype == np.uint8
    again = tasks.draw_batch(task, np.random.default_rng(5), 3)
    other = tasks.draw_batch(task, np.random.default_rng(6), 3)
    assert all(np.array_equal(first[k], again[k]) for k in ('lr', 'hr'))
    assert not np.array_equal(first['lr'], other['lr'])
    # Seeds train on different streams; the held-out images are one fixed set, in none of them.
    streams = [next(tasks.training_batches(task, seed, 8))['hr'] for seed in (0, 1)]
    assert not np.array_equal(*streams)
    held_out = tasks.held_out_set(task, 8)
    assert held_out.names[0] == f'{name}_0' and held_out.scale == task.scale
    rng = np.random.default_rng(tasks.TEST_SET_ENTROPY)
    redrawn = [task.draw(rng, held_out=True) for _ in range(8)]
    assert all(np.array_equal(a, b.hr) for a, b in zip(held_out.hr, redrawn))
    assert all(np.array_equal(a, b.lr) for a, b in zip(held_out.lr, redrawn))
    assert not any(np.array_equal(test, train) for test in held_out.hr
                   for stream in streams for train in stream)


def test_the_mosaic_is_drawn_again_independently():
    """The mosaic, re-derived: colours, layout, casts drawn in that order; each cell an
    8 x 8 HR block; LR the bicubic downscale of the cast mosaic. Several images in a row, so
    the generator is consumed in that order."""
    task = tasks.get_task('mosaic')
    rng, reference = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(4):
        sample = task.draw(rng)
        colours = reference.uniform(0.25, 0.75, (3, 3))
        layout = reference.permutation([0, 1, 2] * 5 + [0]).reshape(4, 4)
        casts = 0.06 * reference.standard_normal((4, 4))
        block = np.ones((8, 8, 1))
        hr = np.kron(colours[layout], block)
        observed = np.kron(colours[layout] + casts[..., None], block)
        np.testing.assert_array_equal(sample.hr, np.round(np.clip(hr, 0, 1) * 255))
        lr = imresize.imresize(observed, scale=0.5)
        np.testing.assert_array_equal(sample.lr, np.round(np.clip(lr, 0, 1) * 255))
        np.testing.assert_array_equal(sample.layout, layout)
    # Today's held-out set (PSNRs in docs/results.md were scored on these exact images).
    held_out = tasks.held_out_set(task)
    digest = hashlib.sha256()
    for image in held_out.hr + held_out.lr:
        digest.update(image.tobytes())
    assert digest.hexdigest() == '35e27ba108c5448617a94f635d5cb236b4c8fb6d80da836c26b9cbd10f094148'


@pytest.mark.parametrize('name', NAMES)
def test_own_and_oracle_are_the_target_plus_the_own_and_the_pooled_cast(name):
    task = tasks.get_task(name)
    for sample in tasks.held_out_samples(task, 4):
        grid = task.grid
        pooled = np.array([[sample.casts[sample.layout == sample.layout[i, j]].mean()
                            for j in range(grid)] for i in range(grid)])
        hr = cells_of(sample.hr.astype(float), grid) / 255
        for image, cast in ((sample.own, sample.casts), (sample.oracle, pooled)):
            expected = np.clip(hr + cast[:, :, None, None, None], 0, 1)
            np.testing.assert_allclose(cells_of(image, grid) / 255, expected, atol=1 / 255)
        # The target is the content of each cell.
        np.testing.assert_array_equal(cells_of(sample.hr, grid),
                                      np.round(sample.contents[sample.layout] * 255))
    if name == 'control':
        assert all(len(np.unique(s.layout)) == grid ** 2 for s in tasks.held_out_samples(task, 4))


def psnr_y_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of BT.601 luma (MATLAB's rgb2ycbcr), 2 pixels shaved."""
    luma = lambda x: 16 + x[2:-2, 2:-2] / 255 @ np.array([65.481, 128.553, 24.966])
    return 10 * np.log10(255 ** 2 / np.mean((luma(a) - luma(b)) ** 2))


@pytest.mark.parametrize('name', NAMES)
def test_the_oracle_beats_bicubic_and_the_own_cell_except_on_the_control(name):
    task = tasks.get_task(name)
    ceilings = tasks.ceilings(task)
    samples = tasks.held_out_samples(task)
    by_hand = {key: np.mean([psnr_y_by_hand(getattr(s, key), s.hr) for s in samples])
               for key in ('own', 'oracle')}
    assert ceilings['own cell'] == pytest.approx(by_hand['own'], abs=1e-9)
    assert ceilings['oracle'] == pytest.approx(by_hand['oracle'], abs=1e-9)
    assert ceilings['oracle'] > ceilings['bicubic'] + (0 if name == 'control' else 5)
    if name == 'control':  # nothing elsewhere in the image says anything about a cell
        assert ceilings['oracle'] == ceilings['own cell']
    else:
        assert ceilings['oracle'] > ceilings['own cell'] + 5
    if name == 'mosaic':  # the reference points of docs/tasks.md
        assert [round(ceilings[k], 2) for k in ('bicubic', 'own cell', 'oracle')] == \
            [25.84, 25.94, 35.25]


def photo(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def test_real_repeats_repeat_real_patches_and_hold_their_photos_out():
    task = tasks.get_task('real_repeats')
    assert not set(task.train_photos) & set(task.held_out_photos)
    for train in task.train_photos:  # no photo under two names (skimage's cat is chelsea)
        assert not any(photo(train).shape == photo(test).shape and
                       np.array_equal(photo(train), photo(test)) for test in task.held_out_photos)
    side = task.cell * task.scale
    for held_out, names in ((False, task.train_photos), (True, task.held_out_photos)):
        rng = np.random.default_rng(7)
        for sample in (task.draw(rng, held_out) for _ in range(3)):
            hr = cells_of(sample.hr, task.grid)
            patches = [hr[sample.layout == p] for p in range(task.patches)]
            for repeats, (name, y, x) in zip(patches, sample.origins):
                assert name in names and len(repeats) == task.grid ** 2 // task.patches
                assert np.all(repeats == repeats[:1])  # every repeat of a patch is the same
                assert metrics.rgb_to_y(repeats[0]).std() >= task.min_std  # textured
                np.testing.assert_array_equal(repeats[0], photo(name)[y:y + side, x:x + side])
            assert all(not np.array_equal(a[0], b[0]) for i, a in enumerate(patches)
                       for b in patches[i + 1:])
            # Each repeat's LR carries its own grey cast: away from the cell borders, the LR is
            # the bicubic LR of the clean cell plus the cast (unsaturated pixels, up to rounding).
            clean = cells_of(imresize.imresize(sample.hr / 255, scale=1 / task.scale), task.grid)
            offsets = cells_of(sample.lr / 255, task.grid) - clean
            inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
            expected = np.broadcast_to(sample.casts[:, :, None, None, None], offsets.shape)
            unclipped = (clean > 0.2) & (clean < 0.8)
            assert np.abs(offsets - expected)[inner][unclipped[inner]].max() < 1.5 / 255
    assert np.std(np.concatenate([task.draw(rng).casts.ravel() for _ in range(8)])) > 0.04


def test_mosaic_far_keeps_every_repeat_out_of_the_network_s_reach():
    """The leaderboard network's receptive field, measured: the HR outputs that change when one LR
    pixel does. Two repeats of a colour are farther apart than it reaches."""
    model = models.EDSR(scale=2, n_resblocks=4, n_feats=16)
    # Jitted: one compilation each costs less than the eager ops' many.
    variables = jax.jit(lambda key: models.init_variables(model, key, (32, 32)))(
        jax.random.key(0))
    lr = np.repeat(np.random.default_rng(0).random((1, 32, 32, 3)), 2, axis=0)
    lr[1, 16, 16] += 0.5
    sr = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(lr, jnp.float32)))
    changed = np.argwhere(np.abs(sr[1] - sr[0]).sum(axis=-1) > 0)
    reach = int(np.abs(changed // 2 - 16).max())  # in LR pixels
    assert reach == 12  # as the module docstring says

    task = tasks.get_task('mosaic_far')
    rng = np.random.default_rng(0)
    for _ in range(20):
        layout = task.draw(rng).layout
        for colour in range(task.textures):
            where = np.argwhere(layout == colour)
            assert len(where) == task.grid ** 2 // task.textures
            distances = np.abs(where[:, None] - where[None]).max(axis=-1)
            apart = distances[~np.eye(len(where), dtype=bool)]
            # The nearest LR pixels of two cells `apart` cells apart are this many pixels apart.
            assert ((apart - 1) * task.cell + 1).min() > reach
            assert apart.min() >= task.spacing


def test_a_bad_task_or_layout_is_one_line_naming_it():
    with pytest.raises(ValueError, match=r"unknown task 'mosaik'; known tasks: mosaic, "
                                         r"mosaic_far, real_repeats, control$"):
        tasks.get_task('mosaik')
    with pytest.raises(ValueError, match=r'no layout of 4 textures on 4x4 cells keeps the '
                                         r'repeats 4 cells apart'):
        tasks.MosaicTask(name='tight', textures=4, spacing=4)
    with pytest.raises(ValueError, match=r"task 'leaky': photos both trained on and held out: "
                                         r"\['coins'\]"):
        tasks.RealRepeatsTask(name='leaky', train_photos=('coins',), held_out_photos=('coins',))
