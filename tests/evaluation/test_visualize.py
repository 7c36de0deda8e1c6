"""Research tools: attention maps and the random-feature approximation study."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL, random_variables, unit
from enlcn_jax import visualize

from enlcn_jax.nn import features, models

from enlcn_jax.storage import checkpoints


def row_attention(q, k, v, projection, feature_map, spatial_shape):
    """A researcher's attention that knows the layout: softmax among the positions of each image
    row. `q, k [B, N, d]`, `v [B, N, c]`, N = H W -> `[B, N, c]`."""
    del projection, feature_map
    h, w = spatial_shape
    rows = lambda x: x.reshape(x.shape[0] * h, w, x.shape[-1])
    weights = jax.nn.softmax(jnp.einsum('rid,rjd->rij', rows(q), rows(k)), axis=-1)
    return jnp.einsum('rij,rjc->ric', weights, rows(v)).reshape(v.shape)


def doubled_softmax_kernel(x, projection):
    """A researcher's feature map whose `phi(q).phi(k)` estimates `2 exp(q.k)`."""
    return 2 ** 0.5 * features.softmax_kernel_features(x, projection, eps=0.0)


def softmax(logits, shape):
    e = np.exp(logits - logits.max())
    return (e / e.sum()).reshape(shape)


def test_softmax_rows_sum_to_one_and_match_a_direct_softmax():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=8).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    row = np.asarray(visualize.attention_row(jnp.asarray(q), jnp.asarray(k), 'exact'))
    direct = np.exp(k @ q) / np.exp(k @ q).sum()
    np.testing.assert_allclose(row, direct, rtol=1e-5)
    assert abs(row.sum() - 1) < 1e-6


@pytest.fixture(scope='module')
def tiny_enlcn():
    """A small ENLCN (3 ENLCA modules) with `random_variables`."""
    model = models.from_config(TINY_MODEL)
    return model, random_variables(model)


IMAGE = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)


def test_model_maps_are_distributions_over_the_image(tiny_enlcn):
    model, variables = tiny_enlcn
    maps = visualize.query_attention_maps(model, variables, IMAGE, (3, 7), module=1)
    assert list(maps) == ['ENLA', 'softmax k', 'ENLCA (enla)']
    for weights in maps.values():
        assert weights.shape == (12, 10) and weights.min() >= 0
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)


def module_rows(model, variables, image, module, i):
    """Query i's amplified (q_i, k [N, d]) of an ENLCA module, from the model's own forward on a
    uint8 image, and the module's recorded projection (float64)."""
    _, embeddings = model.apply(variables, image[None].astype(np.float32) / 255.0,
                                return_embeddings=True)
    q, k = (np.asarray(e[0], np.float64) for e in embeddings[module])
    name = [f'body_{i}' for i, kind in enumerate(model.body_layout()) if kind == 'enlca'][module]
    projection = variables[models.RANDOM_FEATURES][name]['projection']
    return q[i], k, np.asarray(projection, np.float64)


def random_feature_row(q_i, k, projection):
    """The released map's normalised `phi(q_i) . phi(k_j)` (eps 1e-4). `[N]`."""
    phi = lambda u: (np.exp(u @ projection.T - 0.5 * np.sum(u * u, -1, keepdims=True)) + 1e-4)
    weights = phi(k) @ phi(q_i)
    return weights / weights.sum()


