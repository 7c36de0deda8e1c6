"""Properties of tiled inference's tile layout for all sizes (hypothesis; settings pinned in
tests/conftest.py)."""

import hypothesis
from hypothesis import strategies as st

from enlcn_jax.evaluation import inference


@st.composite
def layouts(draw):
    tile = draw(st.integers(1, 40))
    return draw(st.integers(1, 150)), tile, draw(st.integers(0, tile - 1))


@hypothesis.settings(max_examples=80)
@hypothesis.given(layouts())
def test_tiles_cover_the_axis_once_and_every_kept_pixel_has_half_the_overlap_of_context(layout):
    """Along an axis of `length` pixels: the kept ranges follow each other from 0 to `length`
    (each pixel kept once), every tile is a full `tile` inside the axis (the axis itself when
    shorter), each keeps only its own pixels, and a kept pixel has `overlap // 2` pixels of its
    tile on each side (or all there are, at the ends of the axis)."""
    length, tile, overlap = layout
    spans = inference._tile_spans(length, tile, overlap)  # pylint: disable=protected-access
    assert spans[0][1] == 0 and spans[-1][2] == length
    assert all(keep_to == next_from for (_, _, keep_to), (_, next_from, _) in zip(spans,
                                                                                   spans[1:]))
    size = min(tile, length)
    for start, keep_from, keep_to in spans:
        assert keep_from < keep_to
        assert 0 <= start and start + size <= length
        assert start <= keep_from and keep_to <= start + size
        for pixel in (keep_from, keep_to - 1):
            assert pixel - start >= min(pixel, overlap // 2)
            assert start + size - 1 - pixel >= min(length - 1 - pixel, overlap // 2)
