"""Numerical parity with the authors' PyTorch ENLCN / ENLCA (tests/fixtures/FIXTURES.md).

Outputs agree to <= 1e-6 relative (measured ~7e-7). Because an ENLCA module adds its attention
to the input (`out = res_scale * attention + x`), the residual dominates the output: changing the
feature map's eps from 1e-4 to 0 moves the output by only ~3e-6. The attention's own part
(`out - x`) is therefore compared too, where that change is ~2e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import batched_contrastive_loss, nchw, nhwc, rel_err, state_dict
from enlcn_jax import convert
from enlcn_jax.nn import models

TOL = 1e-6
ATTENTION_TOL = 1e-5
# The code-variant loss is relu(margin 1 - log ratio): a difference of O(1) terms, so its error is
# absolute (a loss of 0.002 shows 1.4e-6 relative error on some CPUs from summation order alone).
LOSS_ATOL = 1e-6


@pytest.mark.parametrize('scale', [2, 4])
def test_enlcn_output_and_contrastive_losses_match_pytorch(reference, scale):
    config, variables = convert.convert_state_dict(state_dict(reference, f'x{scale}'), scale)
    assert config['n_resblocks'] == 8 and config['n_feats'] == 32
    assert config['reduction'] == 4 and config['num_random_features'] == 128
    model = models.from_config(config)
    sr, embeddings = model.apply(variables, nhwc(reference[f'x{scale}/input']),
                                 return_embeddings=True)
    assert rel_err(nchw(sr), reference[f'x{scale}/output']) <= TOL
    # The training-mode forward has the same image path.
    assert rel_err(nchw(sr), reference[f'x{scale}/output_train']) <= TOL
    ours = [float(batched_contrastive_loss(q, k, 'code')) for q, k in embeddings]
    np.testing.assert_allclose(ours, reference[f'x{scale}/contrastive_losses'], rtol=0,
                               atol=LOSS_ATOL)


def test_scale3_enlcn_at_rgb_range_255_matches_pytorch(reference_extra):
    """The pixel scale of every released config, imported through `convert`."""
    config, variables = convert.convert_state_dict(state_dict(reference_extra, 'x3'), 3)
    assert config['rgb_range'] == 255 and config['scale'] == 3
    model = models.from_config(config)
    lr = nhwc(reference_extra['x3/input']) / 255.0   # the model takes and returns [0, 1]
    sr, embeddings = model.apply(variables, lr, return_embeddings=True)
    assert rel_err(nchw(sr) * 255.0, reference_extra['x3/output']) <= TOL
    ours = [float(batched_contrastive_loss(q, k, 'code')) for q, k in embeddings]
    np.testing.assert_allclose(ours, reference_extra['x3/contrastive_losses'], rtol=0,
                               atol=LOSS_ATOL)


def run_lone_enlca(fixture, prefix):
    variables = convert.convert_enlca_state_dict(state_dict(fixture, prefix))
    x = nhwc(fixture[f'{prefix}/input'])
    out, (q, k) = models.ENLCA(models.ENLCAConfig(reduction=4), res_scale=0.1).apply(variables, x)
    return x, out, q, k


@pytest.mark.parametrize('fixture_name, prefix', [('reference', 'enlca'),
                                                  ('reference_extra', 'enlca_active')])
def test_lone_enlca_output_and_attention_part_match_pytorch(fixture_name, prefix, request):
    fixture = request.getfixturevalue(fixture_name)
    x, out, _, _ = run_lone_enlca(fixture, prefix)
    ref = fixture[f'{prefix}/output']
    assert rel_err(nchw(out), ref) <= TOL
    assert rel_err(nchw(out - x), ref - fixture[f'{prefix}/input']) <= ATTENTION_TOL


def test_lone_enlca_contrastive_loss_matches_pytorch(reference):
    _, _, q, k = run_lone_enlca(reference, 'enlca')
    loss = batched_contrastive_loss(q, k, 'code', block_size=128)
    np.testing.assert_allclose(float(loss), reference['enlca/contrastive_loss'], rtol=0,
                               atol=LOSS_ATOL)


def full_sort_code_loss(q, k):
    """The released formula, transcribed: whole rows of exp(q k^T) sorted. `[B, N, d]` -> rows."""
    scores = -jnp.sort(-jnp.exp(jnp.einsum('bnd,bmd->bnm', q, k)), axis=-1)
    return -jnp.log(scores[..., :15].mean(-1) / (scores[..., 50:65].mean(-1) + 1e-6)) + 1


def test_active_hinge_loss_and_gradient_match_pytorch_and_full_sort(reference_extra):
    """An ENLCA on a smooth input, where most hinge rows are active (loss 0.137)."""
    _, _, q, k = run_lone_enlca(reference_extra, 'enlca_active')
    active = float(jnp.mean(full_sort_code_loss(q, k) > 0))
    assert active == pytest.approx(float(reference_extra['enlca_active/active_fraction']), abs=1e-3)
    assert 0.5 < active < 0.7
    loss_fn = lambda q, k: batched_contrastive_loss(q, k, 'code', block_size=256)
    loss, grads = jax.value_and_grad(loss_fn, (0, 1))(q, k)
    np.testing.assert_allclose(float(loss), float(reference_extra['enlca_active/contrastive_loss']),
                               rtol=1e-5, atol=1e-6)
    reference_grads = jax.grad(lambda q, k: jnp.mean(jax.nn.relu(full_sort_code_loss(q, k))),
                               (0, 1))(q, k)
    for ours, ref in zip(grads, reference_grads):
        assert float(jnp.max(jnp.abs(ref))) > 0
        assert rel_err(ours, ref) <= 1e-5
