"""Research tools: what the attention does, and how good its random-feature approximation is.

    python -m enlcn_jax.visualize maps --image IMG --pixel X,Y [--checkpoint DIR] [--module 0]
    python -m enlcn_jax.visualize variance [--image IMG] [--checkpoint DIR] [--draws 64]

`maps` (the paper's Figures 1 and 7): for one query position of one ENLCA module, the attention
weights over all positions, as heat maps over the image, under
  * NLA: exact softmax of the module's raw embeddings `theta(x) . delta(x)`,
  * ENLA: random-feature weights on L2-normalised embeddings (no amplification, k = 1),
  * softmax k: the exact kernel that ENLA + k estimates, `softmax(k cos(q, k))`,
  * ENLCA: the module as it runs, amplified by k, with its recorded random features.
`variance` (Figure 6 and the approximation side of Table 4): relative error and variance of the
random-feature estimate of `exp(q . k)`, and the relative error of the attention output, against
the amplification k and the number of features m, for iid and orthogonal features, on embeddings
taken from a real image; Eq. 7 is drawn over the measured variances. For large k the estimate
is so heavy-tailed (log-normal with variance |q + k|^2, up to 4k) that the sample variance over
`--draws` draws falls orders of magnitude below Eq. 7: the measured points then show what a
training run actually sees, and the attention-output error is the practical measure.
Both write PNG + JSON.
Without `--checkpoint` a freshly initialised quickstart-sized ENLCN is used.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from enlcn_jax.data import image_io

from enlcn_jax.nn import attention, features, models

from enlcn_jax.storage import files

Array = jax.Array
MAP_KINDS = ('NLA', 'ENLA', 'softmax k', 'ENLCA')


def module_embeddings(model: models.ENLCN, variables: dict, image: np.ndarray,
                      module: int) -> tuple[Array, Array, Array, str]:
    """Raw embeddings of one ENLCA module for one image.

    Args:
      image: uint8 `[H, W, 3]` LR input.
      module: index among the ENLCA modules (0 = the first).
    Returns:
      `(theta [N, d], delta [N, d], value [N, c], name)`: the outputs of conv_match1, conv_match2
      and conv_assembly at the N = H W positions, and the module's name (`body_<i>`).
    """
    names = [f'body_{i}' for i, kind in enumerate(model.body_layout()) if kind == 'enlca']
    if not names:
        raise ValueError("the model has no ENLCA module (attention='none')")
    if not 0 <= module < len(names):
        raise ValueError(f'--module {module} out of range: the model has {len(names)} ENLCA modules')
    x = jnp.asarray(image, jnp.float32)[None] / 255.0
    _, state = jax.jit(functools.partial(model.apply, mutable=['intermediates']))(variables, x)
    embedded = state['intermediates'][names[module]]['embeddings'][0][0]  # [N, 2 d + c]
    d = (embedded.shape[-1] - model.n_feats) // 2
    return embedded[:, :d], embedded[:, d:2 * d], embedded[:, 2 * d:], names[module]


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


def query_attention_maps(model: models.ENLCN, variables: dict, image: np.ndarray,
                         pixel: tuple[int, int], module: int = 0) -> dict[str, np.ndarray]:
    """Attention maps `[H, W]` (one per entry of `MAP_KINDS`) for the query at `pixel` = (x, y)."""
    h, w = image.shape[:2]
    x, y = pixel
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f'--pixel {x},{y} is outside the {w}x{h} image')
    theta, delta, _, name = module_embeddings(model, variables, image, module)
    projection = variables[models.RANDOM_FEATURES][name]['projection']
    feature_map = model.enlca.feature_map_fn()
    i = y * w + x
    unit = lambda e: models.l2_normalize(e, model.enlca.norm_eps)
    amp = jnp.sqrt(jnp.float32(model.enlca.amplification))
    q1, k1 = unit(theta), unit(delta)
    rows = {
        'NLA': attention_row(theta[i], delta, 'exact'),
        'ENLA': attention_row(q1[i], k1, 'random_features', projection, feature_map),
        'softmax k': attention_row(amp * q1[i], amp * k1, 'exact'),
        'ENLCA': attention_row(amp * q1[i], amp * k1, 'random_features', projection, feature_map),
    }
    return {kind: np.asarray(row).reshape(h, w) for kind, row in rows.items()}


def study_feature_map(spec: str) -> features.FeatureMap:
    """The feature map `spec` selects (a name or `MODULE:NAME`) with its additive constant, if
    it has an `eps` option, at 0: the study measures the random-feature estimate itself."""
    has_eps = features.accepts(features.get_feature_map(spec), 'eps')
    return features.get_feature_map(spec, eps=0.0 if has_eps else None)


def kernel_estimates(q: Array, k: Array, sampler: features.ProjectionSampler, m: int,
                     draws: int, key: Array, phi: features.FeatureMap | None = None) -> Array:
    """`draws` independent estimates `phi(q) . phi(k)`, each with a new `[m, d]` projection;
    `phi` defaults to the softmax kernel with eps 0, an estimate of `exp(q . k)`.
    `[P, d] -> [draws, P]`."""
    phi = phi or study_feature_map('softmax_kernel')

    def one(key):
        projection = sampler(key, m, q.shape[-1])
        return jnp.sum(phi(q, projection) * phi(k, projection), -1)

    return jax.lax.map(one, jax.random.split(key, draws))


def eq7_variance(q: Array, k: Array, m: int) -> Array:
    """Eq. 7, the variance of the iid estimate: `exp(q.k)^2 (exp(|q + k|^2) - 1) / m`. `[P, d] -> [P]`."""
    return jnp.exp(2 * jnp.sum(q * k, -1)) * (jnp.exp(jnp.sum((q + k) ** 2, -1)) - 1) / m


# The measured columns of `approximation_study`'s rows, in order.
STUDY_COLUMNS = ('kernel_rel_rmse', 'kernel_rel_var', 'eq7_rel_var', 'output_rel_error')


def approximation_study(theta: Array, delta: Array, value: Array, ks, ms, draws: int = 64,
                        pairs: int = 256, seed: int = 0,
                        feature_maps: Sequence[str] = ('softmax_kernel',), *,
                        norm_eps: float) -> list[dict]:
    """Error / variance of the kernel estimate and of ENLA's output, per (k, m, map, projection).

    Every feature map (a name or `MODULE:NAME`, its `eps` at 0) is measured on the same
    embeddings, pairs and projections, so a researcher's kernel compares directly with ours.

    Args:
      theta, delta: `[N, d]` raw query / key embeddings; value: `[N, c]`.
      ks: amplifications; ms: numbers of random features.
      feature_maps: the maps to compare.
      norm_eps: the clamp of the embeddings' norms, the module's `ENLCAConfig.norm_eps`.
    Returns:
      rows with `k`, `m`, `feature_map`, `projection`, `kernel_rel_rmse` (of `phi(q).phi(k)`
      against `exp(q.k)`), `kernel_rel_var` (measured `Var / exp(q.k)^2`, averaged over pairs),
      `eq7_rel_var` (the softmax kernel's iid variance from Eq. 7) and `output_rel_error`
      (`|ENLA - softmax attention| / |softmax attention|`, mean over draws).
    """
    maps = {spec: study_feature_map(spec) for spec in feature_maps}
    key = jax.random.key(seed)
    n = theta.shape[0]
    pick_q, pick_k, key = jax.random.split(key, 3)
    qi = jax.random.randint(pick_q, (pairs,), 0, n)
    kj = jax.random.randint(pick_k, (pairs,), 0, n)
    unit = lambda e: models.l2_normalize(e, norm_eps)
    rows = []
    for amp in ks:
        s = jnp.sqrt(jnp.float32(amp))
        q, k = s * unit(theta), s * unit(delta)
        exact_attention = attention.exact_attention(q[None], k[None], value[None])
        for m, (spec, phi), name in itertools.product(ms, maps.items(), ('iid', 'orthogonal')):
            keys = jax.random.split(jax.random.fold_in(key, m))
            errors = _approximation_errors(q, k, value, exact_attention, qi, kj, keys,
                                           sampler=features.get_projection(name), phi=phi,
                                           m=int(m), draws=draws)
            rows.append({'k': float(amp), 'm': int(m), 'feature_map': spec, 'projection': name,
                         **{column: float(errors[column]) for column in STUDY_COLUMNS}})
    return rows


@functools.partial(jax.jit, static_argnames=('sampler', 'phi', 'm', 'draws'))
def _approximation_errors(q: Array, k: Array, value: Array, exact_attention: Array, qi: Array,
                          kj: Array, keys: Array, *, sampler: features.ProjectionSampler,
                          phi: features.FeatureMap, m: int, draws: int) -> dict[str, Array]:
    """The `STUDY_COLUMNS` of one `approximation_study` row, compiled once per (sampler, map,
    m, draws) and shared by every amplification.

    Args:
      q, k: `[N, d]` amplified unit embeddings; value: `[N, c]`; exact_attention: `[1, N, c]`,
        softmax attention of them.
      qi, kj: `[P]` indices of the query / key pairs the kernel estimate is measured on.
      keys: `[2]` keys of the kernel estimates' and the attention outputs' projections.
    """
    exact = jnp.exp(jnp.sum(q[qi] * k[kj], -1))
    est = kernel_estimates(q[qi], k[kj], sampler, m, draws, keys[0], phi)

    def output_error(key):
        projection = sampler(key, m, q.shape[-1])
        out = attention.enla(q[None], k[None], value[None], projection, phi)
        return jnp.linalg.norm(out - exact_attention) / jnp.linalg.norm(exact_attention)

    out_err = jax.lax.map(output_error, jax.random.split(keys[1], min(draws, 16)))
    return {'kernel_rel_rmse': jnp.mean(jnp.sqrt(jnp.mean((est - exact) ** 2, 0)) / exact),
            'kernel_rel_var': jnp.mean(jnp.var(est, 0) / exact ** 2),
            'eq7_rel_var': jnp.mean(eq7_variance(q[qi], k[kj], m) / exact ** 2),
            'output_rel_error': jnp.mean(out_err)}


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
    """Three panels: kernel variance vs k (at the largest m) with Eq. 7, vs m (at k = 6 or the
    nearest), and attention-output error vs k; one colour per feature map, one marker per
    projection."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    ks = sorted({r['k'] for r in rows})
    ms = sorted({r['m'] for r in rows})
    m_ref, k_ref = ms[-1], min(ks, key=lambda k: abs(k - 6))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    feature_maps = list(dict.fromkeys(r['feature_map'] for r in rows))
    for (color, spec), (name, marker) in itertools.product(
            enumerate(feature_maps), (('iid', 'o'), ('orthogonal', 's'))):
        sel = lambda **kv: sorted((r for r in rows if r['projection'] == name
                                   and r['feature_map'] == spec  # pylint: disable=cell-var-from-loop
                                   and all(r[a] == b for a, b in kv.items())),
                                  key=lambda r: (r['k'], r['m']))
        by_k, by_m = sel(m=m_ref), sel(k=k_ref)
        style = dict(marker=marker, color=f'C{color}', label=f'{spec}, {name}')
        axes[0].semilogy([r['k'] for r in by_k], [r['kernel_rel_var'] for r in by_k],
                         linestyle='none', **style)
        axes[1].loglog([r['m'] for r in by_m], [r['kernel_rel_var'] for r in by_m],
                       linestyle='none', **style)
        axes[2].plot([r['k'] for r in by_k], [r['output_rel_error'] for r in by_k], **style)
    eq7 = lambda r: r['projection'] == 'iid' and r['feature_map'] == feature_maps[0]
    eq7_k = sorted((r for r in rows if eq7(r) and r['m'] == m_ref), key=lambda r: r['k'])
    eq7_m = sorted((r for r in rows if eq7(r) and r['k'] == k_ref), key=lambda r: r['m'])
    axes[0].semilogy([r['k'] for r in eq7_k], [r['eq7_rel_var'] for r in eq7_k], 'k-', label='Eq. 7')
    axes[1].loglog([r['m'] for r in eq7_m], [r['eq7_rel_var'] for r in eq7_m], 'k-', label='Eq. 7')
    axes[0].set(xlabel='amplification k', ylabel='Var / exp(q.k)^2', title=f'kernel estimate, m = {m_ref}')
    axes[1].set(xlabel='random features m', ylabel='Var / exp(q.k)^2', title=f'kernel estimate, k = {k_ref:g}')
    axes[2].set(xlabel='amplification k', ylabel='relative error',
                title=f'attention output vs exact softmax, m = {m_ref}')
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def _load_model(checkpoint: str | None) -> tuple[models.ENLCN, dict]:
    if checkpoint:
        from enlcn_jax.storage import checkpoints  # pylint: disable=import-outside-toplevel
        model, variables, _ = checkpoints.load_model(checkpoint)
        return model, variables
    model = models.ENLCN(scale=2, n_resblocks=8, n_feats=32, attention_every=4)
    return model, models.init_variables(model, jax.random.key(0))


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
        p.add_argument('--image', help='input image (default: skimage astronaut)')
        p.add_argument('--module', type=int, default=0, help='which ENLCA module (0 = first)')
        p.add_argument('--max_side', type=int, default=128,
                       help='subsample the image so its longer side is at most this')
        p.add_argument('--out', default=f'results/{name}', help='output path without extension')
    sub.choices['maps'].add_argument('--pixel', required=True, help='query position X,Y')
    sub.choices['variance'].add_argument('--draws', type=int, default=64)
    sub.choices['variance'].add_argument('--ks', default='1,2,3,4,5,6,7,8,9,10')
    sub.choices['variance'].add_argument('--ms', default='2,4,8,16,32,64,128,256')
    sub.choices['variance'].add_argument(
        '--feature_map', default='softmax_kernel',
        help='comma-separated feature maps to compare: names or MODULE:NAME (the first is the '
             'one Eq. 7 is drawn for)')
    args = parser.parse_args(argv)

    model, variables = _load_model(args.checkpoint)
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
        theta, delta, value, _ = module_embeddings(model, variables, image, args.module)
        try:
            feature_maps = [spec for spec in args.feature_map.split(',') if spec]
            for spec in feature_maps:
                study_feature_map(spec)
        except ValueError as e:
            parser.error(f'--feature_map: {e}')
        summary = approximation_study(theta, delta, value, [float(v) for v in args.ks.split(',')],
                                      [int(v) for v in args.ms.split(',')], args.draws,
                                      feature_maps=feature_maps, norm_eps=model.enlca.norm_eps)
        png = plot_study(summary, out.with_suffix('.png'))
    files.write_text(out.with_suffix('.json'), json.dumps(summary, indent=2))
    print(f'wrote {png} and {out.with_suffix(".json")}')


if __name__ == '__main__':
    main()
