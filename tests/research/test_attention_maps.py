"""Attention maps of one query (research/attention_maps) and the embeddings they read
(research/embeddings)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL, random_variables, unit
from enlcn_jax.nn import features, models
from enlcn_jax.research import attention_maps, embeddings


def row_attention(q, k, v, projection, feature_map, spatial_shape):
    """A researcher's attention that knows the layout: softmax among the positions of each image
    row. `q, k [B, N, d]`, `v [B, N, c]`, N = H W -> `[B, N, c]`."""
    del projection, feature_map
    h, w = spatial_shape
    rows = lambda x: x.reshape(x.shape[0] * h, w, x.shape[-1])
    weights = jax.nn.softmax(jnp.einsum('rid,rjd->rij', rows(q), rows(k)), axis=-1)
    return jnp.einsum('rij,rjc->ric', weights, rows(v)).reshape(v.shape)


def softmax(logits, shape):
    e = np.exp(logits - logits.max())
    return (e / e.sum()).reshape(shape)


def test_softmax_rows_sum_to_one_and_match_a_direct_softmax():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=8).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    row = np.asarray(attention_maps.softmax_row(jnp.asarray(q), jnp.asarray(k)))
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
    maps = attention_maps.query_attention_maps(model, variables, IMAGE, (3, 7), module=1)
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
    maps = attention_maps.query_attention_maps(model, variables, IMAGE, (x, y), module=1)
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
    maps = attention_maps.query_attention_maps(model, variables, IMAGE, (x, y), module=1)
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
    maps = attention_maps.query_attention_maps(model, variables, IMAGE, (x, y), module=1)
    panel = maps['ENLCA (row_attention)']
    q_i, k, _ = module_rows(model, variables, IMAGE, 1, y * w + x)
    expected = np.zeros((h, w))
    expected[y] = softmax(k.reshape(h, w, -1)[y] @ q_i, (w,))
    np.testing.assert_allclose(panel, expected, rtol=1e-4, atol=1e-7)


def test_a_float_image_in_0_1_gives_the_maps_of_the_same_uint8_image(tiny_enlcn):
    model, variables = tiny_enlcn
    from_uint8 = attention_maps.query_attention_maps(model, variables, IMAGE, (3, 7), module=1)
    from_float = attention_maps.query_attention_maps(model, variables, IMAGE / 255.0, (3, 7), module=1)
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
    for call in (lambda: attention_maps.query_attention_maps(model, variables, image, (3, 7)),
                 lambda: embeddings.module_embeddings(model, variables, image, 0)):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == (f'{found}: expected an RGB image [H, W, 3], uint8 (0..255) '
                                    'or float in [0, 1]')


def test_random_feature_maps_approach_exact_maps_as_m_grows():
    rng = np.random.default_rng(2)
    k = jnp.asarray(np.sqrt(2.0) * unit(rng.normal(size=(400, 16))), jnp.float32)
    q = k[:20]
    draw = jax.jit(features.orthogonal_gaussian_projection, static_argnums=(1, 2))
    exact_row = jax.jit(lambda q: attention_maps.softmax_row(q, k))
    approx_row = jax.jit(lambda q, projection: attention_maps.random_feature_row(
        q, k, projection, features.softmax_kernel_features))
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
