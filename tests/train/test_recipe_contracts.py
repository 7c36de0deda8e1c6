"""Contracts of `train/recipe.py` checked without training: the TrainState's variables and
checkpoint items, the schedules against their closed forms, Adam (with and without clipping)
against a NumPy Adam, the initial state, the loss and the step on a stand-in network whose
gradient is known in closed form, the compiled step's shardings, the redraw, and
`explain_non_finite` naming each configured function (feature map for queries or keys, its
gradient, the attention's output or gradient, the contrastive loss's gradient) or the network
where it turns non-finite, and `explain_non_finite_loss`'s choice of state and batch."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from conftest import tiny_config, unit_embeddings
from enlcn_jax.nn import losses, models
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import recipe

MODULE = 'recipe_contract_research'

RESEARCH = '''
import jax
import jax.numpy as jnp


def nan_for_query_images(x, projection, is_query=False):
    """Positive features, NaN for the queries of an image of more than 100 positions (the
    registry's check maps 12)."""
    features = jax.nn.softplus(x @ projection.T)
    return jnp.where(is_query and x.shape[-2] > 100, jnp.nan, features)


def nan_for_key_images(x, projection, is_query=False):
    """As `nan_for_query_images`, NaN for the keys (given as a batch `[B, N, d]`) instead; and for
    queries not given as the rows of one image `[n, d]` (which ENLA never does)."""
    features = jax.nn.softplus(x @ projection.T)
    wrong = (not is_query and x.ndim == 3 and x.shape[-2] > 100) or (is_query and x.ndim != 2)
    return jnp.where(wrong, jnp.nan, features)


def kinked(x, projection):
    """Finite non-negative features whose gradient is NaN where a projection is negative."""
    return jnp.sqrt(jnp.maximum(x @ projection.T, 0.0)) + 0.1


def nan_attention(q, k, v, projection, feature_map, spatial_shape):
    """NaN on images of more than 100 positions (the check's are 3 x 4)."""
    h, w = spatial_shape
    return jnp.where(h * w > 100, jnp.nan, v)


def nan_gradient_attention(q, k, v, projection, feature_map):
    """`v`, with a NaN gradient with respect to the queries."""
    return v + jnp.sqrt(q[..., :1] * 0.0)


def nan_gradient_loss(q, k):
    """On an image of fewer than 1000 positions (the check's has 1024) 0 with a NaN gradient;
    else finite."""
    if q.shape[0] < 1000:
        return jnp.mean(jnp.sqrt(q * 0.0))
    return jnp.mean(q * k)
'''


@pytest.fixture(scope='module')
def research(tmp_path_factory):
    """The module of functions above, importable as `MODULE`."""
    folder = tmp_path_factory.mktemp('research')
    (folder / f'{MODULE}.py').write_text(RESEARCH)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield MODULE


def stand_in_state(params, apply_fn=None, tx=None, step=0, random_features=None):
    """A TrainState of `params` without a network (`apply_fn` a stand-in)."""
    state = recipe.TrainState.create(
        apply_fn=apply_fn, params=params, tx=tx or optax.sgd(0.5),
        random_features={} if random_features is None else random_features,
        rng=jnp.array([3, 4], jnp.uint32))
    return state.replace(step=jnp.int32(step))


def trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- TrainState -------------------------------------------------------------------------------

def test_variables_hold_the_random_features_only_where_there_are_some():
    projection = {'body_0': {'projection': np.ones((2, 3), np.float32)}}
    params = {'w': np.zeros(2, np.float32)}
    with_features = stand_in_state(params, random_features=projection)
    assert with_features.variables == {'params': params, 'random_features': projection}
    assert stand_in_state(params).variables == {'params': params}


def test_checkpoint_items_give_back_every_field_of_the_state():
    projection = {'body_0': {'projection': np.ones((2, 3), np.float32)}}
    saved = stand_in_state({'w': np.full(2, 7.0, np.float32)}, step=6, random_features=projection,
                           tx=optax.adam(0.1))
    # One Adam step: its moments are not a fresh state's.
    saved = saved.apply_gradients(grads={'w': np.array([1.0, -2.0], np.float32)})
    saved = saved.replace(step=jnp.int32(6), rng=jnp.array([9, 8], jnp.uint32))
    items = saved.checkpoint_items()
    assert set(items) == {checkpoints.VARIABLES, checkpoints.TRAIN}
    assert items[checkpoints.VARIABLES] == {'params': saved.params, 'random_features': projection}
    assert set(items[checkpoints.TRAIN]) == {'step', 'opt_state', 'rng'}
    assert items[checkpoints.TRAIN]['step'] is saved.step
    assert items[checkpoints.TRAIN]['opt_state'] is saved.opt_state
    assert items[checkpoints.TRAIN]['rng'] is saved.rng

    fresh = stand_in_state({'w': np.zeros(2, np.float32)}, tx=optax.adam(0.1),
                           random_features={'body_0': {'projection': np.zeros((2, 3), np.float32)}})
    restored = fresh.from_checkpoint_items(items)
    for field in ('params', 'random_features', 'step', 'opt_state', 'rng'):
        trees_equal(getattr(restored, field), getattr(saved, field))
    # A network without attention saves no random features: none are restored.
    del items[checkpoints.VARIABLES]['random_features']
    assert fresh.from_checkpoint_items(items).random_features == {}


# --- schedules --------------------------------------------------------------------------------

def test_learning_rate_is_lr_times_factor_to_the_number_of_decay_epochs_reached():
    config = tiny_config(train__lr=0.1, train__lr_decay_factor=0.25, train__steps_per_epoch=3,
                         train__lr_decay_epochs=(1, 3))
    lr_fn = recipe.create_learning_rate_fn(config)
    for step in range(13):
        expected = 0.1 * 0.25 ** sum(epoch <= step // 3 for epoch in (1, 3))
        assert float(lr_fn(step)) == pytest.approx(expected, rel=1e-6), step


def test_contrastive_weight_is_zero_before_the_start_epoch_s_first_step_and_the_weight_from_it():
    config = tiny_config(train__contrastive__weight=0.02, train__contrastive__start_epoch=2,
                         train__steps_per_epoch=3)
    weight_fn = recipe.create_contrastive_weight_fn(config)
    weights = [weight_fn(step) for step in range(9)]
    assert all(w.dtype == jnp.float32 and w.shape == () for w in weights)
    assert [float(w) for w in weights] == [0.0] * 6 + [np.float32(0.02)] * 3
    # A traced step compiles once.
    assert float(jax.jit(weight_fn)(jnp.int32(6))) == np.float32(0.02)
    config.train.contrastive.start_epoch = 0
    assert float(recipe.create_contrastive_weight_fn(config)(0)) == np.float32(0.02)


def numpy_adam(grads, lrs, b1, b2, eps):
    """The parameter after Adam steps from 0 (Kingma & Ba 2015, Algorithm 1)."""
    param, m, v = np.zeros_like(grads[0]), np.zeros_like(grads[0]), np.zeros_like(grads[0])
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        param = param - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return param


@pytest.mark.parametrize('grad_clip', [0.0, 0.5])
def test_the_optimizer_is_adam_on_the_schedule_after_clipping_by_global_norm(grad_clip):
    """Adam with the config's betas and eps (large here, so the gradient's scale and thus the
    clipping show) on the step-decay schedule; with `grad_clip > 0` each gradient is first
    scaled to global norm at most `grad_clip`; with 0, not clipped."""
    config = tiny_config(train__lr=0.1, train__lr_decay_factor=0.5, train__steps_per_epoch=2,
                         train__lr_decay_epochs=(1,), train__betas=(0.8, 0.95), train__eps=0.1,
                         train__grad_clip=grad_clip)
    lr_fn = recipe.create_learning_rate_fn(config)
    tx = recipe.create_optimizer(config, lr_fn)
    grads = [np.array([1.2, -1.6], np.float32) * scale for scale in (1.0, 0.2, 0.5, 2.0)]
    param = jnp.zeros(2, jnp.float32)
    opt_state = tx.init(param)
    for g in grads:
        updates, opt_state = tx.update(jnp.asarray(g), opt_state, param)
        param = optax.apply_updates(param, updates)
    clipped = [g * min(1.0, grad_clip / np.linalg.norm(g)) if grad_clip > 0 else g
               for g in grads]
    expected = numpy_adam([g.astype(np.float64) for g in clipped], [0.1, 0.1, 0.05, 0.05],
                          b1=0.8, b2=0.95, eps=0.1)
    np.testing.assert_allclose(np.asarray(param), expected, rtol=1e-5)


def test_the_initial_state_is_the_model_s_init_and_redraw_key_of_the_split_key():
    config = tiny_config(train__lr=0.1, train__eps=0.1)
    model = recipe.create_model(config)
    assert (model.n_feats, model.n_resblocks, model.attention_every,
            model.enlca.num_random_features) == (16, 2, 2, 16)
    key = jax.random.PRNGKey(5)
    state = recipe.create_train_state(config, model, key)
    init_key, redraw_key = jax.random.split(key)
    variables = models.init_variables(model, init_key, (12, 12))
    trees_equal(state.params, variables['params'])
    trees_equal(state.random_features, variables['random_features'])
    trees_equal(state.rng, redraw_key)
    assert int(state.step) == 0 and state.apply_fn == model.apply
    # Its optimiser is the config's: a step equals `create_optimizer`'s on the same gradient.
    tx = recipe.create_optimizer(config, recipe.create_learning_rate_fn(config))
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(state.params))
    param, grad = jnp.zeros(2), jnp.array([0.3, -0.05])
    for optimizer in (state.tx, tx):
        updates, _ = optimizer.update(grad, optimizer.init(param), param)
        np.testing.assert_allclose(np.asarray(updates), 0.1 * -grad / (jnp.abs(grad) + 0.1),
                                   rtol=1e-5)


def test_a_network_without_attention_starts_with_no_random_features():
    config = tiny_config(model__attention='none')
    state = recipe.create_train_state(config, recipe.create_model(config), jax.random.PRNGKey(0))
    assert state.random_features == {} and state.variables == {'params': state.params}


# --- random features ---------------------------------------------------------------------------

@pytest.mark.parametrize('every', ['epoch', 'steps'])
def test_draw_indices_are_ints(every):
    """`fold_in` takes an integer: draw i at step `i * period` is the int i."""
    config = tiny_config(train__redraw__every=every, train__redraw__steps=2)
    indices = [recipe.redraw_index(step, config) for step in range(7)]
    assert [i for i in indices if i is not None] == list(range(4 if every == 'steps' else 3))
    assert all(type(i) is int for i in indices if i is not None)


def test_draw_i_is_the_model_s_redraw_with_the_key_folded_with_i():
    config = tiny_config()
    model = recipe.create_model(config)
    state = recipe.create_train_state(config, model, jax.random.PRNGKey(0))
    draws = [recipe.draw_random_features(model, state.random_features, state.rng, i)
             for i in (0, 1)]
    for i, draw in enumerate(draws):
        expected = model.redraw({'random_features': state.random_features},
                                jax.random.fold_in(state.rng, i))['random_features']
        trees_equal(draw, expected)
    assert not np.allclose(draws[0]['body_0']['projection'], draws[1]['body_0']['projection'])

    mesh = recipe.create_mesh(jax.devices()[:1])
    redrawn = recipe.compile_redraw(config, mesh)(state, 1)
    trees_equal(redrawn.random_features, draws[1])
    trees_equal(redrawn.params, state.params)
    assert int(redrawn.step) == 0
    for leaf in jax.tree.leaves(redrawn.random_features):
        assert leaf.sharding == NamedSharding(mesh, PartitionSpec())


# --- the loss ----------------------------------------------------------------------------------

def test_contrastive_term_is_the_mean_over_modules_of_the_mean_over_images():
    config = tiny_config(train__contrastive__loss='paper', train__contrastive__block_size=16)
    embeddings = [unit_embeddings(jax.random.key(i), (2, 40, 4), amplification=a)
                  for i, a in ((0, 6.0), (1, 2.0))]
    per_image = [[float(losses.paper_contrastive_loss(q[b], k[b])) for b in range(2)]
                 for q, k in embeddings]
    assert per_image[0][0] != pytest.approx(per_image[0][1], rel=1e-3)  # images differ
    assert float(recipe.contrastive_term(embeddings, config)) == pytest.approx(
        np.mean([np.mean(p) for p in per_image]), rel=1e-5)
    # The configured block size and margin reach the loss (no hinge: the margin is added).
    assert recipe.contrastive_loss_fn(config).keywords == {'block_size': 16}
    config.train.contrastive.margin = 2.5
    assert float(recipe.contrastive_term(embeddings, config)) == pytest.approx(
        np.mean([np.mean(p) for p in per_image]) + 1.5, rel=1e-5)


def test_batch_images_are_float32_in_zero_one_lr_first():
    lr, hr = recipe.batch_images({'hr': np.array([[255, 51]], np.uint8),
                                  'lr': np.array([[0, 255]], np.uint8)})
    assert lr.dtype == hr.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lr), [[0.0, 1.0]], rtol=1e-7)
    np.testing.assert_allclose(np.asarray(hr), [[1.0, 0.2]], rtol=1e-7)


X = np.array([[[[51, 102, 255]]]], np.uint8)  # lr: 0.2, 0.4, 1.0
Y = np.array([[[[0, 255, 255]]]], np.uint8)   # hr: 0, 1, 1


def stand_in_network(calls=None, with_embeddings=True):
    """`apply_fn` of a network `sr = a * lr`, with one module's `(q, k) = (b * ones, ones)`
    `[1, 2, 1]`; records the variables and keywords it is called with in `calls`."""
    def apply_fn(variables, x, **keywords):
        if calls is not None:
            calls.append((variables, keywords))
        b = variables['params']['b']
        embeddings = [(b * jnp.ones((1, 2, 1)), jnp.ones((1, 2, 1)))] if with_embeddings else []
        return variables['params']['a'] * x, embeddings
    return apply_fn


def closed_form(a, b, weight):
    """`(loss, l1, contrastive, d loss / d a, d loss / d b)` of the stand-in with the contrastive
    function `sum(q)` (= 2 b)."""
    x, y = X.ravel() / 255, Y.ravel() / 255
    l1 = np.mean(np.abs(a * x - y))
    cl = 2 * b if weight > 0 else 0.0
    return l1 + weight * cl, l1, cl, np.mean(np.sign(a * x - y) * x), 2 * weight


def sum_of_queries(embeddings):
    return jnp.sum(embeddings[0][0])


@pytest.mark.parametrize('weight', [0.0, 0.5, 1.0])
def test_loss_is_l1_plus_weight_times_contrastive_run_only_for_a_positive_weight(weight):
    calls = []
    features = {'body_0': {'projection': np.ones((2, 1), np.float32)}}
    params = {'a': jnp.float32(2.0), 'b': jnp.float32(3.0)}
    state = stand_in_state(params, stand_in_network(calls), random_features=features)
    loss, (l1, cl) = recipe.loss_fn(params, state, {'lr': X, 'hr': Y}, jnp.float32(weight),
                                    sum_of_queries)
    expected = closed_form(2.0, 3.0, weight)
    assert (float(loss), float(l1), float(cl)) == pytest.approx(expected[:3], rel=1e-6)
    ((variables, keywords),) = calls
    assert variables == {'params': params, 'random_features': features}
    assert keywords == {'return_embeddings': True}


def test_a_network_without_attention_has_no_contrastive_loss():
    params = {'a': jnp.float32(2.0), 'b': jnp.float32(3.0)}
    state = stand_in_state(params, stand_in_network(with_embeddings=False))
    loss, (l1, cl) = recipe.loss_fn(params, state, {'lr': X, 'hr': Y}, jnp.float32(0.5),
                                    sum_of_queries)
    assert float(cl) == 0.0 and float(loss) == float(l1)


def test_train_step_takes_one_optimizer_step_and_logs_the_schedules_at_the_state_s_step():
    params = {'a': jnp.float32(2.0), 'b': jnp.float32(3.0)}
    state = stand_in_state(params, stand_in_network(), tx=optax.sgd(0.1), step=4)
    new_state, metrics = recipe.train_step(
        state, {'lr': X, 'hr': Y}, learning_rate_fn=lambda step: 0.25 * step,
        contrastive_weight_fn=lambda step: jnp.where(step >= 4, 0.5, 0.0),
        contrastive_fn=sum_of_queries)
    loss, l1, cl, grad_a, grad_b = closed_form(2.0, 3.0, 0.5)
    assert {k: float(v) for k, v in metrics.items()} == pytest.approx({
        'loss': loss, 'l1': l1, 'contrastive': cl, 'contrastive_weight': 0.5, 'lr': 1.0,
        'grad_norm': np.hypot(grad_a, grad_b)}, rel=1e-6)
    assert int(new_state.step) == 5
    assert float(new_state.params['a']) == pytest.approx(2.0 - 0.1 * grad_a, rel=1e-6)
    assert float(new_state.params['b']) == pytest.approx(3.0 - 0.1 * grad_b, rel=1e-6)


def test_the_compiled_step_uses_the_config_s_schedules_and_loss_and_shards_over_the_mesh():
    """The step of `compile_train_step`: the config's learning rate, contrastive weight and
    contrastive loss (or the one given), the batch split on 'data', the state replicated and
    donated."""
    config = tiny_config(train__lr=0.1, train__steps_per_epoch=2, train__lr_decay_epochs=(1,),
                         train__contrastive__start_epoch=1, train__contrastive__weight=0.5,
                         train__contrastive__loss='paper', train__contrastive__block_size=8)
    q, k = (np.asarray(x) for x in unit_embeddings(jax.random.key(0), (1, 20, 4)))

    def apply_fn(variables, x, **keywords):
        del keywords
        return variables['params']['a'] * x, [(variables['params']['b'] * q, k)]

    mesh = recipe.create_mesh(jax.devices()[:1])
    batch = recipe.shard_batch({'lr': X, 'hr': Y}, mesh)
    split, replicated = (NamedSharding(mesh, PartitionSpec(*axes)) for axes in (('data',), ()))
    assert {name: leaf.sharding for name, leaf in batch.items()} == {'lr': split, 'hr': split}
    np.testing.assert_array_equal(np.asarray(batch['lr']), X)
    results = []
    for contrastive_fn in (None, lambda embeddings: jnp.float32(4.0)):
        step_fn = recipe.compile_train_step(config, mesh, contrastive_fn)
        # Given on the default device: the step places them as its shardings say.
        state = stand_in_state({'a': jnp.float32(2.0), 'b': jnp.float32(1.5)}, apply_fn, step=2)
        batch = {'lr': X, 'hr': Y}
        (state_in, batch_in), _ = step_fn.lower(state, batch).compile().input_shardings
        assert all(sharding == replicated for sharding in jax.tree.leaves(state_in))
        assert batch_in == {'lr': split, 'hr': split}
        new_state, metrics = step_fn(state, batch)
        assert state.params['a'].is_deleted()  # donated
        assert all(leaf.sharding == replicated for leaf in jax.tree.leaves((new_state, metrics)))
        results.append({name: float(value) for name, value in metrics.items()})
    expected = float(recipe.contrastive_term([(1.5 * q, k)], config))
    assert results[0]['contrastive'] == pytest.approx(expected, rel=1e-5)
    assert results[1]['contrastive'] == 4.0
    for result in results:
        assert result['lr'] == pytest.approx(0.05) and result['contrastive_weight'] == 0.5


def test_the_mesh_is_one_data_axis_over_the_devices_given_or_all():
    mesh = recipe.create_mesh()
    assert mesh.axis_names == ('data',)
    assert list(mesh.devices) == jax.devices()
    assert list(recipe.create_mesh(jax.devices()[:1]).devices) == jax.devices()[:1]


# --- explain_non_finite ------------------------------------------------------------------------

def first_batch(config):
    """A fixed uint8 batch of the config's shapes (4 images of 12 x 12)."""
    rng = np.random.default_rng(0)
    size, scale = config.data.lr_patch, config.model.scale
    return {'lr': rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8),
            'hr': rng.integers(0, 256, (4, size * scale, size * scale, 3), dtype=np.uint8)}


def explain(config, step=3, change_params=None):
    state = recipe.create_train_state(config, recipe.create_model(config), jax.random.PRNGKey(0))
    if change_params:
        state = state.replace(params=change_params(state.params))
    return recipe.explain_non_finite(config, state, first_batch(config), step)


@pytest.mark.parametrize('key, name, explanation', [
    ('model.feature_map', 'nan_for_query_images',
     "model.feature_map='{m}:nan_for_query_images' gives non-finite features for the queries"),
    ('model.feature_map', 'nan_for_key_images',
     "model.feature_map='{m}:nan_for_key_images' gives non-finite features for the keys"),
    ('model.feature_map', 'kinked',
     "model.feature_map='{m}:kinked' gives non-finite gradients of its features for the queries"),
    ('model.attention', 'nan_attention',
     "model.attention='{m}:nan_attention' gives a non-finite output from the finite features of "
     "model.feature_map='softmax_kernel'"),
    ('model.attention', 'nan_gradient_attention',
     "model.attention='{m}:nan_gradient_attention' gives a non-finite gradient from the finite "
     "features of model.feature_map='softmax_kernel'"),
    ('train.contrastive.loss', 'nan_gradient_loss',
     "train.contrastive.loss='{m}:nan_gradient_loss' gives a non-finite gradient"),
])
def test_explain_non_finite_names_the_function_and_what_of_it_is_non_finite(research, key, name,
                                                                           explanation):
    config = tiny_config()
    config.update_from_flattened_dict({key: f'{research}:{name}'})
    assert explain(config) == f'module body_0: {explanation.format(m=research)}.'


def set_nan(params, module, leaf):
    params = jax.tree.map(lambda x: x, params)
    params[module][leaf]['bias'] = params[module][leaf]['bias'].at[0].set(jnp.nan)
    return params


@pytest.mark.parametrize('module, conv', [('body_2', 'conv2'), ('body_3', 'conv_assembly')])
def test_explain_non_finite_names_the_first_module_whose_embeddings_are_non_finite(module, conv):
    """NaN from the second resblock (body_2) on, or in the values alone of the second ENLCA
    module (body_3): that module is named."""
    assert explain(tiny_config(), change_params=lambda p: set_nan(p, module, conv)) == (
        'the embeddings of module body_3 are non-finite before any configured function runs on '
        "them: the network's parameters diverged; try a lower train.lr.")


def test_explain_non_finite_blames_the_network_for_an_output_that_alone_is_non_finite():
    assert explain(tiny_config(), change_params=lambda p: {**p, 'tail_conv': {
        **p['tail_conv'], 'bias': p['tail_conv']['bias'].at[0].set(jnp.nan)}}) == (
        "the network's output is non-finite although every configured function gives finite "
        'values and gradients: its parameters diverged; try a lower train.lr.')


# --- explain_non_finite_loss -------------------------------------------------------------------

@pytest.fixture
def recorded(monkeypatch):
    """`explain_non_finite` replaced by a recorder of its arguments that answers 'EXPLAINED'."""
    calls = []

    def record(config, state, batch, step):
        calls.append(types.SimpleNamespace(config=config, state=state, batch=batch, step=step))
        return 'EXPLAINED'

    monkeypatch.setattr(recipe, 'explain_non_finite', record)
    return calls


def batch_of(index):
    return {'index': index}


@pytest.mark.parametrize('every', ['epoch', 'never'])
def test_without_a_checkpoint_the_initial_state_with_the_first_step_s_features_is_explained(
        recorded, tmp_path, every):
    config = tiny_config(train__seed=7, train__redraw__every=every)
    model = recipe.create_model(config)
    manager = checkpoints.latest_manager(tmp_path)
    assert recipe.explain_non_finite_loss(config, model, manager, batch_of, 5) == (
        'Run again on the last finite state (the initial state) with the batch of step 5: '
        'EXPLAINED')
    ((call,),) = [recorded]
    assert call.config is config and call.batch == {'index': 4} and call.step == 4
    initial = recipe.create_train_state(config, model, jax.random.PRNGKey(7))
    trees_equal(call.state.params, initial.params)
    expected = initial.random_features if every == 'never' else recipe.draw_random_features(
        model, initial.random_features, initial.rng, 0)
    trees_equal(call.state.random_features, expected)


def test_the_latest_checkpoint_is_explained_when_there_is_one(recorded, tmp_path):
    config = tiny_config()
    model = recipe.create_model(config)
    state = recipe.create_train_state(config, model, jax.random.PRNGKey(3))
    state = state.replace(step=jnp.int32(6))
    manager = checkpoints.latest_manager(tmp_path)
    checkpoints.save_checkpoint(manager, 6, state.checkpoint_items())
    manager.wait_until_finished()
    assert recipe.explain_non_finite_loss(config, model, manager, batch_of, 8) == (
        'Run again on the last finite state (the checkpoint of step 6) with the batch of step 8: '
        'EXPLAINED')
    ((call,),) = [recorded]
    trees_equal(call.state.params, state.params)
    trees_equal(call.state.random_features, state.random_features)
    assert int(call.state.step) == 6 and call.batch == {'index': 7}


def test_a_failure_to_run_the_functions_again_is_described_not_raised(tmp_path):
    config = tiny_config()

    def no_batch(index):
        raise ValueError(f'no batch {index}')

    assert recipe.explain_non_finite_loss(
        config, recipe.create_model(config), checkpoints.latest_manager(tmp_path), no_batch, 2) == (
        '(Running the configured functions again failed: ValueError: no batch 1.)')
