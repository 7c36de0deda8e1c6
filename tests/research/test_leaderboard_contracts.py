"""Contracts of `research/leaderboard.py` checked without training: the options and the plan
(every run's identity), the training loop against a stand-in trainer, the report built from
records put in a `ResultStore` directly (budgets, task versions, stale runs, rows, verdicts, the
gap to the oracle, costs), and the markdown, JSON and plot rows written from a report."""

import json
import re
import statistics
from pathlib import Path

import jax
import pytest

import enlcn_jax
from conftest import error_message
from enlcn_jax.nn import attention, features, losses, models, registry
from enlcn_jax.research import leaderboard, runs, store, tasks, variants, verdicts

TINY = tasks.MosaicTask(name='tiny', lr_size=12)
# Stand-in ceilings (the real ones are `tasks.ceilings`' business), one set per task.
CEILINGS = {'tiny': {'bicubic': 25.0, 'own cell': 26.0, 'oracle': 30.0},
            'mosaic': {'bicubic': 24.0, 'own cell': 25.0, 'oracle': 28.0},
            'control': {'bicubic': 23.0, 'own cell': 24.0, 'oracle': 24.5}}
LEDGER = {'commit': 'abc', 'date': '2026-12-04 10:00:00'}


@pytest.fixture(autouse=True)
def tiny_task(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, 'tiny', TINY)
    monkeypatch.setattr(tasks, 'ceilings', lambda task: dict(CEILINGS[task.name]))


def config_of(variant, task=TINY, steps=3):
    return variants.variant_config(runs.base_config(task, steps), variant)[0]


# --- options and plan ---------------------------------------------------------------------------

def test_set_values_are_python_literals_else_text_around_the_first_equals_sign():
    assert leaderboard.parse_sets([]) == {}
    assert leaderboard.parse_sets([' train.lr = 1e-3 ', 'model.feature_map=relu', 'a.b=x=y',
                                   'c.d=', 'e.f=(1, 2)']) == {
        'train.lr': 0.001, 'model.feature_map': 'relu', 'a.b': 'x=y', 'c.d': '', 'e.f': (1, 2)}
    for bad in ('train.lr', '=1', ' =1'):
        assert error_message(lambda: leaderboard.parse_sets(['a.b=1', bad]),
                             leaderboard.LeaderboardError) == \
            f'--set {bad!r}: expected KEY=VALUE, e.g. train.lr=1e-3'


def test_the_base_config_is_the_runs_one_with_the_sets_and_an_unknown_key_is_named():
    sets = {'train.lr': 1e-3, 'model.num_random_features': 32}
    expected = runs.base_config(TINY, 40)
    expected.train.lr, expected.model.num_random_features = 1e-3, 32
    assert leaderboard.base_config(TINY, 40, sets).to_dict() == expected.to_dict()
    assert sets == {'train.lr': 1e-3, 'model.num_random_features': 32}
    for bad in ({'train.no_such_key': 1, 'train.lr': 1.0}, {'train.lr': 'fast'},
                {'train.lr.x': 1}):
        message = error_message(lambda: leaderboard.base_config(TINY, 40, bad),
                                leaderboard.LeaderboardError)
        assert message.startswith(f'--set {sorted(bad)}: ') and '\n' not in message
    assert 'no_such_key' in error_message(
        lambda: leaderboard.base_config(TINY, 40, {'train.no_such_key': 1}),
        leaderboard.LeaderboardError)


def test_the_used_functions_are_the_model_s_four_and_the_loss_only_while_it_trains():
    assert leaderboard.used_functions(config_of('none')) == {}
    config = config_of('enla_k')
    config.model.feature_map, config.model.projection = 'elu_plus_one', 'orthogonal_haar'
    expected = {'model.attention': attention.ATTENTIONS.get('enla'),
                'model.feature_map': features.FEATURE_MAPS.get('elu_plus_one'),
                'model.projection': features.PROJECTIONS.get('orthogonal_haar'),
                'model.block': models.BLOCKS.get('enlca')}
    assert leaderboard.used_functions(config) == expected           # contrastive weight 0
    config.train.contrastive.weight = 1e-6
    assert leaderboard.used_functions(config) == {
        **expected, 'train.contrastive.loss': losses.CONTRASTIVE_LOSSES.get(
            config.train.contrastive.loss)}
    plain = config_of('none')
    plain.train.contrastive.weight = 0.5                            # no attention: no loss
    assert leaderboard.used_functions(plain) == {}


def test_the_code_fingerprint_is_the_version_and_each_used_function_s_source_hash():
    assert leaderboard.code_fingerprint(config_of('none')) == {
        'enlcn_jax': enlcn_jax.__version__}
    config = config_of('enla_k_cl')
    assert leaderboard.code_fingerprint(config) == {
        'enlcn_jax': enlcn_jax.__version__,
        'model.attention': registry.source_fingerprint(attention.ATTENTIONS.get('enla')),
        'model.feature_map': registry.source_fingerprint(
            features.FEATURE_MAPS.get(config.model.feature_map)),
        'model.projection': registry.source_fingerprint(
            features.PROJECTIONS.get(config.model.projection)),
        'model.block': registry.source_fingerprint(models.BLOCKS.get('enlca')),
        'train.contrastive.loss': registry.source_fingerprint(
            losses.CONTRASTIVE_LOSSES.get(config.train.contrastive.loss))}


