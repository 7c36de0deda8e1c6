"""Properties of the evaluation protocol's metrics for all images (hypothesis; settings pinned in
tests/conftest.py)."""

import math

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from enlcn_jax.evaluation import metrics

sides = st.integers(1, 9)
seeds = st.integers(0, 2**32 - 1)


def rgb(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@hypothesis.given(sides, sides, seeds, seeds)
def test_psnr_is_symmetric_and_infinite_exactly_on_equal_images(h, w, seed_a, seed_b):
    a, b = rgb(seed_a, h, w), rgb(seed_b, h, w)
    assert metrics.psnr(a, b) == metrics.psnr(b, a)
    assert metrics.psnr(a, a) == math.inf
    assert (metrics.psnr(a, b) == math.inf) == np.array_equal(a, b)


@hypothesis.given(sides, sides, seeds, st.integers(1, 255), st.sampled_from([1.0, 255.0]))
def test_psnr_of_a_constant_error_is_its_closed_form(h, w, seed, error, data_range):
    """An error of `e` at every pixel: MSE = e^2, PSNR = 20 log10(L / e)."""
    a = np.random.default_rng(seed).random((h, w)) * data_range
    assert metrics.psnr(a, a + error * data_range / 255, data_range) == pytest.approx(
        20 * math.log10(255 / error), abs=1e-9)


@hypothesis.given(sides, sides, seeds, st.integers(1, 20))
def test_psnr_is_the_mean_square_error_of_all_pixels(h, w, seed, error):
    """One pixel off by `e` among h w: MSE = e^2 / (h w)."""
    a = rgb(seed, h, w)[..., 0].astype(np.float64)
    b = a.copy()
    b[h - 1, w - 1] += error
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 * h * w / error**2))


@hypothesis.given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 6), st.booleans())
def test_shaving_keeps_the_centre(h, w, border, colour):
    x = np.arange(h * w * 3).reshape(h, w, 3) if colour else np.arange(h * w).reshape(h, w)
    if border and 2 * border >= min(h, w):
        with pytest.raises(ValueError, match='leaves nothing'):
            metrics.shave(x, border)
        return
    out = metrics.shave(x, border)
    assert out.shape == (h - 2 * border, w - 2 * border) + x.shape[2:]
    inside = [(i, j) for i in range(h) for j in range(w)
              if border <= i < h - border and border <= j < w - border]
    np.testing.assert_array_equal(out.reshape(-1, *x.shape[2:]),
                                  np.array([x[i, j] for i, j in inside]).reshape(
                                      -1, *x.shape[2:]))


@hypothesis.given(sides, sides, seeds)
def test_luma_lies_in_16_to_235_and_is_the_same_for_uint8_and_its_float(h, w, seed):
    image = rgb(seed, h, w)
    y = metrics.rgb_to_y(image)
    assert y.shape == (h, w) and np.all(y >= 16 - 1e-9) and np.all(y <= 235 + 1e-9)
    np.testing.assert_allclose(metrics.rgb_to_y(image / 255.0), y, rtol=1e-12)


@hypothesis.given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
def test_luma_weights_are_bt601(r, g, b):
    """Grey v gives 16 + 219 v (the weights sum to 219); each channel weighs as BT.601."""
    pixel = np.array([[[r, g, b]]], np.uint8)
    assert metrics.rgb_to_y(pixel)[0, 0] == pytest.approx(
        16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255, abs=1e-9)
    grey = np.full((1, 1, 3), g, np.uint8)
    assert metrics.rgb_to_y(grey)[0, 0] == pytest.approx(16 + 219 * g / 255, abs=1e-9)


@hypothesis.given(st.lists(st.floats(-1, 2, allow_nan=False), min_size=1, max_size=16))
def test_quantize_rounds_to_the_nearest_of_256_levels(values):
    x = np.array(values)
    q = metrics.quantize(x)
    assert q.dtype == np.uint8
    assert np.all(np.abs(q / 255.0 - np.clip(x, 0, 1)) <= 0.5 / 255 + 1e-12)
    np.testing.assert_array_equal(metrics.quantize(q / 255.0), q)  # levels are kept


@hypothesis.given(st.integers(15, 18), st.integers(15, 18), st.integers(1, 2), seeds, seeds)
def test_the_shaved_border_does_not_count(h, w, border, seed, seed_border):
    """Images that differ only within `border` pixels of the edge score as equal: PSNR-Y
    infinite, SSIM-Y 1."""
    hr = rgb(seed, h, w)
    sr = rgb(seed_border, h, w)
    sr[border:h - border, border:w - border] = hr[border:h - border, border:w - border]
    assert metrics.psnr_y(sr, hr, border) == math.inf
    assert metrics.ssim_y(sr, hr, border) == pytest.approx(1.0)
    if not np.array_equal(sr, hr):
        assert metrics.psnr_y(sr, hr, 0) < math.inf


@hypothesis.given(st.integers(11, 14), st.integers(11, 14), seeds, seeds)
def test_ssim_is_symmetric_at_most_one_and_one_on_equal_images(h, w, seed_a, seed_b):
    a = rgb(seed_a, h, w)[..., 1].astype(np.float64)
    b = rgb(seed_b, h, w)[..., 1].astype(np.float64)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(b, a), abs=1e-12)
    assert metrics.ssim(a, b) <= 1.0