def test_maps_are_the_attention_rows_of_pixel_x_y(tiny_enlcn):
    """On a 12 x 10 (H x W) image the maps of pixel (x, y) = (3, 7) are the rows of query
    i = y W + x = 73, computed directly from the module's own amplified (q, k) as the model
    returns them: normalised phi(q_i / |q_i|) . phi(k_j / |k_j|) for ENLA (k = 1),
    softmax(q_i . k_j), and, for the ENLA model as it runs, normalised phi(q_i) . phi(k_j)."""
    model, variables = tiny_enlcn
    h, w, x, y = 12, 10, 3, 7
    i = y * w + x
    maps = visualize.query_attention_maps(model, variables, IMAGE, (x, y), module=1)
    q_i, k, projection = module_rows(model, variables, IMAGE, 1, i)
    np.testing.assert_allclose(maps['ENLA'],
                               random_feature_row(unit(q_i), unit(k), projection).reshape(h, w),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(maps['softmax k'], softmax(k @ q_i, (h, w)), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(maps['ENLCA (enla)'],
                               random_feature_row(q_i, k, projection).reshape(h, w),
                               rtol=1e-4, atol=1e-7)


def test_the_enlca_map_of_an_exact_attention_model_is_its_softmax_row():
    """`attention='exact'`: the module's panel is titled after it and is `softmax(k q_i)` of
    the amplified embeddings, not the random-feature row of its recorded projection."""
    model = models.from_config({**TINY_MODEL, 'attention': 'exact'})
    variables = random_variables(model)
    h, w, x, y = 12, 10, 3, 7
    maps = visualize.query_attention_maps(model, variables, IMAGE, (x, y), module=1)
    assert list(maps) == ['ENLA', 'softmax k', 'ENLCA (exact)']
    q_i, k, projection = module_rows(model, variables, IMAGE, 1, y * w + x)
    np.testing.assert_allclose(maps['ENLCA (exact)'], softmax(k @ q_i, (h, w)), rtol=1e-4,
                               atol=1e-7)
    random_features = random_feature_row(q_i, k, projection).reshape(h, w)
    assert np.abs(maps['ENLCA (exact)'] - random_features).max() > 1e-3


def test_the_enlca_map_of_a_researcher_s_attention_is_its_own_row():
    """A callable attention that takes `spatial_shape` (softmax within each image row): the panel
    is named after the function, and query (x, y) attends to row y only, by softmax(k q_i)."""
    model = models.from_config({**TINY_MODEL, 'attention': row_attention})
    variables = random_variables(model)
    h, w, x, y = 12, 10, 3, 7
    maps = visualize.query_attention_maps(model, variables, IMAGE, (x, y), module=1)
    panel = maps['ENLCA (row_attention)']
    q_i, k, _ = module_rows(model, variables, IMAGE, 1, y * w + x)
    expected = np.zeros((h, w))
    expected[y] = softmax(k.reshape(h, w, -1)[y] @ q_i, (w,))
    np.testing.assert_allclose(panel, expected, rtol=1e-4, atol=1e-7)


def test_a_float_image_in_0_1_gives_the_maps_of_the_same_uint8_image(tiny_enlcn):
    model, variables = tiny_enlcn
    from_uint8 = visualize.query_attention_maps(model, variables, IMAGE, (3, 7), module=1)
    from_float = visualize.query_attention_maps(model, variables, IMAGE / 255.0, (3, 7), module=1)
    for kind, weights in from_uint8.items():
        np.testing.assert_allclose(from_float[kind], weights, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('image, found', [
    (IMAGE.astype(np.float32), 'float32 image with values from 0 to 255'),
    (np.full((12, 10, 3), np.nan), 'float64 image with NaN or infinite values'),
    (IMAGE.astype(np.int32), 'image of dtype int32'),
    (IMAGE[..., 0], 'image of shape [12, 10]'),
])
def test_other_images_are_refused_naming_the_expected_input(tiny_enlcn, image, found):
    model, variables = tiny_enlcn
    for call in (lambda: visualize.query_attention_maps(model, variables, image, (3, 7)),
                 lambda: visualize.module_embeddings(model, variables, image, 0)):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == (f'{found}: expected an RGB image [H, W, 3], uint8 (0..255) '
                                    'or float in [0, 1]')


def test_random_feature_maps_approach_exact_maps_as_m_grows():
    rng = np.random.default_rng(2)
    k = jnp.asarray(np.sqrt(2.0) * unit(rng.normal(size=(400, 16))), jnp.float32)
    q = k[:20]
    draw = jax.jit(features.orthogonal_gaussian_projection, static_argnums=(1, 2))
    exact_row = jax.jit(lambda q: visualize.attention_row(q, k, 'exact'))
    approx_row = jax.jit(lambda q, projection: visualize.attention_row(
        q, k, 'random_features', projection))
    errors = []
    for m in (16, 128, 1024):
        err = []
        for i in range(20):
            projection = draw(jax.random.key(i), m, 16)
            exact, approx = exact_row(q[i]), approx_row(q[i], projection)
            err.append(float(jnp.abs(approx - exact).sum()))  # total variation x 2
        errors.append(np.mean(err))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.15, errors


def gaussian_embeddings(n, d, c, seed=3):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32)
                 for shape in ((n, d), (n, d), (n, c)))


def test_study_reproduces_eq7_on_gaussian_inputs():
    """The iid variance measured on Gaussian embeddings is Eq. 7's; the measurement is compiled
    once, shared by both samplers and both amplifications."""
    compiled = visualize._approximation_errors._cache_size()
    rows = visualize.approximation_study(*gaussian_embeddings(64, 8, 4), ks=[0.5, 1.0], ms=[16],
                                         draws=4000, pairs=64)
    assert visualize._approximation_errors._cache_size() == compiled + 1
    iid = [r for r in rows if r['projection'] == 'iid']
    for row in iid:
        assert row['unbiased'], row
        assert abs(row['kernel_rel_var'] / row['eq7_rel_var'] - 1) < 0.1, row
        assert abs(row['mean_ratio'] - 1) < 0.02, row
    # The variance grows with the amplification k (Eq. 7).
    assert iid[1]['eq7_rel_var'] > iid[0]['eq7_rel_var']
    assert iid[1]['kernel_rel_var'] > iid[0]['kernel_rel_var']


def test_the_study_says_which_maps_estimate_exp_qk_and_compares_all_by_output(tmp_path):
    """The stabilised map (its features carry a factor exp(-c)), ReLU features (another kernel)
    and a researcher's map estimating 2 exp(q.k) are not unbiased estimates of exp(q.k): their
    kernel columns are null and their mean ratio says by how much they differ. The output
    error stays: the stabilised map's equals the softmax kernel's (ENLA's ratio cancels c)."""
    rows = visualize.approximation_study(
        *gaussian_embeddings(64, 8, 4), ks=[1.0], ms=[16], draws=64, pairs=64,
        feature_maps=('softmax_kernel', 'softmax_kernel_stable', 'relu', doubled_softmax_kernel),
        projections=('iid',))
    by_map = {row['feature_map']: row for row in rows}
    assert {name: row['unbiased'] for name, row in by_map.items()} == {
        'softmax_kernel': True, 'softmax_kernel_stable': False, 'relu': False,
        'doubled_softmax_kernel': False}
    for row in rows:
        assert np.isfinite(row['output_rel_error']) and np.isfinite(row['mean_ratio'])
        kernel = [row[column] for column in visualize.KERNEL_COLUMNS]
        assert all(np.isfinite(kernel)) if row['unbiased'] else kernel == [None, None, None]
    assert abs(by_map['doubled_softmax_kernel']['mean_ratio'] - 2) < 0.1
    assert by_map['relu']['mean_ratio'] < 0.5 and by_map['softmax_kernel_stable']['mean_ratio'] < 0.5
    np.testing.assert_allclose(by_map['softmax_kernel_stable']['output_rel_error'],
                               by_map['softmax_kernel']['output_rel_error'], rtol=1e-3)
    assert visualize.describe_estimates(rows)[:2] == [
        'softmax_kernel, iid: estimates exp(q.k): yes',
        'softmax_kernel_stable, iid: estimates exp(q.k): no (mean phi(q).phi(k) / exp(q.k) at '
        f"m = 16: {by_map['softmax_kernel_stable']['mean_ratio']:.3g} at k = 1; kernel columns "
        'null)']
    assert visualize.plot_study(rows, tmp_path / 'study.png').stat().st_size > 1000


def test_the_output_error_is_enla_against_softmax_on_the_chosen_query_rows():
    """Measured on some query rows, each against every key: the mean over the first
    `OUTPUT_DRAWS` projections of |ENLA - softmax| / |softmax| over those rows of the full
    attentions (here in float64 NumPy)."""
    theta, delta, value = (np.asarray(e, np.float64) for e in gaussian_embeddings(40, 4, 3))
    q, k = 2 * unit(theta), 2 * unit(delta)
    rows, pairs = np.asarray([3, 17, 29, 30]), np.arange(5)
    projections = np.random.default_rng(4).normal(size=(20, 8, 4))
    scores = np.exp(q @ k.T)
    exact = scores @ value / scores.sum(-1, keepdims=True)
    phi = lambda u, f: np.exp(u @ f.T - 0.5 * np.sum(u * u, -1, keepdims=True)) / np.sqrt(8)
    errors = []
    for f in projections[:visualize.OUTPUT_DRAWS]:
        weights = phi(q, f) @ phi(k, f).T
        enla = weights @ value / weights.sum(-1, keepdims=True)
        errors.append(np.linalg.norm((enla - exact)[rows]) / np.linalg.norm(exact[rows]))
    measured = visualize._approximation_errors(
        *(jnp.asarray(x, jnp.float32) for x in (q, k, value)), pairs, pairs, rows,
        jnp.asarray(exact[rows], jnp.float32), jnp.asarray(projections, jnp.float32),
        phi=visualize.study_feature_map('softmax_kernel'))
    np.testing.assert_allclose(measured['output_rel_error'], np.mean(errors), rtol=1e-4)


def test_cli_writes_png_and_json(tiny_enlcn, tmp_path, capsys):
    """Both commands on a 20-pixel image; the model is a saved `tiny_enlcn` (initialising the
    default one costs each run tens of seconds on a small CPU)."""
    checkpoint = checkpoints.save_model(tmp_path / 'model', TINY_MODEL, tiny_enlcn[1])
    common = ['--max_side', '20', '--module', '1', '--checkpoint', str(checkpoint)]
    for command, extra in (('maps', ['--pixel', '5,4']),
                           ('variance', ['--ks', '1,6', '--ms', '16', '--draws', '8'])):
        out = tmp_path / command
        visualize.main([command, *common, *extra, '--out', str(out)])
        printed = capsys.readouterr().out
        assert f'wrote {out.with_suffix(".png")} and {out.with_suffix(".json")}' in printed
        assert out.with_suffix('.png').stat().st_size > 1000
        summary = json.loads(out.with_suffix('.json').read_text())
        assert summary
    assert 'softmax_kernel, iid: estimates exp(q.k): yes' in printed
    rows = json.loads((tmp_path / 'variance.json').read_text())
    assert sorted((r['k'], r['m'], r['projection']) for r in rows) == [
        (1.0, 16, 'iid'), (1.0, 16, 'orthogonal'), (6.0, 16, 'iid'), (6.0, 16, 'orthogonal')]


@pytest.fixture
def study_arguments(tiny_enlcn, tmp_path, monkeypatch):
    """Runs `variance` with a saved tiny model (`TINY_MODEL` updated by `config`) and returns the
    keyword arguments `approximation_study` was given (the study itself skipped)."""
    def run(*flags, config=None):
        checkpoint = checkpoints.save_model(tmp_path / 'model', {**TINY_MODEL, **(config or {})},
                                            tiny_enlcn[1])
        seen = []
        monkeypatch.setattr(visualize, 'approximation_study',
                            lambda *args, **kwargs: seen.append(kwargs) or [])
        monkeypatch.setattr(visualize, 'describe_estimates', lambda rows: [])
        monkeypatch.setattr(visualize, 'plot_study', lambda rows, out: out)
        visualize.main(['variance', '--max_side', '20', '--checkpoint', str(checkpoint),
                        '--out', str(tmp_path / 'variance'), *flags])
        return seen[0]
    return run


def test_the_study_sees_only_the_directions_of_the_queries_and_keys():
    """The study applies its own amplifications to q/|q|, k/|k|: rescaling the rows of q and k
    (as a block's own amplification does) leaves every measurement unchanged."""
    q, k, v = gaussian_embeddings(32, 4, 3)
    scales = jnp.linspace(0.5, 3.0, 32)[:, None]
    study = lambda q, k: visualize.approximation_study(q, k, v, ks=[2.0], ms=[8], draws=4,
                                                       pairs=16, projections=('iid',))
    for given, rescaled in zip(study(q, k), study(scales * q, 6.0 * k)):
        assert given.keys() == rescaled.keys()
        for column in visualize.STUDY_COLUMNS:
            np.testing.assert_allclose(rescaled[column], given[column], rtol=1e-4)


def test_the_study_compares_the_projection_samplers_given(study_arguments):
    assert study_arguments('--projection', 'iid')['projections'] == ['iid']


@pytest.mark.parametrize('flag, value, named', [
    ('--projection', 'iid,gaussian_blobs', "'gaussian_blobs': unknown projection"),
    ('--projection', 'orthogonal,no_such_module:sampler', "cannot import module 'no_such_module'"),
    ('--feature_map', 'softmax_kernel,nope', "'nope': unknown feature map"),
])
def test_a_bad_sampler_or_map_is_a_parser_error_naming_it(flag, value, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        visualize.main(['variance', flag, value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f'python -m enlcn_jax.visualize: error: {flag}: ')
    assert named in error

