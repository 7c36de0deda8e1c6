"""enlcn_jax.evaluation.metrics: integer images are compared in float64 (no wrap-around), and
inputs outside the protocol are one-line errors naming what is wrong."""

import math
import re

import numpy as np
import pytest

from enlcn_jax.evaluation import metrics


def test_psnr_of_uint8_images_is_computed_without_wrapping_around():
    a = np.array([[0, 200], [50, 255]], np.uint8)
    b = np.array([[20, 0], [50, 255]], np.uint8)   # differences -20, 200, 0, 0: MSE 10100
    expected = 10 * math.log10(255.0 ** 2 / 10100.0)
    assert metrics.psnr(a, b) == pytest.approx(expected, rel=1e-12)
    assert metrics.psnr(b, a) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('shape', [(4, 4), (4, 4, 4), (4, 4, 1)])
def test_rgb_to_y_refuses_what_is_not_rgb(shape):
    with pytest.raises(ValueError, match=rf'^expected an RGB image \[H, W, 3\], got shape '
                                         rf'{re.escape(str(shape))}$'):
        metrics.rgb_to_y(np.zeros(shape, np.uint8))


def test_a_negative_border_is_named():
    with pytest.raises(ValueError, match=r'^border must be non-negative, got -1$'):
        metrics.shave(np.zeros((8, 8)), -1)