def test_the_plan_is_every_task_variant_and_seed_with_its_identity():
    sets = {'train.lr': 1e-3, 'model.num_random_features': 32}
    planned = leaderboard.plan(['none', 'enla_k'], ['tiny', 'mosaic'], 2, 7, sets)
    assert [(r.task.name, r.variant, r.seed) for r in planned] == [
        (t, v, s) for t in ('tiny', 'mosaic') for v in ('none', 'enla_k') for s in (0, 1)]
    run = planned[7]
    config = variants.check_variant(leaderboard.base_config(tasks.TASKS['mosaic'], 7, sets),
                                    'enla_k')[0]
    assert run.task is tasks.TASKS['mosaic'] and run.config.to_dict() == config.to_dict()
    assert run.identity == {
        'variant': 'enla_k', 'config': store.digest(config.to_dict()),
        'code': leaderboard.code_fingerprint(config), 'task': 'mosaic', 'task_version': 1,
        'steps': 7, 'sets': {'model.num_random_features': 32, 'train.lr': 0.001}, 'seed': 1}
    assert list(run.identity['sets']) == ['model.num_random_features', 'train.lr']
    assert planned[0].identity['config'] != planned[2].identity['config']
    assert leaderboard.plan(['none'], ['tiny'], 0, 7, {}) == []


def test_a_bad_plan_is_one_line_naming_the_option():
    def message(variant_list, task_names, error=leaderboard.LeaderboardError):
        return error_message(lambda: leaderboard.plan(variant_list, task_names, 1, 3, {}), error)
    assert message([], ['no_such_task']) == '--variants is empty: name at least one variant'
    assert message(['none'], []) == '--tasks is empty: name at least one task'
    assert message(['none'], ['tiny', 'no_such_task']) == (
        "--tasks: unknown task 'no_such_task'; known tasks: " + ', '.join(tasks.TASKS))
    assert message(['none', 'feature_map=no_such_map'], ['tiny'], variants.VariantError) \
        .startswith("variant 'feature_map=no_such_map': ")


def test_a_cost_depends_on_the_module_s_keys_and_code_the_sizes_and_the_device():
    config = config_of('enla_k_cl')
    code = leaderboard.code_fingerprint(config)
    del code['train.contrastive.loss']
    assert leaderboard.cost_identity(config, (8, 16)) == {
        'model': {**{key: config.model[key] for key in models.ENLCA_KEYS}, 'block': 'enlca'},
        'code': code, 'sides': [8, 16], 'channels': 64,
        'device': jax.devices()[0].device_kind}
    assert leaderboard.cost_identity(config_of('enla_k'), (8, 16)) == \
        leaderboard.cost_identity(config, (8, 16))


# --- the training loop, with a stand-in trainer -------------------------------------------------

class Trainer:
    """Stands in for `runs.VariantTrainer`: records what it was made for and each run."""
    made: list = []

    def __init__(self, config, task):
        self.config, self.task = config, task
        Trainer.made.append(self)
        self.ran = []

    def run(self, seed, steps):
        self.ran.append((seed, steps))
        gain = {'none': 0.0}.get(self.config.model.attention, 0.5) + 0.1 * seed
        images = [20.0 + gain, 21.0 + gain]
        return {'psnr': statistics.fmean(images), 'psnr_images': images, 'diverged': False,
                'params': 100, 'seconds': 0.5}


@pytest.fixture
def trainer(monkeypatch):
    Trainer.made = []
    measured = []

    def attention_cost(model_config, sizes, channels):
        measured.append((model_config, sizes, channels))
        return {'device': 'cpu', 'params': 7,
                'rows': [{'side': s, 'fwd ms': 0.5 * s, 'fwd MiB': 1.0, 'GFLOP': 0.1}
                         for s in sizes]}
    monkeypatch.setattr(runs, 'VariantTrainer', Trainer)
    monkeypatch.setattr(leaderboard.cost_lib, 'attention_cost', attention_cost)
    monkeypatch.setattr(leaderboard.plots, 'pareto_plot', lambda rows, path, **_: Path(path))
    return measured


def test_each_missing_run_is_trained_once_stored_and_each_module_measured_once(tmp_path,
                                                                              trainer, capsys):
    variant_list = ['none', 'enla_k', 'enla_k_cl']
    report = leaderboard.run_leaderboard(tmp_path, variant_list, ['tiny'], seeds=2, steps=3,
                                         cost_sides=[8, 16], reference='enla_k',
                                         progress=False)
    assert capsys.readouterr().err == ''
    assert [(t.config.model.attention, t.task, t.ran) for t in Trainer.made] == [
        (attention, TINY, [(0, 3), (1, 3)]) for attention in ('none', 'enla', 'enla')]
    planned = leaderboard.plan(variant_list, ['tiny'], 2, 3, {})
    results = store.ResultStore(tmp_path)
    for run, made in zip(planned, [t for t in Trainer.made for _ in (0, 1)]):
        assert made.config.to_dict() == run.config.to_dict()
        assert results.get('runs', run.identity)['psnr'] == pytest.approx(
            20.5 + (0.0 if run.variant == 'none' else 0.5) + 0.1 * run.seed)
    # enla_k and enla_k_cl differ only in training: one module, measured once, cost to both.
    model = config_of('enla_k').model.to_dict()
    assert trainer == [(model, (8, 16), 64)]
    identity = leaderboard.cost_identity(planned[2].config, [8, 16])
    assert results.get('costs', identity)['params'] == 7
    assert set(report['costs']) == {'enla_k', 'enla_k_cl'} and report['reference'] == 'enla_k'
    rows = {r['variant']: r for r in report['groups'][0]['tasks']['tiny v1']['rows']}
    assert rows['enla_k']['vs_reference'] is None
    assert rows['enla_k_cl']['vs_reference']['difference'] == pytest.approx(0.0)
    assert (tmp_path / 'leaderboard.md').read_text() == leaderboard.markdown(report) + '\n'
    assert json.loads((tmp_path / 'leaderboard.json').read_text())['reference'] == 'enla_k'
    again = leaderboard.run_leaderboard(tmp_path, variant_list, ['tiny'], seeds=2, steps=3,
                                        cost_sides=[8, 16], reference='enla_k',
                                        progress=False)
    assert len(Trainer.made) == 3 and len(trainer) == 1 and again == report


