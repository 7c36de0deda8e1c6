"""Numerical parity with the authors' PyTorch ENLCN / ENLCA (../shared/fixtures)."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err, state_dict
from enlcn_jax import convert, losses, models

TOL = 1e-5


def nhwc(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


@pytest.mark.parametrize('scale', [2, 4])
def test_enlcn_output_and_contrastive_losses_match_pytorch(reference, scale):
    config, variables = convert.convert_state_dict(state_dict(reference, f'x{scale}'), scale)
    assert config['n_resblocks'] == 8 and config['n_feats'] == 32
    assert config['reduction'] == 4 and config['num_random_features'] == 128
    model = models.ENLCN(**config)
    sr, embeddings = model.apply(variables, nhwc(reference[f'x{scale}/input']),
                                 return_embeddings=True)
    sr_nchw = np.transpose(np.asarray(sr), (0, 3, 1, 2))
    assert rel_err(sr_nchw, reference[f'x{scale}/output']) <= TOL
    # The training-mode forward has the same image path.
    assert rel_err(sr_nchw, reference[f'x{scale}/output_train']) <= TOL
    ours = [losses.contrastive_loss(q, k, 'code') for q, k in embeddings]
    assert rel_err(ours, reference[f'x{scale}/contrastive_losses']) <= TOL


def test_lone_enlca_matches_pytorch(reference):
    variables = convert.convert_enlca_state_dict(state_dict(reference, 'enlca'))
    module = models.ENLCA(reduction=4, res_scale=0.1)
    out, (q, k) = module.apply(variables, nhwc(reference['enlca/input']))
    assert rel_err(np.transpose(np.asarray(out), (0, 3, 1, 2)), reference['enlca/output']) <= TOL
    loss = losses.contrastive_loss(q, k, 'code', block_size=128)
    assert rel_err(loss, reference['enlca/contrastive_loss']) <= TOL
