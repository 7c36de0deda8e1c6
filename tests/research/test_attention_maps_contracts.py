"""enlcn_jax.research.attention_maps at the edges of its documented contract: every map against
an exact row computed in float64 NumPy from the module's own embeddings, the query at the four
corners of a non-square image, the first pixel outside it refused in one line, the default module,
each function called directly, and what `plot_maps` draws."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL, random_variables, unit
from enlcn_jax.nn import features, models
from enlcn_jax.research import attention_maps

H, W = 6, 5  # a non-square image: a swapped height and width or x and y shows


def image():
    return np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)


def softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


def phi(u, projection, eps):
    """The released softmax-kernel features in float64, `(exp(F u - |u|^2 / 2) + eps) / sqrt(m)`."""
    return ((np.exp(u @ projection.T - 0.5 * np.sum(u * u, -1, keepdims=True)) + eps)
            / np.sqrt(projection.shape[0]))


def random_feature_row(q_i, k, projection, eps=1e-4):
    weights = phi(k, projection, eps) @ phi(q_i, projection, eps)
    return weights / weights.sum()


def upside_down(q, k, v, projection, feature_map, spatial_shape):
    """An attention that needs the layout: each query takes the value of the position mirrored
    top to bottom. `v [B, N, c]`, N = H W -> `[B, N, c]`."""
    del q, k, projection, feature_map
    h, w = spatial_shape
    return v.reshape(v.shape[0], h, w, -1)[:, ::-1].reshape(v.shape)


@pytest.fixture(scope='module')
def tiny():
    """The tiny ENLCN (3 attention modules), its variables, and per module the amplified
    `(q, k)` of `image()` from the model's own forward and the recorded projection, in float64."""
    model = models.from_config(TINY_MODEL)
    variables = random_variables(model, seed=3)
    _, sown = model.apply(variables, image()[None].astype(np.float32) / 255.0,
                          return_embeddings=True)
    names = [f'body_{i}' for i, kind in enumerate(model.body_layout()) if kind == 'enlca']
    per_module = [(*(np.asarray(e[0], np.float64) for e in sown[j]),
                   np.asarray(variables[models.RANDOM_FEATURES][name]['projection'], np.float64))
                  for j, name in enumerate(names)]
    return model, variables, per_module


def expected_maps(per_module, module, x, y):
    """The three maps of pixel (x, y), query i = y W + x, from float64 NumPy."""
    q, k, projection = per_module[module]
    i = y * W + x
    return {'ENLA': random_feature_row(unit(q[i]), unit(k), projection).reshape(H, W),
            'softmax k': softmax(k @ q[i]).reshape(H, W),
            'ENLCA (enla)': random_feature_row(q[i], k, projection).reshape(H, W)}


def assert_maps(maps, expected):
    assert list(maps) == list(expected)
    for kind, weights in expected.items():
        assert maps[kind].shape == (H, W)
        np.testing.assert_allclose(maps[kind], weights, rtol=2e-4, atol=1e-7, err_msg=kind)


def test_the_first_pixel_s_maps_come_from_module_0_by_default(tiny):
    """Pixel (0, 0) is inside the image, and without `module` the maps are module 0's."""
    model, variables, per_module = tiny
    maps = attention_maps.query_attention_maps(model, variables, image(), (0, 0))
    assert_maps(maps, expected_maps(per_module, 0, 0, 0))
    assert np.abs(maps['softmax k'] - expected_maps(per_module, 1, 0, 0)['softmax k']).max() > 1e-3


def test_the_last_pixel_s_maps_are_row_n_minus_one(tiny):
    """Pixel (W - 1, H - 1) is query N - 1, and `module` picks the module."""
    model, variables, per_module = tiny
    maps = attention_maps.query_attention_maps(model, variables, image(), (W - 1, H - 1),
                                               module=2)
    assert_maps(maps, expected_maps(per_module, 2, W - 1, H - 1))


@pytest.mark.parametrize('x, y', [(W, 0), (0, H), (-1, 0), (0, -1), (W, H)])
def test_a_pixel_one_past_an_edge_is_refused_in_one_line(tiny, x, y):
    model, variables, _ = tiny
    with pytest.raises(ValueError) as error:
        attention_maps.query_attention_maps(model, variables, image(), (x, y))
    assert str(error.value) == f'pixel (x, y) = ({x}, {y}) is outside the {W}x{H} image'


def test_softmax_row_is_the_float64_softmax_of_k_q():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=4), rng.normal(size=(9, 4))
    row = attention_maps.softmax_row(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32))
    np.testing.assert_allclose(np.asarray(row), softmax(k @ q), rtol=1e-5)


