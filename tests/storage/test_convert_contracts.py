"""enlcn_jax.convert on small synthetic PyTorch state_dicts built in NumPy: the config read off
the names and shapes for every body layout and scale, the OIHW -> HWIO kernel layout, the exact
one-line errors naming the keys (or the file, in the CLI), and `load_state_dict`'s .npz and .pt
paths (the latter with a stand-in `torch` module)."""

import ast
import json
import sys
import types

import jax
import numpy as np
import pytest

from enlcn_jax import convert
from enlcn_jax.nn import models
from enlcn_jax.storage import checkpoints

C, EMBED, M = 8, 4, 6      # n_feats, ENLCA embedding width (reduction 2), random features
STD = (0.5, 1.25, 2.0)
MEAN = (0.25, 0.5, 0.75)


def torch_state(layout, scale=2, rgb_range=1.0, mean=MEAN, std=STD, mean_shift=True, seed=0):
    """The state_dict PyTorch EDSR/ENLCN (EDSR-PyTorch's names) has for body `layout` ('enlca' or
    'resblock' per module, the closing conv after it), `n_feats=C`, ENLCA embeddings `EMBED`
    wide with `M` random features, in state_dict order; every tensor random float32."""
    rng = np.random.default_rng(seed)
    state = {}

    def put(name, o, i, k):
        state[f'{name}.weight'] = rng.standard_normal((o, i, k, k)).astype(np.float32)
        state[f'{name}.bias'] = rng.standard_normal(o).astype(np.float32)

    if mean_shift:
        weight = (np.eye(3) / np.asarray(std)[:, None]).reshape(3, 3, 1, 1).astype(np.float32)
        bias = rgb_range * np.asarray(mean) / np.asarray(std)
        state['sub_mean.weight'], state['sub_mean.bias'] = weight, (-bias).astype(np.float32)
        state['add_mean.weight'], state['add_mean.bias'] = weight, bias.astype(np.float32)
    put('head.0', C, 3, 3)
    for i, kind in enumerate(layout):
        if kind == 'enlca':
            put(f'body.{i}.conv_match1.0', EMBED, C, 1)
            put(f'body.{i}.conv_match2.0', EMBED, C, 1)
            put(f'body.{i}.conv_assembly.0', C, C, 1)
            state[f'body.{i}.attn_fn.projection_matrix'] = rng.standard_normal(
                (M, EMBED)).astype(np.float32)
        else:
            put(f'body.{i}.body.0', C, C, 3)
            put(f'body.{i}.body.2', C, C, 3)
    put(f'body.{len(layout)}', C, C, 3)
    factors = [3] if scale == 3 else [2] * {2: 1, 4: 2, 8: 3}[scale]
    for j, r in enumerate(factors):
        put(f'tail.0.{2 * j}', r * r * C, C, 3)
    put('tail.1', 3, C, 3)
    return state


def flax_conv(state, prefix):
    """Flax's `{'kernel' [kh, kw, I, O], 'bias'}` of PyTorch conv `prefix`, written out by index."""
    weight = state[f'{prefix}.weight']
    return {'kernel': np.einsum('oiyx->yxio', weight), 'bias': state[f'{prefix}.bias']}


def expected_variables(state, layout, n_upsample):
    params = {'head': flax_conv(state, 'head.0')}
    features = {}
    for i, kind in enumerate(layout):
        if kind == 'enlca':
            params[f'body_{i}'] = {name: flax_conv(state, f'body.{i}.{name}.0')
                                   for name in ('conv_match1', 'conv_match2', 'conv_assembly')}
            features[f'body_{i}'] = {'projection': state[f'body.{i}.attn_fn.projection_matrix']}
        else:
            params[f'body_{i}'] = {'conv1': flax_conv(state, f'body.{i}.body.0'),
                                   'conv2': flax_conv(state, f'body.{i}.body.2')}
    params['body_conv'] = flax_conv(state, f'body.{len(layout)}')
    params['tail_upsample'] = {f'conv_{j}': flax_conv(state, f'tail.0.{2 * j}')
                               for j in range(n_upsample)}
    params['tail_conv'] = flax_conv(state, 'tail.1')
    return {'params': params, **({'random_features': features} if features else {})}


