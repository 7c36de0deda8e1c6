"""The network module's documented contracts that the shape and parity tests leave open: the
field checks at their boundaries, `from_config`'s routing of keys, the keywords the attention call
passes, ENLCA's embedding against a NumPy transcription, every refusal of the block contract, the
body layout, redraws and the recorded-config helpers (tiny shapes: seconds)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import error_message
from enlcn_jax.nn import attention, features, models

# What `from_config` accepts: the ENLCN fields (less `enlca` and Flax's own) and ENLCAConfig's.
KNOWN_KEYS = ['amplification', 'attention', 'attention_every', 'block', 'dtype', 'feature_map',
              'kernel_eps', 'n_feats', 'n_resblocks', 'norm_eps', 'num_random_features',
              'projection', 'reduction', 'res_scale', 'rgb_mean', 'rgb_range', 'rgb_std', 'scale']
# 3 ENLCA modules (body_0, body_2, body_4) of d = 8 / 4 = 2 and m = 4.
SMALL = dict(scale=2, n_resblocks=2, n_feats=8, attention_every=1, num_random_features=4)


def small_model(**enlca) -> models.ENLCN:
    return models.ENLCN(scale=2, n_resblocks=2, n_feats=8, attention_every=1,
                        enlca=models.ENLCAConfig(num_random_features=4, **enlca))


# --- the layers' helpers --------------------------------------------------------------------


def test_l2_normalize_divides_the_last_axis_by_its_norm_clamped_at_eps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3)) * np.geomspace(1e-3, 10, 5)[None, :, None]
    x = x.astype(np.float32)
    norms = np.sqrt(np.sum(np.float64(x) ** 2, axis=-1, keepdims=True))
    assert (norms < 0.05).any() and (norms > 0.05).any()
    np.testing.assert_allclose(models.l2_normalize(jnp.asarray(x), 0.05),
                               x / np.maximum(norms, 0.05), rtol=1e-6)


def test_masked_multiplies_by_the_mask_in_the_input_dtype_and_no_mask_is_the_input():
    x = jnp.arange(6, dtype=jnp.bfloat16).reshape(1, 2, 3, 1)
    assert models._masked(x, None) is x  # pylint: disable=protected-access
    mask = jnp.asarray([[[[1.0], [0.0], [1.0]], [[0.0], [1.0], [1.0]]]], jnp.float32)
    out = models._masked(x, mask)  # pylint: disable=protected-access
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.float32(out), np.float32(x) * np.asarray(mask))


def conv_same_reference(x, kernel, bias):
    """3x3 convolution with one pixel of zeros around (`'SAME'`), float64 NumPy."""
    h, w = x.shape[1:3]
    padded = np.pad(np.float64(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return bias + sum(np.einsum('bhwi,io->bhwo', padded[:, i:i + h, j:j + w], kernel[i, j])
                      for i in range(3) for j in range(3))


@pytest.mark.parametrize('dtype, tolerance', [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_conv3x3_is_a_named_same_padded_3x3_convolution_computed_in_dtype(dtype, tolerance):
    conv = models.conv3x3(5, 'named', dtype)
    assert conv.name == 'named'
    x = np.random.default_rng(1).normal(size=(1, 4, 6, 2)).astype(np.float32)
    variables = conv.init(jax.random.key(0), jnp.asarray(x))
    params = {**variables['params'], 'bias': jnp.linspace(-1.0, 1.0, 5)}
    assert jax.tree.map(jnp.shape, params) == {'kernel': (3, 3, 2, 5), 'bias': (5,)}
    out = conv.apply({'params': params}, jnp.asarray(x))
    assert out.dtype == dtype
    expected = conv_same_reference(x, np.asarray(params['kernel']), np.asarray(params['bias']))
    np.testing.assert_allclose(np.float32(out), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize('scale', [2.0, 3.0, 4.0, True])
def test_a_scale_that_is_not_an_int_is_refused(scale):
    assert error_message(lambda: models.upsampling_factors(scale)) == (
        f'scale must be 3 or a power of 2 (2, 4, 8, ...), got {scale}')


def test_count_params_counts_every_scalar_of_every_leaf():
    assert models.count_params({'a': np.zeros((2, 3)), 'b': {'c': np.zeros(5)}}) == 11
    conv = lambda cin, cout: 9 * cin * cout + cout
    model = models.EDSR(scale=2, n_resblocks=1, n_feats=4)
    params = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))['params']
    assert models.count_params(params) == (conv(3, 4) + 2 * conv(4, 4) + conv(4, 4)
                                           + conv(4, 16) + conv(4, 3))


class Probe(nn.Module):
    """One parameter and one random-features variable, each a draw from its rng."""

    @nn.compact
    def __call__(self, x):
        self.param('input_shape', lambda _: jnp.asarray(x.shape))
        self.variable(models.RANDOM_FEATURES, 'projection',
                      lambda: jax.random.normal(self.make_rng(models.RANDOM_FEATURES), (3,)))
        return x * self.param('w', nn.initializers.normal(), (3,))


def test_init_variables_draws_params_and_random_features_from_the_halves_of_one_key():
    key = jax.random.key(3)
    variables = models.init_variables(Probe(), key, lr_size=(4, 5))
    assert isinstance(variables, dict)
    assert set(variables) == {'params', models.RANDOM_FEATURES}
    assert variables['params']['input_shape'].tolist() == [1, 4, 5, 3]
    params_key, features_key = jax.random.split(key)
    expected = Probe().init({'params': params_key, models.RANDOM_FEATURES: features_key},
                            jnp.zeros((1, 4, 5, 3)))
    np.testing.assert_array_equal(variables['params']['w'], expected['params']['w'])
    np.testing.assert_array_equal(variables[models.RANDOM_FEATURES]['projection'],
                                  expected[models.RANDOM_FEATURES]['projection'])


def test_edsr_is_an_enlcn_without_attention_modules():
    model = models.EDSR(scale=3, n_feats=4, n_resblocks=2)
    assert model.enlca is None and (model.scale, model.n_feats, model.n_resblocks) == (3, 4, 2)
    assert model.body_layout() == ['resblock', 'resblock']


# --- ENLCAConfig ----------------------------------------------------------------------------


@pytest.mark.parametrize('key', ['reduction', 'num_random_features'])
def test_a_size_of_one_is_enough_and_zero_is_refused_naming_the_key(key):
    assert getattr(models.ENLCAConfig(**{key: 1}), key) == 1
    for value in (0, -3):
        assert error_message(lambda v=value: models.ENLCAConfig(**{key: v})) == (
            f'model.{key} must be >= 1, got {value}')


def test_any_positive_amplification_passes_and_zero_or_below_is_refused():
    assert models.ENLCAConfig(amplification=1e-6).amplification == 1e-6
    for value in (0.0, -1.0):
        assert error_message(lambda v=value: models.ENLCAConfig(amplification=v)) == (
            f'model.amplification must be > 0, got {value}')


def test_the_function_getters_return_the_configured_functions_with_kernel_eps_bound():
    config = models.ENLCAConfig(attention='exact', feature_map='relu', projection='iid',
                                kernel_eps=0.25)
    assert config.attention_fn() is attention.exact_attention
    x, _, _, projection, _ = attention_inputs(d=4)
    np.testing.assert_array_equal(config.feature_map_fn()(x, projection),
                                  features.relu_features(x, projection, eps=0.25))
    key = jax.random.key(4)
    np.testing.assert_array_equal(config.projection_fn()(key, 6, 4),
                                  features.iid_gaussian_projection(key, 6, 4))


def picky_attention(q, k, v, projection, feature_map):
    """v, but of the wrong width at 16 random features of width 4."""
    del q, k, feature_map
    return v[..., :1] if projection.shape == (16, 4) else v


def picky_map(x, projection):
    """The softmax kernel, but negative at 16 random features of width 4."""
    out = features.softmax_kernel_features(x, projection)
    return -out if projection.shape == (16, 4) else out


def picky_sampler(key, m, d):
    """Gaussian rows, one column too many at m = 16, d = 4."""
    return features.iid_gaussian_projection(key, m, d + ((m, d) == (16, 4)))


@pytest.mark.parametrize('key, fn, kind', [('attention', picky_attention, 'attention'),
                                           ('feature_map', picky_map, 'feature map'),
                                           ('projection', picky_sampler, 'projection')])
def test_each_function_is_checked_at_the_model_s_m_and_d(key, fn, kind):
    """A function that fails only at m = 16, d = 4 fails there, named with those sizes;
    `from_config` checks at d = n_feats // reduction (the projection: its check is the
    cheapest)."""
    message = error_message(
        lambda: models.ENLCAConfig(**{key: fn}, num_random_features=16).check_functions(d=4))
    assert message.startswith(f"model.{key}='{fn.__name__}': not a valid {kind}: ValueError: ")
    assert message.endswith(' (checked at m=16, d=4)')
    if key == 'projection':
        models.ENLCAConfig(**{key: fn}, num_random_features=8).check_functions(d=4)
        config = dict(SMALL, n_feats=16, num_random_features=16, **{key: fn})
        assert error_message(lambda: models.from_config(config)) == message
        models.from_config(dict(config, reduction=2))  # d = 8


# --- ENLCAConfig.attend ---------------------------------------------------------------------

CALLS: list[dict] = []


def recording_attention(q, k, v, projection, feature_map, mask=None, spatial_shape=None,
                        layer=None):
    """Returns v (attention to itself alone); records its inputs."""
    CALLS.append({'q': q, 'k': k, 'mask': mask, 'spatial_shape': spatial_shape, 'layer': layer,
                  'feature_map': feature_map, 'projection': projection})
    return v


def bare_attention(q, k, v, projection, feature_map):
    """Returns v; takes no keyword at all."""
    del q, k, projection, feature_map
    return v


def attention_inputs(n=6, d=2, c=3):
    """q, k [2, n, d], v [2, n, c], projection [4, d], mask [2, n, 1] (the last 2 keys out)."""
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.normal(size=(2, n, width)), jnp.float32) for width in (d, d, c))
    projection = jnp.asarray(rng.normal(size=(4, d)), jnp.float32)
    return q, k, v, projection, jnp.ones((2, n, 1)).at[:, -2:].set(0.0)


def test_attend_passes_spatial_shape_as_a_tuple_the_layer_the_mask_and_the_feature_map():
    config = models.ENLCAConfig(attention=recording_attention, kernel_eps=0.25)
    config.attention_fn()  # checked once, here
    q, k, v, projection, mask = attention_inputs()
    CALLS.clear()
    out = config.attend(q, k, v, projection, spatial_shape=[2, 3], mask=mask, layer=2)
    (call,) = CALLS
    assert call['spatial_shape'] == (2, 3) and isinstance(call['spatial_shape'], tuple)
    assert call['q'] is q and call['k'] is k and call['projection'] is projection
    assert call['layer'] == 2 and call['mask'] is mask
    np.testing.assert_array_equal(call['feature_map'](q, projection),
                                  features.softmax_kernel_features(q, projection, eps=0.25))
    assert out is v
    CALLS.clear()
    config.attend(q, k, v, projection, spatial_shape=(2, 3))
    (call,) = CALLS
    assert call['mask'] is None and call['layer'] == 0


def test_attend_gives_a_function_only_the_keywords_it_takes_and_refuses_a_mask_it_cannot():
    config = models.ENLCAConfig(attention=bare_attention)
    q, k, v, projection, mask = attention_inputs()
    assert config.attend(q, k, v, projection, spatial_shape=(2, 3), layer=1) is v
    assert error_message(lambda: config.attend(q, k, v, projection, spatial_shape=(2, 3),
                                               mask=mask)) == (
        "model.attention='bare_attention' takes no mask: evaluate this model without padding "
        '(bucket 1)')


# --- ENLCA's embedding ----------------------------------------------------------------------


def embedding_reference(x, params, reduction, amplification, norm_eps, rounded=lambda a: a):
    """q, k, v of `x [B, H, W, C]` from the three 1x1 convolutions' parameters, NumPy; `rounded`
    rounds each input and result of the matmul and the bias addition to the compute dtype."""
    b, h, w, c = x.shape
    d = c // reduction
    flat = rounded(x.reshape(b, h * w, c))
    conv = lambda name: rounded(rounded(flat @ rounded(params[name]['kernel'][0, 0]))
                                + rounded(params[name]['bias']))
    unit = lambda e: e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), norm_eps)
    q, k, v = conv('conv_match1'), conv('conv_match2'), conv('conv_assembly')
    assert q.shape[-1] == k.shape[-1] == d and v.shape[-1] == c
    return unit(q) * np.sqrt(amplification), unit(k) * np.sqrt(amplification), v


def to_bfloat16(a):
    return np.asarray(a, np.float32).astype(jnp.bfloat16).astype(np.float32)


@pytest.mark.parametrize('dtype, rounded', [(jnp.float32, lambda a: a),
                                            (jnp.bfloat16, to_bfloat16)],
                         ids=['float32', 'bfloat16'])
def test_enlca_embeds_with_three_pointwise_convolutions_normalised_and_amplified(dtype, rounded):
    """q, k (conv_match1, conv_match2, C / reduction channels) normalised with the norm clamped at
    norm_eps, times sqrt(amplification); v (conv_assembly, C channels); the matmul in `dtype`,
    the results float32. Some positions have embeddings of norm below norm_eps."""
    config = models.ENLCAConfig(attention=bare_attention, reduction=2, amplification=2.5,
                                norm_eps=0.3, num_random_features=4)
    block = models.ENLCA(config, res_scale=0.5, dtype=dtype)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(1, 2, 3, 8)) * np.geomspace(1e-3, 3, 6).reshape(1, 2, 3, 1))
    x = x.astype(np.float32)
    variables = block.init({'params': jax.random.key(0), models.RANDOM_FEATURES:
                            jax.random.key(1)}, jnp.asarray(x))
    params = {name: {**p, 'bias': jnp.asarray(0.05 * rng.normal(size=p['bias'].shape),
                                              jnp.float32)}
              for name, p in variables['params'].items()}
    assert set(params) == {'conv_match1', 'conv_match2', 'conv_assembly'}
    (_, (q, k)), state = block.apply({**variables, 'params': params}, jnp.asarray(x),
                                     mutable=['intermediates'])
    (sown_q, sown_k, v), = state['intermediates']['embeddings']
    np.testing.assert_array_equal(sown_q, q)
    np.testing.assert_array_equal(sown_k, k)
    expected = embedding_reference(x, jax.tree.map(np.asarray, params), 2, 2.5, 0.3, rounded)
    for ours, theirs in zip((q, k, v), expected):
        assert ours.dtype == jnp.float32 and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    norms = np.linalg.norm(expected[0], axis=-1)
    assert (norms < 0.99 * np.sqrt(2.5)).any() and np.isclose(norms, np.sqrt(2.5)).any()


# --- the block contract ---------------------------------------------------------------------


class Minimal(nn.Module):
    """The smallest block keeping the contract: q, k, v are slices of x, and y - x (res_scale
    times the `attention` hook) depends on each position alone and is negative everywhere. The
    other hooks break one clause each."""
    config: models.ENLCAConfig = models.ENLCAConfig()
    res_scale: float = 0.1
    dtype: Any = jnp.float32
    sown = staticmethod(lambda q, k, v: [(q, k, v)])
    returns = staticmethod(lambda y, q, k, v, mask: (y, (q, k)))
    attention = staticmethod(lambda x: -1e-3 * (1.5 + x))
    leak = staticmethod(lambda x: 0.0)

    @nn.compact
    def __call__(self, x, mask=None):
        b, h, w, c = x.shape
        flat = x.reshape(b, h * w, c)
        d = c // self.config.reduction
        q, k, v = flat[..., :d], flat[..., d:2 * d], flat
        for sown in self.sown(q, k, v):
            self.sow('intermediates', 'embeddings', sown)
        y = x + self.res_scale * (self.attention(x) + self.leak(x))
        return self.returns(y, q, k, v, mask)


def breaking(name, **hooks):
    return type(name, (Minimal,), {key: staticmethod(fn) for key, fn in hooks.items()})


EXPECTED = ('block(x [2, 3, 4, 8], mask [2, 3, 4, 1] | None) should return (y [2, 3, 4, 8], '
            '(q, k [2, 12, d]))')
SOWN = ("the block sows ('intermediates', 'embeddings') = {}; expected one tuple (q, k, v) as "
        'its attention receives them: q, k [2, 12, 2] as returned, v [2, 12, c]')
REFUSED = [
    (breaking('ReturnsY', returns=lambda y, q, k, v, mask: y),
     f'a block returns (y, (q, k)): {EXPECTED}'),
    (breaking('ReturnsQKV', returns=lambda y, q, k, v, mask: (y, (q, k, v))),
     f'a block returns (y, (q, k)): {EXPECTED}'),
    (breaking('CutY', returns=lambda y, q, k, v, mask: (y[:, :, :-1], (q, k))),
     f'{EXPECTED}, got y [2, 3, 3, 8], q [2, 12, 2], k [2, 12, 2]'),
    (breaking('SpatialQK', returns=lambda y, q, k, v, mask: (
        y, (q.reshape(2, 3, 4, 2), k.reshape(2, 3, 4, 2)))),
     f'{EXPECTED}, got y [2, 3, 4, 8], q [2, 3, 4, 2], k [2, 3, 4, 2]'),
    (breaking('NarrowK', returns=lambda y, q, k, v, mask: (y, (q, k[..., :1]))),
     f'{EXPECTED}, got y [2, 3, 4, 8], q [2, 12, 2], k [2, 12, 1]'),
    (breaking('CutWithoutMask', returns=lambda y, q, k, v, mask: (
        y if mask is not None else y[:1], (q, k))),
     f'{EXPECTED}, got y [1, 3, 4, 8], q [2, 12, 2], k [2, 12, 2]'),
    (breaking('CutWithMask', returns=lambda y, q, k, v, mask: (
        y if mask is None else y[:1], (q, k))),
     f'{EXPECTED}, got y [1, 3, 4, 8], q [2, 12, 2], k [2, 12, 2]'),
    (breaking('NoSow', sown=lambda q, k, v: []),
     "the block does not sow ('intermediates', 'embeddings'): the research tools read its "
     "attention's inputs, self.sow('intermediates', 'embeddings', (q, k, v))"),
    (breaking('SowsTwice', sown=lambda q, k, v: [(q, k, v), (q, k, v)]),
     SOWN.format('(([2, 12, 2], [2, 12, 2], [2, 12, 8]), ([2, 12, 2], [2, 12, 2], [2, 12, 8]))')),
    (breaking('SowsList', sown=lambda q, k, v: [[q, k, v]]),
     SOWN.format('([[2, 12, 2], [2, 12, 2], [2, 12, 8]],)')),
    (breaking('SowsQK', sown=lambda q, k, v: [(q, k)]),
     SOWN.format('(([2, 12, 2], [2, 12, 2]),)')),
    (breaking('SowsNarrowQ', sown=lambda q, k, v: [(q[..., :1], k, v)]),
     SOWN.format('(([2, 12, 1], [2, 12, 2], [2, 12, 8]),)')),
    (breaking('SowsNarrowK', sown=lambda q, k, v: [(q, k[..., :1], v)]),
     SOWN.format('(([2, 12, 2], [2, 12, 1], [2, 12, 8]),)')),
    (breaking('SowsSpatialV', sown=lambda q, k, v: [(q, k, v.reshape(2, 3, 4, 8))]),
     SOWN.format('(([2, 12, 2], [2, 12, 2], [2, 3, 4, 8]),)')),
    (breaking('SowsV4D', sown=lambda q, k, v: [(q, k, v[..., None])]),
     SOWN.format('(([2, 12, 2], [2, 12, 2], [2, 12, 8, 1]),)')),
]


@pytest.mark.parametrize('block, message', REFUSED, ids=[b.__name__ for b, _ in REFUSED])
def test_a_block_breaking_one_clause_is_refused_with_the_line_naming_it(block, message):
    assert error_message(lambda: models.check_block(block)) == message


def test_a_block_whose_output_leaks_masked_content_is_refused_relative_to_its_attention_part():
    """y - x at real positions is about -1e-3 and changes by 1e-5 with the masked content: 1 %
    of the attention's part, refused though it is 1e-5 of y."""
    leaky = breaking('Leaky', leak=lambda x: -4e-6 * jnp.mean(x))
    assert error_message(lambda: models.check_block(leaky)) == (
        'the block ignores its mask: y at real positions (mask 1) changes by 1e-05 with the '
        'content of masked positions; leave them out of the attention (ENLCAConfig.attend with '
        'mask) so padded evaluation stays exact')


