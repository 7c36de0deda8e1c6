"""The research tools' command line (python -m enlcn_jax.visualize)."""

import json

import pytest

from conftest import TINY_MODEL, random_variables
from enlcn_jax import visualize
from enlcn_jax.nn import models
from enlcn_jax.research import kernel_study
from enlcn_jax.storage import checkpoints


@pytest.fixture(scope='module')
def tiny_enlcn():
    """A small ENLCN (3 ENLCA modules) with `random_variables`."""
    model = models.from_config(TINY_MODEL)
    return model, random_variables(model)


def test_cli_writes_png_and_json(tiny_enlcn, tmp_path, capsys):
    """Both commands on a 20-pixel image; the model is a saved `tiny_enlcn` (initialising the
    default one costs each run tens of seconds on a small CPU)."""
    checkpoint = checkpoints.save_model(tmp_path / 'model', TINY_MODEL, tiny_enlcn[1])
    common = ['--max_side', '20', '--module', '1', '--checkpoint', str(checkpoint)]
    for command, extra in (('maps', ['--pixel', '5,4']),
                           ('variance', ['--ks', '1,6', '--ms', '16', '--draws', '8'])):
        out = tmp_path / command
        visualize.main([command, *common, *extra, '--out', str(out)])
        printed = capsys.readouterr().out
        assert f'wrote {out.with_suffix(".png")} and {out.with_suffix(".json")}' in printed
        assert out.with_suffix('.png').stat().st_size > 1000
        summary = json.loads(out.with_suffix('.json').read_text())
        assert summary
    assert 'softmax_kernel, iid: estimates exp(q.k): yes' in printed
    rows = json.loads((tmp_path / 'variance.json').read_text())
    assert sorted((r['k'], r['m'], r['projection']) for r in rows) == [
        (1.0, 16, 'iid'), (1.0, 16, 'orthogonal'), (6.0, 16, 'iid'), (6.0, 16, 'orthogonal')]


@pytest.fixture
def study_arguments(tiny_enlcn, tmp_path, monkeypatch):
    """Runs `variance` with a saved tiny model (`TINY_MODEL` updated by `config`) and returns the
    keyword arguments `approximation_study` was given (the study itself skipped)."""
    def run(*flags, config=None):
        checkpoint = checkpoints.save_model(tmp_path / 'model', {**TINY_MODEL, **(config or {})},
                                            tiny_enlcn[1])
        seen = []
        monkeypatch.setattr(kernel_study, 'approximation_study',
                            lambda *args, **kwargs: seen.append(kwargs) or [])
        monkeypatch.setattr(kernel_study, 'describe_estimates', lambda rows: [])
        monkeypatch.setattr(kernel_study, 'plot_study', lambda rows, out: out)
        visualize.main(['variance', '--max_side', '20', '--checkpoint', str(checkpoint),
                        '--out', str(tmp_path / 'variance'), *flags])
        return seen[0]
    return run


def test_the_study_compares_the_projection_samplers_given(study_arguments):
    assert study_arguments('--projection', 'iid')['projections'] == ['iid']


@pytest.mark.parametrize('flag, value, named', [
    ('--projection', 'iid,gaussian_blobs', "'gaussian_blobs': unknown projection"),
    ('--projection', 'orthogonal,no_such_module:sampler', "cannot import module 'no_such_module'"),
    ('--feature_map', 'softmax_kernel,nope', "'nope': unknown feature map"),
])
def test_a_bad_sampler_or_map_is_a_parser_error_naming_it(flag, value, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        visualize.main(['variance', flag, value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f'python -m enlcn_jax.visualize: error: {flag}: ')
    assert named in error


@pytest.mark.parametrize('flags, message', [
    (['--pixel', '9999,9999'], '--pixel 9999,9999: outside the 20x20 image (after --max_side 20); '
                               'choose X 0 to 19 and Y 0 to 19'),
    (['--pixel', '20,0'], '--pixel 20,0: outside the 20x20 image (after --max_side 20); choose X 0 '
                          'to 19 and Y 0 to 19'),
    (['--pixel=-1,5'], '--pixel -1,5: outside the 20x20 image (after --max_side 20); choose X 0 '
                       'to 19 and Y 0 to 19'),
    (['--pixel', '3,2', '--module', '7'], '--module 7: the model has 3 attention modules; '
                                          'choose 0 to 2'),
    (['--pixel', '3,2', '--module', '-1'], '--module -1: the model has 3 attention modules; '
                                           'choose 0 to 2'),
    (['--pixel', '3'], "argument --pixel: expected X,Y (two integers), got '3'"),
])
def test_a_query_the_model_or_image_does_not_have_is_a_one_line_parser_error(
        tiny_enlcn, tmp_path, capsys, flags, message):
    """On the 20x20 image (the astronaut at --max_side 20) and the 3 attention modules of the tiny
    model: the option, its value and the valid range, in one line, before anything runs."""
    checkpoint = checkpoints.save_model(tmp_path / 'model', TINY_MODEL, tiny_enlcn[1])
    with pytest.raises(SystemExit) as exit_:
        visualize.main(['maps', '--max_side', '20', '--checkpoint', str(checkpoint), *flags,
                        '--out', str(tmp_path / 'maps')])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith('python -m enlcn_jax.visualize') and line.endswith(f' error: {message}')
    assert 'Traceback' not in err and not (tmp_path / 'maps.png').exists()