def assert_trees_equal(got, want):
    assert isinstance(got, dict) and got.keys() == want.keys(), (list(got), list(want))
    for key in want:
        if isinstance(want[key], dict):
            assert_trees_equal(got[key], want[key])
        else:
            assert got[key].dtype == np.float32 and got[key].shape == want[key].shape, key
            np.testing.assert_array_equal(got[key], want[key])


E, R = 'enlca', 'resblock'
ENLA = dict(attention='enla', reduction=C // EMBED, num_random_features=M)


@pytest.mark.parametrize('layout, scale, n_upsample, inferred', [
    ([R, R], 2, 1, dict(n_resblocks=2, attention='none')),
    ([E, R, E], 3, 1, dict(n_resblocks=1, attention_every=1, **ENLA)),
    ([E, R, R, E, R, R, E], 4, 2, dict(n_resblocks=4, attention_every=2, **ENLA)),
    ([E, R, R, R, E, R], 8, 3, dict(n_resblocks=4, attention_every=3, **ENLA)),
])
def test_the_config_and_every_tensor_are_read_off_the_state_dict(layout, scale, n_upsample,
                                                                   inferred):
    state = torch_state(layout, scale)
    config, variables = convert.convert_state_dict(state, scale)
    assert config == dict(scale=scale, n_feats=C, rgb_range=1.0, rgb_mean=MEAN, rgb_std=STD,
                          **inferred)
    assert models.from_config(config).body_layout() == layout
    assert_trees_equal(variables, expected_variables(state, layout, n_upsample))


def test_a_data_parallel_module_prefix_is_dropped():
    state = torch_state([E, R, E])
    config, variables = convert.convert_state_dict({f'module.{k}': v for k, v in state.items()}, 2)
    assert config == convert.convert_state_dict(state, 2)[0]
    assert_trees_equal(variables, expected_variables(state, [E, R, E], 1))


@pytest.mark.parametrize('rgb_range', [1.0, 255.0])
def test_rgb_range_is_inferred_from_the_mean_shift(rgb_range):
    config, _ = convert.convert_state_dict(torch_state([R], rgb_range=rgb_range), 2)
    assert type(config['rgb_range']) is float and config['rgb_range'] == rgb_range
    assert config['rgb_mean'] == MEAN and config['rgb_std'] == STD


def test_the_release_mean_and_std_come_back_as_the_exact_config_values():
    """The float32 mean-shift convs of the DIV2K mean at rgb_range 255 give back the 6-decimal
    constants they were built from (1 / float32(1 / 1.7) is 1.6999999 in float32)."""
    std = (1.7, 2.9, 1.0)
    state = torch_state([R], rgb_range=255, mean=models.DIV2K_RGB_MEAN, std=std)
    config, _ = convert.convert_state_dict(state, 2)
    assert config['rgb_mean'] == tuple(models.DIV2K_RGB_MEAN) and config['rgb_std'] == std
    assert config['rgb_range'] == 255.0


@pytest.mark.parametrize('dtype', [np.float16, np.float64])
def test_variables_are_float32_whatever_the_state_dict_dtype(dtype):
    """A half- or double-precision state_dict gives the model's float32 parameters (the values
    of a float16 one exactly)."""
    state = {k: v.astype(dtype) for k, v in torch_state([E, R, E]).items()}
    _, variables = convert.convert_state_dict(state, 2)
    want = expected_variables({k: v.astype(np.float32) for k, v in state.items()}, [E, R, E], 1)
    if dtype == np.float16:
        assert_trees_equal(variables, want)
    for leaf in jax.tree_util.tree_leaves(variables):
        assert leaf.dtype == np.float32
    enlca = {k.removeprefix('body.0.'): v for k, v in state.items() if k.startswith('body.0.')}
    for leaf in jax.tree_util.tree_leaves(convert.convert_enlca_state_dict(enlca)):
        assert leaf.dtype == np.float32


def test_a_given_rgb_range_overrides_the_inferred_one():
    config, _ = convert.convert_state_dict(torch_state([R], rgb_range=255.0), 2, rgb_range=255)
    assert type(config['rgb_range']) is float and config['rgb_range'] == 255.0
    config, _ = convert.convert_state_dict(torch_state([R], rgb_range=1.0), 2, rgb_range=255.0)
    assert config['rgb_mean'] == tuple(round(v / 255, 6) for v in MEAN)


def test_without_a_mean_shift_the_model_defaults_stand():
    state = torch_state([R], mean_shift=False)
    config, _ = convert.convert_state_dict(state, 2)
    assert config == dict(scale=2, n_resblocks=1, n_feats=C, attention='none')
    config, _ = convert.convert_state_dict(state, 2, rgb_range=255)
    assert type(config['rgb_range']) is float and config['rgb_range'] == 255.0
    assert 'rgb_mean' not in config
    # Half a mean shift is used (no unused-key error) but infers nothing.
    half = {k: v for k, v in torch_state([R]).items() if not k.startswith('add_mean')}
    config, _ = convert.convert_state_dict(half, 2)
    assert config == dict(scale=2, n_resblocks=1, n_feats=C, attention='none')


def without(state, *prefixes):
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def conversion_error(state, scale=2, **kwargs) -> str:
    with pytest.raises(convert.ConversionError) as info:
        convert.convert_state_dict(state, scale, **kwargs)
    return str(info.value)


def test_unreadable_body_layouts_are_named():
    assert conversion_error({'body.0.weight': np.zeros((C, C, 3, 3))}) == (
        "state_dict has no 'head.0.weight': not an EDSR/ENLCN state_dict")
    state = torch_state([R, R])
    assert conversion_error(without(state, 'body.')) == (
        'cannot read the body layout from the state_dict keys: {}')
    assert conversion_error(without(state, 'body.1.')) == (
        "cannot read the body layout from the state_dict keys: {0: 'resblock', 2: 'conv'}")
    assert conversion_error(without(state, 'body.2.')) == (
        "cannot read the body layout from the state_dict keys: {0: 'resblock', 1: 'resblock'}")
    # Every kind is read off its own key: an ENLCA by conv_match1, a block by body.0.
    assert conversion_error(without(torch_state([E, R, E]), 'body.1.body.0')) == (
        "cannot read the body layout from the state_dict keys: {0: 'enlca', 2: 'enlca', 3: 'conv'}")
    assert conversion_error(without(torch_state([E, R, E]), 'body.2.conv_match1')) == (
        "cannot read the body layout from the state_dict keys: {0: 'enlca', 1: 'resblock', 3: 'conv'}")


@pytest.mark.parametrize('layout, every', [
    ([E, E, R], 1),      # adjacent ENLCAs: not a positive spacing
    ([R, E, R], 1),      # the first module is not an ENLCA
    ([E, R, R], 2),      # one ENLCA: ENLCN puts another after every 2 blocks
    ([E, R, E, R, R, E], 1),
])
def test_body_layouts_enlcn_does_not_build_are_refused(layout, every):
    assert conversion_error(torch_state(layout)) == (
        f'body layout {layout} is not one ENLCN builds (an ENLCA first, then one every {every} '
        'blocks)')


def test_missing_keys_are_named():
    state = torch_state([E, R, E])
    assert conversion_error(without(state, 'body.0.attn_fn')) == (
        "state_dict is missing 'body.0.attn_fn.projection_matrix' (the random features)")
    assert conversion_error(without(state, 'body.2.attn_fn')) == (
        "state_dict is missing 'body.2.attn_fn.projection_matrix' (the random features)")
    assert conversion_error(without(state, 'body.1.body.2')) == (
        "state_dict is missing ['body.1.body.2.weight', 'body.1.body.2.bias']")
    assert conversion_error(without(state, 'body.1.body.0.weight')) == (
        "state_dict is missing ['body.1.body.0.weight']")
    assert conversion_error(without(state, 'tail.1.bias')) == "state_dict is missing ['tail.1.bias']"
    assert conversion_error(without(state, 'body.2.conv_assembly.0.bias')) == (
        "state_dict is missing ['body.2.conv_assembly.0.bias']")


def test_a_conv_weight_that_is_not_4d_is_named():
    state = torch_state([R])
    state['tail.1.weight'] = state['tail.1.weight'].reshape(3, -1)
    assert conversion_error(state) == 'tail.1.weight should be a 4-D conv weight, has shape (3, 72)'


@pytest.mark.parametrize('extra, listed', [(10, 10), (11, 10)])
def test_unused_keys_are_named_ten_at_most(extra, listed):
    names = [f'tail.9.x{i:02d}' for i in range(extra)]
    state = dict(torch_state([R]), **{name: np.zeros(1, np.float32) for name in names})
    more = ' ...' if extra > listed else ''
    assert conversion_error(state) == (
        f'state_dict has keys this model does not use: {names[:listed]}{more} (wrong --scale?)')


def test_a_wrong_scale_leaves_the_upsampler_unused_or_missing():
    state = torch_state([R], scale=4)
    assert conversion_error(state, 2) == (
        "state_dict has keys this model does not use: ['tail.0.2.bias', 'tail.0.2.weight'] "
        '(wrong --scale?)')
    assert conversion_error(torch_state([R], scale=2), 4) == (
        "state_dict is missing ['tail.0.2.weight', 'tail.0.2.bias']")


def test_misshaped_tensors_are_named_with_both_shapes():
    state = torch_state([E, R, E])
    state['body.1.body.0.weight'] = state['body.1.body.0.weight'][:, :4]
    state['body.2.attn_fn.projection_matrix'] = state['body.2.attn_fn.projection_matrix'][:5]
    assert conversion_error(state) == (
        'converted variables do not fit the model: '
        "['params']['body_1']['conv1']['kernel']: shape (3, 3, 4, 8), model wants (3, 3, 8, 8); "
        "['random_features']['body_2']['projection']: shape (5, 4), model wants (6, 4)")


def test_variables_missing_from_or_foreign_to_the_model_are_named():
    layout = [R]
    state = torch_state(layout)
    config, variables = convert.convert_state_dict(state, 2)
    model = models.from_config(config)
    convert._check_shapes(model, variables)  # pylint: disable=protected-access
    del variables['params']['tail_conv']['bias']
    variables['params']['extra'] = np.zeros(2, np.float32)
    with pytest.raises(convert.ConversionError) as info:
        convert._check_shapes(model, variables)  # pylint: disable=protected-access
    assert str(info.value) == ('converted variables do not fit the model: '
                               "['params']['tail_conv']['bias']: missing; "
                               "['params']['extra']: not in the model")


def test_non_finite_weights_are_refused_by_name_count_and_size():
    state = torch_state([E, R, E])
    state['body.1.body.2.bias'] = state['body.1.body.2.bias'].copy()
    state['body.1.body.2.bias'][[0, 3]] = [np.nan, -np.inf]
    prefixed = {f'module.{k}': v for k, v in state.items()}
    assert conversion_error(prefixed) == (
        "state_dict tensor 'body.1.body.2.bias' has 2 non-finite value(s) (NaN or inf) of 8: "
        'corrupt weights')


ENLCA_NAMES = ('conv_match1', 'conv_match2', 'conv_assembly')


def enlca_state():
    """A lone PyTorch ENLCA module's state_dict: body.0 of `torch_state`, without its prefix."""
    return {k.removeprefix('body.0.'): v for k, v in torch_state([E, R, E]).items()
            if k.startswith('body.0.')}


def test_a_lone_enlca_state_dict_converts():
    state = enlca_state()
    variables = convert.convert_enlca_state_dict(state)
    assert_trees_equal(variables, {
        'params': {name: flax_conv(state, f'{name}.0') for name in ENLCA_NAMES},
        'random_features': {'projection': state['attn_fn.projection_matrix']}})


def test_a_lone_enlca_state_dict_names_its_faults():
    def error(state):
        with pytest.raises(convert.ConversionError) as info:
            convert.convert_enlca_state_dict(state)
        return str(info.value)

    assert error(dict(enlca_state(), extra=np.zeros(1), alpha=np.ones(1))) == (
        "ENLCA state_dict has keys an ENLCA does not use: ['alpha', 'extra']")
    assert error(without(enlca_state(), 'attn_fn')) == (
        "state_dict is missing 'attn_fn.projection_matrix' (the random features)")
    assert error(without(enlca_state(), 'conv_match2.0.weight')) == (
        "state_dict is missing ['conv_match2.0.weight']")
    bad = dict(enlca_state(), **{'conv_match1.0.bias': np.full(EMBED, np.inf, np.float32)})
    assert error(bad) == ("state_dict tensor 'conv_match1.0.bias' has 4 non-finite value(s) "
                          '(NaN or inf) of 4: corrupt weights')


# -- load_state_dict -------------------------------------------------------------------------

def test_an_npz_state_dict_is_read_back_as_saved(tmp_path):
    state = torch_state([E, R, E])
    np.savez(tmp_path / 'w.npz', **state)
    loaded = convert.load_state_dict(str(tmp_path / 'w.npz'))
    assert list(loaded) == list(state)
    for name, value in state.items():
        assert isinstance(loaded[name], np.ndarray) and loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        convert.load_state_dict(tmp_path / 'nope.npz')
    assert str(info.value) == f'no such weights file: {tmp_path / "nope.npz"}'
    (tmp_path / 'bad.npz').write_bytes(b'PK\x03\x04 not a zip')
    with pytest.raises(convert.ConversionError,
                       match=rf'^{tmp_path / "bad.npz"} is not a readable \.npz of a state_dict \(.+\)$'):
        convert.load_state_dict(tmp_path / 'bad.npz')


class FakeTensor:
    """What `load_state_dict` needs of a torch.Tensor: `.detach().cpu().numpy()`."""

    def __init__(self, value):
        self.value = value

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.value


def fake_torch(monkeypatch, load):
    """Installs a stand-in `torch` whose `load` is `load`; returns the list of its calls."""
    calls = []

    def recording_load(*args, **kwargs):
        calls.append((args, kwargs))
        return load()

    monkeypatch.setitem(sys.modules, 'torch', types.SimpleNamespace(load=recording_load))
    return calls


def test_a_pt_file_needs_torch(tmp_path, monkeypatch):
    (tmp_path / 'w.pt').write_bytes(b'x')
    monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
    with pytest.raises(ImportError) as info:
        convert.load_state_dict(tmp_path / 'w.pt')
    assert str(info.value) == (f'reading {tmp_path / "w.pt"} needs PyTorch: pip install torch '
                               '(or save the state_dict as .npz)')


@pytest.mark.parametrize('wrapped', [False, True])
def test_a_pt_state_dict_is_loaded_weights_only_on_the_cpu(tmp_path, monkeypatch, wrapped):
    path = tmp_path / 'w.pth'
    path.write_bytes(b'x')
    tensors = {'head.0.weight': FakeTensor(np.ones((2, 3, 1, 1), np.float32)),
               'head.0.bias': FakeTensor(np.zeros(2, np.float32))}
    calls = fake_torch(monkeypatch, lambda: {'state_dict': tensors} if wrapped else tensors)
    loaded = convert.load_state_dict(path)
    assert calls == [((path,), {'map_location': 'cpu', 'weights_only': True})]
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        assert loaded[name] is tensor.value


@pytest.mark.parametrize('content', [
    [FakeTensor(np.zeros(1))], {'a': np.zeros(1)}, {'state_dict': [1]}])
def test_a_pt_file_without_a_state_dict_is_named(tmp_path, monkeypatch, content):
    path = tmp_path / 'w.pt'
    path.write_bytes(b'x')
    fake_torch(monkeypatch, lambda: content)
    with pytest.raises(convert.ConversionError) as info:
        convert.load_state_dict(path)
    assert str(info.value) == f'{path} does not hold a state_dict (name -> tensor)'


@pytest.mark.parametrize('error, reason', [
    (RuntimeError('invalid load key, \'x\'.\nsecond line'), "RuntimeError: invalid load key, 'x'."),
    (EOFError(), 'EOFError: '),
])
def test_a_pt_file_torch_cannot_read_is_named(tmp_path, monkeypatch, error, reason):
    path = tmp_path / 'w.pt'
    path.write_bytes(b'x')

    def load():
        raise error

    fake_torch(monkeypatch, load)
    with pytest.raises(convert.ConversionError) as info:
        convert.load_state_dict(path)
    assert str(info.value) == f'{path} is not a readable PyTorch file ({reason})'


# -- the CLI -----------------------------------------------------------------------------------

def cli_error(argv, capsys) -> str:
    """The one line `convert.main(argv)` exits with (its message, or argparse's last line)."""
    with pytest.raises(SystemExit) as info:
        convert.main(argv)
    if isinstance(info.value.code, str):
        return info.value.code
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_the_cli_writes_a_model_directory(tmp_path, capsys):
    layout = [E, R, E]
    state = torch_state(layout, rgb_range=1.0)
    np.savez(tmp_path / 'w.npz', **state)
    out = tmp_path / 'model'
    convert.main([str(tmp_path / 'w.npz'), '--scale', '2', '--out', str(out), '--rgb_range', '255'])
    config = dict(scale=2, n_feats=C, n_resblocks=1, attention_every=1, rgb_range=255.0,
                  rgb_mean=tuple(round(v / 255, 6) for v in MEAN), rgb_std=STD, **ENLA)
    printed = capsys.readouterr().out
    assert printed.startswith(f'wrote {out}: ') and printed.endswith('}\n')
    assert ast.literal_eval(printed.removeprefix(f'wrote {out}: ')) == config
    saved_config, variables = checkpoints.load_model_dir(out)
    assert saved_config == json.loads(json.dumps(config))
    assert_trees_equal(variables, expected_variables(state, layout, 1))


def test_the_cli_usage(capsys):
    with pytest.raises(SystemExit) as info:
        convert.main(['--help'])
    assert info.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())
    assert text.startswith('usage: python -m enlcn_jax.convert [-h] --scale SCALE --out OUT '
                           '[--rgb_range RGB_RANGE] weights '
                           "Import the authors' PyTorch ENLCN / EDSR weights into Flax variables. "
                           'positional arguments: weights PyTorch .pt/.pth state_dict, or .npz '
                           'of one ')
    for option in ('--scale SCALE SR scale the weights were trained for',
                   '--out OUT output checkpoint directory',
                   '--rgb_range RGB_RANGE PyTorch rgb_range (default: inferred from the mean '
                   'shift, 1 or 255)'):
        assert option in text, option