def test_a_block_keeping_the_contract_passes_also_inside_a_jit_trace():
    models.check_block(Minimal)
    jax.jit(lambda x: (models.check_block(Minimal), x)[1])(jnp.zeros(()))


def test_enlca_and_a_block_without_attention_pass():
    """ENLCA (parameters from the `params` rng, random features from theirs, an output that
    attends over the real positions alone); y = x exactly (no change at all with the masked
    content, and nothing to compare it with) passes too."""
    models.check_block(models.ENLCA)
    models.check_block(breaking('Identity', attention=lambda x: 0.0 * x))


# --- ENLCN ----------------------------------------------------------------------------------


@pytest.mark.parametrize('key', ['n_resblocks', 'n_feats', 'attention_every'])
def test_a_network_size_of_one_is_enough_and_zero_is_refused_naming_the_key(key):
    assert getattr(models.EDSR(**{key: 1}), key) == 1
    for value in (0, -1):
        assert error_message(lambda v=value: models.ENLCN(**{key: v})) == (
            f'model.{key} must be >= 1, got {value}')


def test_the_attention_embedding_needs_a_channel_and_plain_edsr_needs_none():
    assert models.ENLCN(n_feats=4, enlca=models.ENLCAConfig(reduction=4)).n_feats == 4
    assert error_message(lambda: models.ENLCN(n_feats=3, enlca=models.ENLCAConfig(
        reduction=4))) == 'model.n_feats=3 / model.reduction=4 leaves no attention embedding'
    assert models.EDSR(n_feats=1).n_feats == 1