def test_random_feature_row_is_phi_k_phi_q_normalised_to_one():
    """Against the float64 features, with eps 0.5 so that a missing normalisation or a swapped
    argument shows."""
    rng = np.random.default_rng(1)
    q, k, projection = rng.normal(size=3), rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    row = attention_maps.random_feature_row(
        *(jnp.asarray(a, jnp.float32) for a in (q, k, projection)),
        functools.partial(features.softmax_kernel_features, eps=0.5))
    np.testing.assert_allclose(np.asarray(row), random_feature_row(q, k, projection, 0.5),
                               rtol=1e-5)
    assert abs(float(np.sum(row)) - 1) < 1e-6


@pytest.mark.parametrize('attention', ['exact', 'enla', upside_down])
def test_configured_attention_row_is_query_i_s_row_of_the_attention_as_run(attention):
    """Called directly on an (H, W) = (3, 4) layout with d = 2 (N = 12 != d): `exact` gives
    softmax(k q_i), `enla` the normalised random-feature row of the projection given, and an
    attention that reads `spatial_shape` its own weights (query (x, y) = (1, 0) takes (1, 2))."""
    h, w, i = 3, 4, 1
    rng = np.random.default_rng(2)
    q, k, projection = rng.normal(size=(h * w, 2)), rng.normal(size=(h * w, 2)), rng.normal(size=(8, 2))
    config = models.ENLCAConfig(attention=attention)
    row = np.asarray(attention_maps.configured_attention_row(
        config, *(jnp.asarray(a, jnp.float32) for a in (q, k, projection)), i, (h, w)))
    if attention == 'exact':
        expected = softmax(k @ q[i])
    elif attention == 'enla':
        expected = random_feature_row(q[i], k, projection)
    else:
        expected = np.eye(h * w)[2 * w + 1]
    assert row.shape == (h * w,)
    np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-7)


def test_the_enlca_panel_is_named_after_the_configured_attention():
    name = lambda attention: attention_maps.enlca_map_name(models.ENLCAConfig(attention=attention))
    assert name('enla') == 'ENLCA (enla)'
    assert name('exact') == 'ENLCA (exact)'
    assert name(upside_down) == 'ENLCA (upside_down)'
    assert name(functools.partial(upside_down)) == 'ENLCA (upside_down)'


def panel_maps(count):
    rng = np.random.default_rng(count)
    return {f'kind {j}': softmax(rng.normal(size=H * W)).reshape(H, W) for j in range(count)}


def test_plot_maps_draws_the_image_then_each_map_over_it_with_the_query_marked(
        saved_figures, tmp_path):
    """One row of panels: the image titled 'query' (or the title given), then per map the image
    seen through the heat map (jet, as the paper's figures), titled with the kind and its
    maximum; the query is a white cross at (x, y) on every panel; no axes."""
    img, maps, pixel = image(), panel_maps(3), (4, 1)
    out = attention_maps.plot_maps(img, maps, pixel, tmp_path / 'maps.png')
    assert out == tmp_path / 'maps.png' and out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    axes = saved_figures[0].axes
    assert len(axes) == 4
    boxes = [ax.get_position() for ax in axes]
    assert all(b.y0 == boxes[0].y0 for b in boxes)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    assert axes[0].get_title() == 'query'
    (first,) = axes[0].get_images()
    np.testing.assert_array_equal(first.get_array(), img)
    for ax, (kind, weights) in zip(axes[1:], maps.items()):
        assert ax.get_title() == f'{kind} (max {weights.max():.2g})'
        under, heat = ax.get_images()
        np.testing.assert_array_equal(under.get_array(), img)
        np.testing.assert_array_equal(heat.get_array(), weights)
        assert heat.get_cmap().name == 'jet'
        assert 0 < under.get_alpha() < 1 and 0 < heat.get_alpha() < 1
    for ax in axes:
        assert not ax.axison
        (mark,) = ax.get_lines()
        assert list(mark.get_xydata()[0]) == [4, 1]
        assert mark.get_marker() == 'x' and mark.get_color() == 'white'


def test_plot_maps_titles_the_image_panel_and_widens_with_the_panels(
        saved_figures, tmp_path):
    """Every panel keeps its size: the figure is as wide as its panels in sum."""
    attention_maps.plot_maps(image(), panel_maps(1), (0, 0), tmp_path / 'one.png',
                             title='module 1')
    attention_maps.plot_maps(image(), panel_maps(3), (0, 0), tmp_path / 'three.png')
    (one_wide, one_high), (three_wide, three_high) = (f.get_size_inches()
                                                      for f in saved_figures)
    assert saved_figures[0].axes[0].get_title() == 'module 1'
    assert three_wide / one_wide == pytest.approx(4 / 2) and three_high == one_high