def test_cli_errors_are_one_line_naming_the_option_or_file(tmp_path, capsys, monkeypatch):
    weights = tmp_path / 'w.npz'
    np.savez(weights, **torch_state([R]))
    out = str(tmp_path / 'out')
    prog = 'python -m enlcn_jax.convert: error:'
    assert cli_error([str(weights), '--scale', '5', '--out', out], capsys) == (
        f'{prog} --scale: scale must be 3 or a power of 2 (2, 4, 8, ...), got 5')
    assert cli_error([str(weights), '--scale', '4', '--out', out], capsys) == (
        f"convert: {weights}: state_dict is missing ['tail.0.2.weight', 'tail.0.2.bias']")
    assert cli_error([str(tmp_path / 'no.npz'), '--scale', '2', '--out', out], capsys) == (
        f'convert: no such weights file: {tmp_path / "no.npz"}')
    (tmp_path / 'bad.npz').write_bytes(b'')
    assert cli_error([str(tmp_path / 'bad.npz'), '--scale', '2', '--out', out], capsys).startswith(
        f'convert: {tmp_path / "bad.npz"} is not a readable .npz of a state_dict (')
    (tmp_path / 'w.pt').write_bytes(b'x')
    monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
    assert cli_error([str(tmp_path / 'w.pt'), '--scale', '2', '--out', out], capsys) == (
        f'convert: reading {tmp_path / "w.pt"} needs PyTorch: pip install torch '
        '(or save the state_dict as .npz)')
    assert not (tmp_path / 'out').exists()
    checkpoints.save_model(out, {}, {'params': {'x': np.zeros(2, np.float32)}})
    assert cli_error([str(weights), '--scale', '2', '--out', out], capsys) == (
        f'{prog} --out {out} already holds a model; choose another directory')


@pytest.mark.parametrize('layout', [[], [E]])
def test_a_body_without_residual_blocks_is_a_conversion_error(layout):
    with pytest.raises(convert.ConversionError) as raised:
        convert.convert_state_dict(torch_state(layout), 2)
    assert str(raised.value) == ('the state_dict describes no model ENLCN builds: '
                                 'model.n_resblocks must be >= 1, got 0')
