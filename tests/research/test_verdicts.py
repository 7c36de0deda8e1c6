"""Intervals, paired comparisons and verdicts against closed-form statistics."""

import math

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from enlcn_jax.research import verdicts

PINNED = hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)


def test_the_interval_is_student_t_at_95_percent():
    values = [30.1, 30.4, 29.9]
    mean, low, high = verdicts.interval(values)
    # t_{0.975, 2} = 4.302652729911275 (tables); s = 0.2517 for these values.
    half = 4.302652729911275 * np.std(values, ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(np.mean(values))
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert verdicts.interval([2.5]) == (2.5, 2.5, 2.5)
    with pytest.raises(ValueError, match='at least one value'):
        verdicts.interval([])


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    samples = rng.normal(1.0, 2.0, (4000, 3))
    covered = np.mean([low <= 1.0 <= high
                       for _, low, high in map(verdicts.interval, samples.tolist())])
    assert covered == pytest.approx(0.95, abs=0.015)


@PINNED
@hypothesis.given(st.lists(finite, min_size=2, max_size=6))
def test_the_interval_holds_its_mean_and_shifts_with_the_data(values):
    mean, low, high = verdicts.interval(values)
    assert low <= mean <= high
    shifted = verdicts.interval([v + 3.0 for v in values])
    assert shifted == pytest.approx((mean + 3.0, low + 3.0, high + 3.0), abs=1e-9)


def test_verdicts_follow_the_sign_of_the_whole_interval():
    assert verdicts.verdict(0.01, 0.5, 3) == verdicts.BETTER
    assert verdicts.verdict(-0.5, -0.01, 3) == verdicts.WORSE
    assert verdicts.verdict(-0.1, 0.2, 3) == verdicts.WITHIN_NOISE
    assert verdicts.verdict(0.1, 0.2, 1) == verdicts.UNDECIDED


def test_a_paired_comparison_is_over_per_seed_image_differences():
    reference = {0: [30.0, 31.0], 1: [29.0, 30.0], 2: [30.5, 30.5]}
    row = {0: [30.5, 31.5], 1: [29.4, 30.6], 2: [31.0, 31.0], 3: [99.0, 99.0]}
    result = verdicts.paired(row, reference)
    differences = [0.5, 0.5, 0.5]  # seed 3 has no reference: not compared
    assert result['seeds'] == 3 and result['difference'] == pytest.approx(np.mean(differences))
    assert result['verdict'] == verdicts.BETTER and result['low'] == pytest.approx(0.5)
    assert result['positive'] == 3 and verdicts.paired(reference, row)['positive'] == 0
    # Pairing removes what seeds share: a constant gain is better, whatever the seed spread.
    noisy_reference = {s: [20.0 + 5 * s] * 2 for s in range(3)}
    noisy_row = {s: [20.1 + 5 * s] * 2 for s in range(3)}
    assert verdicts.paired(noisy_row, noisy_reference)['verdict'] == verdicts.BETTER
    assert verdicts.paired(reference, row)['verdict'] == verdicts.WORSE
    assert verdicts.paired({5: [1.0]}, reference) is None
    with pytest.raises(ValueError, match='same images'):
        verdicts.paired({0: [1.0]}, reference)


@PINNED
@hypothesis.given(st.lists(st.lists(finite, min_size=3, max_size=3), min_size=2, max_size=4))
def test_swapping_the_sides_negates_the_comparison(images):
    row = {seed: values for seed, values in enumerate(images)}
    reference = {seed: [v * 0.5 + 1.0 for v in values] for seed, values in row.items()}
    forward, backward = verdicts.paired(row, reference), verdicts.paired(reference, row)
    assert forward['difference'] == pytest.approx(-backward['difference'], abs=1e-9)
    assert forward['low'] == pytest.approx(-backward['high'], abs=1e-9)
    assert {forward['verdict'], backward['verdict']} in (
        {verdicts.BETTER, verdicts.WORSE}, {verdicts.WITHIN_NOISE})


def test_the_gap_closed_is_zero_at_none_and_one_at_the_ceiling():
    assert verdicts.gap_closed(28.0, 28.0, 35.0) == 0.0
    assert verdicts.gap_closed(35.0, 28.0, 35.0) == 1.0
    assert verdicts.gap_closed(29.75, 28.0, 35.0) == pytest.approx(0.25)
    assert verdicts.gap_closed(27.0, 28.0, 35.0) < 0
    assert verdicts.gap_closed(30.0, 35.0, 35.0) is None