def test_the_progress_bar_names_the_run_in_flight_on_stderr(tmp_path, trainer, capsys):
    leaderboard.run_leaderboard(tmp_path, ['none'], ['tiny'], seeds=2, steps=3,
                                cost_sides=[8])                     # a bar unless told not to
    err = capsys.readouterr().err
    assert 'leaderboard: 100%' in err and ' 2/2 ' in err and re.search(r'\d(run/s|s/run)', err)
    assert 'none on tiny, seed 1' in err
    assert trainer == []                                  # plain EDSR has no module to measure


def test_the_resolver_resolves_each_variant_task_budget_once_and_a_broken_one_as_none(
        monkeypatch):
    calls = []
    real = variants.variant_config

    def counted(base, variant):
        calls.append(variant)
        return real(base, variant)
    monkeypatch.setattr(variants, 'variant_config', counted)
    resolve = leaderboard.resolver()
    sets = {'train.lr': 1e-3, 'model.num_random_features': 32}
    resolved = resolve('enla_k_cl', 'tiny', 3, sets)
    config, description = real(leaderboard.base_config(TINY, 3, sets), 'enla_k_cl')
    assert resolved.config.to_dict() == config.to_dict() and description == resolved.description
    assert resolved.digest == store.digest(config.to_dict())
    assert resolved.code == leaderboard.code_fingerprint(config)
    assert resolve('enla_k_cl', 'tiny', 3, dict(reversed(sets.items()))) is resolved
    assert len(calls) == 1
    for other in (('enla_k', 'tiny', 3, sets), ('enla_k_cl', 'mosaic', 3, sets),
                  ('enla_k_cl', 'tiny', 4, sets), ('enla_k_cl', 'tiny', 3, {})):
        assert resolve(*other) is not resolved
    assert len(calls) == 5
    for broken in (('no_such_variant', 'tiny', 3, {}), ('none', 'no_such_task', 3, {}),
                   ('none', 'tiny', 3, {'train.no_such_key': 1})):
        assert resolve(*broken) is None and resolve(*broken) is None
    assert calls.count('no_such_variant') == 1


# --- the report from stored records -------------------------------------------------------------

def result(images, params=100, seconds=0.5):
    """A run's result as `runs.VariantTrainer.run` returns it; `images` None: diverged."""
    if images is None:
        return {'psnr': None, 'psnr_images': None, 'diverged': True, 'params': params,
                'seconds': seconds}
    return {'psnr': statistics.fmean(images), 'psnr_images': list(images), 'diverged': False,
            'params': params, 'seconds': seconds}


def put(results, name, seed, res, task='tiny', steps=3, sets=None, **changes):
    """Stores `res` under the identity the leaderboard plans for this run, with `changes`."""
    run = leaderboard.plan([name], [task], seed + 1, steps, sets or {})[seed]
    identity = {**run.identity, **changes}
    results.put('runs', identity, res, LEDGER)
    return identity


class Reversed(store.ResultStore):
    """The same records in the opposite order: a report must not depend on it."""

    def records(self, kind):
        return reversed(list(super().records(kind)))


class ByVariant(store.ResultStore):
    """The same records ordered by variant and seed (each variant's seeds together)."""

    def records(self, kind):
        return sorted(super().records(kind), key=lambda r: (r['identity'].get('variant', ''),
                                                            r['identity'].get('seed', 0)))


def paired(difference, low, high, seeds, verdict, positive):
    return {'difference': pytest.approx(difference), 'low': pytest.approx(low),
            'high': pytest.approx(high), 'seeds': seeds, 'verdict': verdict,
            'positive': positive}


def test_rows_hold_each_seed_an_interval_and_paired_verdicts_against_none_and_the_reference(
        tmp_path):
    results = store.ResultStore(tmp_path)
    put(results, 'none', 0, result([20.0, 21.0]))
    put(results, 'none', 1, result([20.4, 21.6]))
    put(results, 'none', 2, result(None))
    put(results, 'enla_k', 0, result([21.0, 22.0], params=115))
    put(results, 'enla_k', 1, result([21.2, 22.0], params=115))
    put(results, 'enla_k_cl', 0, result([21.5, 22.5], params=109))
    put(results, 'enla_k_cl', 1, result(None, params=109))
    put(results, 'identity', 0, result(None, params=101))
    put(results, 'identity', 1, result(None, params=101))
    put(results, 'exact', 1, result([20.0, 21.0], params=100))
    report = leaderboard.build_report(results)
    assert leaderboard.build_report(Reversed(tmp_path))['groups'] == report['groups']
    assert report['reference'] == 'enla_k_cl' and report['stale'] == []
    (group,) = report['groups']
    assert group['steps'] == 3 and group['sets'] == {} and list(group['tasks']) == ['tiny v1']
    entry = group['tasks']['tiny v1']
    assert entry['task'] == 'tiny' and entry['version'] == 1 and entry['current'] is True
    assert entry['description'] == TINY.describe() and entry['ceilings'] == CEILINGS['tiny']
    assert set(entry) == {'task', 'version', 'current', 'description', 'ceilings', 'rows'}
    rows = entry['rows']
    assert [r['variant'] for r in rows] == ['enla_k_cl', 'enla_k', 'none', 'exact', 'identity']
    rows = {r['variant']: r for r in rows}
    none_psnr = statistics.fmean([20.5, 21.0])
    enla_k = rows['enla_k']
    psnr, low, high = verdicts.interval([21.5, 21.6])
    d_low, d_high = verdicts.interval([1.0, 0.6])[1:]
    assert enla_k == {
        'variant': 'enla_k', 'description': 'ENLA, k = 6', 'control': False, 'k': 6.0,
        'params': 115, 'params_vs_none': pytest.approx(0.15), 'more_params': True,
        'seeds': {0: pytest.approx(21.5), 1: pytest.approx(21.6)}, 'diverged': [],
        'psnr': pytest.approx(psnr), 'low': pytest.approx(low), 'high': pytest.approx(high),
        'gap_closed': pytest.approx((psnr - none_psnr) / (30.0 - none_psnr)),
        'vs_none': paired(0.8, d_low, d_high, 2, verdicts.WITHIN_NOISE, 2),
        'vs_reference': paired(-0.5, -0.5, -0.5, 1, verdicts.UNDECIDED, 0)}
    reference = rows['enla_k_cl']
    assert reference['params_vs_none'] == pytest.approx(0.09) and not reference['more_params']
    assert reference['seeds'] == {0: 22.0, 1: None} and reference['diverged'] == [1]
    assert reference['psnr'] == reference['low'] == reference['high'] == 22.0
    assert reference['vs_none'] == paired(1.5, 1.5, 1.5, 1, verdicts.UNDECIDED, 1)
    assert reference['vs_reference'] is None
    none = rows['none']
    assert none['k'] is None and none['control'] is True and none['description'] == \
        variants.VARIANTS['none'].description
    assert none['seeds'] == {0: 20.5, 1: 21.0, 2: None} and none['diverged'] == [2]
    assert none['params_vs_none'] == 0.0 and none['gap_closed'] == 0.0
    assert (none['psnr'], none['low'], none['high']) == pytest.approx(
        verdicts.interval([20.5, 21.0]))
    assert none['vs_none'] is None
    assert none['vs_reference'] == paired(-1.5, -1.5, -1.5, 1, verdicts.UNDECIDED, 0)
    exact = rows['exact']
    assert exact['k'] == 1.0 and exact['vs_none'] == paired(-0.5, -0.5, -0.5, 1,
                                                            verdicts.UNDECIDED, 0)
    assert exact['vs_reference'] is None                  # no seed with images in common
    assert exact['gap_closed'] == pytest.approx((20.5 - none_psnr) / (30.0 - none_psnr))
    identity = rows['identity']
    assert identity['control'] is True and identity['k'] == config_of('identity').model.amplification
    assert identity['seeds'] == {0: None, 1: None} and identity['diverged'] == [0, 1]
    assert [identity[k] for k in ('psnr', 'low', 'high', 'gap_closed', 'vs_none',
                                  'vs_reference')] == [None] * 6
    assert identity['params_vs_none'] == pytest.approx(0.01) and not identity['more_params']
    # Another reference.
    rows = {r['variant']: r for r in leaderboard.build_report(results, reference='exact')[
        'groups'][0]['tasks']['tiny v1']['rows']}
    assert rows['exact']['vs_reference'] is None
    assert rows['none']['vs_reference'] == paired(0.5, 0.5, 0.5, 1, verdicts.UNDECIDED, 1)


