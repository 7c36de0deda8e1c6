"""The leaderboard: variants parsed and checked, results stored once and never mixed, verdicts,
the files it writes, and the README's command end to end at a tiny size."""

import json
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest

from enlcn_jax import leaderboard as command
from enlcn_jax.research import leaderboard, runs, tasks, variants
from conftest import fill
from enlcn_jax.train import workdir as workdir_lib

# A small task of the real kind: the trainings below run on it in seconds.
TINY = tasks.MosaicTask(name='tiny', lr_size=12)
IMAGES = 4


@pytest.fixture(autouse=True)
def tiny_task(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, 'tiny', TINY)


class FakeTrainer:
    """Stands in for `runs.VariantTrainer`: a deterministic result per (config, seed) and a log
    of what was trained, so the store's logic is tested without training."""
    trained: list = []
    diverge: set = set()
    interrupt_after: int | None = None

    def __init__(self, config, task):
        self.config, self.task = config, task

    def run(self, seed, steps):
        if FakeTrainer.interrupt_after is not None and \
                len(FakeTrainer.trained) >= FakeTrainer.interrupt_after:
            raise KeyboardInterrupt
        variant_gain = {'none': 0.0, 'enla': 1.0}.get(self.config.model.attention, 0.5)
        FakeTrainer.trained.append((self.config.model.attention, self.task.name, seed, steps))
        if (self.config.model.attention, seed) in FakeTrainer.diverge:
            return {'psnr': None, 'psnr_images': None, 'diverged': True, 'params': 100,
                    'seconds': 0.1}
        images = [20.0 + variant_gain + 0.3 * seed + 0.01 * i for i in range(IMAGES)]
        return {'psnr': float(np.mean(images)), 'psnr_images': images, 'diverged': False,
                'params': 100 if self.config.model.attention == 'none' else 120, 'seconds': 0.1}


def fake_cost(model_config, sizes, channels):
    return {'device': 'cpu', 'params': 10, 'attention': True,
            'rows': [{'side': s, 'positions': s * s, 'fwd ms': 0.1 * s, 'fwd MiB': 1.0,
                      'GFLOP': 0.01} for s in sizes]}


@pytest.fixture
def fake(monkeypatch):
    FakeTrainer.trained, FakeTrainer.diverge, FakeTrainer.interrupt_after = [], set(), None
    monkeypatch.setattr(runs, 'VariantTrainer', FakeTrainer)
    monkeypatch.setattr(leaderboard.cost_lib, 'attention_cost', fake_cost)
    return FakeTrainer


def board(workdir, variant_list, **options):
    options = {'seeds': 2, 'steps': 3, 'cost_sides': (8, 16), 'progress': False, **options}
    return leaderboard.run_leaderboard(workdir, variant_list, ['tiny'], **options)


def test_variants_are_parsed_into_configs():
    base = runs.base_config(TINY, 100)
    config = lambda variant: variants.variant_config(base, variant)
    assert config('feature_map=relu')[0].model.feature_map == 'relu'
    assert config('feature_map=relu')[0].model.amplification == 6.0           # on enla_k
    assert config('feature_map=relu')[0].train.contrastive.weight == 0.0
    assert config('loss=code(relevant=10)')[0].train.contrastive.weight > 0    # on enla_k_cl
    several, description = config('exact; model.num_random_features=32; '
                                  'train.contrastive.weight=0.5')
    assert several.model.attention == 'exact' and several.model.amplification == 1.0
    assert several.model.num_random_features == 32 and several.train.contrastive.weight == 0.5
    assert description == 'exact with model.num_random_features=32, train.contrastive.weight=0.5'
    assert config('my_kernels:favor(rho=0.5, s=(1, 2))')[0].model.attention == \
        'my_kernels:favor(rho=0.5, s=(1, 2))'
    assert config('exact_k')[0].model.amplification == 6.0
    assert base.model.attention == 'enla' and base.model.feature_map == 'softmax_kernel'
    for bad, named in (('kernel=relu', "unknown variant key 'kernel'"),
                       ('model.no_such_key=1', 'no_such_key'),
                       ('feature_map=relu; exact', 'may only stand first')):
        with pytest.raises(variants.VariantError, match=named):
            config(bad)


