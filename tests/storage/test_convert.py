"""PyTorch state_dict import: architecture inference, clear errors, the CLI and model directories."""

import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err, state_dict
from enlcn_jax import convert
from enlcn_jax.nn import models
from enlcn_jax.storage import checkpoints

ROOT = Path(__file__).resolve().parents[2]


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


def test_cli_writes_a_model_directory_that_reproduces_pytorch(reference, x4_state, tmp_path, env):
    weights = tmp_path / 'ENLCAx4.npz'
    np.savez(weights, **x4_state)
    out = tmp_path / 'converted'
    result = subprocess.run([sys.executable, '-m', 'enlcn_jax.convert', str(weights), '--scale', '4',
                             '--out', str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config, variables = checkpoints.load_model_dir(out)
    sr = jax.jit(models.from_config(config).apply)(
        variables, jnp.asarray(reference['x4/input'].transpose(0, 2, 3, 1)))
    assert rel_err(np.asarray(sr).transpose(0, 3, 1, 2), reference['x4/output']) <= 1e-5
    with pytest.raises(FileExistsError, match='already exists'):
        checkpoints.save_model(out, config, variables)


def convert_error(argv: list[str], capsys) -> str:
    """The line `python -m enlcn_jax.convert ARGV` fails with: its `SystemExit` message (one
    line), or the last line of argparse's usage error (exit status 2). Any other exception
    propagates."""
    with pytest.raises(SystemExit) as info:
        convert.main(argv)
    if isinstance(info.value.code, str):
        assert '\n' not in info.value.code, info.value.code
        return info.value.code
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_errors_name_the_file(tmp_path, capsys):
    message = convert_error([str(tmp_path / 'nope.pt'), '--scale', '2', '--out',
                             str(tmp_path / 'o')], capsys)
    assert 'nope.pt' in message


@pytest.mark.parametrize('setup, args, message', [
    ('missing', ['--scale', '2'], 'no such weights file'),
    ('random', ['--scale', '2'], 'is not a readable .npz'),
    ('empty', ['--scale', '2'], 'is not a readable .npz'),
    ('x4', ['--scale', '-2'], '--scale: scale must be 3 or a power of 2'),
    ('x4', ['--scale', '5'], '--scale: scale must be 3 or a power of 2'),
    ('x4', ['--scale', '2'], 'wrong --scale'),
    ('existing_out', ['--scale', '4'], 'already holds a model'),
])
def test_cli_errors_are_one_line(x4_state, tmp_path, capsys, setup, args, message):
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
    assert message in convert_error([str(weights), *args, '--out', str(out)], capsys)
    assert setup == 'existing_out' or not out.exists()


def release_mean_shift(rgb_range, std, sign):
    """EDSR `common.MeanShift(rgb_range, DIV2K mean, std, sign)`: `(weight [3, 3, 1, 1], bias [3])`."""
    std = np.asarray(std, np.float32)
    weight = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1) / std.reshape(3, 1, 1, 1)
    bias = sign * rgb_range * np.asarray(models.DIV2K_RGB_MEAN, np.float32) / std
    return weight, bias


def conv1x1(state, prefix, x):
    """The PyTorch 1x1 conv `prefix` of `state` on NHWC `x`, in float64."""
    weight = np.asarray(state[f'{prefix}.weight'], np.float64)[:, :, 0, 0]
    return np.einsum('oi,bhwi->bhwo', weight, np.asarray(x, np.float64)) + state[f'{prefix}.bias']


def apply_capturing(model, variables, x):
    """`(sr, input of the head conv, output of tail_conv)` of `model` on NHWC `x`, jitted."""
    def run(variables, x):
        seen = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == '__call__' and context.module.name in ('head', 'tail_conv'):
                seen[context.module.name] = (args[0], out)
            return out

        with nn.intercept_methods(interceptor):
            sr = model.apply(variables, x)
        return sr, seen['head'][0], seen['tail_conv'][1]
    return jax.jit(run)(variables, jnp.asarray(x))


RELEASE_STD = (0.5, 1.25, 2.0)


@pytest.mark.parametrize('rgb_range', [1.0, 255.0])
def test_mean_shift_with_std_reproduces_the_release(x4_state, rgb_range):
    """sub_mean / add_mean built by the release with std != 1: convert recovers rgb_std and
    rgb_mean, and the model applies them as the release's 1x1 convolutions do."""
    state = dict(x4_state)
    for prefix, sign in (('sub_mean', -1), ('add_mean', 1)):
        state[f'{prefix}.weight'], state[f'{prefix}.bias'] = release_mean_shift(
            rgb_range, RELEASE_STD, sign)
    config, variables = convert.convert_state_dict(state, 4)
    assert config['rgb_range'] == rgb_range
    assert config['rgb_std'] == pytest.approx(RELEASE_STD, rel=1e-6)
    assert config['rgb_mean'] == pytest.approx(models.DIV2K_RGB_MEAN, rel=1e-6)

    x = np.random.default_rng(0).uniform(size=(2, 6, 5, 3)).astype(np.float32)
    sr, head_in, y = map(np.asarray, apply_capturing(models.from_config(config), variables, x))
    mean, std = rgb_range * np.asarray(models.DIV2K_RGB_MEAN), np.asarray(RELEASE_STD)
    assert rel_err(head_in, conv1x1(state, 'sub_mean', rgb_range * x)) <= 1e-6
    assert rel_err(head_in, (rgb_range * x - mean) / std) <= 1e-6
    assert rel_err(sr, conv1x1(state, 'add_mean', y) / rgb_range) <= 1e-6
    assert rel_err(sr, (y + mean) / std / rgb_range) <= 1e-6


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('first', ['add_mean.bias', 'body.3.body.0.weight'])
def test_non_finite_weights_are_refused_naming_the_first(x4_state, first, bad):
    state = {name: value.copy() for name, value in x4_state.items()}
    for name in (first, 'tail.1.bias'):
        state[name].flat[-1] = bad
    with pytest.raises(convert.ConversionError,
                       match=rf"^state_dict tensor '{re.escape(first)}' has 1 non-finite"):
        convert.convert_state_dict(state, 4)


def test_non_finite_enlca_weights_are_refused(reference):
    state = {name: value.copy() for name, value in state_dict(reference, 'enlca').items()}
    state['attn_fn.projection_matrix'][0, 0] = np.nan
    with pytest.raises(convert.ConversionError, match=r"'attn_fn\.projection_matrix'.*NaN"):
        convert.convert_enlca_state_dict(state)


def test_cli_refuses_non_finite_weights_before_writing(x4_state, tmp_path):
    state = dict(x4_state, **{'body.5.body.2.bias': np.full(32, np.inf, np.float32)})
    weights = tmp_path / 'weights.npz'
    np.savez(weights, **state)
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:
        convert.main([str(weights), '--scale', '4', '--out', str(out)])
    message = str(exit_info.value.code)
    assert '\n' not in message and str(weights) in message, message
    assert "'body.5.body.2.bias' has 32 non-finite" in message, message
    assert not out.exists()