def test_budgets_and_task_versions_are_kept_apart_and_edited_runs_are_listed_stale(tmp_path):
    results = store.ResultStore(tmp_path)
    put(results, 'none', 0, result([20.0, 21.0]))
    put(results, 'none', 0, result([20.2, 21.0]), task_version=0)
    put(results, 'none', 0, result([19.0, 20.0]), task='mosaic')
    put(results, 'none', 0, result([19.0, 20.0]), task='control')
    put(results, 'enla_k', 0, result([21.0, 22.0], params=120), steps=5)
    put(results, 'none', 0, result(None), sets={'train.lr': 1e-3})        # diverged
    put(results, 'exact', 0, result([20.0, 20.5], params=150), sets={'train.lr': 1e-3})
    # Stale: the variant's config, its code, or the variant itself changed since.
    put(results, 'enla_k', 1, result([21.0, 22.0]), config='0' * 20)
    code = leaderboard.code_fingerprint(config_of('exact'))
    put(results, 'exact', 0, result([21.0, 22.0]), code={**code, 'model.attention': 'edited'})
    put(results, 'none', 1, result([21.0, 22.0]), steps=4, variant='no_such_variant')
    # A record written without a ledger, its result without seconds or a diverged flag.
    identity = leaderboard.plan(['none'], ['mosaic'], 2, 3, {})[1].identity
    path = results.path('runs', identity)
    path.write_text(json.dumps({'identity': identity, 'result': {
        'psnr': 19.0, 'psnr_images': [18.5, 19.5], 'params': 100}}))
    for reversed_order in (False, True):
        report = leaderboard.build_report((Reversed if reversed_order else store.ResultStore)(
            tmp_path))
        assert [(g['steps'], g['sets']) for g in report['groups']] == [
            (5, {}), (3, {'train.lr': 0.001}), (3, {})]       # steps down, then the sets' JSON
        assert [list(g['tasks']) for g in report['groups']] == [
            ['tiny v1'], ['tiny v1'], ['mosaic v1', 'control v1', 'tiny v0', 'tiny v1']]
        assert set(report['groups'][0]) == {'steps', 'sets', 'tasks'}
        old = report['groups'][2]['tasks']['tiny v0']
        assert old['version'] == 0 and old['current'] is False and old['ceilings'] is None
        assert old['description'] == TINY.describe() and old['rows'][0]['gap_closed'] is None
        assert report['groups'][2]['tasks']['mosaic v1']['ceilings'] == CEILINGS['mosaic']
        mosaic = report['groups'][2]['tasks']['mosaic v1']['rows'][0]
        assert mosaic['seeds'] == {0: 19.5, 1: 19.0}
        (alone,) = report['groups'][0]['tasks']['tiny v1']['rows']   # no `none` in its budget
        assert alone['params_vs_none'] is None and alone['more_params'] is False
        assert alone['gap_closed'] is None and alone['vs_none'] is None
        # `none` diverged on every seed: no gap and no comparison, but a parameter count.
        exact, none = report['groups'][1]['tasks']['tiny v1']['rows']
        assert none['variant'] == 'none' and none['psnr'] is None
        assert exact['psnr'] == 20.25 and exact['gap_closed'] is None
        assert exact['vs_none'] is None and exact['params_vs_none'] == pytest.approx(0.5)
        assert sorted(report['stale'], key=lambda s: s['variant']) == [
            {'variant': 'enla_k', 'task': 'tiny', 'seed': 1, 'steps': 3},
            {'variant': 'exact', 'task': 'tiny', 'seed': 0, 'steps': 3},
            {'variant': 'no_such_variant', 'task': 'tiny', 'seed': 1, 'steps': 4}]
        ledger = sorted(report['runs'], key=lambda r: json.dumps(r, sort_keys=True))
        assert len(ledger) == 8
        assert [r['diverged'] for r in ledger if r['sets'] and r['variant'] == 'none'] == [True]
        plain = next(r for r in ledger if r['task'] == 'tiny' and r['task_version'] == 1
                     and r['steps'] == 3 and r['sets'] == {})
        assert plain == {'variant': 'none', 'task': 'tiny', 'task_version': 1, 'seed': 0,
                         'steps': 3, 'sets': {}, 'code': {'enlcn_jax': enlcn_jax.__version__},
                         **LEDGER, 'seconds': 0.5, 'diverged': False}
        bare = next(r for r in ledger if r['task'] == 'mosaic' and r['seed'] == 1)
        assert bare == {'variant': 'none', 'task': 'mosaic', 'task_version': 1, 'seed': 1,
                        'steps': 3, 'sets': {}, 'code': {'enlcn_jax': enlcn_jax.__version__},
                        'seconds': None, 'diverged': False}
    assert leaderboard.build_report(store.ResultStore(tmp_path / 'empty')) == {
        'groups': [], 'costs': {}, 'stale': [], 'runs': [], 'reference': 'enla_k_cl'}


