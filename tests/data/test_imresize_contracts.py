"""enlcn_jax.data.imresize: an upscale by a non-integer factor reproduces a ramp, and inputs
outside the contract are one-line errors naming what is wrong."""

import numpy as np
import pytest

from enlcn_jax.data.imresize import imresize, modcrop


@pytest.mark.parametrize('scale', [1.5, 1.25])
def test_a_non_integer_upscale_reproduces_a_linear_ramp_inside_the_image(scale):
    """Keys' cubic convolution (a = -0.5) reproduces linear functions exactly wherever all four
    taps are inside the image; output pixel x (1-based) samples input position
    u = x / scale + (1 - 1 / scale) / 2."""
    width = 16
    ramp = np.tile(np.arange(width, dtype=np.float64), (3, 1))     # value j at column j
    out = imresize(ramp, scale)
    u = np.arange(1, out.shape[1] + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based
    inside = (u - 2 >= 1) & (u + 2 <= width)
    assert inside.sum() >= 10
    np.testing.assert_allclose(out[1, inside], u[inside] - 1, atol=1e-12)


def test_an_image_without_rows_or_columns_is_refused():
    for shape in [(0, 5, 3), (5, 0, 3)]:
        with pytest.raises(ValueError, match=rf'^image must be non-empty, got shape '
                                             rf'\({shape[0]}, {shape[1]}, 3\)$'):
            imresize(np.zeros(shape, np.uint8), 0.5)


def test_the_errors_name_what_is_wrong_in_one_line():
    with pytest.raises(ValueError, match=r'^give exactly one of scale and output_shape$'):
        imresize(np.zeros((4, 4)), 2, output_shape=(8, 8))
    with pytest.raises(ValueError, match=r'^image must be \[H, W\] or \[H, W, C\], got shape '
                                         r'\(4,\)$'):
        modcrop(np.zeros(4), 2)
