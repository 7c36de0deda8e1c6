"""Research tools: what the attention does, and how good its random-feature approximation is.

    python -m enlcn_jax.visualize maps --image IMG --pixel X,Y [--checkpoint DIR] [--module 0]
    python -m enlcn_jax.visualize variance [--image IMG] [--checkpoint DIR] [--draws 64]
        [--feature_map softmax_kernel,relu] [--projection iid,orthogonal]

Both read the attention inputs `(q, k, v)` an attention module sows (the block contract,
`models.check_block`): q, k normalised and amplified as the module's attention receives them.

`maps` (the paper's Figures 1 and 7): for one query position of one attention module, the
attention weights over all positions, as heat maps over the image, under
  * ENLA: random-feature weights on the unit directions q/|q|, k/|k| (no amplification, k = 1),
  * softmax k: the exact kernel that ENLA + k estimates, `softmax(q . k)` on q, k as given,
  * ENLCA (<attention>): the module as it runs, named after its attention function (`enla`,
    `exact` or a researcher's): that function with the module's feature map on q, k as given and
    its recorded random features (`ENLCAConfig.attend`).
`variance` (Figure 6 and the approximation side of Table 4), per feature map and projection
sampler, on the unit directions q/|q|, k/|k| taken from a real image, amplified to each k:
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
the sample variance over `--draws` draws falls orders of magnitude below Eq. 7: the measured
points then show what a training run actually sees, and the attention-output error is the
practical measure.
Both write PNG + JSON.
Without `--checkpoint` a freshly initialised quickstart-sized ENLCN is used; a checkpoint that
names functions outside enlcn_jax (`MODULE:NAME`) loads only with `--trust_code`
(`checkpoints.load_model`).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from enlcn_jax.data import image_io

from enlcn_jax.nn import attention, features, models, registry

from enlcn_jax.storage import checkpoints, files

Array = jax.Array
IMAGE_EXPECTED = 'expected an RGB image [H, W, 3], uint8 (0..255) or float in [0, 1]'


def model_input(image: np.ndarray) -> np.ndarray:
    """The network's input for an RGB image: float32 `[H, W, 3]` in [0, 1].

    Args:
      image: `[H, W, 3]`, uint8 (divided by 255) or float with values in [0, 1] (used as is).
    Raises:
      ValueError: another shape or dtype, or a float image with values outside [0, 1] (one line
        naming the expected input).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise ValueError(f'image of shape {list(image.shape)}: {IMAGE_EXPECTED}')
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f'image of dtype {image.dtype}: {IMAGE_EXPECTED}')
    if not np.all(np.isfinite(image)):
        raise ValueError(f'{image.dtype} image with NaN or infinite values: {IMAGE_EXPECTED}')
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f'{image.dtype} image with values from {image.min():g} to '
                         f'{image.max():g}: {IMAGE_EXPECTED}')
    return image.astype(np.float32)


def module_embeddings(model: models.ENLCN, variables: dict, image: np.ndarray,
                      module: int) -> tuple[Array, Array, Array, str]:
    """The attention inputs of one attention module for one image, as the block sows them
    (`models.check_block`).

    Args:
      image: `[H, W, 3]` LR input, uint8 or float in [0, 1] (`model_input`).
      module: index among the attention modules (0 = the first).
    Returns:
      `(q [N, d], k [N, d], v [N, c], name)`: the queries and keys (normalised and amplified)
      and values the module's attention receives at the N = H W positions, and the module's
      name (`body_<i>`).
    """
    x = jnp.asarray(model_input(image))[None]
    names = [f'body_{i}' for i, kind in enumerate(model.body_layout()) if kind == 'enlca']
    if not names:
        raise ValueError("the model has no ENLCA module (attention='none')")
    if not 0 <= module < len(names):
        raise ValueError(f'--module {module} out of range: the model has {len(names)} ENLCA modules')
    def embeddings(variables: dict, x: Array) -> tuple[Array, Array, Array]:  # XLA drops the rest
        _, state = model.apply(variables, x, mutable=['intermediates'])
        q, k, v = state['intermediates'][names[module]]['embeddings'][0]
        return q[0], k[0], v[0]

    return (*jax.jit(embeddings)(variables, x), names[module])


def unit_directions(x: Array) -> Array:
    """`x / |x|` over the last axis (a zero row stays zero). `[..., d] -> [..., d]`."""
    return models.l2_normalize(x, float(jnp.finfo(jnp.float32).tiny))


