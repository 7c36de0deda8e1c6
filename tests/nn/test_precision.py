"""Mixed precision (`model.dtype`): bfloat16 / float16 convolutions, float32 everywhere else.

Tolerances, stated against the authors' float32 PyTorch outputs (max |ours - ref| / max |ref|,
measured on this project's CPU): bfloat16 1.6e-3 to 2.6e-3 (at most half an 8-bit level),
float16 2e-4 to 3e-4; the contrastive losses of the returned embeddings move by 2.3e-4 (bfloat16)
and 3e-5 (float16). Each bound below is about 2x the measurement, and each test also checks that
the reduced precision was used at all (the error is above float32's ~1e-6).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (TEST_DATA, batched_contrastive_loss, nchw, nhwc, rel_err, state_dict,
                      tiny_config)
from enlcn_jax import convert
from enlcn_jax.data import image_io, input_pipeline, sources
from enlcn_jax.evaluation import evaluator, inference, runner
from enlcn_jax.nn import models
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import config_check, recipe
from enlcn_jax.train import workdir as workdir_lib

# dtype -> (bound on the output's relative error, bound on the contrastive losses' absolute
# error, least output error that shows the precision was used).
SET5 = TEST_DATA / 'benchmark' / 'Set5' / 'HR'
TOLERANCES = {'bfloat16': (5e-3, 5e-4, 1e-4), 'float16': (1e-3, 1e-4, 1e-5)}


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
@pytest.mark.parametrize('scale', [2, 4])
def test_fixture_models_in_reduced_precision_match_pytorch_within_tolerance(reference, scale,
                                                                            dtype):
    output_tol, loss_atol, least = TOLERANCES[dtype]
    config, variables = convert.convert_state_dict(state_dict(reference, f'x{scale}'), scale)
    sr, embeddings = models.from_config({**config, 'dtype': dtype}).apply(
        variables, nhwc(reference[f'x{scale}/input']), return_embeddings=True)
    assert sr.dtype == jnp.float32
    assert least < rel_err(nchw(sr), reference[f'x{scale}/output']) <= output_tol
    ours = [float(batched_contrastive_loss(q, k, 'code')) for q, k in embeddings]
    np.testing.assert_allclose(ours, reference[f'x{scale}/contrastive_losses'], rtol=0,
                               atol=loss_atol)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_scale3_fixture_at_rgb_range_255_in_reduced_precision(reference_extra, dtype):
    """rgb_range 255: activations ~100x larger than at range 1, still within float16's range."""
    output_tol, _, least = TOLERANCES[dtype]
    config, variables = convert.convert_state_dict(state_dict(reference_extra, 'x3'), 3)
    sr = models.from_config({**config, 'dtype': dtype}).apply(
        variables, nhwc(reference_extra['x3/input']) / 255.0)
    assert least < rel_err(nchw(sr) * 255.0, reference_extra['x3/output']) <= output_tol


def _equations(jaxpr):
    """Every equation of a closed jaxpr, nested ones (pjit, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if hasattr(sub, 'jaxpr'):
                    yield from _equations(sub.jaxpr if hasattr(sub.jaxpr, 'eqns') else sub)
                elif hasattr(sub, 'eqns'):
                    yield from _equations(sub)


def test_bfloat16_model_computes_convolutions_in_bfloat16_and_the_rest_in_float32():
    """Which operations run in which precision, read from the traced program: every convolution
    but the last (which writes the image) in bfloat16, ENLCA's three 1x1 convolutions included
    (one matmul per module); the attention's products, the parameters, the embeddings and the
    image in float32."""
    model = models.ENLCN(scale=2, n_resblocks=2, n_feats=16, attention_every=1,
                         enlca=models.ENLCAConfig(num_random_features=8), dtype='bfloat16')
    variables = models.init_variables(model, jax.random.key(0))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    x = jnp.zeros((1, 8, 8, 3))
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, return_embeddings=True))(variables)
    equations = list(_equations(jaxpr.jaxpr))
    convs = [e for e in equations if e.primitive.name == 'conv_general_dilated']
    n_modules = model.body_layout().count('enlca')
    n_convs = len(jax.tree.leaves(variables['params'])) // 2 - 3 * n_modules  # the 3x3 ones
    assert len(convs) == n_convs
    conv_dtypes = [e.invars[0].aval.dtype for e in convs]
    assert conv_dtypes.count(jnp.bfloat16) == n_convs - 1
    assert conv_dtypes[-1] == jnp.float32  # tail_conv
    products = [[v.aval.dtype for v in e.invars] for e in equations
                if e.primitive.name == 'dot_general']
    assert products.count([jnp.bfloat16, jnp.bfloat16]) == n_modules  # the 1x1 convolutions
    assert len(products) > n_modules
    assert products.count([jnp.float32, jnp.float32]) == len(products) - n_modules
    sr, embeddings = jax.eval_shape(lambda v: model.apply(v, x, return_embeddings=True),
                                    variables)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((sr, embeddings)))
    # The residual stream: what every body module (ResBlock, ENLCA) returns.
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
    body = {name: out['__call__'] for name, out in state['intermediates'].items()
            if name.startswith('body_') and name != 'body_conv'}
    assert len(body) == len(model.body_layout())
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(body))


@pytest.fixture(scope='module')
def bfloat16_and_float32_steps():
    """L1 and the contrastive loss of 4 steps on one batch, from the same initial state, in
    bfloat16 and in float32; and the bfloat16 run's final state."""
    results = {}
    for dtype in ('bfloat16', 'float32'):
        config = tiny_config(model__dtype=dtype, train__contrastive__weight=0.02)
        config_check.validate_config(config)
        state = recipe.create_train_state(config, recipe.create_model(config),
                                             jax.random.PRNGKey(0))
        mesh = recipe.create_mesh(jax.devices()[:1])
        dataset = sources.load_skimage_photos(config.data.photos, config.model.scale)
        batch = input_pipeline.PatchLoader(dataset, 4, config.data.lr_patch, num_workers=1).batch(0)
        step = recipe.compile_train_step(config, mesh)
        start = config.train.contrastive.start_epoch * config.train.steps_per_epoch
        state = state.replace(step=jnp.int32(start))  # the contrastive loss is on
        history = []
        for _ in range(4):
            state, metrics = step(state, batch)
            history.append((float(metrics['l1']), float(metrics['contrastive'])))
        results[dtype] = np.array(history), state
    return results