@pytest.mark.parametrize('args, named', [
    (['--variants', 'none,lsh'], "unknown variant 'lsh': not one of"),
    (['--variants', ''], '--variants is empty'),
    (['--variants', 'feature_map=no_such_map'], "variant 'feature_map=no_such_map': "
                                                "model.feature_map="),
    (['--tasks', 'tiny,imagenet'], "--tasks: unknown task 'imagenet'; known tasks: "),
    (['--set', 'train.no_such_key=1'], 'no_such_key'),
    (['--set', 'train.lr'], "--set 'train.lr': expected KEY=VALUE"),
])
def test_a_bad_variant_task_or_option_is_one_line_before_anything_trains(tmp_path, fake, args,
                                                                         named):
    with pytest.raises(SystemExit) as stop:
        command.main(['--workdir', str(tmp_path / 'w'), '--tasks', 'tiny', *args])
    message = str(stop.value.code)
    assert named in message and '\n' not in message
    assert not (tmp_path / 'w').exists() and not fake.trained


def test_results_accumulate_and_only_what_is_missing_trains(tmp_path, fake):
    board(tmp_path, ['none', 'enla_k'])
    assert len(fake.trained) == 4
    board(tmp_path, ['none', 'enla_k', 'exact'])                   # one more variant
    assert [t[0] for t in fake.trained[4:]] == ['exact', 'exact']
    report = board(tmp_path, ['none', 'enla_k', 'exact'])          # nothing new
    assert len(fake.trained) == 6
    rows = {r['variant']: r for r in report['groups'][0]['tasks']['tiny v1']['rows']}
    assert set(rows) == {'none', 'enla_k', 'exact'}
    assert rows['enla_k']['psnr'] == pytest.approx(np.mean([21.015, 21.315]))
    assert rows['exact']['vs_none']['difference'] == pytest.approx(0.5)
    assert rows['exact']['vs_none']['verdict'] == 'better'        # paired: seeds cancel
    assert rows['none']['vs_none'] is None
    assert rows['enla_k']['vs_reference'] is None                  # enla_k_cl not on the board
    assert rows['exact']['k'] == 1.0 and rows['enla_k']['k'] == 6.0 and rows['none']['k'] is None
    assert rows['exact']['params_vs_none'] == pytest.approx(0.2) and rows['exact']['more_params']
    # The gap closed is measured against the task's own oracle.
    oracle = tasks.ceilings(TINY)['oracle']
    assert rows['exact']['gap_closed'] == pytest.approx(0.5 / (oracle - rows['none']['psnr']))
    assert [r['variant'] for r in report['runs']].count('exact') == 2
    assert all(r['commit'] is None or len(r['commit']) >= 40 for r in report['runs'])
    assert {'jax', 'flax', 'enlcn_jax', 'seed', 'task_version', 'code'} <= set(report['runs'][0])


def test_another_budget_is_kept_apart_never_mixed(tmp_path, fake):
    board(tmp_path, ['none', 'enla_k'])
    report = board(tmp_path, ['none', 'enla_k'], steps=5)
    assert len(fake.trained) == 8 and [g['steps'] for g in report['groups']] == [5, 3]
    report = board(tmp_path, ['none'], sets={'train.lr': 1e-3})
    assert len(fake.trained) == 10 and len(report['groups']) == 3
    for group in report['groups']:
        for entry in group['tasks'].values():
            assert all(len(r['seeds']) == 2 for r in entry['rows'])
    table = (tmp_path / 'leaderboard.md').read_text()
    assert '## 5 steps per run' in table and '## 3 steps per run; --set: none' in table
    assert '--set: train.lr=0.001' in table


def test_an_interrupted_leaderboard_continues_at_the_next_run(tmp_path, fake):
    fake.interrupt_after = 3
    with pytest.raises(KeyboardInterrupt):
        board(tmp_path, ['none', 'enla_k'])
    assert len(list((tmp_path / 'runs').glob('*.json'))) == 3
    fake.interrupt_after = None
    board(tmp_path, ['none', 'enla_k'])
    assert fake.trained[3:] == [('enla', 'tiny', 1, 3)]


def test_a_diverged_seed_is_recorded_and_said(tmp_path, fake):
    fake.diverge = {('enla', 1)}
    report = board(tmp_path, ['none', 'enla_k'])
    row = next(r for r in report['groups'][0]['tasks']['tiny v1']['rows']
               if r['variant'] == 'enla_k')
    assert row['diverged'] == [1] and row['seeds'] == {0: pytest.approx(21.015), 1: None}
    assert row['vs_none']['seeds'] == 1
    assert '(1 diverged)' in (tmp_path / 'leaderboard.md').read_text()
    board(tmp_path, ['none', 'enla_k'])                # a diverged run is a result: not redone
    assert len(fake.trained) == 4