def test_the_scale_and_the_precision_are_checked_when_the_network_is_made():
    assert error_message(lambda: models.ENLCN(scale=6)) == (
        'scale must be 3 or a power of 2 (2, 4, 8, ...), got 6')
    assert error_message(lambda: models.ENLCN(dtype='float64')) == (
        "model.dtype='float64'; choose one of ('float32', 'bfloat16', 'float16')")
    assert models.ENLCN(scale=8, dtype='bfloat16').dtype == 'bfloat16'


def test_padded_inputs_are_masked_exactly_unless_the_attention_takes_no_mask():
    assert models.EDSR().masks_padding()
    assert models.ENLCN().masks_padding()
    assert models.ENLCN(enlca=models.ENLCAConfig(attention='exact')).masks_padding()
    assert not models.ENLCN(enlca=models.ENLCAConfig(attention=bare_attention)).masks_padding()


def layout_reference(n_resblocks, every):
    """An attention module wherever the number of residual blocks so far is a multiple of
    `every` (0 included)."""
    layout = []
    for done in range(n_resblocks + 1):
        layout += ['enlca'] * (done % every == 0) + ['resblock'] * (done < n_resblocks)
    return layout


def test_body_layout_puts_attention_first_and_after_every_attention_every_blocks():
    for n in range(1, 8):
        for every in range(1, 9):
            assert models.ENLCN(n_resblocks=n, attention_every=every).body_layout() == (
                layout_reference(n, every)), (n, every)
            assert models.EDSR(n_resblocks=n, attention_every=every).body_layout() == (
                ['resblock'] * n)