def test_bfloat16_training_steps_are_finite_lower_l1_and_track_float32(
        bfloat16_and_float32_steps):
    (bf16, state), (f32, _) = (bfloat16_and_float32_steps[k] for k in ('bfloat16', 'float32'))
    assert np.all(np.isfinite(bf16)) and np.all(bf16[:, 1] > 0)
    assert np.all(np.diff(bf16[:, 0]) < 0), bf16[:, 0]
    np.testing.assert_allclose(bf16, f32, rtol=2e-2)
    assert not np.array_equal(bf16, f32)  # the precision was used
    # Parameters and Adam's moments stay float32.
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((state.params,
                                                                     state.opt_state))
               if jnp.issubdtype(leaf.dtype, jnp.floating))


def test_float16_training_and_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="model.dtype='float16' is for evaluation only"):
        config_check.validate_config(tiny_config(model__dtype='float16'))
    with pytest.raises(ValueError, match=r"model.dtype='int8'; choose one of \('float32'"):
        config_check.validate_config(tiny_config(model__dtype='int8'))


def test_a_workdir_records_its_precision_and_may_resume_in_another(tmp_path):
    config = tiny_config(model__dtype='bfloat16')
    workdir_lib.record_config(tmp_path, config.to_dict(), config.model.to_dict())
    assert json.loads((tmp_path / 'model_config.json').read_text())['dtype'] == 'bfloat16'
    workdir_lib.check_resume(tmp_path, tiny_config(model__dtype='float32').to_dict())  # no error
    with pytest.raises(workdir_lib.WorkdirError, match='model.n_feats'):
        workdir_lib.check_resume(tmp_path, tiny_config(model__n_feats=8).to_dict())


def test_a_bfloat16_workdir_evaluates_in_bfloat16_unless_overridden(tmp_path, reference):
    """A bfloat16 model's directory: eval.py's runner and `load_upscaler` use its precision, the
    results file records it, and `load_upscaler(dtype=...)` (eval.py's `--dtype`) overrides it."""
    config, variables = convert.convert_state_dict(state_dict(reference, 'x2'), 2)
    checkpoints.save_model(tmp_path / 'model', {**config, 'dtype': 'bfloat16'}, variables)
    lr = np.asarray(jax.random.randint(jax.random.key(0), (20, 24, 3), 0, 256), np.uint8)
    outputs = {}
    for dtype in (None, 'float32'):
        upscaler = inference.load_upscaler(tmp_path / 'model', dtype=dtype, bucket=1)
        assert upscaler.precision == (dtype or 'bfloat16')
        outputs[upscaler.precision] = upscaler.predict(lr)
    reference_sr = models.from_config(config).apply(variables, jnp.asarray(lr, jnp.float32)[None]
                                                    / 255.0)[0]
    assert rel_err(outputs['float32'], reference_sr) <= 1e-6
    assert 1e-4 < rel_err(outputs['bfloat16'], reference_sr) <= 5e-3

    folder = tmp_path / 'images'
    folder.mkdir()
    for name in ('img_001.png', 'img_002.png'):
        image_io.save_image(folder / name, image_io.load_image(SET5 / name)[:40, :44])
    out = tmp_path / 'results.json'
    runner.run(runner.EvalOptions(datasets=(str(folder),), checkpoint=str(tmp_path / 'model'),
                                  output=str(out)))
    record = json.loads(out.read_text())
    assert record['config']['compiled'][0]['precision'] == 'bfloat16'
    # eval.py's scores are those of the bfloat16 upscaler; float32's differ slightly.
    source = sources.find_dataset(str(folder), 2)
    scores = {dtype: [image['psnr'] for image in evaluator.evaluate_dataset(
        source, inference.load_upscaler(tmp_path / 'model', dtype=dtype), progress=False).images]
        for dtype in ('bfloat16', 'float32')}
    np.testing.assert_allclose([image['psnr'] for image in record['images']], scores['bfloat16'],
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(scores['bfloat16'], scores['float32'], atol=0.05)
    assert scores['bfloat16'] != scores['float32']
