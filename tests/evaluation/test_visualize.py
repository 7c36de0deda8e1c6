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


def test_model_maps_are_distributions_over_the_image(tiny_enlcn):
    model, variables = tiny_enlcn
    image = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    maps = visualize.query_attention_maps(model, variables, image, (3, 7), module=1)
    assert set(maps) == set(visualize.MAP_KINDS)
    for weights in maps.values():
        assert weights.shape == (12, 10) and weights.min() >= 0
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)


def test_maps_are_the_attention_rows_of_pixel_x_y(tiny_enlcn):
    """On a 12 x 10 (H x W) image the maps of pixel (x, y) = (3, 7) are the rows of query
    i = y W + x = 73, computed directly: softmax(theta_i . delta_j) for NLA, and from the
    module's own amplified (q, k) softmax(q_i . k_j) and normalised phi(q_i) . phi(k_j)."""
    model, variables = tiny_enlcn
    h, w, x, y = 12, 10, 3, 7
    i = y * w + x
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    maps = visualize.query_attention_maps(model, variables, image, (x, y), module=1)

    def softmax(logits):
        e = np.exp(logits - logits.max())
        return (e / e.sum()).reshape(h, w)

    theta, delta, _, name = visualize.module_embeddings(model, variables, image, 1)
    theta, delta = np.asarray(theta, np.float64), np.asarray(delta, np.float64)
    np.testing.assert_allclose(maps['NLA'], softmax(delta @ theta[i]), rtol=1e-4, atol=1e-7)
    _, embeddings = model.apply(variables, image[None].astype(np.float32) / 255.0,
                                return_embeddings=True)
    q, k = (np.asarray(e[0], np.float64) for e in embeddings[1])
    np.testing.assert_allclose(maps['softmax k'], softmax(k @ q[i]), rtol=1e-4, atol=1e-7)
    projection = np.asarray(variables[models.RANDOM_FEATURES][name]['projection'], np.float64)
    phi = lambda u: (np.exp(u @ projection.T - 0.5 * np.sum(u * u, -1, keepdims=True)) + 1e-4)
    weights = phi(k) @ phi(q[i])
    np.testing.assert_allclose(maps['ENLCA'], (weights / weights.sum()).reshape(h, w),
                               rtol=1e-4, atol=1e-7)


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


def test_study_reproduces_eq7_on_gaussian_inputs():
    rng = np.random.default_rng(3)
    theta = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    delta = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    value = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
    rows = visualize.approximation_study(theta, delta, value, ks=[0.5, 1.0], ms=[16], draws=4000,
                                         pairs=64, norm_eps=models.ENLCAConfig().norm_eps)
    iid = [r for r in rows if r['projection'] == 'iid']
    for row in iid:
        assert abs(row['kernel_rel_var'] / row['eq7_rel_var'] - 1) < 0.1, row
    # The variance grows with the amplification k (Eq. 7).
    assert iid[1]['eq7_rel_var'] > iid[0]['eq7_rel_var']
    assert iid[1]['kernel_rel_var'] > iid[0]['kernel_rel_var']


def test_cli_writes_png_and_json(tiny_enlcn, tmp_path, capsys):
    """Both commands on a 20-pixel image; the model is a saved `tiny_enlcn` (initialising the
    default one costs each run tens of seconds on a small CPU)."""
    checkpoint = checkpoints.save_model(tmp_path / 'model', TINY_MODEL, tiny_enlcn[1])
    common = ['--max_side', '20', '--module', '1', '--checkpoint', str(checkpoint)]
    for command, extra in (('maps', ['--pixel', '5,4']),
                           ('variance', ['--ks', '1,6', '--ms', '16', '--draws', '8'])):
        out = tmp_path / command
        visualize.main([command, *common, *extra, '--out', str(out)])
        assert f'wrote {out.with_suffix(".png")} and {out.with_suffix(".json")}' in \
            capsys.readouterr().out
        assert out.with_suffix('.png').stat().st_size > 1000
        summary = json.loads(out.with_suffix('.json').read_text())
        assert summary
    rows = json.loads((tmp_path / 'variance.json').read_text())
    assert sorted((r['k'], r['m'], r['projection']) for r in rows) == [
        (1.0, 16, 'iid'), (1.0, 16, 'orthogonal'), (6.0, 16, 'iid'), (6.0, 16, 'orthogonal')]


def test_the_study_normalises_with_the_model_s_norm_eps(tiny_enlcn, tmp_path, monkeypatch):
    """`variance` passes the loaded model's `ENLCAConfig.norm_eps` to the study."""
    config = {**TINY_MODEL, 'norm_eps': 0.25}
    checkpoint = checkpoints.save_model(tmp_path / 'model', config, tiny_enlcn[1])
    seen = []
    monkeypatch.setattr(visualize, 'approximation_study',
                        lambda *args, **kwargs: seen.append(kwargs['norm_eps']) or [])
    monkeypatch.setattr(visualize, 'plot_study', lambda rows, out: out)
    visualize.main(['variance', '--max_side', '20', '--checkpoint', str(checkpoint),
                    '--out', str(tmp_path / 'variance')])
    assert seen == [0.25]
