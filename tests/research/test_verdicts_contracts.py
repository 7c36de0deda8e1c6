"""enlcn_jax.research.verdicts at the edges of its documented contract: an interval touching 0,
a seed with no difference, a gap under 1 dB, and the one-line errors."""

import pytest

from enlcn_jax.research import verdicts


def test_an_interval_that_touches_zero_is_within_noise():
    # "better when the whole interval is above 0, worse when below": an end at 0 is neither.
    assert verdicts.verdict(0.0, 0.4, seeds=3) == verdicts.WITHIN_NOISE
    assert verdicts.verdict(-0.4, 0.0, seeds=3) == verdicts.WITHIN_NOISE
    assert verdicts.verdict(1e-9, 0.4, seeds=3) == verdicts.BETTER
    assert verdicts.verdict(-0.4, -1e-9, seeds=3) == verdicts.WORSE


def test_a_seed_with_no_difference_is_not_counted_as_positive():
    row = {0: [30.0, 31.0], 1: [30.5, 31.5], 2: [29.0, 29.0]}
    reference = {0: [30.0, 31.0], 1: [30.0, 31.0], 2: [29.5, 29.5]}  # differences 0, +0.5, -0.5
    result = verdicts.paired(row, reference)
    assert result['positive'] == 1
    assert result['seeds'] == 3
    assert result['difference'] == pytest.approx(0.0)


def test_a_gap_under_one_db_is_still_a_gap():
    assert verdicts.gap_closed(30.25, none=30.0, ceiling=30.5) == pytest.approx(0.5)
    assert verdicts.gap_closed(30.0, none=30.0, ceiling=30.0) is None


def test_the_errors_say_what_is_wrong_in_one_line():
    with pytest.raises(ValueError, match=r'^an interval needs at least one value$'):
        verdicts.interval([])
    with pytest.raises(ValueError, match=r'^seed 0: 2 and 1 test images; a paired comparison '
                                         r'needs the same images$'):
        verdicts.paired({0: [30.0, 31.0]}, {0: [30.0]})
