"""Model structure: shapes, gradients, parameter counts, pixel shuffle, random-feature redraws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL as TINY
from enlcn_jax.nn import models

def test_pixel_shuffle_follows_pytorch_channel_order():
    r, c, h, w = 2, 3, 4, 5
    x = np.random.default_rng(0).normal(size=(1, h, w, c * r * r)).astype(np.float32)
    out = np.asarray(models.pixel_shuffle(jnp.asarray(x), r))
    assert out.shape == (1, h * r, w * r, c)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                np.testing.assert_array_equal(out[0, i::r, j::r, ch], x[0, :, :, ch * r * r + i * r + j])


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_shapes_and_finite_gradients(scale):
    model = models.from_config(dict(TINY, scale=scale))
    variables = models.init_variables(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 10, 9, 3))

    def loss(params):
        sr, emb = model.apply({**variables, 'params': params}, x, return_embeddings=True)
        return jnp.mean(jnp.abs(sr - 0.5)), (sr, emb)

    grads, (sr, emb) = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
    assert sr.shape == (2, 10 * scale, 9 * scale, 3)
    assert len(emb) == 3 and emb[0][0].shape == (2, 90, 4)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) == len(leaves)


def test_body_layout_of_the_paper_model():
    layout = models.ENLCN(n_resblocks=32).body_layout()
    assert [i for i, kind in enumerate(layout) if kind == 'enlca'] == [0, 9, 18, 27, 36]
    assert layout.count('resblock') == 32
    assert models.EDSR(n_resblocks=32).body_layout() == ['resblock'] * 32


def pytorch_param_count(scale, n_resblocks=32, n_feats=256, n_enlca=5, reduction=4):
    """Closed-form count of the PyTorch EDSR/ENLCN trainable parameters."""
    conv = lambda cin, cout, k: cin * cout * k * k + cout
    c = n_feats
    total = conv(3, c, 3) + n_resblocks * 2 * conv(c, c, 3) + conv(c, c, 3) + conv(c, 3, 3)
    total += conv(c, 9 * c, 3) if scale == 3 else (scale.bit_length() - 1) * conv(c, 4 * c, 3)
    return total + n_enlca * (2 * conv(c, c // reduction, 1) + conv(c, c, 1))


@pytest.mark.parametrize('scale, published_edsr', [(2, 40.7e6), (4, 43.1e6)])
def test_parameter_counts_of_the_paper_models(scale, published_edsr):
    """ENLCN (32 x 256, 5 ENLCA) and EDSR parameter counts next to the PyTorch figures."""
    counts = {}
    for name, model in (('ENLCN', models.ENLCN(scale=scale)), ('EDSR', models.EDSR(scale=scale))):
        shapes = jax.eval_shape(lambda m=model: models.init_variables(m, jax.random.key(0)))
        counts[name] = models.count_params(shapes['params'])
    expected = {'ENLCN': pytorch_param_count(scale), 'EDSR': pytorch_param_count(scale, n_enlca=0)}
    print(f'\nx{scale}: ENLCN {counts["ENLCN"]:,} (PyTorch {expected["ENLCN"]:,}); '
          f'EDSR {counts["EDSR"]:,} (PyTorch {expected["EDSR"]:,}; EDSR paper {published_edsr / 1e6:.1f}M)')
    assert counts == expected
    assert abs(counts['EDSR'] - published_edsr) < 0.05e6


def test_random_features_are_a_separate_collection_and_redraw_is_pure():
    model = models.from_config(TINY)
    variables = models.init_variables(model, jax.random.key(0))
    assert set(variables) == {'params', models.RANDOM_FEATURES}
    assert not any('projection' in jax.tree_util.keystr(p)
                   for p, _ in jax.tree_util.tree_flatten_with_path(variables['params'])[0])
    a = model.redraw(variables, jax.random.key(7))
    b = model.redraw(variables, jax.random.key(7))
    c = model.redraw(variables, jax.random.key(8))
    fa, fb, fc, f0 = (jax.tree_util.tree_leaves(v[models.RANDOM_FEATURES]) for v in (a, b, c, variables))
    assert len(fa) == 3 and all(x.shape == (16, 4) for x in fa)
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert not any(np.allclose(x, y) for x, y in zip(fa, fc))
    assert not any(np.allclose(x, y) for x, y in zip(fa, f0))
    assert not np.allclose(fa[0], fa[1])  # each module draws its own
    assert a['params'] is variables['params']
    # The output depends on the features, so evaluation must use the recorded ones.
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3))
    assert not np.allclose(model.apply(variables, x), model.apply(a, x))


@pytest.mark.parametrize('attention', ['exact', 'none'])
def test_attention_kinds_share_the_backbone(attention):
    model = models.from_config(dict(attention=attention, **TINY))
    variables = models.init_variables(model, jax.random.key(0))
    sr = model.apply(variables, jnp.zeros((1, 8, 8, 3)))
    assert sr.shape == (1, 16, 16, 3)
    assert (models.RANDOM_FEATURES in variables) == (attention != 'none')


def test_amplification_is_applied_to_queries_and_keys():
    module = models.ENLCA(models.ENLCAConfig(amplification=6.0, num_random_features=8))
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 8))
    variables = module.init({'params': jax.random.key(1), 'random_features': jax.random.key(2)}, x)
    _, (q, k) = module.apply(variables, x)
    np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), np.sqrt(6), rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(k, axis=-1), np.sqrt(6), rtol=1e-5)


def test_embedding_norm_is_clamped_at_the_released_5e5():
    """`F.normalize(x, eps=5e-5)`: below norm 5e-5 an embedding is divided by 5e-5, not its norm."""
    module = models.ENLCA(models.ENLCAConfig(amplification=6.0, num_random_features=8))
    x = jnp.ones((1, 2, 2, 8))
    variables = module.init({'params': jax.random.key(1), 'random_features': jax.random.key(2)}, x)
    conv = variables['params']['conv_match1']
    for norm in (1e-5, 1e-3):
        bias = jnp.zeros_like(conv['bias']).at[0].set(norm)
        params = {**variables['params'],
                  'conv_match1': {'kernel': jnp.zeros_like(conv['kernel']), 'bias': bias}}
        _, (q, _) = module.apply({**variables, 'params': params}, x)
        expected = np.sqrt(6) * norm / max(norm, 5e-5)
        np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), expected, rtol=1e-5)


def test_bad_inputs_are_clear_errors():
    model = models.from_config(TINY)
    variables = models.init_variables(model, jax.random.key(0))
    with pytest.raises(ValueError, match=r'RGB images \[B, H, W, 3\].*\(1, 8, 8, 4\)'):
        model.apply(variables, jnp.zeros((1, 8, 8, 4)))
    with pytest.raises(ValueError, match=r'\[B, H, W, 3\].*\(8, 8, 3\)'):
        model.apply(variables, jnp.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match=r'ENLCA expects \[B, H, W, C\]'):
        models.ENLCA().init(jax.random.key(0), jnp.zeros((8, 8, 16)))
    with pytest.raises(ValueError, match="model.attention='lsh': unknown attention"):
        models.from_config(dict(attention='lsh', **TINY))
    with pytest.raises(ValueError, match="model.feature_map='cosine': unknown feature map"):
        models.from_config(dict(feature_map='cosine', **TINY))
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['n_feat'\]"):
        models.from_config({'n_feat': 8})
    with pytest.raises(ValueError, match='model.num_random_features must be >= 1, got 0'):
        models.from_config(dict(TINY, num_random_features=0))
    for scale in (5, 1, 0, -2):
        with pytest.raises(ValueError, match=rf'scale must be 3 or a power of 2 .*got {scale}'):
            models.from_config(dict(TINY, scale=scale))
    with pytest.raises(ValueError, match='model.n_feats must be >= 1, got 0'):
        models.from_config(dict(TINY, n_feats=0))
    with pytest.raises(ValueError, match='model.reduction must be >= 1, got 0'):
        models.from_config(dict(TINY, reduction=0))
    with pytest.raises(ValueError, match='n_feats=16 / model.reduction=32 leaves no attention'):
        models.from_config(dict(TINY, reduction=32))
    with pytest.raises(ValueError, match='scale must be 3 or a power of 2 .*got 6'):
        models.init_variables(models.EDSR(scale=6, n_resblocks=1, n_feats=8), jax.random.key(0))
