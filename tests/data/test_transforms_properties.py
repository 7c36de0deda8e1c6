"""Properties of the dihedral transforms for all shapes and axes (hypothesis; settings pinned in
tests/conftest.py)."""

import hypothesis
import numpy as np
from hypothesis import strategies as st

from enlcn_jax.data.transforms import dihedral, inverse_dihedral


@st.composite
def arrays_and_axes(draw):
    """An array of 2 to 4 axes with distinct entries (`arange`) and two distinct axes of it,
    each given as a positive or a negative index."""
    shape = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    ndim = len(shape)
    row, col = draw(st.lists(st.integers(0, ndim - 1), min_size=2, max_size=2, unique=True))
    row -= draw(st.sampled_from([0, ndim]))
    col -= draw(st.sampled_from([0, ndim]))
    return np.arange(np.prod(shape)).reshape(shape), (row, col)


@hypothesis.given(arrays_and_axes(), st.integers(0, 7))
def test_a_transform_then_its_inverse_is_the_identity(x_axes, k):
    x, axes = x_axes
    y = dihedral(x, k, axes)
    np.testing.assert_array_equal(inverse_dihedral(y, k, axes), x)
    np.testing.assert_array_equal(dihedral(inverse_dihedral(x, k, axes), k, axes), x)


@hypothesis.given(arrays_and_axes(), st.integers(0, 7))
def test_a_transform_moves_pixels_within_the_plane_as_the_square_symmetry_k(x_axes, k):
    """Brute force: the pixel at (i, j) of the (row, col) plane goes to where symmetry k of the
    square sends it (transpose first with bit 4, then flip rows with bit 1, columns with 2)."""
    x, (row, col) = x_axes
    plane = np.moveaxis(x, (row, col), (0, 1))
    h, w = plane.shape[:2]
    out_h, out_w = (w, h) if k & 4 else (h, w)
    expected = np.empty((out_h, out_w) + plane.shape[2:], x.dtype)
    for i in range(h):
        for j in range(w):
            a, b = (j, i) if k & 4 else (i, j)
            a = out_h - 1 - a if k & 1 else a
            b = out_w - 1 - b if k & 2 else b
            expected[a, b] = plane[i, j]
    got = np.moveaxis(dihedral(x, k, (row, col)), (row, col), (0, 1))
    np.testing.assert_array_equal(got, expected)


@hypothesis.given(st.integers(2, 5))
def test_the_eight_transforms_of_a_square_are_distinct_and_closed_under_composition(n):
    x = np.arange(n * n).reshape(n, n, 1)
    images = [dihedral(x, k).tobytes() for k in range(8)]
    assert len(set(images)) == 8
    for a in range(8):
        for b in range(8):
            assert dihedral(dihedral(x, a), b).tobytes() in images