def test_an_edited_function_no_longer_counts(tmp_path, fake, monkeypatch):
    module = tmp_path / 'edited_kernels.py'
    source = textwrap.dedent('''
        import jax

        def phi(x, projection):
            return jax.nn.relu(x @ projection.T) + 1e-3
    ''')
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    variant = 'feature_map=edited_kernels:phi'
    board(tmp_path / 'w', ['none', variant])
    assert len(fake.trained) == 4
    module.write_text(source.replace('1e-3', '2e-3'))
    report = board(tmp_path / 'w', ['none', variant])
    assert [t[2] for t in fake.trained[4:]] == [0, 1]            # retrained, not reused
    assert {(s['variant'], s['seed']) for s in report['stale']} == {(variant, 0), (variant, 1)}
    assert 'edited since' in (tmp_path / 'w' / 'leaderboard.md').read_text()


def test_a_changed_variant_definition_is_retrained_not_mixed(tmp_path, fake, monkeypatch):
    board(tmp_path, ['none', 'enla_k'])
    redefined = variants.Variant({**variants.VARIANTS['enla_k'].overrides,
                                  'model.num_random_features': 32}, 'ENLA, k = 6, m = 32')
    monkeypatch.setitem(variants.VARIANTS, 'enla_k', redefined)
    report = board(tmp_path, ['none', 'enla_k'])
    assert [(t[0], t[2]) for t in fake.trained[4:]] == [('enla', 0), ('enla', 1)]
    row = next(r for r in report['groups'][0]['tasks']['tiny v1']['rows']
               if r['variant'] == 'enla_k')
    assert len(row['seeds']) == 2 and len(report['stale']) == 2


def test_a_second_leaderboard_on_a_busy_workdir_is_refused(tmp_path, fake):
    with workdir_lib.WorkdirLock(tmp_path):
        with pytest.raises(SystemExit) as stop:
            command.main(['--workdir', str(tmp_path), '--tasks', 'tiny', '--variants', 'none'])
    assert 'pid' in str(stop.value.code) and '\n' not in str(stop.value.code)
    assert not fake.trained


def test_a_full_disk_is_one_line_and_the_stored_results_stay(small_disk, fake):
    board(small_disk, ['none'])
    stored = {path.name: path.read_text() for path in (small_disk / 'runs').iterdir()}
    fill(small_disk)
    with pytest.raises(SystemExit) as stop:
        command.main(['--workdir', str(small_disk), '--tasks', 'tiny', '--variants', 'none,exact',
                      '--seeds', '2', '--steps', '3', '--cost_sides', '8'])
    message = str(stop.value.code)
    assert '\n' not in message and str(small_disk) in message
    assert 'No space left on device' in message or 'full' in message
    assert {path.name: path.read_text() for path in (small_disk / 'runs').iterdir()} == stored
    (small_disk / 'filler').unlink()
    done = len(fake.trained)
    board(small_disk, ['none', 'exact'])           # the same command continues where it stopped
    assert [(t[0], t[2]) for t in fake.trained[done:]] == [('exact', 0), ('exact', 1)]
    assert len(list((small_disk / 'runs').iterdir())) == 4


def readme_commands() -> list[list[str]]:
    """The arguments of the README's `python -m enlcn_jax.leaderboard` commands."""
    text = (Path(__file__).resolve().parents[2] / 'README.md').read_text()
    return [shlex.split(line)[3:] for line in text.splitlines()
            if line.startswith('python -m enlcn_jax.leaderboard ')]


def test_the_readme_s_first_command_is_the_default_board():
    first = readme_commands()[0]
    assert first == ['--workdir', first[1]]
    assert leaderboard.DEFAULT_VARIANTS == tuple(variants.VARIANTS)


def test_the_readme_s_command_trains_scores_and_writes_the_files(tmp_path, capsys):
    """The README's command with a researcher's map, really trained, at a tiny budget."""
    args = readme_commands()[1]
    args[args.index('--workdir') + 1] = str(tmp_path)
    args[args.index('--tasks') + 1] = 'tiny'
    command.main([*args, '--seeds', '2', '--steps', '2', '--cost_sides', '8,16'])
    report = json.loads((tmp_path / 'leaderboard.json').read_text())
    rows = report['groups'][0]['tasks']['tiny v1']['rows']
    assert {r['variant'] for r in rows} == {'none', 'feature_map=examples.my_kernels:relu_squared'}
    for row in rows:
        assert len(row['seeds']) == 2 and all(np.isfinite(list(row['seeds'].values())))
        assert row['low'] <= row['psnr'] <= row['high']
    assert set(report['costs']) == {'feature_map=examples.my_kernels:relu_squared'}
    assert [r['side'] for r in report['costs']['feature_map=examples.my_kernels:relu_squared']
            ['rows']] == [8, 16]
    table = (tmp_path / 'leaderboard.md').read_text()
    assert '### tiny v1' in table and '`feature_map=examples.my_kernels:relu_squared`' in table
    assert (tmp_path / 'leaderboard.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '# Attention leaderboard' in capsys.readouterr().out