def test_a_row_with_exactly_ten_percent_more_parameters_is_not_flagged(tmp_path):
    results = store.ResultStore(tmp_path)
    put(results, 'none', 0, result([20.0, 21.0], params=1000))
    put(results, 'exact', 0, result([20.0, 21.0], params=1100))
    put(results, 'enla_k', 0, result([20.0, 21.0], params=1101))
    rows = {r['variant']: r for r in leaderboard.build_report(results)['groups'][0]['tasks'][
        'tiny v1']['rows']}
    assert rows['enla_k']['more_params']                  # more than 10 %: flagged
    assert not rows['exact']['more_params']               # "more than 10 %": 10 % is not


def put_cost(results, name, sides, cost, date=None, **changes):
    identity = {**leaderboard.cost_identity(config_of(name), sides), **changes}
    if date is None:
        results.path('costs', identity).parent.mkdir(parents=True, exist_ok=True)
        results.path('costs', identity).write_text(json.dumps({'identity': identity,
                                                               'result': cost}))
    else:
        results.put('costs', identity, cost, {'date': date})


def test_a_variant_s_cost_is_the_newest_measurement_of_its_module_as_it_is_now(tmp_path):
    results = store.ResultStore(tmp_path)
    for variant in ('none', 'enla_k', 'enla_k_cl', 'exact', 'exact_k'):
        for seed in (0, 1):
            put(results, variant, seed, result([20.0, 21.0]))
    put(results, 'none', 2, result([20.0, 21.0]), variant='no_such_variant')
    put_cost(results, 'enla_k', (8,), {'n': 'older'}, date='2026-01-02 00:00:00')
    put_cost(results, 'enla_k', (16,), {'n': 'newest'}, date='2026-01-03 00:00:00')
    put_cost(results, 'enla_k', (32,), {'n': 'undated'})
    put_cost(results, 'enla_k', (64,), {'n': 'oldest'}, date='2026-01-01 00:00:00')
    put_cost(results, 'none', (8,), {'n': 'plain EDSR'}, date='2026-01-05 00:00:00')
    put_cost(results, 'exact_k', (8,), {'n': 'k = 6'}, date='2026-01-01 00:00:00')
    code = leaderboard.cost_identity(config_of('exact'), (8,))['code']
    put_cost(results, 'exact', (8,), {'n': 'edited'}, date='2026-01-09 00:00:00',
             code={**code, 'model.attention': 'edited'})
    for order in (store.ResultStore, Reversed, ByVariant):
        assert leaderboard.build_report(order(tmp_path))['costs'] == {
            'enla_k': {'n': 'newest'}, 'enla_k_cl': {'n': 'newest'}, 'exact_k': {'n': 'k = 6'}}


# --- the files written from a report ------------------------------------------------------------

def row(variant, psnr, low, high, gap, k=6.0, params=1000, vs_none=None, vs_reference=None,
        seeds=None, control=False):
    seeds = seeds if seeds is not None else {0: psnr, 1: psnr}
    return {'variant': variant, 'description': variant, 'control': control, 'k': k,
            'params': params, 'params_vs_none': params / 1000 - 1,
            'more_params': params / 1000 - 1 > 0.1, 'seeds': seeds,
            'diverged': [s for s, p in seeds.items() if p is None], 'psnr': psnr, 'low': low,
            'high': high, 'gap_closed': gap, 'vs_none': vs_none, 'vs_reference': vs_reference}


def comparison(difference, low, high, seeds, verdict, positive):
    return {'difference': difference, 'low': low, 'high': high, 'seeds': seeds,
            'verdict': verdict, 'positive': positive}


def task_entry(task, version, description, ceilings, rows):
    return {'task': task, 'version': version, 'current': ceilings is not None,
            'description': description, 'ceilings': ceilings, 'rows': rows}


