"""The research tools' command line (enlcn_jax.visualize) at the edges of its documented
contract, with the measurements stood in for (the tools have their own tests): what each option
passes on, its default, its help, the JSON and the printed line written, the image's
subsampling, and every refusal as one line naming the option."""

import json

import jax
import numpy as np
import pytest

from conftest import TINY_MODEL
from enlcn_jax import visualize
from enlcn_jax.data import image_io
from enlcn_jax.nn import models
from enlcn_jax.research import attention_maps, kernel_study
from enlcn_jax.storage import checkpoints

PROG = 'python -m enlcn_jax.visualize'


def tiny_image(path, h=6, w=5):
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image_io.save_image(path, image)
    return image


@pytest.fixture
def tools(monkeypatch, tmp_path):
    """Stand-ins for the model loaders and the measurements: each records its arguments in
    `seen[name]`. The maps of a query are uniform ('flat') and one-hot ('peak'); the study's
    rows are two, one estimating exp(q.k)."""
    monkeypatch.chdir(tmp_path)
    seen = {}
    model = models.from_config(TINY_MODEL)  # 3 attention modules

    def record(name, result):
        return lambda *args, **kwargs: seen.setdefault(name, (args, kwargs)) and result

    def load_model(path, **kwargs):
        seen['load_model'] = ((path,), kwargs)
        return model, 'variables', None

    def query_attention_maps(*args):
        seen['query_attention_maps'] = (args, {})
        h, w = args[2].shape[:2]
        peak = np.zeros((h, w))
        peak[-1, -1] = 1.0
        return {'flat': np.full((h, w), 1.0 / (h * w)), 'peak': peak}

    rows = [{'k': 1.0, 'm': 2, 'feature_map': 'softmax_kernel', 'projection': 'iid',
             'unbiased': True, 'mean_ratio': 1.0},
            {'k': 1.0, 'm': 2, 'feature_map': 'relu', 'projection': 'iid', 'unbiased': False,
             'mean_ratio': 0.25}]
    monkeypatch.setattr(checkpoints, 'load_model', load_model)
    monkeypatch.setattr(attention_maps, 'query_attention_maps', query_attention_maps)
    monkeypatch.setattr(attention_maps, 'plot_maps', lambda *args: seen.setdefault(
        'plot_maps', (args, {})) and args[3])
    monkeypatch.setattr(visualize, 'module_embeddings', record('module_embeddings',
                                                               ('q', 'k', 'v', 'body_0')))
    monkeypatch.setattr(kernel_study, 'approximation_study', record('approximation_study', rows))
    monkeypatch.setattr(kernel_study, 'plot_study', lambda rows, out: seen.setdefault(
        'plot_study', ((rows, out), {})) and out)
    seen['rows'] = rows
    return seen


def run(argv, capsys):
    visualize.main(argv)
    return capsys.readouterr().out