def test_redraw_draws_module_i_from_fold_in_key_i_with_the_configured_sampler():
    """Module i in flattening order (`body_10` before `body_2`) draws its shape from
    `fold_in(key, i)`."""
    model = small_model(projection='iid')
    shapes = {'body_0': (4, 2), 'body_10': (3, 2), 'body_2': (5, 1)}
    variables = {'params': {'body_0': {}}, 'other': {'a': jnp.ones(2)},
                 models.RANDOM_FEATURES: {name: {'projection': jnp.zeros(shape)}
                                          for name, shape in shapes.items()}}
    key = jax.random.key(9)
    redrawn = model.redraw(variables, key)
    assert redrawn['params'] is variables['params'] and redrawn['other'] is variables['other']
    for i, name in enumerate(sorted(shapes)):
        np.testing.assert_array_equal(
            redrawn[models.RANDOM_FEATURES][name]['projection'],
            features.iid_gaussian_projection(jax.random.fold_in(key, i), *shapes[name]))


def test_redraw_leaves_variables_without_random_features_or_attention_as_they_are():
    params_only = {'params': {'body_0': {}}}
    assert small_model().redraw(params_only, jax.random.key(1)) is params_only
    variables = {**params_only, models.RANDOM_FEATURES: {'body_0': {'projection': jnp.ones(2)}}}
    assert models.EDSR(n_feats=8).redraw(variables, jax.random.key(1)) is variables


