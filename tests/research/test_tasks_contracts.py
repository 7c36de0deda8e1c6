"""Contracts of `research/tasks.py` checked against references written here: the grid, its
reference estimates and its LR re-derived cell by cell (`imresize` for the LR), the layouts
re-derived from their documented algorithm, every draw's use of the generator, the cast
statistics of the module docstring by Monte Carlo, the one-line refusals at their boundaries,
and the ceilings by hand."""

import numpy as np
import pytest
import skimage.data

from conftest import error_message
from enlcn_jax.data import imresize
from enlcn_jax.evaluation import metrics
from enlcn_jax.research import tasks


def quantize(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def paint_by_hand(contents, layout, offsets):
    """`[G h, G h, 3]`: cell (i, j) is `contents[layout[i, j]] + offsets[i, j]`, by a loop."""
    grid, h = layout.shape[0], contents.shape[1]
    image = np.zeros((grid * h, grid * h, 3))
    for i in range(grid):
        for j in range(grid):
            image[i * h:(i + 1) * h, j * h:(j + 1) * h] = contents[layout[i, j]] + offsets[i, j]
    return image


def pooled_by_hand(layout, casts):
    """`[G, G]`: each cell's mean cast over the cells that hold its content."""
    return np.array([[np.mean([casts[k, l] for k in range(len(layout)) for l in range(len(layout))
                               if layout[k, l] == layout[i, j]])
                      for j in range(len(layout))] for i in range(len(layout))])


def assert_sample_is_its_grid(sample, scale):
    """hr, own, oracle and lr of `sample` are those of its own contents, layout and casts."""
    contents, layout, casts = sample.contents, sample.layout, sample.casts
    observed = paint_by_hand(contents, layout, casts)
    np.testing.assert_array_equal(sample.hr, quantize(paint_by_hand(contents, layout,
                                                                    0 * casts)))
    np.testing.assert_array_equal(sample.own, quantize(observed))
    np.testing.assert_array_equal(sample.oracle, quantize(paint_by_hand(
        contents, layout, pooled_by_hand(layout, casts))))
    np.testing.assert_array_equal(sample.lr, quantize(imresize.imresize(observed, 1 / scale)))
    for image in (sample.hr, sample.own, sample.oracle, sample.lr):
        assert image.dtype == np.uint8


# The grid and its reference estimates.

def test_grid_sample_paints_each_cell_with_its_content_and_cast_and_downscales_bicubically():
    rng = np.random.default_rng(0)
    # 4 contents (the last in no cell), textured, cells of 6 HR pixels, x3.
    contents = rng.uniform(0.2, 0.8, (4, 6, 6, 3))
    layout = np.array([[0, 1, 2], [2, 0, 0], [1, 2, 0]])
    casts = 0.05 * rng.standard_normal((3, 3))
    with np.errstate(all='raise'):
        sample = tasks.grid_sample(contents, layout, casts, 3, origins=(('x', 1, 2),))
    assert sample.hr.shape == sample.own.shape == sample.oracle.shape == (18, 18, 3)
    assert sample.lr.shape == (6, 6, 3)
    assert_sample_is_its_grid(sample, 3)
    assert sample.layout is layout and sample.casts is casts and sample.contents is contents
    assert sample.origins == (('x', 1, 2),)
    # A content held by one cell has its own cast as its pooled cast.
    alone = tasks.grid_sample(contents, np.array([[3, 1], [1, 1]]), casts[:2, :2], 3)
    np.testing.assert_array_equal(alone.oracle[:6, :6], alone.own[:6, :6])
    assert tasks.grid_sample(contents, layout, casts, 3).origins == ()


@pytest.mark.parametrize('name', list(tasks.TASKS))
def test_every_task_draws_the_grid_of_its_own_contents_layout_and_casts(name):
    task = tasks.get_task(name)
    rng = np.random.default_rng(11)
    for held_out in (False, True):
        sample = task.draw(rng, held_out)
        side = task.cell * task.scale
        assert sample.layout.shape == sample.casts.shape == (task.grid, task.grid)
        assert sample.contents.shape[1:] == (side, side, 3)
        assert sample.lr.shape == (task.lr_size, task.lr_size, 3)
        assert_sample_is_its_grid(sample, task.scale)


def test_the_casts_and_the_estimates_errors_have_the_documented_spread():
    """Monte Carlo over 100 images of `mosaic_far` (R = 4) and `control` (R = 1). A cell's cast
    is N(0, cast^2); the own-cell estimate misses the target by it, the oracle by the mean over
    the content's R repeats, std cast / sqrt(R); measured on the uint8 images themselves, not
    the casts stored. With n independent values (1600 per estimate, 6400 and 1600 casts) a
    std's relative standard error is 1 / sqrt(2 n) <= 1.8 %; the tolerance is 10 % (5.6
    standard errors), while the nearest wrong spreads, R = 3 or 5 at R = 4, are 15 % and 11 %
    off, and a wrong cast (R = 1 for 4) 100 % off."""
    for name, repeats in (('mosaic_far', 4), ('control', 1)):
        task = tasks.get_task(name)
        rng = np.random.default_rng(3)
        own_errors, oracle_errors, casts = [], [], []
        for _ in range(100):
            sample = task.draw(rng)
            per_cell = lambda image: (image.astype(float) - sample.hr).reshape(
                task.grid, side, task.grid, side, 3).mean(axis=(1, 3, 4)) / 255
            side = task.cell * task.scale
            own_errors.append(per_cell(sample.own).ravel())
            # The oracle's error is one value per content (equal over its repeats).
            oracle = per_cell(sample.oracle)
            oracle_errors.append([oracle[sample.layout == k].mean() for k in range(task.textures)])
            casts.append(sample.casts.ravel())
        casts = np.concatenate(casts)
        assert np.std(casts) == pytest.approx(task.cast, rel=0.1)
        assert abs(np.mean(casts)) < 5 * task.cast / np.sqrt(casts.size)
        assert np.std(np.concatenate(own_errors)) == pytest.approx(task.cast, rel=0.1)
        assert np.std(np.concatenate(oracle_errors)) == pytest.approx(
            task.cast / np.sqrt(repeats), rel=0.1)


# Layouts.

def spaced_by_hand(rng, grid, textures, spacing, attempts):
    """The documented algorithm of `spaced_layout`, cell by cell: per attempt one tie-breaking
    draw per cell; each content's next cell is, among the free cells far (Chebyshev >= spacing)
    from all its cells, the one with the fewest free cells far from it (plus its draw).
    Returns (layout, attempts used) or (None, attempts)."""
    n = grid * grid
    far = lambda a, b: max(abs(a // grid - b // grid), abs(a % grid - b % grid)) >= spacing
    sizes = [n // textures + (t < n % textures) for t in range(textures)]
    for attempt in range(attempts):
        ties, layout = rng.random(n), [-1] * n
        for texture, size in enumerate(sizes):
            mine = []
            for _ in range(size):
                options = [c for c in range(n) if layout[c] < 0 and all(far(c, m) for m in mine)]
                if not options:
                    break
                best = min(options, key=lambda c: ties[c] + sum(
                    layout[o] < 0 and far(c, o) for o in range(n)))
                layout[best] = texture
                mine.append(best)
            else:
                continue
            break
        else:
            return np.array(layout).reshape(grid, grid), attempt + 1
    return None, attempts


def test_random_layout_is_a_permutation_of_the_balanced_counts():
    for grid, textures in ((4, 3), (4, 16), (3, 1), (5, 7)):
        rng, reference = np.random.default_rng(grid + textures), np.random.default_rng(
            grid + textures)
        layout = tasks.random_layout(rng, grid, textures)
        assert layout.shape == (grid, grid)
        counts = np.bincount(layout.ravel(), minlength=textures)
        # grid^2 / textures each, the remainder spread over the first ones.
        expected = [grid ** 2 // textures + (t < grid ** 2 % textures) for t in range(textures)]
        assert counts.tolist() == expected
        # One permutation of the cells' contents listed 0, 1, ..., 0, 1, ... (the images a seed
        # gives, pinned by the tasks' versions).
        np.testing.assert_array_equal(layout.ravel(), reference.permutation(
            [i % textures for i in range(grid ** 2)]))


def test_spaced_layout_is_its_documented_greedy_with_restarts():
    """`mosaic_far`'s layouts (never a dead end there) and 5 x 5 cells of 5 colours 2 apart
    (dead ends: seed 15 needs 4 attempts), against the algorithm written out cell by cell."""
    for grid, textures, spacing in ((8, 16, 4), (5, 5, 2)):
        for seed in range(6 if grid == 8 else 20):
            rng, reference = np.random.default_rng(seed), np.random.default_rng(seed)
            expected, _ = spaced_by_hand(reference, grid, textures, spacing,
                                         tasks.LAYOUT_ATTEMPTS)
            layout = tasks.spaced_layout(rng, grid, textures, spacing)
            np.testing.assert_array_equal(layout, expected)
            # The generator is left where the hand-written one left it.
            assert rng.random() == reference.random()
            for texture in range(textures):
                where = np.argwhere(layout == texture)
                apart = np.abs(where[:, None] - where[None]).max(axis=-1)
                assert apart[~np.eye(len(where), dtype=bool)].min(initial=grid) >= spacing
    assert spaced_by_hand(np.random.default_rng(15), 5, 5, 2, 10)[1] == 4


def test_spaced_layout_gives_up_after_layout_attempts_in_one_line(monkeypatch):
    monkeypatch.setattr(tasks, 'LAYOUT_ATTEMPTS', 4)
    assert tasks.spaced_layout(np.random.default_rng(15), 5, 5, 2).shape == (5, 5)
    monkeypatch.setattr(tasks, 'LAYOUT_ATTEMPTS', 3)
    assert error_message(lambda: tasks.spaced_layout(np.random.default_rng(15), 5, 5, 2)) == (
        'no layout of 5 textures on 5x5 cells keeps the repeats 2 cells apart (3 attempts)')


# The tasks' settings and refusals.

def test_a_task_s_size_must_be_a_positive_multiple_of_its_cell():
    assert tasks.MosaicTask(name='m', lr_size=4, cell=4, textures=1).grid == 1
    assert tasks.MosaicTask(name='m', lr_size=3, cell=1, textures=9).grid == 3
    assert tasks.MosaicTask(name='m', lr_size=12, cell=4).grid == 3
    for lr_size, cell in ((3, 4), (10, 4), (4, 0), (0, -1)):
        assert error_message(lambda: tasks.MosaicTask(name='m', lr_size=lr_size, cell=cell)) == (
            f"task 'm': the LR size ({lr_size}) must be a positive multiple of the cell ({cell})")


def test_a_mosaic_holds_from_one_texture_to_one_a_cell():
    assert tasks.MosaicTask(name='m', textures=1).textures == 1
    assert tasks.MosaicTask(name='m', textures=16).textures == 16
    for textures in (0, 17):
        assert error_message(lambda: tasks.MosaicTask(name='m', textures=textures)) == (
            f"task 'm': 16 cells cannot hold {textures} textures")
    # An impossible spacing is refused when the task is made (spacing 2 and more are kept).
    assert error_message(lambda: tasks.MosaicTask(name='m', textures=1, spacing=2)) == (
        f'no layout of 1 textures on 4x4 cells keeps the repeats 2 cells apart '
        f'({tasks.LAYOUT_ATTEMPTS} attempts)')
    tasks.MosaicTask(name='m', textures=1, spacing=1)


def test_real_repeats_hold_from_one_patch_to_one_a_cell_and_no_photo_twice():
    assert tasks.RealRepeatsTask(name='r', patches=1).patches == 1
    assert tasks.RealRepeatsTask(name='r', patches=16).patches == 16
    for patches in (0, 17):
        assert error_message(lambda: tasks.RealRepeatsTask(name='r', patches=patches)) == (
            f"task 'r': 16 cells cannot hold {patches} patches")
    assert error_message(lambda: tasks.RealRepeatsTask(
        name='r', train_photos=('moon', 'camera', 'coins'), held_out_photos=('coins', 'moon'))) == (
        "task 'r': photos both trained on and held out: ['coins', 'moon']")


def test_the_registered_tasks_are_those_of_the_module_docstring_and_describe_themselves():
    """The lines are those of docs/results.md and the leaderboards in docs/leaderboard/."""
    expected = {
        'mosaic': 'x2 mosaics 16^2 LR, 3 colours in 4x4 cells of 4^2 LR px (5+ cells each), '
                  'cast std 0.06',
        'mosaic_far': 'x2 mosaics 32^2 LR, 16 colours in 8x8 cells of 4^2 LR px (4 cells each, '
                      '>= 4 cells apart), cast std 0.06',
        'real_repeats': 'x2 photo patches 32^2 LR, 4 patches in 4x4 cells of 8^2 LR px (4 cells '
                        'each), cast std 0.06; held-out photos unseen in training',
        'control': 'x2 mosaics 16^2 LR, 16 colours in 4x4 cells of 4^2 LR px (one cell each), '
                   'cast std 0.06'}
    assert {name: tasks.get_task(name).describe() for name in tasks.TASKS} == expected
    # The other branches of a mosaic's line.
    assert tasks.MosaicTask(name='m', lr_size=12, cell=4, textures=9, spacing=1, cast=0.1,
                            scale=3).describe() == (
        'x3 mosaics 12^2 LR, 9 colours in 3x3 cells of 4^2 LR px (one cell each), cast std 0.1')
    assert tasks.MosaicTask(name='m', lr_size=20, textures=5, spacing=2).describe() == (
        'x2 mosaics 20^2 LR, 5 colours in 5x5 cells of 4^2 LR px (5 cells each, >= 2 cells '
        'apart), cast std 0.06')
    assert tasks.RealRepeatsTask(name='r', patches=3, lr_size=24, cell=4).describe() == (
        'x2 photo patches 24^2 LR, 3 patches in 6x6 cells of 4^2 LR px (12 cells each), cast '
        'std 0.06; held-out photos unseen in training')


# Draws: what each takes from the generator, in order.

def test_a_mosaic_draws_colours_then_layout_then_casts():
    for task in (tasks.MosaicTask(name='m', lr_size=20, textures=5, spacing=2, cast=0.1),
                 tasks.MosaicTask(name='m', lr_size=12, textures=4, spacing=1, scale=3)):
        rng, reference = np.random.default_rng(15), np.random.default_rng(15)
        for held_out in (False, True, False):   # `held_out` changes nothing
            sample = task.draw(rng, held_out)
            colours = reference.uniform(0.25, 0.75, (task.textures, 3))
            if task.spacing > 1:
                layout, _ = spaced_by_hand(reference, task.grid, task.textures, task.spacing,
                                           tasks.LAYOUT_ATTEMPTS)
            else:
                layout = tasks.random_layout(reference, task.grid, task.textures)
            casts = task.cast * reference.standard_normal((task.grid, task.grid))
            np.testing.assert_array_equal(sample.layout, layout)
            np.testing.assert_array_equal(sample.casts, casts)
            side = task.cell * task.scale
            assert sample.contents.shape == (task.textures, side, side, 3)
            np.testing.assert_array_equal(sample.contents, np.broadcast_to(
                colours[:, None, None], sample.contents.shape))
            assert sample.origins == ()
            assert_sample_is_its_grid(sample, task.scale)


def fake_photos(monkeypatch, images: dict):
    monkeypatch.setattr(tasks, 'photos', lambda names: tuple(images[n] for n in names))


def test_real_repeats_draw_patches_redrawn_while_flat_or_repeated_then_layout_then_casts(
        monkeypatch):
    """Photos of one patch each (16 x 16 HR for cells of 8 LR at x2), so a patch is its photo:
    flat ones, one whose luma std is exactly `min_std` (kept: the least std allowed), a copy
    of it (a repeat: redrawn) and textured ones; held out, a photo of 5 x 2 patch positions."""
    rng = np.random.default_rng(0)
    flat = np.full((16, 16, 3), 120, np.uint8)
    edge = flat.copy()
    edge[:, 8:] = 160
    textured = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (20, 17, 3), dtype=np.uint8)   # 5 x 2 patch positions
    noise, more = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    images = {'flat': flat, 'edge': edge, 'copy': edge.copy(), 'textured': textured,
              'noise': noise, 'more': more, 'wide': wide, 'flat too': flat}
    fake_photos(monkeypatch, images)
    task = tasks.RealRepeatsTask(name='r', lr_size=16, patches=3, cast=0.1,
                                 min_std=float(metrics.rgb_to_y(edge).std()),
                                 train_photos=('flat', 'edge', 'copy', 'textured', 'noise', 'more'),
                                 held_out_photos=('wide', 'flat too'))
    kept, redrawn = set(), set()
    for seed in range(4):
        for held_out in (False, True):
            names = task.held_out_photos if held_out else task.train_photos
            reference = np.random.default_rng(seed)
            patches, origins = [], []
            while len(patches) < task.patches:
                name = names[reference.integers(len(names))]
                y, x = (reference.integers(n - 15) for n in images[name].shape[:2])
                patch = images[name][y:y + 16, x:x + 16]
                repeated = any(np.array_equal(patch, p) for p in patches)
                if not name.startswith('flat') and not repeated:
                    patches.append(patch)
                    origins.append((name, y, x))
                else:
                    redrawn.add('repeat' if repeated else name)
            layout = tasks.random_layout(reference, task.grid, task.patches)
            casts = task.cast * reference.standard_normal((task.grid, task.grid))
            sample = task.draw(np.random.default_rng(seed), held_out)
            assert sample.origins == tuple(origins)
            if not held_out:   # the default: training images, from the training photos
                assert task.draw(np.random.default_rng(seed)).origins == sample.origins
            np.testing.assert_array_equal(sample.contents, np.stack(patches) / 255)
            np.testing.assert_array_equal(sample.layout, layout)
            np.testing.assert_array_equal(sample.casts, casts)
            assert_sample_is_its_grid(sample, task.scale)
            kept.update(name for name, _, _ in origins)
    # Every case was met: the edge (or its copy) kept, a repeat and the flat photos redrawn.
    assert {'edge', 'wide'} <= kept and redrawn == {'repeat', 'flat', 'flat too'}


def test_photos_are_the_skimage_photos_in_rgb_whole_and_loaded_once():
    loaded = tasks.photos(('coins', 'coffee'))
    assert tasks.photos(('coins', 'coffee')) is loaded
    # coins is 303 x 384: whole, not cropped to a multiple of a scale.
    np.testing.assert_array_equal(loaded[0], np.repeat(skimage.data.coins()[..., None], 3, -1))
    np.testing.assert_array_equal(loaded[1], skimage.data.coffee())
    assert all(image.dtype == np.uint8 for image in loaded)


# Streams, held-out sets, ceilings.

def test_batches_and_streams_are_consecutive_draws_of_their_generator():
    task = tasks.MosaicTask(name='m', lr_size=8, textures=2)
    batch = tasks.draw_batch(task, np.random.default_rng(4), 3)
    reference = np.random.default_rng(4)
    samples = [task.draw(reference) for _ in range(3)]
    assert set(batch) == {'lr', 'hr'}
    np.testing.assert_array_equal(batch['lr'], np.stack([s.lr for s in samples]))
    np.testing.assert_array_equal(batch['hr'], np.stack([s.hr for s in samples]))
    stream = tasks.training_batches(task, 7, 2)
    reference = np.random.default_rng([tasks.TRAIN_STREAM, 7])
    for _ in range(2):
        batch, samples = next(stream), [task.draw(reference) for _ in range(2)]
        np.testing.assert_array_equal(batch['hr'], np.stack([s.hr for s in samples]))
        np.testing.assert_array_equal(batch['lr'], np.stack([s.lr for s in samples]))


def test_the_held_out_set_is_the_held_out_draws_named_by_task_and_kept(monkeypatch):
    task = tasks.MosaicTask(name='m', lr_size=8, textures=2)
    samples = tasks.held_out_samples(task, 3)
    assert tasks.held_out_samples(task, 3) is samples and len(samples) == 3
    assert len(tasks.held_out_samples(task)) == tasks.TEST_IMAGES == 32
    drawn = []
    monkeypatch.setattr(tasks.MosaicTask, 'draw', lambda self, rng, held_out=False: drawn.append(
        (held_out, rng.bit_generator.state['state'])) or samples[0])
    reference = np.random.default_rng(tasks.TEST_SET_ENTROPY).bit_generator.state['state']
    tasks.held_out_samples(tasks.MosaicTask(name='n', lr_size=8, textures=2), 2)
    assert drawn[0] == (True, reference) and drawn[1][0] is True and len(drawn) == 2
    monkeypatch.undo()
    dataset = tasks.held_out_set(task, 3)
    assert dataset.names == ['m_0', 'm_1', 'm_2'] and dataset.scale == 2
    for hr, lr, sample in zip(dataset.hr, dataset.lr, samples, strict=True):
        assert hr is sample.hr and lr is sample.lr
    assert tasks.held_out_set(tasks.MosaicTask(name='t', lr_size=12, scale=3), 1).scale == 3


def psnr_y_by_hand(a, b, shave):
    luma = lambda x: 16 + x[shave:-shave, shave:-shave] / 255 @ np.array([65.481, 128.553,
                                                                            24.966])
    return 10 * np.log10(255 ** 2 / np.mean((luma(a) - luma(b)) ** 2))


def test_ceilings_are_the_mean_psnr_y_of_bicubic_own_cell_and_oracle_by_hand():
    for task in (tasks.MosaicTask(name='m', lr_size=8, textures=2),
                 tasks.MosaicTask(name='m3', lr_size=12, textures=3, scale=3)):
        samples = tasks.held_out_samples(task, 3)
        # MATLAB's imresize of the uint8 LR (uint8 out, rounded after each axis).
        bicubic = [imresize.imresize(s.lr, task.scale) for s in samples]
        assert all(b.dtype == np.uint8 for b in bicubic)
        expected = {
            'bicubic': np.mean([psnr_y_by_hand(b, s.hr, task.scale)
                                for b, s in zip(bicubic, samples)]),
            'own cell': np.mean([psnr_y_by_hand(s.own, s.hr, task.scale) for s in samples]),
            'oracle': np.mean([psnr_y_by_hand(s.oracle, s.hr, task.scale) for s in samples])}
        ceilings = tasks.ceilings(task, 3)
        assert set(ceilings) == set(expected)
        for key in expected:
            assert ceilings[key] == pytest.approx(expected[key], abs=1e-6), key