def refusal(argv, capsys):
    """The last line of stderr of a refused command line (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        visualize.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return err.strip().splitlines()[-1]


def test_maps_writes_each_map_s_maximum_and_entropy_and_says_where(tools, tmp_path, capsys):
    image = tiny_image(tmp_path / 'in.png')
    printed = run(['maps', '--image', 'in.png', '--pixel', '4,5', '--checkpoint', 'ckpt',
                   '--module', '2', '--out', 'out/m'], capsys)
    assert printed == 'wrote out/m.png and out/m.json\n'
    expected = {'flat': {'max': 1 / 30, 'entropy': float(np.log(30))},
                'peak': {'max': 1.0, 'entropy': 0.0}}
    written = json.loads((tmp_path / 'out/m.json').read_text())
    assert written.keys() == expected.keys()
    for kind, values in expected.items():
        assert written[kind] == pytest.approx(values, abs=1e-12), kind
    assert (tmp_path / 'out/m.json').read_text() == json.dumps(written, indent=2)
    (model, variables, passed, pixel, module), _ = tools['query_attention_maps']
    assert (variables, pixel, module) == ('variables', (4, 5), 2)
    np.testing.assert_array_equal(passed, image)
    (drawn, maps, pixel, out, title), _ = tools['plot_maps']
    np.testing.assert_array_equal(drawn, image)
    assert (list(maps), pixel, str(out), title) == (['flat', 'peak'], (4, 5), 'out/m.png',
                                                     'module 2, query (4, 5)')
    assert tools['load_model'] == (('ckpt',), {'trust_code': False, 'allow_changed_code': False})


def test_the_trust_flags_reach_the_checkpoint_loader(tools, tmp_path, capsys):
    tiny_image(tmp_path / 'in.png')
    run(['maps', '--image', 'in.png', '--pixel', '0,0', '--checkpoint', 'ckpt', '--trust_code',
         '--allow_changed_code'], capsys)
    assert tools['load_model'] == (('ckpt',), {'trust_code': True, 'allow_changed_code': True})
    assert tools['query_attention_maps'][0][4] == 0  # --module defaults to the first
    assert (tmp_path / 'results/maps.json').exists()  # --out defaults to results/<command>


def test_variance_passes_its_grid_maps_and_samplers_and_writes_the_rows(tools, tmp_path, capsys):
    image = tiny_image(tmp_path / 'in.png')
    printed = run(['variance', '--image', 'in.png', '--checkpoint', 'ckpt', '--module', '1',
                   '--ks', '0.5,6', '--ms', '4,16', '--draws', '2',
                   '--feature_map', 'softmax_kernel, relu', '--projection', 'iid', '--out', 'v'],
                  capsys)
    assert printed == ('softmax_kernel, iid: estimates exp(q.k): yes\n'
                       'relu, iid: estimates exp(q.k): no (mean phi(q).phi(k) / exp(q.k) at '
                       'm = 2: 0.25 at k = 1; kernel columns null)\n'
                       'wrote v.png and v.json\n')
    args, kwargs = tools['approximation_study']
    assert args == ('q', 'k', 'v', [0.5, 6.0], [4, 16], 2)
    assert all(isinstance(m, int) for m in args[4])
    assert kwargs == {'feature_maps': ['softmax_kernel', 'relu'], 'projections': ['iid']}
    (model, variables, passed, module), _ = tools['module_embeddings']
    assert (model.n_feats, len(model.body_layout()), variables, module) == (
        TINY_MODEL['n_feats'], 5, 'variables', 1)
    np.testing.assert_array_equal(passed, image)
    assert tools['plot_study'][0] == (tools['rows'], tmp_path.joinpath('v.png').relative_to(tmp_path))
    assert (tmp_path / 'v.json').read_text() == json.dumps(tools['rows'], indent=2)


def test_variance_defaults_are_the_paper_s_grid(tools, tmp_path, capsys):
    tiny_image(tmp_path / 'in.png')
    run(['variance', '--image', 'in.png', '--checkpoint', 'ckpt'], capsys)
    args, kwargs = tools['approximation_study']
    assert args[3:] == ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
                        [2, 4, 8, 16, 32, 64, 128, 256], 64)
    assert kwargs == {'feature_maps': ['softmax_kernel'], 'projections': ['iid', 'orthogonal']}
    assert tools['module_embeddings'][0][3] == 0
    assert (tmp_path / 'results/variance.json').exists()


def test_without_a_checkpoint_the_untrained_quickstart_model_is_initialised_from_key_0(
        tools, monkeypatch, tmp_path, capsys):
    """ENLCN(scale=2, n_resblocks=8, n_feats=32, attention_every=4), its variables from
    `models.init_variables(model, key(0))` (stood in for: the model's width and the key come
    back)."""
    tiny_image(tmp_path / 'in.png')
    monkeypatch.setattr(models, 'init_variables', lambda model, key: {
        'key': jax.random.key_data(key), 'n_feats': jax.numpy.asarray(model.n_feats)})
    run(['maps', '--image', 'in.png', '--pixel', '0,0'], capsys)
    assert 'load_model' not in tools
    (model, variables, *_), _ = tools['query_attention_maps']
    assert (model.scale, model.n_resblocks, model.n_feats, model.attention_every) == (2, 8, 32, 4)
    np.testing.assert_array_equal(variables['key'], jax.random.key_data(jax.random.key(0)))
    assert variables['n_feats'] == 32


@pytest.mark.parametrize('shape, max_side, step', [
    ((10, 7), 4, 3), ((7, 10), 5, 2), ((10, 7), 10, 1), ((10, 7), 11, 1), ((10, 7), 9, 2),
    ((2, 1), 2, 1)])
def test_the_image_is_subsampled_by_the_smallest_step_that_fits_max_side(
        tools, tmp_path, capsys, shape, max_side, step):
    image = tiny_image(tmp_path / 'in.png', *shape)
    run(['maps', '--image', 'in.png', '--pixel', '0,0', '--checkpoint', 'ckpt', '--max_side',
         str(max_side)], capsys)
    passed = tools['query_attention_maps'][0][2]
    np.testing.assert_array_equal(passed, image[::step, ::step])
    assert passed.flags['C_CONTIGUOUS']


def test_the_default_image_is_the_astronaut_at_128_pixels(tools, capsys):
    from skimage import data as skdata  # pylint: disable=import-outside-toplevel
    run(['maps', '--pixel', '0,0', '--checkpoint', 'ckpt'], capsys)
    np.testing.assert_array_equal(tools['query_attention_maps'][0][2], skdata.astronaut()[::4, ::4])


@pytest.mark.parametrize('flags, message', [
    (['maps', '--pixel', '5,0'], '--pixel 5,0: outside the 5x6 image (after --max_side 128); '
                                 'choose X 0 to 4 and Y 0 to 5'),
    (['maps', '--pixel', '0,6'], '--pixel 0,6: outside the 5x6 image (after --max_side 128); '
                                 'choose X 0 to 4 and Y 0 to 5'),
    (['maps', '--pixel=0,-1'], '--pixel 0,-1: outside the 5x6 image (after --max_side 128); '
                               'choose X 0 to 4 and Y 0 to 5'),
    (['maps', '--pixel', '1,2,3'], "argument --pixel: expected X,Y (two integers), got '1,2,3'"),
    (['maps', '--pixel', 'a,b'], "argument --pixel: expected X,Y (two integers), got 'a,b'"),
    (['maps', '--pixel', '0,0', '--module', '3'], '--module 3: the model has 3 attention modules; '
                                                  'choose 0 to 2'),
    (['variance', '--module', '3'], '--module 3: the model has 3 attention modules; choose 0 to 2'),
    (['variance', '--draws', '1'], '--draws must be >= 2, got 1'),
])
def test_a_refused_option_is_one_line_naming_it(tools, tmp_path, capsys, flags, message):
    """argparse names the command of an unreadable value; the checks after parsing do not."""
    tiny_image(tmp_path / 'in.png')
    line = refusal([*flags, '--image', 'in.png', '--checkpoint', 'ckpt'], capsys)
    command = f' {flags[0]}' if message.startswith('argument') else ''
    assert line == f'{PROG}{command}: error: {message}'
    assert 'query_attention_maps' not in tools and 'approximation_study' not in tools


@pytest.mark.parametrize('flag, value, resolve', [
    ('--feature_map', 'softmax_kernel,nope', kernel_study.study_feature_map),
    ('--projection', 'iid,gaussian_blobs', lambda spec: visualize.features.get_projection(spec)),
])
def test_an_unknown_map_or_sampler_is_one_line_naming_the_flag(tools, capsys, flag, value, resolve):
    with pytest.raises(ValueError) as error:
        resolve(value.split(',')[1])
    assert refusal(['variance', flag, value, '--checkpoint', 'ckpt'], capsys) == (
        f'{PROG}: error: {flag}: {error.value}')
    assert 'load_model' not in tools


def test_the_last_pixel_and_module_and_two_draws_are_accepted(tools, tmp_path, capsys):
    tiny_image(tmp_path / 'in.png')
    common = ['--image', 'in.png', '--checkpoint', 'ckpt', '--module', '2']
    run(['maps', '--pixel', '4,5', *common], capsys)
    run(['variance', '--draws', '2', *common], capsys)
    assert tools['query_attention_maps'][0][3:] == ((4, 5), 2)
    assert tools['approximation_study'][0][5] == 2


def test_a_model_without_attention_or_a_checkpoint_that_does_not_load_is_one_line(
        tools, monkeypatch, tmp_path, capsys):
    tiny_image(tmp_path / 'in.png')
    none = models.from_config({**TINY_MODEL, 'attention': 'none'})
    monkeypatch.setattr(checkpoints, 'load_model', lambda path, **kw: (none, {}, None))
    assert refusal(['maps', '--pixel', '0,0', '--image', 'in.png', '--checkpoint', 'ckpt'],
                   capsys) == (f"{PROG}: error: --checkpoint ckpt: the model has no "
                               "attention module (attention='none')")

    def missing(path, **kwargs):
        raise FileNotFoundError(f'{path}: no such model directory')

    monkeypatch.setattr(checkpoints, 'load_model', missing)
    assert refusal(['variance', '--checkpoint', 'gone'], capsys) == (
        f'{PROG}: error: --checkpoint gone: gone: no such model directory')


@pytest.mark.parametrize('command, options', [
    ('maps', [('--pixel PIXEL', 'query position X,Y in the (subsampled) image')]),
    ('variance', [('--draws DRAWS', 'projections per (sampler, m), at least 2'),
                  ('--ks KS', None), ('--ms MS', None),
                  ('--feature_map FEATURE_MAP', 'comma-separated feature maps to compare: names '
                                                'or MODULE:NAME, with options'),
                  ('--projection PROJECTION', 'comma-separated projection samplers to compare: '
                                              'names or MODULE:NAME, with options')]),
])
def test_each_command_s_help_describes_its_tool_and_every_option(capsys, command, options):
    with pytest.raises(SystemExit) as exit_:
        visualize.main([command, '--help'])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    flat = ' '.join(text.split())
    assert text.startswith(f'usage: {PROG} {command} ')
    tool = attention_maps if command == 'maps' else kernel_study
    bullet = next(line for line in tool.__doc__.splitlines() if line.startswith('  * '))
    assert f'\n{bullet}\n' in text  # the description as written, not re-wrapped
    common = [('--checkpoint CHECKPOINT', 'training workdir or model directory (default: untrained)'),
              ('--trust_code', ' '.join(checkpoints.TRUST_CODE_HELP.split())),
              ('--allow_changed_code', ' '.join(checkpoints.ALLOW_CHANGED_CODE_HELP.split())),
              ('--image IMAGE', 'input image (default: skimage astronaut)'),
              ('--module MODULE', 'which ENLCA module (0 = first)'),
              ('--max_side MAX_SIDE', 'subsample the image so its longer side is at most this'),
              ('--out OUT', 'output path without extension')]
    for flag, help_text in common + options:
        assert (f' {flag} {help_text}' if help_text else f' {flag}') in flat, flag


def test_the_top_level_help_is_the_module_docstring(capsys):
    with pytest.raises(SystemExit):
        visualize.main(['--help'])
    text = capsys.readouterr().out
    assert text.startswith(f'usage: {PROG} ')
    example = next(line for line in visualize.__doc__.splitlines() if line.startswith('    python'))
    assert f'\n{example}\n' in text  # the docstring as written, not re-wrapped
    assert refusal([], capsys).startswith(f'{PROG}: error: the following arguments are required')
    assert refusal(['maps'], capsys) == (f'{PROG} maps: error: the following arguments are '
                                         'required: --pixel')
