"""research/plots.py: the Pareto front against a brute-force dominance check, and the figure."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from enlcn_jax.research import plots


def brute_force_front(points):
    """Indices no other point dominates (<= cost and >= quality, one strictly), by cost."""
    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and a != b
    kept = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(kept, key=lambda i: (points[i][0], i))


def test_front_of_hand_made_points():
    points = [(1.0, 0.2), (2.0, 0.5), (3.0, 0.4), (0.5, 0.1), (4.0, 0.9), (2.0, 0.3),
              (5.0, 0.9)]
    # (3, .4) is beaten by (2, .5); (2, .3) by (2, .5); (5, .9) by (4, .9).
    assert plots.pareto_front(points) == [3, 0, 1, 4]
    assert plots.pareto_front([]) == []
    assert plots.pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal: neither dominates


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=12))
def test_front_is_exactly_the_non_dominated_points(grid):
    points = [(float(c), float(q)) for c, q in grid]  # a small grid: many ties
    front = plots.pareto_front(points)
    assert front == brute_force_front(points)
    # Along the front (equal points once), paying more buys strictly more quality.
    distinct = list(dict.fromkeys(points[i] for i in front))
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(distinct, distinct[1:]))


ROWS = [
    {'variant': 'enla', 'cost': 20.0, 'quality': {'copy': 0.8, 'blur': 0.5},
     'interval': {'copy': (0.7, 0.9), 'blur': None}, 'control': False},
    {'variant': 'exact', 'cost': 1000.0, 'quality': {'copy': 0.9, 'blur': 0.4},
     'interval': {'copy': (0.85, 0.95), 'blur': (0.3, 0.5)}, 'control': False},
    {'variant': 'relu', 'cost': 30.0, 'quality': {'copy': 0.6, 'blur': None}, 'control': False},
    {'variant': 'shuffled', 'cost': 25.0, 'quality': {'copy': 0.95, 'blur': 0.1},
     'interval': {}, 'control': True},
    {'variant': 'none', 'cost': 0.0, 'quality': {'copy': 0.0, 'blur': 0.0}, 'control': True},
]


def front_line(ax):
    (line,) = [line for line in ax.get_lines() if line.get_label() == 'Pareto front']
    return list(zip(line.get_xdata(), line.get_ydata()))


def test_figure_has_one_panel_per_task_with_its_front():
    fig = plots.pareto_figure(ROWS, cost_key_label='fwd ms at 128x128', tasks=['copy', 'blur'])
    copy, blur = fig.axes
    assert [copy.get_title(), blur.get_title()] == ['copy', 'blur']
    assert copy.get_xscale() == 'log' and copy.get_xlabel() == 'fwd ms at 128x128'
    # The control 'shuffled' scores above everything but is not on the front; relu is beaten.
    assert front_line(copy) == [(20.0, 0.8), (1000.0, 0.9)]
    assert front_line(blur) == [(20.0, 0.5)]
    labels = [text.get_text() for text in copy.texts]
    assert sorted(labels) == ['enla', 'exact', 'relu', 'shuffled']
    assert sorted(text.get_text() for text in blur.texts) == ['enla', 'exact', 'shuffled']
    (shuffled,) = [text for text in copy.texts if text.get_text() == 'shuffled']
    assert shuffled.get_color() == plots.CONTROL_COLOR
    # 'none' costs 0: a level line, not a point on the log axis.
    assert 'none (no attention cost)' in copy.get_legend_handles_labels()[1]
    # enla's 95 % interval on copy is an error bar from 0.7 to 0.9.
    bars = [c for c in copy.collections if len(c.get_segments()) == 1]
    spans = sorted(tuple(np.round(np.asarray(c.get_segments()[0])[:, 1], 6)) for c in bars)
    assert (0.7, 0.9) in spans and (0.85, 0.95) in spans
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    plt.close(fig)


def test_plot_writes_a_png_with_one_panel_per_task(tmp_path):
    one = plots.pareto_plot(ROWS, tmp_path / 'one.png', cost_key_label='ms', tasks=['copy'])
    two = plots.pareto_plot(ROWS, tmp_path / 'two.png', cost_key_label='ms',
                            tasks=['copy', 'blur'])
    for path in (one, two):
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        with Image.open(path) as image:
            image.verify()
    with Image.open(one) as a, Image.open(two) as b:
        assert b.size[0] == pytest.approx(2 * a.size[0], rel=0.05) and b.size[1] == a.size[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['one.png', 'two.png']


def test_no_tasks_is_an_error():
    with pytest.raises(ValueError, match='no tasks'):
        plots.pareto_figure(ROWS, cost_key_label='ms', tasks=[])
