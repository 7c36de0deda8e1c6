"""Tests for the SR evaluation metrics (PSNR / SSIM on Y)."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2ycbcr

from conftest import benchmark_images
from enlcn_jax.evaluation.metrics import psnr, psnr_y, quantize, rgb_to_y, shave, ssim, ssim_y



def set5_images() -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in benchmark_images("Set5")]


def valid_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM with explicit 11x11 Gaussian windows, 'valid' only (MATLAB ssim_index)."""
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    win = np.outer(g, g) / np.outer(g, g).sum()

    def filt(x):
        patches = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
        return np.einsum("ijkl,kl->ij", patches, win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    smap = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(smap.mean())


# ---------------------------------------------------------------- quantize / Y / shave


def test_quantize_clips_scales_and_rounds():
    x = np.array([-0.3, 0.0, 0.2, 0.5, 1.0 / 255 * 10.4, 1.0, 1.7])
    np.testing.assert_array_equal(quantize(x), [0, 0, 51, 128, 10, 255, 255])
    assert quantize(x).dtype == np.uint8


def test_rgb_to_y_matches_skimage_uint8_and_float():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 13, 3), dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(img), rgb2ycbcr(img)[..., 0], atol=1e-10)
    img_f = rng.random((9, 11, 3))
    np.testing.assert_allclose(rgb_to_y(img_f), rgb2ycbcr(img_f)[..., 0], atol=1e-10)
    # Black and white map to the BT.601 studio range ends.
    y = rgb_to_y(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))
    np.testing.assert_allclose(y, [[16.0, 235.0]], atol=1e-12)
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_y(np.zeros((4, 4)))


def test_shave():
    img = np.arange(10 * 8 * 3).reshape(10, 8, 3)
    np.testing.assert_array_equal(shave(img, 2), img[2:8, 2:6])
    assert shave(img, 0) is img
    with pytest.raises(ValueError):
        shave(img, 4)
    with pytest.raises(ValueError):
        shave(img, -1)


# ---------------------------------------------------------------- PSNR


@pytest.mark.parametrize("d", [1.0, 2.0, 5.0, 17.0])
def test_psnr_constant_offset_closed_form(d):
    a = np.random.default_rng(1).random((32, 24)) * 200
    assert psnr(a, a + d) == pytest.approx(20 * np.log10(255 / d), abs=1e-10)
    assert psnr(a - d, a) == pytest.approx(20 * np.log10(255 / d), abs=1e-10)


def test_psnr_identical_is_inf_and_data_range():
    a = np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8)
    assert psnr(a, a) == float("inf")
    x = np.zeros((4, 4))
    assert psnr(x, x + 0.1, data_range=1.0) == pytest.approx(20.0, abs=1e-10)
    # uint8 inputs must not wrap around when subtracted.
    assert psnr(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="shape"):
        psnr(x, np.zeros((4, 5)))


# ---------------------------------------------------------------- SSIM


@pytest.mark.parametrize("noise_sigma", [2.0, 10.0, 30.0])
def test_ssim_matches_explicit_matlab_windows_on_set5_y(noise_sigma):
    rng = np.random.default_rng(int(noise_sigma))
    for img in set5_images():
        y = rgb_to_y(img)
        noisy = np.clip(y + rng.normal(0, noise_sigma, y.shape), 0, 255)
        assert ssim(y, noisy) == pytest.approx(valid_ssim(y, noisy), abs=1e-6)


def test_ssim_equals_valid_window_definition():
    rng = np.random.default_rng(3)
    y = rgb_to_y(set5_images()[0])[100:164, 80:150]
    noisy = y + rng.normal(0, 8, y.shape)
    assert ssim(y, noisy) == pytest.approx(valid_ssim(y, noisy), abs=1e-10)


def test_ssim_basic_properties():
    a = np.random.default_rng(4).random((40, 40)) * 255
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, 255 - a) < 0
    with pytest.raises(ValueError, match="single-channel"):
        ssim(np.zeros((20, 20, 3)), np.zeros((20, 20, 3)))
    with pytest.raises(ValueError, match="11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))


# ---------------------------------------------------------------- Y-channel protocol


def test_psnr_y_and_ssim_y_shave_the_border():
    rng = np.random.default_rng(5)
    hr = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    sr = hr.copy()
    border = 3
    # Corrupt only the outer `border` pixels: the shaved scores must not see it.
    mask = np.ones(hr.shape[:2], bool)
    mask[border:-border, border:-border] = False
    sr[mask] = 255 - sr[mask]
    assert psnr_y(sr, hr, border) == float("inf")
    assert ssim_y(sr, hr, border) == pytest.approx(1.0, abs=1e-12)
    assert psnr_y(sr, hr, border - 1) < 30
    assert ssim_y(sr, hr, 0) < 1


def test_psnr_y_and_ssim_y_follow_definition_on_set5():
    rng = np.random.default_rng(6)
    hr = set5_images()[1]
    sr = np.clip(hr.astype(int) + rng.integers(-6, 7, hr.shape), 0, 255).astype(np.uint8)
    y_sr = rgb2ycbcr(sr)[4:-4, 4:-4, 0]
    y_hr = rgb2ycbcr(hr)[4:-4, 4:-4, 0]
    mse = np.mean((y_sr - y_hr) ** 2)
    assert psnr_y(sr, hr, 4) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-8)
    assert ssim_y(sr, hr, 4) == pytest.approx(valid_ssim(y_sr, y_hr), abs=1e-6)