def hand_report():
    """A report as `build_report` shapes it, with round numbers: three tasks (one of them the
    control, not the current version), a row that diverged on every seed, two costs, and three
    stale runs of two variants."""
    mosaic = task_entry('mosaic', 1, 'mosaics', {'bicubic': 24.0, 'own cell': 25.0,
                                                 'oracle': 28.0}, [
        row('exact', 21.25, 20.0, 22.5, 0.25, k=1.0, params=1200,
            vs_none=comparison(0.5, 0.1, 0.9, 2, 'better', 2),
            vs_reference=comparison(-0.25, -0.5, 0.0, 2, 'within noise', 0)),
        row('enla_k', 21.05, 20.5, 21.6, 0.35, params=1050,
            vs_none=comparison(0.3, -0.2, 0.8, 2, 'within noise', 1),
            vs_reference=comparison(-0.45, -0.9, -0.1, 2, 'worse', 0)),
        row('none', 20.75, 19.0, 22.5, 0.0, k=None, control=True,
            seeds={0: 20.5, 1: 21.0, 2: None},
            vs_reference=comparison(-1.0, -1.0, -1.0, 1, 'one seed', 0)),
        row('identity', None, None, None, None, params=1090, control=True, seeds={0: None})])
    far = task_entry('mosaic_far', 1, 'far mosaics', {'bicubic': 24.5, 'own cell': 25.5,
                                                      'oracle': 29.0}, [
        row('exact', 22.0, 21.0, 23.0, 0.5, k=1.0, params=1200,
            vs_none=comparison(0.6, 0.2, 1.0, 2, 'better', 2)),
        row('none', 21.0, 20.0, 22.0, 0.0, k=None, control=True)])
    control = task_entry('control', 0, 'the control', None, [
        row('exact', 21.3, 21.1, 21.5, None, k=1.0, params=1200,
            vs_none=comparison(0.3, 0.1, 0.5, 2, 'better', 2)),
        row('none', 21.0, 20.9, 21.1, None, k=None, control=True)])
    costs = {'exact': {'device': 'H200', 'params': 4096, 'rows': [
        {'side': 8, 'fwd ms': 1.0, 'fwd MiB': 2.0, 'GFLOP': 0.5, 'GFLOP lower bound': False},
        {'side': 16, 'fwd ms': 12.5, 'fwd MiB': 3.25, 'GFLOP': 1.234567,
         'GFLOP lower bound': True}]},
        'enla_k': {'device': 'other', 'params': 512, 'rows': []}}
    group = {'steps': 300, 'sets': {'model.amplification': 2.0, 'train.lr': 0.001},
             'tasks': {'mosaic v1': mosaic, 'mosaic_far v1': far, 'control v0': control}}
    stale = [{'variant': 'swin', 'task': 'mosaic', 'seed': 0, 'steps': 300},
             {'variant': 'favor', 'task': 'mosaic', 'seed': 0, 'steps': 300},
             {'variant': 'swin', 'task': 'mosaic', 'seed': 1, 'steps': 300}]
    return {'groups': [group], 'costs': costs, 'stale': stale, 'runs': [],
            'reference': 'enla_k_cl'}


HAND_MARKDOWN = '''\
# Attention leaderboard

PSNR-Y of small x2 ENLCNs (4 blocks x 16 features, 2 attention modules) on synthetic tasks \
(`docs/tasks.md`), mean and 95 % interval over seeds. *gap closed*: the fraction of the gap \
between `none` (EDSR) and the task's oracle that a row closes. *vs none* / *vs enla_k_cl*: the \
paired difference (same seeds, same test images) in dB with its 95 % interval, the verdict, and \
on how many seeds the row was ahead. (control): a row that cannot select by content. ⚑: more \
than 10% more parameters than `none`. k: the amplification.

## 300 steps per run; --set: model.amplification=2.0, train.lr=0.001

Fraction of the gap closed per task (the verdict against `none` beside it):

| variant | k | params | fwd ms (largest size) | mosaic v1 | mosaic_far v1 | control v0 |
|---|---|---|---|---|---|---|
| `exact` ⚑ | 1 | 1,200 | 12.50 | +25% (better) | +50% (better) | - |
| `enla_k` | 6 | 1,050 | - | +35% (within noise) | - | - |
| `none` (control) | - | 1,000 | - | +0% | +0% | - |
| `identity` (control) | 6 | 1,090 | - | - | - | - |

### mosaic v1: mosaics

Ceilings on the held-out images: bicubic 24.00 dB, own cell 25.00 dB, oracle 28.00 dB.

| variant | k | PSNR-Y (dB) [95 %] | gap closed | vs none (dB) | vs enla_k_cl (dB) | seeds | params vs none |
|---|---|---|---|---|---|---|---|
| `exact` ⚑ | 1 | 21.25 [20.00, 22.50] | +25% | +0.50 [+0.10, +0.90] better, 2/2 | -0.25 [-0.50, +0.00] within noise, 0/2 | 2 | +20.0% |
| `enla_k` | 6 | 21.05 [20.50, 21.60] | +35% | +0.30 [-0.20, +0.80] within noise, 1/2 | -0.45 [-0.90, -0.10] worse, 0/2 | 2 | +5.0% |
| `none` (control) | - | 20.75 [19.00, 22.50] | +0% | - | -1.00 (one seed), 0/1 | 3 (1 diverged) | +0.0% |
| `identity` (control) | 6 | diverged | - | - | - | 1 (1 diverged) | +9.0% |

### mosaic_far v1: far mosaics

Ceilings on the held-out images: bicubic 24.50 dB, own cell 25.50 dB, oracle 29.00 dB.

| variant | k | PSNR-Y (dB) [95 %] | gap closed | vs none (dB) | vs enla_k_cl (dB) | seeds | params vs none |
|---|---|---|---|---|---|---|---|
| `exact` ⚑ | 1 | 22.00 [21.00, 23.00] | +50% | +0.60 [+0.20, +1.00] better, 2/2 | - | 2 | +20.0% |
| `none` (control) | - | 21.00 [20.00, 22.00] | +0% | - | - | 2 | +0.0% |

### control v0: the control

Ceilings on the held-out images: not computed (not the current version of the task).

| variant | k | PSNR-Y (dB) [95 %] | gap closed | vs none (dB) | vs enla_k_cl (dB) | seeds | params vs none |
|---|---|---|---|---|---|---|---|
| `exact` ⚑ | 1 | 21.30 [21.10, 21.50] | - | +0.30 [+0.10, +0.50] better, 2/2 | - | 2 | +20.0% |
| `none` (control) | - | 21.00 [20.90, 21.10] | - | - | - | 2 | +0.0% |

On the control nothing non-local can help, yet these rows beat `none`: `exact`. They gain by \
something else (the attention block's parameters, optimisation), up to +0.30 dB: a gain of that \
size on another task is not evidence of attention.

## Cost of one attention module (64 channels)

| variant | fwd ms 8² | fwd ms 16² | MiB 8² | MiB 16² | GFLOP 16² | params |
|---|---|---|---|---|---|---|
| `exact` | 1.00 | 12.50 | 2.00 | 3.25 | ≥1.23 | 4,096 |
| `enla_k` | - | - | - | - | - | 512 |

Measured on H200: the median forward time of one compiled module on `[1, side, side, \
channels]`, XLA's memory estimate of that program and its FLOP count (≥: a lower bound, XLA \
counts a loop body once).

3 stored runs whose code or variant definition was edited since (or that no longer import) are \
left out: `favor`, `swin`.
'''


