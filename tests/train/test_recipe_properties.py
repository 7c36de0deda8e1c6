"""Properties of the training recipe's schedules for all run lengths and cadences (hypothesis;
settings pinned in tests/conftest.py)."""

import hypothesis
import ml_collections
from hypothesis import strategies as st

from enlcn_jax.train import recipe


def config(every, steps_per_epoch, redraw_steps):
    return ml_collections.ConfigDict({'train': {
        'steps_per_epoch': steps_per_epoch,
        'redraw': {'every': every, 'steps': redraw_steps}}})


@hypothesis.given(st.sampled_from(['epoch', 'steps', 'never']), st.integers(1, 12),
                  st.integers(1, 12), st.integers(1, 120))
def test_draw_i_starts_at_step_i_times_the_period_and_nowhere_else(every, steps_per_epoch,
                                                                  redraw_steps, run_length):
    """The draws over a run, brute force: step -> index where a draw starts. Draw 0 starts at
    step 0, draw i at `i * period` (the period: an epoch's steps, or `redraw.steps`), and the
    indices count up by one; 'never' draws nothing."""
    c = config(every, steps_per_epoch, redraw_steps)
    draws = {step: index for step in range(run_length)
             if (index := recipe.redraw_index(step, c)) is not None}
    period = {'epoch': steps_per_epoch, 'steps': redraw_steps}.get(every)
    expected = {} if period is None else {i * period: i for i in range(-(-run_length // period))}
    assert draws == expected