def attention_row(q: Array, k: Array, kind: str, projection: Array | None = None,
                  feature_map: features.FeatureMap = features.softmax_kernel_features) -> Array:
    """Attention weights of one query over all keys; they sum to one.

    Args:
      q: `[d]` query; k: `[N, d]` keys.
      kind: 'exact' (`softmax(q . k)`) or 'random_features' (`phi(q).phi(k_j)` normalised).
    Returns:
      `[N]` weights.
    """
    if kind == 'exact':
        return jax.nn.softmax(k @ q)
    if kind == 'random_features':
        weights = feature_map(k, projection) @ feature_map(q, projection)
        return weights / jnp.sum(weights)
    raise ValueError(f"unknown attention row kind {kind!r}; known: 'exact', 'random_features'")


def configured_attention_row(config: models.ENLCAConfig, q: Array, k: Array, projection: Array,
                             i: int, spatial_shape: tuple[int, int]) -> Array:
    """Weights of query `i` over all keys under the configured attention, run as the ENLCA module
    runs it (`ENLCAConfig.attend`, no mask).

    They are the gradient of output `[i, 0]` with respect to a one-channel value `v [N, 1]` (one
    backward pass): exactly the weights of any attention function linear in v (the registered
    ones; their rows sum to one).

    Args:
      q, k: `[N, d]` the module's normalised, amplified queries and keys.
      projection: `[m, d]` the module's random features.
      i: the query's position, row-major in `spatial_shape` = (H, W), N = H W.
    Returns:
      `[N]` weights.
    """
    def output_i(v: Array) -> Array:
        out = config.attend(q[None], k[None], v[None], projection, spatial_shape=spatial_shape)
        return out[0, i, 0]

    return jax.jit(jax.grad(output_i))(jnp.zeros((q.shape[0], 1), q.dtype))[:, 0]


def spec_label(spec: str | object) -> str:
    """How a function spec (`ENLCAConfig.attention`, a feature map, ...) is named in titles and
    tables: a string as written, a function (or a `functools.partial` of one) by its name."""
    if isinstance(spec, str):
        return spec
    fn = getattr(spec, 'func', spec)
    return getattr(fn, '__qualname__', None) or repr(spec)


def enlca_map_name(config: models.ENLCAConfig) -> str:
    """The key and panel title of the module's own map in `query_attention_maps`:
    `ENLCA (<attention>)`, e.g. `ENLCA (enla)`, `ENLCA (exact)`, `ENLCA (my_attn:local)`."""
    return f'ENLCA ({spec_label(config.attention)})'