def test_each_attention_module_is_given_its_ordinal_and_a_block_without_layer_none():
    model = small_model(attention=recording_attention)
    model.enlca.attention_fn()  # checked once, here
    rngs = {'params': jax.random.key(0), models.RANDOM_FEATURES: jax.random.key(1)}
    CALLS.clear()
    jax.eval_shape(lambda: model.init(rngs, jnp.zeros((1, 3, 3, 3))))
    assert [call['layer'] for call in CALLS] == [0, 1, 2]
    with_minimal = models.ENLCN(scale=2, n_resblocks=1, n_feats=8, attention_every=1,
                                block=Minimal)
    _, state = jax.eval_shape(lambda: with_minimal.init_with_output(
        rngs, jnp.zeros((1, 3, 3, 3)), mutable=True))
    assert sorted(state['intermediates']) == ['body_0', 'body_2']


# --- from_config and the recorded configs ---------------------------------------------------


def test_unknown_keys_are_named_sorted_with_every_known_key():
    config = {'zeta': 1, 'n_feats': 8, 'alpha': 2}
    assert error_message(lambda: models.from_config(config)) == (
        f"unknown model config key(s) ['alpha', 'zeta']; known: {KNOWN_KEYS}")
    for key in ('enlca', 'parent', 'name'):
        assert error_message(lambda k=key: models.from_config({k: None})) == (
            f"unknown model config key(s) ['{key}']; known: {KNOWN_KEYS}")


