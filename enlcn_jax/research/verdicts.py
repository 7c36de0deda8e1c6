"""Verdicts a reader can trust: intervals over seeds and paired comparisons.

Seeds are the independent replicates (each changes the initialisation, the random features and
the training images); the test images are shared by every run, so two variants are compared
image by image within a seed, and the per-seed mean differences are what the interval is over.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from scipy import stats

CONFIDENCE = 0.95
BETTER, WORSE, WITHIN_NOISE, UNDECIDED = 'better', 'worse', 'within noise', 'one seed'


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """`(mean, low, high)`: the mean of `values` and its Student-t confidence interval
    (`mean ± t_{n-1} s / sqrt(n)`); low = high = mean for a single value.

    Raises:
      ValueError: no values.
    """
    if not values:
        raise ValueError('an interval needs at least one value')
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, mean, mean
    half = (stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values)
            / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def verdict(low: float, high: float, seeds: int) -> str:
    """`better` when the whole interval of a difference is above 0, `worse` when below, else
    `within noise`; `one seed` when there is no interval to judge by."""
    if seeds < 2:
        return UNDECIDED
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return WITHIN_NOISE


def paired(row: dict[int, Sequence[float]], reference: dict[int, Sequence[float]]) -> dict | None:
    """The paired comparison of a row against a reference.

    Args:
      row, reference: per seed, the PSNR of each test image (the same images in the same order).
    Returns:
      `{'difference', 'low', 'high', 'seeds', 'verdict', 'positive'}` in dB, over the seeds both
      have (the per-seed mean of the image-wise differences; `positive`: how many of those
      are above 0), or None when they share no seed.
    Raises:
      ValueError: a seed whose image lists differ in length (not the same test images).
    """
    seeds = sorted(set(row) & set(reference))
    if not seeds:
        return None
    differences = []
    for seed in seeds:
        if len(row[seed]) != len(reference[seed]):
            raise ValueError(f'seed {seed}: {len(row[seed])} and {len(reference[seed])} test '
                             'images; a paired comparison needs the same images')
        differences.append(statistics.fmean(a - b for a, b in zip(row[seed], reference[seed])))
    mean, low, high = interval(differences)
    return {'difference': mean, 'low': low, 'high': high, 'seeds': len(seeds),
            'verdict': verdict(low, high, len(seeds)),
            'positive': sum(difference > 0 for difference in differences)}


def gap_closed(psnr: float, none: float, ceiling: float) -> float | None:
    """The fraction of the gap between `none` (plain EDSR) and a task's `ceiling` (its oracle)
    that `psnr` closes: 0 at `none`, 1 at the ceiling; None when there is no gap."""
    gap = ceiling - none
    return (psnr - none) / gap if gap > 0 else None
