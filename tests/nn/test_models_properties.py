"""Properties of the model's pure shape arithmetic for all sizes (hypothesis; settings pinned in
tests/conftest.py; exhaustive where the inputs are few)."""

import math

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from enlcn_jax.nn import models


@hypothesis.given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
                  st.integers(1, 3))
def test_pixel_shuffle_places_channel_c_r_r_plus_i_r_plus_j_at_subpixel_i_j(b, h, w, c, r):
    """Brute force over every output pixel, PyTorch's `PixelShuffle` rule (NHWC)."""
    x = np.arange(b * h * w * c * r * r).reshape(b, h, w, c * r * r)
    out = np.asarray(models.pixel_shuffle(x, r))
    assert out.shape == (b, h * r, w * r, c)
    for n in range(b):
        for y in range(h * r):
            for z in range(w * r):
                for k in range(c):
                    i, j = y % r, z % r
                    assert out[n, y, z, k] == x[n, y // r, z // r, k * r * r + i * r + j]


def test_upsampling_factors_multiply_to_the_scale():
    """Every scale from -4 to 130 (exhaustive): 3 and the powers of 2 from 2 on have factors of
    2 and 3 whose product is the scale; any other scale is a one-line error naming it."""
    for scale in range(-4, 131):
        if scale == 3 or scale in {2**n for n in range(1, 8)}:
            factors = models.upsampling_factors(scale)
            assert math.prod(factors) == scale and set(factors) <= {2, 3}
            assert factors == ([3] if scale == 3 else [2] * int(math.log2(scale)))
        else:
            with pytest.raises(ValueError, match=f'got {scale}$'):
                models.upsampling_factors(scale)
