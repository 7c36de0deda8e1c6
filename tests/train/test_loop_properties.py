"""Properties of the training loop's schedule for all cadences and run lengths (hypothesis;
settings pinned in tests/conftest.py)."""

import hypothesis
from hypothesis import strategies as st

from enlcn_jax.train import loop


@hypothesis.settings(max_examples=60)
@hypothesis.given(st.integers(1, 40), st.integers(1, 200))
def test_a_periodic_action_comes_exactly_at_the_multiples_of_its_cadence_and_the_last_step(
        every, last):
    """Over steps 1..last (the number of steps done after each step), brute force."""
    due = [step for step in range(1, last + 1) if loop.is_due(step, every, last)]
    expected = sorted(set(range(every, last + 1, every)) | {last})
    assert due == expected