def test_the_markdown_has_a_summary_per_budget_a_table_per_task_the_costs_and_the_stale():
    assert leaderboard.markdown(hand_report()) == HAND_MARKDOWN


def test_the_summary_is_ordered_by_the_mean_gap_closed_over_the_tasks_that_have_one():
    # exact: +25 % and +50 % (mean 37.5 %), enla_k: +35 % on one task; `none` 0; identity none.
    summary = HAND_MARKDOWN.split('### ')[0]
    assert [line.split('`')[1] for line in summary.splitlines() if line.startswith('| `')] == \
        ['exact', 'enla_k', 'none', 'identity']
    assert leaderboard._mean_gap({'row': {'gap_closed': 9.0}, 'a': {'gap_closed': 0.25},
                                  'b': {'gap_closed': None}, 'c': {'gap_closed': 0.5}}) == 0.375
    assert leaderboard._mean_gap({'row': {'gap_closed': 9.0}, 'b': {'gap_closed': None}}) == \
        float('-inf')


def test_a_board_without_runs_costs_or_stale_runs_is_the_header_alone():
    report = {'groups': [], 'costs': {}, 'stale': [], 'runs': [], 'reference': 'exact'}
    text = leaderboard.markdown(report)
    assert text.startswith('# Attention leaderboard\n\n') and text.endswith(
        'k: the amplification.\n')
    assert text.count('\n') == 3 and '*vs exact*' in text
    group = hand_report()['groups'][0]
    group['sets'] = {}
    text = leaderboard.markdown({**report, 'groups': [group]})
    assert '## 300 steps per run; --set: none\n' in text and '## Cost' not in text
    assert 'stored runs' not in text


def test_the_control_note_names_every_row_that_beats_none_and_the_largest_gain():
    assert leaderboard.control_note([]) == (
        'On the control every row ties with or falls below `none`: no confound shows.')
    rows = [{'variant': 'a', 'vs_none': comparison(0.3, 0.1, 0.5, 3, 'better', 3)},
            {'variant': 'b', 'vs_none': None},
            {'variant': 'c', 'vs_none': comparison(1.5, -0.1, 3.0, 3, 'within noise', 2)},
            {'variant': 'd', 'vs_none': comparison(0.71, 0.2, 1.2, 3, 'better', 3)},
            {'variant': 'e', 'vs_none': comparison(-0.5, -0.9, -0.1, 3, 'worse', 0)}]
    assert leaderboard.control_note(rows[1:2] + rows[4:]) == leaderboard.control_note([])
    assert leaderboard.control_note(rows) == (
        'On the control nothing non-local can help, yet these rows beat `none`: `a`, `d`. They '
        "gain by something else (the attention block's parameters, optimisation), up to "
        '+0.71 dB: a gain of that size on another task is not evidence of attention.')


def test_the_cells_of_a_comparison_a_gap_a_name_a_cost_and_a_flop_count():
    assert leaderboard._comparison(None) == '-'
    assert leaderboard._comparison(comparison(0.123, 0.05, 0.19, 3, 'better', 3)) == \
        '+0.12 [+0.05, +0.19] better, 3/3'
    assert leaderboard._comparison(comparison(-0.5, -0.5, -0.5, 1, 'one seed', 0)) == \
        '-0.50 (one seed), 0/1'
    assert leaderboard._db(None) == leaderboard._db(None, signed=True) == '-'
    assert (leaderboard._db(1.005), leaderboard._db(1.5, signed=True)) == ('1.00', '+1.50')
    assert leaderboard._gap(None) == '-'
    gap = {'gap_closed': 0.125, 'vs_none': comparison(1.0, 0.5, 1.5, 2, 'better', 2)}
    assert (leaderboard._gap(gap), leaderboard._gap(gap, verdict=False)) == \
        ('+12% (better)', '+12%')
    assert leaderboard._gap({**gap, 'vs_none': None}) == '+12%'
    assert leaderboard._gap({**gap, 'gap_closed': None}) == '-'
    assert leaderboard._row_name({'variant': 'v', 'control': True, 'more_params': True}) == \
        '`v` (control) ⚑'
    assert leaderboard._row_name({'variant': 'v', 'control': False, 'more_params': False}) == \
        '`v`'
    rows = [{'side': 8, 'fwd ms': 1.0}, {'side': 16, 'fwd ms': 2.0}, {'side': 32, 'fwd ms': 3.0}]
    assert leaderboard._largest({'rows': rows}, 'fwd ms') == 3.0
    assert leaderboard._largest({'rows': rows}, 'GFLOP') is None
    for empty in (None, {}, {'rows': []}):
        assert leaderboard._largest(empty, 'fwd ms') is None
    assert leaderboard._gflop({}) == leaderboard._gflop({'GFLOP': None}) == '-'
    assert leaderboard._gflop({'GFLOP': 1234.5, 'GFLOP lower bound': False}) == '1.23e+03'
    assert leaderboard._gflop({'GFLOP': 0.5, 'GFLOP lower bound': True}) == '≥0.5'