def query_attention_maps(model: models.ENLCN, variables: dict, image: np.ndarray,
                         pixel: tuple[int, int], module: int = 0) -> dict[str, np.ndarray]:
    """Attention maps `[H, W]` for the query at `pixel` = (x, y) of an image `[H, W, 3]`, uint8 or
    float in [0, 1] (`model_input`): 'ENLA', 'softmax k' and `enlca_map_name`, in that order (see
    the module docstring)."""
    h, w = model_input(image).shape[:2]
    x, y = pixel
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f'--pixel {x},{y} is outside the {w}x{h} image')
    q, k, _, name = module_embeddings(model, variables, image, module)
    projection = variables[models.RANDOM_FEATURES][name]['projection']
    config = model.enlca
    i = y * w + x
    q1, k1 = unit_directions(q), unit_directions(k)
    rows = {
        'ENLA': attention_row(q1[i], k1, 'random_features', projection, config.feature_map_fn()),
        'softmax k': attention_row(q[i], k, 'exact'),
        enlca_map_name(config): configured_attention_row(config, q, k, projection, i, (h, w)),
    }
    return {kind: np.asarray(row).reshape(h, w) for kind, row in rows.items()}


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
            row = {'k': float(amp), 'm': int(m), 'feature_map': spec_label(spec),
                   'projection': spec_label(name),
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


def plot_maps(image: np.ndarray, maps: dict[str, np.ndarray], pixel: tuple[int, int],
              out: str | Path, title: str = '') -> Path:
    """Writes the image with the query marked and one heat map per kind, side by side."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 3.4))
    axes[0].imshow(image)
    axes[0].set_title(title or 'query')
    for ax, (kind, weights) in zip(axes[1:], maps.items()):
        ax.imshow(image, alpha=0.35)
        ax.imshow(weights, cmap='jet', alpha=0.65)
        ax.set_title(f'{kind} (max {weights.max():.2g})')
    for ax in axes:
        ax.plot(*pixel, marker='x', color='white', markersize=10, mew=2)
        ax.axis('off')
    return save_figure(fig, out)


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
    return save_figure(fig, out)


def _load_model(args: argparse.Namespace) -> tuple[models.ENLCN, dict]:
    """The model of `--checkpoint` (`checkpoints.load_model` with `--trust_code` and
    `--allow_changed_code`), or an untrained one."""
    if args.checkpoint:
        model, variables, _ = checkpoints.load_model(
            args.checkpoint, trust_code=args.trust_code,
            allow_changed_code=args.allow_changed_code)
        return model, variables
    model = models.ENLCN(scale=2, n_resblocks=8, n_feats=32, attention_every=4)
    init = jax.jit(functools.partial(models.init_variables, model),
                   compiler_options=RUN_ONCE_COMPILE)
    return model, init(jax.random.key(0))


def _load_image(path: str | None, max_side: int) -> np.ndarray:
    if path:
        image = image_io.load_image(path)
    else:
        from skimage import data as skdata  # pylint: disable=import-outside-toplevel
        image = skdata.astronaut()
    step = max(1, -(-max(image.shape[:2]) // max_side))
    return np.ascontiguousarray(image[::step, ::step])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.visualize', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    for name in ('maps', 'variance'):
        p = sub.add_parser(name)
        p.add_argument('--checkpoint', help='training workdir or model directory (default: untrained)')
        p.add_argument('--trust_code', action='store_true', help=checkpoints.TRUST_CODE_HELP)
        p.add_argument('--allow_changed_code', action='store_true',
                       help=checkpoints.ALLOW_CHANGED_CODE_HELP)
        p.add_argument('--image', help='input image (default: skimage astronaut)')
        p.add_argument('--module', type=int, default=0, help='which ENLCA module (0 = first)')
        p.add_argument('--max_side', type=int, default=128,
                       help='subsample the image so its longer side is at most this')
        p.add_argument('--out', default=f'results/{name}', help='output path without extension')
    sub.choices['maps'].add_argument('--pixel', required=True, help='query position X,Y')
    sub.choices['variance'].add_argument('--draws', type=int, default=64,
                                         help='projections per (sampler, m), at least 2')
    sub.choices['variance'].add_argument('--ks', default='1,2,3,4,5,6,7,8,9,10')
    sub.choices['variance'].add_argument('--ms', default='2,4,8,16,32,64,128,256')
    sub.choices['variance'].add_argument(
        '--feature_map', default='softmax_kernel',
        help='comma-separated feature maps to compare: names or MODULE:NAME, with options')
    sub.choices['variance'].add_argument(
        '--projection', default='iid,orthogonal',
        help='comma-separated projection samplers to compare: names or MODULE:NAME, with options')
    args = parser.parse_args(argv)

    if args.command == 'variance':
        if args.draws < 2:
            parser.error(f'--draws must be >= 2, got {args.draws}')
        feature_maps, projections = registry.split_specs(args.feature_map), registry.split_specs(args.projection)
        for flag, specs, resolve in (('--feature_map', feature_maps, study_feature_map),
                                     ('--projection', projections, features.get_projection)):
            try:
                for spec in specs:
                    resolve(spec)
            except ValueError as e:
                parser.error(f'{flag}: {e}')
    try:
        model, variables = _load_model(args)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f'--checkpoint {args.checkpoint}: {e}')
    image = _load_image(args.image, args.max_side)
    out = Path(args.out)
    if args.command == 'maps':
        pixel = tuple(int(v) for v in args.pixel.split(','))
        maps = query_attention_maps(model, variables, image, pixel, args.module)
        png = plot_maps(image, maps, pixel, out.with_suffix('.png'),
                        f'module {args.module}, query {pixel}')
        summary = {kind: {'max': float(m.max()), 'entropy': float(-(m * np.log(m + 1e-30)).sum())}
                   for kind, m in maps.items()}
    else:
        q, k, value, _ = module_embeddings(model, variables, image, args.module)
        summary = approximation_study(q, k, value, [float(v) for v in args.ks.split(',')],
                                      [int(v) for v in args.ms.split(',')], args.draws,
                                      feature_maps=feature_maps, projections=projections)
        print('\n'.join(describe_estimates(summary)))
        png = plot_study(summary, out.with_suffix('.png'))
    files.write_text(out.with_suffix('.json'), json.dumps(summary, indent=2))
    print(f'wrote {png} and {out.with_suffix(".json")}')


if __name__ == '__main__':
    main()
