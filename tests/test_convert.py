"""PyTorch state_dict import: architecture inference, clear errors, the CLI and model directories."""

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err, state_dict
from enlcn_jax import checkpoints, convert, models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def x4_state(reference):
    return state_dict(reference, 'x4')


def test_architecture_is_read_off_the_weights(x4_state):
    config, variables = convert.convert_state_dict(x4_state, 4)
    assert config['attention_every'] == 8 and config['rgb_range'] == 1.0
    assert config['rgb_mean'] == pytest.approx(models.DIV2K_RGB_MEAN)
    assert set(variables['random_features']) == {'body_0', 'body_9'}
    np.testing.assert_array_equal(variables['random_features']['body_9']['projection'],
                                  x4_state['body.9.attn_fn.projection_matrix'])


def test_edsr_state_dict_and_rgb_range_255_are_inferred(x4_state):
    # An EDSR (no attention) with rgb_range 255: drop the ENLCA modules, renumber the body.
    edsr = {}
    for name, value in x4_state.items():
        if name.startswith('body.'):
            index, rest = name.split('.', 2)[1:]
            if index in ('0', '9'):
                continue
            name = f'body.{int(index) - 1 - (int(index) > 9)}.{rest}'
        edsr[name] = value
    edsr['sub_mean.bias'] = edsr['sub_mean.bias'] * 255
    edsr['add_mean.bias'] = edsr['add_mean.bias'] * 255
    config, variables = convert.convert_state_dict(edsr, 4)
    assert config['attention'] == 'none' and config['n_resblocks'] == 8
    assert config['rgb_range'] == 255.0
    assert config['rgb_mean'] == pytest.approx(models.DIV2K_RGB_MEAN)
    assert 'random_features' not in variables


def test_missing_extra_and_misshaped_keys_are_named(x4_state):
    missing = dict(x4_state)
    del missing['body.3.body.2.bias']
    with pytest.raises(convert.ConversionError, match=r"body\.3\.body\.2\.bias"):
        convert.convert_state_dict(missing, 4)
    extra = dict(x4_state, **{'body.3.body.4.weight': np.zeros((1,))})
    with pytest.raises(convert.ConversionError, match=r"does not use.*body\.3\.body\.4\.weight"):
        convert.convert_state_dict(extra, 4)
    misshaped = dict(x4_state)
    misshaped['body.5.body.0.weight'] = np.zeros((32, 32, 1, 1), np.float32)
    with pytest.raises(convert.ConversionError, match=r"body_5.*conv1.*kernel.*shape"):
        convert.convert_state_dict(misshaped, 4)
    with pytest.raises(convert.ConversionError, match=r"tail\.0\.2.*wrong --scale"):
        convert.convert_state_dict(x4_state, 2)
    with pytest.raises(convert.ConversionError, match="head.0.weight"):
        convert.convert_state_dict({'foo': np.zeros(1)}, 2)


def test_cli_writes_a_model_directory_that_reproduces_pytorch(reference, x4_state, tmp_path):
    weights = tmp_path / 'ENLCAx4.npz'
    np.savez(weights, **x4_state)
    out = tmp_path / 'converted'
    result = subprocess.run([sys.executable, '-m', 'enlcn_jax.convert', str(weights), '--scale', '4',
                             '--out', str(out)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config, variables = checkpoints.load_model_dir(out)
    sr = models.from_config(config).apply(variables,
                                      jnp.asarray(reference['x4/input'].transpose(0, 2, 3, 1)))
    assert rel_err(np.asarray(sr).transpose(0, 3, 1, 2), reference['x4/output']) <= 1e-5
    with pytest.raises(FileExistsError, match='already exists'):
        checkpoints.save_model(out, config, variables)


def test_cli_errors_name_the_file(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'enlcn_jax.convert', str(tmp_path / 'nope.pt'),
                             '--scale', '2', '--out', str(tmp_path / 'o')],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and 'nope.pt' in result.stderr


@pytest.mark.parametrize('setup, args, message', [
    ('missing', ['--scale', '2'], 'no such weights file'),
    ('random', ['--scale', '2'], 'is not a readable .npz'),
    ('empty', ['--scale', '2'], 'is not a readable .npz'),
    ('x4', ['--scale', '-2'], '--scale: scale must be 3 or a power of 2'),
    ('x4', ['--scale', '5'], '--scale: scale must be 3 or a power of 2'),
    ('x4', ['--scale', '2'], 'wrong --scale'),
    ('existing_out', ['--scale', '4'], 'already holds a model'),
])
def test_cli_errors_are_one_line(reference, x4_state, tmp_path, setup, args, message):
    weights = tmp_path / 'weights.npz'
    if setup == 'random':
        weights.write_bytes(np.random.default_rng(0).bytes(4096))
    elif setup == 'empty':
        weights.write_bytes(b'')
    elif setup != 'missing':
        np.savez(weights, **x4_state)
    out = tmp_path / 'out'
    if setup == 'existing_out':
        checkpoints.save_model(out, {}, {'params': {'x': np.zeros(2, np.float32)}})
    result = subprocess.run([sys.executable, '-m', 'enlcn_jax.convert', str(weights), *args,
                             '--out', str(out)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-1500:]
    assert 'Traceback' not in result.stderr
    assert setup == 'existing_out' or not out.exists()