def test_the_cost_table_takes_its_sizes_and_device_from_the_first_measurement():
    costs = {'a': {'params': 1, 'rows': [{'side': 4, 'fwd ms': 0.25, 'fwd MiB': 0.5,
                                          'GFLOP': 0.1}]},
             'b': {'device': 'TPU', 'params': 2000,
                   'rows': [{'side': 8, 'fwd ms': 9.0, 'fwd MiB': 9.0, 'GFLOP': 9.0}]}}
    assert leaderboard._cost_table(costs).split('\n\n') == [
        '| variant | fwd ms 4² | MiB 4² | GFLOP 4² | params |\n|---|---|---|---|---|\n'
        '| `a` | 0.25 | 0.50 | 0.1 | 1 |\n| `b` | - | - | - | 2,000 |',
        'Measured on ?: the median forward time of one compiled module on `[1, side, side, '
        "channels]`, XLA's memory estimate of that program and its FLOP count (≥: a lower "
        'bound, XLA counts a loop body once).']


def test_the_plot_rows_are_the_newest_budget_s_gaps_with_their_intervals():
    report = hand_report()
    older = {'steps': 100, 'sets': {}, 'tasks': {'other v1': task_entry(
        'other', 1, 'other', {'oracle': 30.0}, [row('nlsn', 21.0, 20.0, 22.0, 0.5)])}}
    rows, plotted = leaderboard.plot_rows({**report, 'groups': [*report['groups'], older]})
    assert plotted == ['mosaic v1', 'mosaic_far v1']            # the control has no gap
    mosaic_gap, far_gap = 28.0 - 20.75, 29.0 - 21.0
    approx = lambda low, high: pytest.approx((low, high))
    assert rows == [
        {'variant': 'exact', 'control': False, 'cost': 12.5,
         'quality': {'mosaic v1': 0.25, 'mosaic_far v1': 0.5, 'control v0': None},
         'interval': {'mosaic v1': approx(-0.75 / mosaic_gap, 1.75 / mosaic_gap),
                      'mosaic_far v1': approx(0.0, 2.0 / far_gap), 'control v0': None}},
        {'variant': 'enla_k', 'control': False, 'cost': None, 'quality': {'mosaic v1': 0.35},
         'interval': {'mosaic v1': approx(-0.25 / mosaic_gap, 0.85 / mosaic_gap)}},
        {'variant': 'none', 'control': True, 'cost': None,
         'quality': {'mosaic v1': 0.0, 'mosaic_far v1': 0.0, 'control v0': None},
         'interval': {'mosaic v1': approx(-1.75 / mosaic_gap, 1.75 / mosaic_gap),
                      'mosaic_far v1': approx(-1.0 / far_gap, 1.0 / far_gap),
                      'control v0': None}},
        {'variant': 'identity', 'control': True, 'cost': None, 'quality': {'mosaic v1': None},
         'interval': {'mosaic v1': None}}]
    assert leaderboard.plot_rows({**report, 'groups': []}) == ([], [])
    # A gap closed but no `none` to measure the interval from: no interval.
    lone = {'steps': 1, 'sets': {}, 'tasks': {'t v1': task_entry('t', 1, 't', {'oracle': 30.0}, [
        row('exact', 21.0, 20.0, 22.0, 0.5),
        row('none', None, None, None, None, k=None, seeds={0: None})])}}
    rows, plotted = leaderboard.plot_rows({**report, 'groups': [lone]})
    assert plotted == ['t v1'] and [r['interval'] for r in rows] == [{'t v1': None}] * 2
    del lone['tasks']['t v1']['rows'][1]
    rows, plotted = leaderboard.plot_rows({**report, 'groups': [lone]})
    assert rows[0]['interval'] == {'t v1': None} and rows[0]['quality'] == {'t v1': 0.5}


def test_the_outputs_are_the_markdown_the_json_and_a_plot_only_where_a_gap_is_drawn(
        tmp_path, monkeypatch):
    drawn = []

    def pareto_plot(rows, path, **labels):
        drawn.append((rows, labels))
        Path(path).write_bytes(b'png')
        return Path(path)
    monkeypatch.setattr(leaderboard.plots, 'pareto_plot', pareto_plot)
    report = hand_report()
    paths = leaderboard.write_outputs(report, tmp_path / 'new')
    assert paths == [tmp_path / 'new' / name for name in ('leaderboard.md', 'leaderboard.json',
                                                          'leaderboard.png')]
    assert paths[0].read_text() == HAND_MARKDOWN + '\n'
    assert paths[1].read_text() == json.dumps(report, indent=1, default=str)
    assert drawn == [(leaderboard.plot_rows(report)[0], {
        'cost_key_label': 'forward ms of one attention module (largest size, 64 channels)',
        'tasks': ['mosaic v1', 'mosaic_far v1'],
        'quality_label': 'fraction of the gap to the oracle closed'})]
    control_only = {**report, 'groups': [{**report['groups'][0], 'tasks': {
        'control v0': report['groups'][0]['tasks']['control v0']}}]}
    for nothing_to_draw in (control_only, {**report, 'groups': []}):
        paths = leaderboard.write_outputs(nothing_to_draw, tmp_path / 'bare')
        assert [p.name for p in paths] == ['leaderboard.md', 'leaderboard.json']
    assert len(drawn) == 1 and not (tmp_path / 'bare' / 'leaderboard.png').exists()


def test_without_a_none_row_the_parameter_comparison_is_a_dash(tmp_path):
    results = store.ResultStore(tmp_path)
    put(results, 'exact', 0, result([20.0, 21.0], params=1100))
    report = leaderboard.build_report(results)
    (row,) = report['groups'][0]['tasks']['tiny v1']['rows']
    assert row['params_vs_none'] is None and not row['more_params']
    task_table_row = [line for line in leaderboard.markdown(report).splitlines()
                      if line.startswith('| `exact`')][-1]
    assert task_table_row.endswith(' | 1 | - |')