def test_from_config_gives_each_key_to_its_owner_and_leaves_the_mapping_unchanged():
    enlca = dict(attention='exact', reduction=2, num_random_features=6, amplification=3.0,
                 feature_map='relu', projection='iid', norm_eps=1e-3, kernel_eps=0.01)
    network = dict(scale=4, n_resblocks=3, n_feats=8, res_scale=0.5, attention_every=2,
                   rgb_range=255.0, rgb_mean=(0.1, 0.2, 0.3), rgb_std=(0.5, 0.5, 0.5),
                   dtype='bfloat16', block='enlca')
    config = {**enlca, **network}
    model = models.from_config(config)
    assert config == {**enlca, **network}
    assert model.enlca == models.ENLCAConfig(**enlca)
    assert {key: getattr(model, key) for key in network} == network


def test_attention_none_is_plain_edsr_whatever_the_other_attention_keys_say():
    model = models.from_config(dict(SMALL, attention='none', reduction=0, feature_map='nope'))
    assert model.enlca is None and model.n_feats == 8


def test_an_unknown_block_is_refused_by_from_config():
    assert error_message(lambda: models.from_config(dict(SMALL, block='nope'))).startswith(
        "model.block='nope': unknown attention block; known: ['enlca']")


def test_a_recorded_config_reads_old_spec_names_as_today_s_and_nothing_else():
    recorded = {'attention': 'softmax(query_block=(8))', 'feature_map': ' softmax (eps=0.0)',
                'projection': 'softmax', 'block': 'softmax', 'n_feats': 8}
    upgraded = models.upgrade_recorded_config(recorded)
    assert upgraded == {'attention': 'exact(query_block=(8))',
                        'feature_map': 'softmax_kernel(eps=0.0)', 'projection': 'softmax',
                        'block': 'softmax', 'n_feats': 8}
    assert recorded['attention'] == 'softmax(query_block=(8))'
    today = {'attention': 'softmax_kernel', 'feature_map': features.relu_features}
    assert models.upgrade_recorded_config(today) == today
    assert models.upgrade_recorded_config({'attention': 'softmax'}) == {'attention': 'exact'}
    for not_a_mapping in (None, ['attention', 'softmax'], 'softmax'):
        assert models.upgrade_recorded_config(not_a_mapping) is not_a_mapping


def test_a_recordable_config_names_functions_given_in_code_and_refuses_a_lambda():
    config = {'attention': None, 'feature_map': functools.partial(features.relu_features, eps=0.5),
              'projection': 'iid', 'block': models.ENLCA, 'n_feats': 8}
    assert models.recordable_config(config) == {
        'attention': None, 'feature_map': 'enlcn_jax.nn.features:relu_features(eps=0.5)',
        'projection': 'iid', 'block': 'enlcn_jax.nn.models:ENLCA', 'n_feats': 8}
    assert config['block'] is models.ENLCA
    assert error_message(lambda: models.recordable_config(
        {'projection': lambda key, m, d: None})).startswith(
            'model.projection: cannot record <function ')
