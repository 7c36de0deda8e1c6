"""How good the random-feature approximation is (Figure 6 and the approximation side of Table 4),
per feature map and projection sampler, on the unit directions q/|q|, k/|k| of an attention
module's sown embeddings (`embeddings.module_embeddings`), amplified to each k:
  * whether `phi(q) . phi(k)` under the sampler's projections is an unbiased estimate of
    `exp(q . k)`, decided empirically (`is_unbiased_estimate`; `softmax_kernel` with iid rows is,
    `softmax_kernel_stable` and `relu` are not), and its mean ratio to `exp(q . k)`;
  * for the maps that are: the relative error and variance of that estimate against the
    amplification k and the number of features m, with Eq. 7 drawn over the measured variances
    (for the others these columns are null and not drawn: they estimate another kernel);
  * for every map: the relative error of ENLA's attention output against exact softmax attention
    (ENLA's ratio cancels a map's scale, so this column compares all maps). It is measured on a
    random subset of query rows (1024 by default), each against the exact attention of that row
    over all keys, and averaged over the first 16 draws.
For large k the estimate is so heavy-tailed (log-normal with variance |q + k|^2, up to 4k) that
the sample variance over the draws falls orders of magnitude below Eq. 7: the measured points
then show what a training run actually sees, and the attention-output error is the practical
measure. `approximation_study` measures, `describe_estimates` says which maps estimate
`exp(q.k)`, `plot_study` draws the rows (PNG).
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from enlcn_jax.nn import attention, features, registry
from enlcn_jax.research import plots
from enlcn_jax.research.embeddings import unit_directions

Array = jax.Array


def study_feature_map(spec: str | features.FeatureMap) -> features.FeatureMap:
    """The feature map `spec` selects (a name or `MODULE:NAME`, with options, or a function) with
    its additive constant `eps` at 0 where it has one the spec leaves unset: the study measures
    the random-feature estimate itself.

    Raises:
      ValueError: an unknown or invalid map.
    """
    feature_map = features.get_feature_map(spec)
    if ('eps' in registry.option_names(feature_map)
            and 'eps' not in getattr(feature_map, 'keywords', {})):
        return functools.partial(feature_map, eps=0.0)
    return feature_map


@functools.partial(jax.jit, static_argnames=('phi',))
def kernel_estimates(q: Array, k: Array, projections: Array, phi: features.FeatureMap) -> Array:
    """`phi(q) . phi(k)` under each of D projections, `phi` called as `phi(x, F)`:
    `q, k [P, d]`, `projections [D, m, d]` -> `[D, P]`."""
    return jax.lax.map(lambda f: jnp.sum(phi(q, f) * phi(k, f), -1), projections)


# XLA options for the programs that run once on small inputs (the untrained model's
# initialisation, the projection draws, the unbiasedness test): compiling them without the
# backend's optimisations (as `jax_disable_most_optimizations` does) takes a fraction of the time,
# and they still run in milliseconds.
RUN_ONCE_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


@functools.partial(jax.jit, static_argnames=('sampler', 'draws', 'm', 'd'),
                   compiler_options=RUN_ONCE_COMPILE)
def draw_projections(key: Array, *, sampler: features.ProjectionSampler, draws: int, m: int,
                     d: int) -> Array:
    """`draws` independent projections `sampler(key_i, m, d)`: `[draws, m, d]`."""
    return jax.lax.map(lambda key: sampler(key, m, d), jax.random.split(key, draws))


def eq7_variance(q: Array, k: Array, m: int) -> Array:
    """Eq. 7, the variance of the iid estimate: `exp(q.k)^2 (exp(|q + k|^2) - 1) / m`. `[P, d] -> [P]`."""
    return jnp.exp(2 * jnp.sum(q * k, -1)) * (jnp.exp(jnp.sum((q + k) ** 2, -1)) - 1) / m


# `is_unbiased_estimate` tests a map at these amplifications (|q|^2 = |k|^2 = k): the estimate's
# log-variance, at most |q + k|^2 <= 4 k, is small enough there for a mean over draws to be
# reliable, and two scales catch a bias that depends on the norms.
UNBIASEDNESS_KS = (0.25, 1.0)
# A map is unbiased when its mean ratio to exp(q.k) is within this many standard errors of 1, plus
# a negligible relative bias (float32 sums; the released eps of 1e-4 at these amplifications).
UNBIASEDNESS_Z = 4.0
NEGLIGIBLE_BIAS = 1e-3


def is_unbiased_estimate(q: Array, k: Array, projections: Array,
                         phi: features.FeatureMap) -> bool:
    """Whether `phi(q) . phi(k)` is an unbiased estimate of `exp(q . k)`, decided empirically.

    At every amplification of `UNBIASEDNESS_KS` (the pairs scaled to |q|^2 = |k|^2 = k): per
    draw, the mean over the pairs of `phi(q).phi(k) / exp(q.k)`; the map is unbiased when the
    mean of these over the draws is within `UNBIASEDNESS_Z` standard errors (their standard
    deviation / sqrt(D)) plus `NEGLIGIBLE_BIAS` of 1 at both. A sampler whose rows are not
    marginally standard Gaussian makes even the softmax kernel's estimate biased.

    Args:
      q, k: `[P, d]` unit-norm query and key embeddings of P pairs.
      projections: `[D, m, d]` independent draws of a projection sampler, D >= 2.
    """
    for per_draw in np.asarray(_mean_ratios(q, k, projections, phi), np.float64):
        standard_error = per_draw.std(ddof=1) / math.sqrt(per_draw.size)
        if not abs(per_draw.mean() - 1) <= UNBIASEDNESS_Z * standard_error + NEGLIGIBLE_BIAS:
            return False
    return True


@functools.partial(jax.jit, static_argnames=('phi',), compiler_options=RUN_ONCE_COMPILE)
def _mean_ratios(q: Array, k: Array, projections: Array, phi: features.FeatureMap) -> Array:
    """Per amplification of `UNBIASEDNESS_KS` and per draw, the mean over the pairs of
    `phi(q).phi(k) / exp(q.k)` on the pairs scaled to it: `q, k [P, d]` (unit norm),
    `projections [D, m, d]` -> `[len(UNBIASEDNESS_KS), D]`."""
    ratios = [kernel_estimates(math.sqrt(amp) * q, math.sqrt(amp) * k, projections, phi)
              / jnp.exp(amp * jnp.sum(q * k, -1)) for amp in UNBIASEDNESS_KS]
    return jnp.mean(jnp.stack(ratios), -1)


# The columns of `approximation_study`'s rows about the estimate of exp(q.k): None where the map
# does not estimate it.
KERNEL_COLUMNS = ('kernel_rel_rmse', 'kernel_rel_var', 'eq7_rel_var')
# The measured columns of `approximation_study`'s rows, in order.
STUDY_COLUMNS = ('mean_ratio', *KERNEL_COLUMNS, 'output_rel_error')
# Draws the attention-output error is averaged over (the first of each row's draws).
OUTPUT_DRAWS = 16


def approximation_study(q: Array, k: Array, value: Array, ks, ms, draws: int = 64,
                        pairs: int = 256, seed: int = 0,
                        feature_maps: Sequence[str | features.FeatureMap] = ('softmax_kernel',),
                        projections: Sequence[str | features.ProjectionSampler] = (
                            'iid', 'orthogonal'),
                        output_rows: int = 1024) -> list[dict]:
    """Error / variance of the kernel estimate and of ENLA's output, per (k, m, map, projection).

    Every feature map (a spec or a function, its `eps` at 0: `study_feature_map`) and every
    projection sampler (a spec or a function) is measured on the same embeddings, pairs, query
    rows and random keys, so a researcher's kernel or sampler compares directly with ours. Each
    (sampler, m) draws its `draws` projections once; every k uses them.

    Args:
      q, k: `[N, d]` query / key embeddings (only their directions are used); value: `[N, c]`.
      ks: amplifications; ms: numbers of random features.
      draws: projections per (sampler, m), at least 2.
      pairs: (query, key) pairs the kernel estimate is measured on.
      feature_maps, projections: the maps and samplers to compare.
      output_rows: query rows the attention-output error is measured on (all when N is fewer).
    Returns:
      rows with `k`, `m`, `feature_map`, `projection`; `unbiased` (whether the map's
      `phi(q).phi(k)` estimates `exp(q.k)` without bias under the sampler: `is_unbiased_estimate`
      on the pairs at the largest m) and `mean_ratio` (of `phi(q).phi(k)` to `exp(q.k)`, mean over
      draws and pairs; below 1 for an unbiased map at large k, the heavy tail); where unbiased,
      `kernel_rel_rmse` (of `phi(q).phi(k)` against `exp(q.k)`), `kernel_rel_var` (measured
      `Var / exp(q.k)^2`, averaged over pairs) and `eq7_rel_var` (the softmax kernel's iid
      variance from Eq. 7), else None for these three; and `output_rel_error`
      (`|ENLA - softmax attention| / |softmax attention|` over the output rows, mean over the
      first `OUTPUT_DRAWS` draws).
    """
    if draws < 2:
        raise ValueError(f'draws must be >= 2 (a standard error needs two), got {draws}')
    maps = {spec: study_feature_map(spec) for spec in feature_maps}
    samplers = {spec: features.get_projection(spec) for spec in projections}
    n, d = q.shape
    pick = np.random.default_rng(seed)
    qi, kj = pick.integers(0, n, (2, pairs))
    query_rows = pick.permutation(n)[:output_rows]
    key = jax.random.key(seed)
    drawn = {(name, m): draw_projections(jax.random.fold_in(key, m), sampler=sampler, draws=draws,
                                         m=int(m), d=d)
             for (name, sampler), m in itertools.product(samplers.items(), ms)}
    unit_q, unit_k = unit_directions(q), unit_directions(k)
    pair_q, pair_k = unit_q[qi], unit_k[kj]
    unbiased = {(spec, name): is_unbiased_estimate(pair_q, pair_k, drawn[(name, max(ms))], phi)
                for (spec, phi), name in itertools.product(maps.items(), samplers)}
    results = []
    for amp in ks:
        amp_q, amp_k, exact_rows = _amplified(unit_q, unit_k, value, query_rows,
                                              jnp.float32(amp))
        for m, (spec, phi), name in itertools.product(ms, maps.items(), samplers):
            errors = _approximation_errors(amp_q, amp_k, value, qi, kj, query_rows, exact_rows,
                                           drawn[(name, m)], phi=phi)
            row = {'k': float(amp), 'm': int(m), 'feature_map': registry.describe(spec),
                   'projection': registry.describe(name),
                   'unbiased': unbiased[(spec, name)],
                   **{column: float(errors[column]) for column in STUDY_COLUMNS}}
            if not row['unbiased']:
                row.update(dict.fromkeys(KERNEL_COLUMNS))
            results.append(row)
    return results


@jax.jit
def _amplified(unit_q: Array, unit_k: Array, value: Array, query_rows: Array,
               amplification: Array) -> tuple[Array, Array, Array]:
    """`(q, k [N, d], exact_rows [R, c])`: the unit directions `unit_q, unit_k [N, d]` scaled to
    |q|^2 = |k|^2 = k, and the softmax attention output at `query_rows [R]` (against every key)."""
    s = jnp.sqrt(amplification)
    q, k = s * unit_q, s * unit_k
    return q, k, attention.exact_attention(q[query_rows][None], k[None], value[None])[0]


@functools.partial(jax.jit, static_argnames=('phi',))
def _approximation_errors(q: Array, k: Array, value: Array, qi: Array, kj: Array,
                          query_rows: Array, exact_rows: Array, projections: Array, *,
                          phi: features.FeatureMap) -> dict[str, Array]:
    """The `STUDY_COLUMNS` of one `approximation_study` row, compiled once per (map, m) and
    shared by every sampler and amplification.

    Row r of ENLA's output depends on query r and all keys only, so it is computed for the
    output rows alone, against every key.

    Args:
      q, k: `[N, d]` amplified unit embeddings; value: `[N, c]`.
      qi, kj: `[P]` indices of the query / key pairs the kernel estimate is measured on.
      query_rows: `[R]` the rows of the output error; exact_rows: `[R, c]` softmax attention
        there.
      projections: `[D, m, d]` the row's draws.
    """
    exact = jnp.exp(jnp.sum(q[qi] * k[kj], -1))
    est = kernel_estimates(q[qi], k[kj], projections, phi)  # [D, P]

    def output_error(projection: Array) -> Array:
        out = attention.enla(q[query_rows][None], k[None], value[None], projection, phi)[0]
        return jnp.linalg.norm(out - exact_rows) / jnp.linalg.norm(exact_rows)

    out_err = jax.lax.map(output_error, projections[:OUTPUT_DRAWS])
    m = projections.shape[1]
    return {'mean_ratio': jnp.mean(est / exact),
            'kernel_rel_rmse': jnp.mean(jnp.sqrt(jnp.mean((est - exact) ** 2, 0)) / exact),
            'kernel_rel_var': jnp.mean(jnp.var(est, 0) / exact ** 2),
            'eq7_rel_var': jnp.mean(eq7_variance(q[qi], k[kj], m) / exact ** 2),
            'output_rel_error': jnp.mean(out_err)}


def describe_estimates(rows: list[dict]) -> list[str]:
    """One line per (feature map, projection) of `approximation_study`'s rows: whether its
    `phi(q).phi(k)` estimates `exp(q.k)`, and if not its mean ratio to it at each k (largest m)."""
    m_ref = max(r['m'] for r in rows)
    lines = []
    for spec, name in dict.fromkeys((r['feature_map'], r['projection']) for r in rows):
        own = [r for r in rows if (r['feature_map'], r['projection']) == (spec, name)]
        if own[0]['unbiased']:
            lines.append(f'{spec}, {name}: estimates exp(q.k): yes')
            continue
        ratios = ', '.join(f"{r['mean_ratio']:.3g} at k = {r['k']:g}"
                           for r in sorted(own, key=lambda r: r['k']) if r['m'] == m_ref)
        lines.append(f'{spec}, {name}: estimates exp(q.k): no (mean phi(q).phi(k) / exp(q.k) '
                     f'at m = {m_ref}: {ratios}; kernel columns null)')
    return lines

def plot_study(rows: list[dict], out: str | Path) -> Path:
    """Three panels: kernel variance vs k (at the largest m) with Eq. 7, and vs m (at k = 6 or the
    nearest), for the (map, projection) pairs whose `phi(q).phi(k)` estimates `exp(q.k)` (the
    others are listed, not drawn); attention-output error vs k for all. One colour per feature
    map, one marker per projection."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    ks = sorted({r['k'] for r in rows})
    ms = sorted({r['m'] for r in rows})
    m_ref, k_ref = ms[-1], min(ks, key=lambda k: abs(k - 6))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    feature_maps = list(dict.fromkeys(r['feature_map'] for r in rows))
    projections = list(dict.fromkeys(r['projection'] for r in rows))
    not_estimates = []
    for (color, spec), (name, marker) in itertools.product(
            enumerate(feature_maps), zip(projections, itertools.cycle('os^Dv<>P'))):
        sel = lambda **kv: sorted((r for r in rows if r['projection'] == name
                                   and r['feature_map'] == spec  # pylint: disable=cell-var-from-loop
                                   and all(r[a] == b for a, b in kv.items())),
                                  key=lambda r: (r['k'], r['m']))
        by_k, by_m = sel(m=m_ref), sel(k=k_ref)
        style = dict(marker=marker, color=f'C{color}', label=f'{spec}, {name}')
        axes[2].plot([r['k'] for r in by_k], [r['output_rel_error'] for r in by_k], **style)
        if not by_k[0]['unbiased']:
            not_estimates.append(f'{spec}, {name}')
            continue
        axes[0].semilogy([r['k'] for r in by_k], [r['kernel_rel_var'] for r in by_k],
                         linestyle='none', **style)
        axes[1].loglog([r['m'] for r in by_m], [r['kernel_rel_var'] for r in by_m],
                       linestyle='none', **style)
    eq7 = {(r['k'], r['m']): r['eq7_rel_var'] for r in rows if r['eq7_rel_var'] is not None}
    eq7_k = sorted((k, v) for (k, m), v in eq7.items() if m == m_ref)
    eq7_m = sorted((m, v) for (k, m), v in eq7.items() if k == k_ref)
    if eq7:
        axes[0].semilogy(*zip(*eq7_k), 'k-', label='Eq. 7')
        axes[1].loglog(*zip(*eq7_m), 'k-', label='Eq. 7')
    if not_estimates:
        for ax in axes[:2]:
            ax.plot([], [], ' ', label='not estimates of exp(q.k), not drawn:\n' +
                    '\n'.join(not_estimates))
    axes[0].set(xlabel='amplification k', ylabel='Var / exp(q.k)^2', title=f'kernel estimate, m = {m_ref}')
    axes[1].set(xlabel='random features m', ylabel='Var / exp(q.k)^2', title=f'kernel estimate, k = {k_ref:g}')
    axes[2].set(xlabel='amplification k', ylabel='relative error',
                title=f'attention output vs exact softmax, m = {m_ref}')
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    return plots.save_figure(fig, out)
