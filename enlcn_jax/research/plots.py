"""Quality against cost: one panel per task, the variants as labelled points, their Pareto front.

`pareto_front` is the pure part (which points no other point beats on both cost and quality);
`pareto_figure` draws, `pareto_plot` writes the PNG atomically (`save_figure`, which the other
research tools' plots use too).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from enlcn_jax.storage import files

# Panels per row of the figure.
PANELS_PER_ROW = 3
CONTROL_COLOR = '0.55'


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated `(cost, quality)` points, by increasing cost (ties by index).

    A point is dominated when another has lower or equal cost and higher or equal quality, and is
    strictly better in one of them; equal points do not dominate each other, so both stay.
    O(n log n).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], i))
    front, best_cheaper, at = [], -math.inf, 0
    while at < len(order):
        cost = points[order[at]][0]
        group = [i for i in order[at:] if points[i][0] == cost]
        top = max(points[i][1] for i in group)
        if top > best_cheaper:
            front += [i for i in group if points[i][1] == top]
        best_cheaper = max(best_cheaper, top)
        at += len(group)
    return front


def _drawable(row: dict, task: str) -> bool:
    return (row.get('quality') or {}).get(task) is not None


def pareto_figure(rows: Sequence[dict], *, cost_key_label: str, tasks: Sequence[str],
                  quality_label: str = 'quality'):
    """A matplotlib figure with one panel per task (titled with the task): x the cost (log
    scale), y the task's quality.

    Args:
      rows: `{'variant': str, 'cost': float | None, 'quality': {task: float | None},
        'interval': {task: (lo, hi) | None}, 'control': bool}` (`interval` optional: a 95 %
        interval of the quality, drawn as an error bar).
      cost_key_label: the x axis label (`'forward ms at 128x128'`).
      tasks: the panels, in order.
      quality_label: the y axis label.
    Returns:
      The figure. Every variant with a quality on a task is a labelled point there, controls in
      grey. A row without a positive cost (`None`, or 0 for a model without attention) cannot
      sit on a log axis: it is a dashed horizontal line at its quality, labelled. The Pareto
      front of the variants that are not controls (`pareto_front`) is a step line through
      ringed points, labelled `'Pareto front'`; a task without results says so.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    if not tasks:
        raise ValueError('pareto_figure: no tasks to draw')
    columns = min(PANELS_PER_ROW, len(tasks))
    panel_rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(panel_rows, columns, figsize=(4.8 * columns, 4.0 * panel_rows),
                             squeeze=False)
    for ax in axes.flat[len(tasks):]:
        fig.delaxes(ax)
    for ax, task in zip(axes.flat, tasks):
        drawn = [row for row in rows if _drawable(row, task)]
        placed = [row for row in drawn if row.get('cost') is not None and row['cost'] > 0]
        levels = [row for row in drawn if row.get('cost') is None or row['cost'] <= 0]
        for row in placed:
            color = CONTROL_COLOR if row.get('control') else 'C0'
            quality = row['quality'][task]
            interval = (row.get('interval') or {}).get(task)
            yerr = None if interval is None else [[quality - interval[0]], [interval[1] - quality]]
            ax.errorbar([row['cost']], [quality], yerr=yerr, fmt='o', color=color, capsize=3)
            ax.annotate(row['variant'], (row['cost'], quality), textcoords='offset points',
                        xytext=(4, 4), fontsize=8, color=color)
        for row in levels:
            ax.axhline(row['quality'][task], color=CONTROL_COLOR, linestyle='--', linewidth=1,
                       label=f"{row['variant']} (no attention cost)")
        candidates = [row for row in placed if not row.get('control')]
        points = [(row['cost'], row['quality'][task]) for row in candidates]
        front = [points[i] for i in pareto_front(points)]
        if front:
            ax.step(*zip(*front), where='post', color='C3', linewidth=1.5, marker='o',
                    markersize=11, markerfacecolor='none', label='Pareto front')
        if not drawn:
            ax.text(0.5, 0.5, 'no results', transform=ax.transAxes, ha='center',
                    color=CONTROL_COLOR)
        ax.set_xscale('log')
        ax.set(title=task, xlabel=cost_key_label, ylabel=quality_label)
        ax.grid(alpha=0.3, which='both')
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc='lower right')
    return fig


def pareto_plot(rows: Sequence[dict], path: str | Path, *, cost_key_label: str,
                tasks: Sequence[str], quality_label: str = 'quality') -> Path:
    """Writes `pareto_figure(rows, ...)` as a PNG to `path` atomically; returns the path.

    Raises:
      files.WriteError: `path` cannot be written (one line naming it).
    """
    fig = pareto_figure(rows, cost_key_label=cost_key_label, tasks=tasks,
                        quality_label=quality_label)
    return save_figure(fig, path)


def save_figure(fig, out: str | Path) -> Path:
    """Writes a matplotlib figure as PNG atomically (parent folders created) and closes it.

    Raises:
      files.WriteError: `out` cannot be written (one line naming it); its previous content is
        intact.
    """
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    try:
        fig.tight_layout()
        with files.atomic_path(out) as temporary:
            fig.savefig(temporary, dpi=110)
    finally:
        plt.close(fig)
    return Path(out)
