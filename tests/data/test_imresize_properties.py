"""Properties of the MATLAB-compatible bicubic resize for all sizes and scales (hypothesis;
settings pinned in tests/conftest.py)."""

import math
from fractions import Fraction

import hypothesis
import numpy as np
from hypothesis import strategies as st

from enlcn_jax.data.imresize import bicubic_downscale, imresize, modcrop

sizes = st.integers(1, 12)
scales = st.sampled_from([Fraction(n, d) for n, d in [(1, 4), (1, 3), (1, 2), (7, 10), (1, 1),
                                                     (11, 10), (9, 7), (3, 2), (2, 1), (11, 5),
                                                     (7, 3), (3, 1), (4, 1)]])
channels = st.sampled_from([(), (1,), (3,)])


def random_image(seed, shape, dtype=np.float64):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape)


@hypothesis.given(scales, channels)
def test_the_output_size_is_the_ceiling_of_size_times_scale(scale, c):
    for h in range(1, 65):  # every size: float products such as 50 * 1.1 = 55.00000000000001
        out = imresize(np.zeros((h, 65 - h) + c), scale=float(scale))
        assert out.shape == (math.ceil(h * scale), math.ceil((65 - h) * scale)) + c  # exact


@hypothesis.given(sizes, sizes, sizes, sizes, channels)
def test_an_output_shape_is_met_exactly(h, w, out_h, out_w, c):
    assert imresize(np.zeros((h, w) + c), output_shape=(out_h, out_w)).shape == (out_h, out_w) + c


@hypothesis.given(sizes, sizes, sizes, sizes, st.integers(0, 255))
def test_a_constant_image_stays_that_constant(h, w, out_h, out_w, value):
    """The taps of every output pixel sum to 1, so a constant passes through any resize (exactly
    for uint8, where each axis rounds; to rounding error for floats)."""
    out = imresize(np.full((h, w, 3), value, np.uint8), output_shape=(out_h, out_w))
    assert out.dtype == np.uint8 and np.all(out == value)
    out = imresize(np.full((h, w), value / 255.0), output_shape=(out_h, out_w))
    np.testing.assert_allclose(out, value / 255.0, rtol=1e-12, atol=1e-12)


@hypothesis.given(sizes, sizes, st.integers(0, 2**32 - 1))
def test_scale_one_is_the_identity(h, w, seed):
    x = random_image(seed, (h, w, 3))
    np.testing.assert_allclose(imresize(x, scale=1.0), x, atol=1e-12)
    x = random_image(seed, (h, w, 3), np.uint8)
    np.testing.assert_array_equal(imresize(x, scale=1.0), x)


@hypothesis.given(sizes, sizes, sizes, sizes, st.integers(0, 7), st.integers(0, 2**32 - 1))
def test_resizing_commutes_with_flips_and_transposition(h, w, out_h, out_w, k, seed):
    """The sample positions are symmetric about the image centre and the border is mirrored, so
    (for float images, which are not rounded between the axes) resizing a flipped or transposed
    image gives the flipped or transposed resize."""
    x = random_image(seed, (h, w, 2))

    def transform(image):
        image = image.transpose(1, 0, 2) if k & 4 else image
        image = image[::-1] if k & 1 else image
        return image[:, ::-1] if k & 2 else image

    shape = (out_w, out_h) if k & 4 else (out_h, out_w)
    np.testing.assert_allclose(imresize(transform(x), output_shape=shape),
                               transform(imresize(x, output_shape=(out_h, out_w))), atol=1e-12)


@hypothesis.given(sizes, sizes, sizes, sizes, st.integers(0, 2**32 - 1))
def test_uint8_resizing_commutes_with_transposition_when_the_scales_differ(h, w, out_h, out_w,
                                                                          seed):
    """uint8 rounds after each axis, so the axis order matters; it follows the scales (the
    smaller first, as MATLAB), not the axis numbers, so a transposed image is resized alike."""
    hypothesis.assume(Fraction(out_h, h) != Fraction(out_w, w))
    x = random_image(seed, (h, w, 3), np.uint8)
    np.testing.assert_array_equal(imresize(x.transpose(1, 0, 2), output_shape=(out_w, out_h)),
                                  imresize(x, output_shape=(out_h, out_w)).transpose(1, 0, 2))


@hypothesis.given(sizes, sizes, st.sampled_from([Fraction(1, 4), Fraction(1, 3), Fraction(1, 2),
                                                 Fraction(2), Fraction(3), Fraction(4)]),
                  st.integers(0, 2**32 - 1))
def test_the_border_is_the_mirrored_image(h, w, scale, seed):
    """Outside the image, samples are taken from its mirror image (MATLAB's symmetric padding):
    resizing the image padded by `np.pad(mode='symmetric')` and cropping the padding's share of
    the output gives the resize of the image. The padding, `p` input pixels on each side with
    `p * scale` an integer, covers the kernel's reach (2 / scale pixels when downscaling)."""
    x = random_image(seed, (h, w))
    p = 4 * max(scale.denominator, 1)
    q = int(p * scale)
    padded = imresize(np.pad(x, p, mode='symmetric'), scale=float(scale))
    np.testing.assert_allclose(padded[q:-q, q:-q], imresize(x, scale=float(scale)), atol=1e-12)


@hypothesis.given(sizes, sizes, st.integers(0, 2**32 - 1), st.floats(-3, 3), st.floats(0, 2))
def test_resizing_is_linear_for_float_images(h, w, seed, a, b):
    x, y = random_image(seed, (h, w)), random_image(seed + 1, (h, w))
    np.testing.assert_allclose(imresize(a * x + b * y, scale=0.5),
                               a * imresize(x, scale=0.5) + b * imresize(y, scale=0.5), atol=1e-12)


@hypothesis.given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 5), channels)
def test_modcrop_keeps_the_top_left_multiple_of_the_scale(h, w, scale, c):
    x = np.arange(h * w * max(1, math.prod(c))).reshape((h, w) + c)
    out = modcrop(x, scale)
    assert out.shape[:2] == (h // scale * scale, w // scale * scale)
    assert out.shape[0] % scale == 0 and out.shape[1] % scale == 0
    assert out.shape[0] > h - scale and out.shape[1] > w - scale
    np.testing.assert_array_equal(out, x[:out.shape[0], :out.shape[1]])


@hypothesis.given(st.integers(4, 20), st.integers(4, 20), st.sampled_from([2, 3, 4]),
                  st.integers(0, 255))
def test_a_bicubic_downscale_gives_the_cropped_hr_and_an_lr_scale_times_smaller(h, w, scale,
                                                                               value):
    hr_cropped, lr = bicubic_downscale(np.full((h, w, 3), value, np.uint8), scale)
    assert hr_cropped.shape == (h // scale * scale, w // scale * scale, 3)
    assert lr.shape == (h // scale, w // scale, 3)
    assert lr.dtype == np.uint8 and np.all(lr == value)
