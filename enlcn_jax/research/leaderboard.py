"""The attention leaderboard: every variant on every task over seeds, quality beside cost,
verdicts against `none` and a reference row, results that accumulate in a workdir.

    python -m enlcn_jax.leaderboard --workdir W [--variants ...] [--tasks ...] [--seeds N]
        [--steps N] [--set KEY=VALUE ...]

`run_leaderboard` checks every variant on every task (one line for a bad one, before anything
trains), then trains each (variant, task, seed) not yet stored in W (`store.ResultStore`;
`runs.VariantTrainer` trains and scores), measures each variant's attention module
(`cost.attention_cost`), and writes W/leaderboard.md, .json and .png from everything stored
(`write_outputs`). A second command into W trains only what is missing; Ctrl-C or a kill loses
at most the run in flight. Results of another budget (steps, `--set`), another task version or
edited code (`code_fingerprint`) are never mixed into a row: they form their own group, or are
listed as stale.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Sequence

import jax
import ml_collections
from tqdm import tqdm

import enlcn_jax
from enlcn_jax.nn import attention, features, losses, models, registry
from enlcn_jax.research import cost as cost_lib
from enlcn_jax.research import plots, runs, store as store_lib, tasks as tasks_lib, variants
from enlcn_jax.research import verdicts
from enlcn_jax.storage import files
from enlcn_jax.train import workdir as workdir_lib

DEFAULT_VARIANTS = tuple(variants.VARIANTS)
DEFAULT_SEEDS = 3
DEFAULT_STEPS = 300
REFERENCE = 'enla_k_cl'
COST_SIDES = (32, 64, 128)   # square feature maps of COST_CHANNELS channels
COST_CHANNELS = 64
PARAMS_FLAG = 0.10   # a row with more than this many more parameters than `none` is flagged


class LeaderboardError(ValueError):
    """A bad option; the one-line message names it."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One (variant, task, seed) to train, with the identity its result is stored under."""
    variant: str
    task: tasks_lib.Task
    seed: int
    config: ml_collections.ConfigDict
    identity: dict


def parse_sets(sets: Sequence[str]) -> dict[str, object]:
    """`['train.lr=1e-3', 'model.amplification=4']` -> `{'train.lr': 0.001, ...}`: values are
    Python literals where they read as one, else strings.

    Raises:
      LeaderboardError: a setting without `=`.
    """
    parsed = {}
    for setting in sets:
        key, eq, value = setting.partition('=')
        if not eq or not key.strip():
            raise LeaderboardError(f'--set {setting!r}: expected KEY=VALUE, e.g. '
                                   'train.lr=1e-3')
        parsed[key.strip()] = variants.literal(value.strip())
    return parsed


def base_config(task: tasks_lib.Task, steps: int,
                sets: dict[str, object]) -> ml_collections.ConfigDict:
    """`runs.base_config` with the `--set` values.

    Raises:
      LeaderboardError: an unknown key, naming it.
    """
    config = runs.base_config(task, steps)
    try:
        variants.update_locked(config, dict(sets))
    except (KeyError, AttributeError, TypeError) as e:
        raise LeaderboardError(f'--set {sorted(sets)}: {e}') from None
    return config


def used_functions(config: ml_collections.ConfigDict) -> dict[str, object]:
    """The swappable functions a training config runs, by config key (none for plain EDSR; the
    contrastive loss only where its weight is above 0)."""
    model = config.model
    if model.attention == 'none':
        used = {}
    else:
        used = {'model.attention': attention.ATTENTIONS.get(model.attention),
                'model.feature_map': features.FEATURE_MAPS.get(model.feature_map),
                'model.projection': features.PROJECTIONS.get(model.projection),
                'model.block': models.BLOCKS.get(model.block)}
    if config.train.contrastive.weight > 0 and model.attention != 'none':
        used['train.contrastive.loss'] = losses.CONTRASTIVE_LOSSES.get(
            config.train.contrastive.loss)
    return used


def code_fingerprint(config: ml_collections.ConfigDict) -> dict[str, str]:
    """`{config key: registry.source_fingerprint}` of every function `config` runs, and the
    package version: edit a function's file and its results no longer count."""
    prints = {key: registry.source_fingerprint(fn) for key, fn in used_functions(config).items()}
    return {'enlcn_jax': enlcn_jax.__version__, **prints}


def plan(variant_list: Sequence[str], task_names: Sequence[str], seeds: int, steps: int,
         sets: dict[str, object]) -> list[Run]:
    """Every (task, variant, seed) run with its config and identity, all checked.

    Raises:
      LeaderboardError: an unknown task, a bad `--set`, or a bad variant (one line).
    """
    if not variant_list:
        raise LeaderboardError('--variants is empty: name at least one variant')
    try:
        task_list = [tasks_lib.get_task(name) for name in task_names]
    except ValueError as e:
        raise LeaderboardError(f'--tasks: {e}') from None
    if not task_list:
        raise LeaderboardError('--tasks is empty: name at least one task')
    planned = []
    for task in task_list:
        base = base_config(task, steps, sets)
        for variant in variant_list:
            config, _ = variants.check_variant(base, variant)
            identity_base = {
                'variant': variant, 'config': store_lib.digest(config.to_dict()),
                'code': code_fingerprint(config), 'task': task.name,
                'task_version': task.version, 'steps': steps, 'sets': dict(sorted(sets.items()))}
            planned += [Run(variant, task, seed, config,
                            {**identity_base, 'seed': seed}) for seed in range(seeds)]
    return planned


def cost_identity(config: ml_collections.ConfigDict, sides: Sequence[int]) -> dict:
    """What a cost measurement depends on: the attention module's model keys, their code, the
    sizes and the device."""
    model = {key: config.model[key] for key in (*models.ENLCA_KEYS, 'block')}
    code = {key: value for key, value in code_fingerprint(config).items()
            if not key.startswith('train.')}
    return {'model': model, 'code': code, 'sides': list(sides), 'channels': COST_CHANNELS,
            'device': jax.devices()[0].device_kind}


def run_leaderboard(workdir: str | Path, variant_list: Sequence[str] = DEFAULT_VARIANTS,
                    task_names: Sequence[str] = tuple(tasks_lib.TASKS), *,
                    seeds: int = DEFAULT_SEEDS, steps: int = DEFAULT_STEPS,
                    sets: dict[str, object] | None = None, cost_sides: Sequence[int] = COST_SIDES,
                    reference: str = REFERENCE, progress: bool = True) -> dict:
    """Trains what `workdir` lacks, measures costs, writes the leaderboard files.

    Args:
      workdir: the store and the outputs (`leaderboard.md`, `.json`, `.png`).
      variant_list: as `variants.variant_config` takes them.
      task_names: names of `tasks.TASKS`.
      seeds: runs per variant and task (seeds 0 .. seeds - 1).
      steps: train steps per run.
      sets: config values set for every row (`parse_sets`), recorded with the results.
      cost_sides: square feature-map sides at which each attention module is measured.
      reference: the variant every row is also compared with.
      progress: a progress bar over the runs.
    Returns:
      The report written to `leaderboard.json` (`build_report`).
    Raises:
      LeaderboardError, variants.VariantError: a bad option (before anything trains).
      workdir.WorkdirError: another command holds `workdir`.
      files.WriteError: a record or an output cannot be written.
    """
    sets = dict(sets or {})
    planned = plan(variant_list, task_names, seeds, steps, sets)
    results = store_lib.ResultStore(workdir)
    with workdir_lib.WorkdirLock(workdir):
        pending = [run for run in planned if results.get('runs', run.identity) is None]
        bar = tqdm(total=len(pending), desc='leaderboard', unit='run', disable=not progress,
                   file=sys.stderr)
        trainer, trainer_key = None, None
        for run in pending:
            if trainer_key != (run.variant, run.task.name):
                trainer = runs.VariantTrainer(run.config, run.task)
                trainer_key = (run.variant, run.task.name)
            bar.set_postfix_str(f'{run.variant} on {run.task.name}, seed {run.seed}')
            result = trainer.run(run.seed, steps)
            results.put('runs', run.identity, result, store_lib.ledger())
            bar.update()
        bar.close()
        measured = {}
        for run in planned:
            if run.variant in measured or run.config.model.attention == 'none':
                continue
            identity = cost_identity(run.config, cost_sides)
            measured[run.variant] = results.get('costs', identity)
            if measured[run.variant] is None:
                measured[run.variant] = cost_lib.attention_cost(
                    run.config.model.to_dict(), sizes=tuple(cost_sides), channels=COST_CHANNELS)
                results.put('costs', identity, measured[run.variant], store_lib.ledger())
        report = build_report(results, reference)
        write_outputs(report, workdir)
    return report


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A stored variant as it resolves now: its config and description, the config's digest and
    the fingerprint of the code it runs (a stored run counts only while both are the same)."""
    config: ml_collections.ConfigDict
    description: str
    digest: str
    code: dict[str, str]


Resolver = Callable[[str, str, int, dict], 'Resolved | None']


def resolver() -> Resolver:
    """`resolve(variant, task, steps, sets) -> Resolved`, or None for a variant that no longer
    resolves; each distinct argument tuple is resolved (and its code fingerprinted) once."""
    cache: dict[tuple, Resolved | None] = {}

    def resolve(variant: str, task: str, steps: int, sets: dict) -> Resolved | None:
        key = (variant, task, steps, json.dumps(sets, sort_keys=True))
        if key not in cache:
            try:
                config, description = variants.variant_config(
                    base_config(tasks_lib.get_task(task), steps, sets), variant)
                cache[key] = Resolved(config, description, store_lib.digest(config.to_dict()),
                                      code_fingerprint(config))
            except Exception:  # pylint: disable=broad-except  # a variant that no longer resolves
                cache[key] = None
        return cache[key]

    return resolve


def build_report(results: store_lib.ResultStore, reference: str = REFERENCE) -> dict:
    """The leaderboard from every stored run and cost.

    Runs are grouped by budget (steps and `--set` values), then by task and task version; in a
    group, one row per variant with every seed's result. Runs whose variant's code or
    definition (the config it resolves to) changed since, or that no longer resolve, are left
    out and listed in `stale`.

    Returns:
      `{'groups': [{'steps', 'sets', 'tasks': {task: {'version', 'description', 'current',
      'ceilings', 'rows': [...]}}}], 'costs': {variant: cost}, 'stale': [...], 'runs': [...],
      'reference': reference}`; a row is `{'variant', 'description', 'control', 'k', 'params',
      'params_vs_none', 'more_params', 'seeds': {seed: PSNR or None if diverged}, 'diverged',
      'psnr', 'low', 'high', 'gap_closed', 'vs_none', 'vs_reference'}` (`verdicts.paired`).
    """
    records = list(results.records('runs'))
    resolve = resolver()
    groups: dict[tuple, dict] = {}
    stale, ledger = [], []
    for record in records:
        identity, result = record['identity'], record['result']
        sets_key = json.dumps(identity['sets'], sort_keys=True)
        now = resolve(identity['variant'], identity['task'], identity['steps'], identity['sets'])
        if now is None or (now.digest, now.code) != (identity['config'], identity['code']):
            stale.append({'variant': identity['variant'], 'task': identity['task'],
                          'seed': identity['seed'], 'steps': identity['steps']})
            continue
        ledger.append({**{k: identity[k] for k in ('variant', 'task', 'task_version', 'seed',
                                                   'steps', 'sets', 'code')},
                       **record.get('ledger', {}), 'seconds': result.get('seconds'),
                       'diverged': result.get('diverged', False)})
        group = groups.setdefault((identity['steps'], sets_key),
                                  {'steps': identity['steps'], 'sets': identity['sets'],
                                   'tasks': {}})
        task_key = f"{identity['task']} v{identity['task_version']}"
        runs_by_variant = group['tasks'].setdefault(task_key, {
            'task': identity['task'], 'version': identity['task_version'], 'runs': {}})['runs']
        runs_by_variant.setdefault(identity['variant'], {})[identity['seed']] = result
    order = {name: i for i, name in enumerate(tasks_lib.TASKS)}
    for group in groups.values():
        group['tasks'] = dict(sorted(group['tasks'].items(), key=lambda item: (
            order.get(item[1]['task'], len(order)), item[0])))
        for entry in group['tasks'].values():
            _score_task(entry, reference, group, resolve)
    costs = _costs_by_variant(results, records, resolve)
    ordered = sorted(groups.values(), key=lambda g: (-g['steps'], json.dumps(g['sets'])))
    return {'groups': ordered, 'costs': costs, 'stale': stale, 'runs': ledger,
            'reference': reference}


def _costs_by_variant(results: store_lib.ResultStore, run_records: list[dict],
                      resolve: Resolver) -> dict[str, dict]:
    """`variant -> cost` for every stored run's variant whose attention module (its model keys
    and their code, as it resolves now) has a stored measurement; the newest where several
    (other sizes, devices) exist. Variants that differ only in training (`enla_k`,
    `enla_k_cl`) share one module and so one cost."""
    measured = sorted(results.records('costs'), key=lambda r: r.get('ledger', {}).get('date', ''))
    costs = {}
    for record in run_records:
        identity = record['identity']
        if identity['variant'] in costs:
            continue
        now = resolve(identity['variant'], identity['task'], identity['steps'], identity['sets'])
        if now is None or now.config.model.attention == 'none':
            continue
        model = {key: now.config.model[key] for key in (*models.ENLCA_KEYS, 'block')}
        for cost in measured:
            if cost['identity']['model'] == model and all(
                    now.code.get(key) == value for key, value in cost['identity']['code'].items()):
                costs[identity['variant']] = cost['result']
    return costs


def _score_task(entry: dict, reference: str, group: dict, resolve: Resolver) -> None:
    """Fills `entry` (one task of one budget) with its rows (see `build_report`)."""
    task_runs = entry.pop('runs')
    try:
        task = tasks_lib.get_task(entry['task'])
    except ValueError:
        task = None
    entry['current'] = task is not None and task.version == entry['version']
    entry['description'] = task.describe() if task is not None else entry['task']
    entry['ceilings'] = tasks_lib.ceilings(task) if entry['current'] else None
    images = {variant: {seed: r['psnr_images'] for seed, r in seeds.items()
                        if not r.get('diverged')} for variant, seeds in task_runs.items()}
    none_params = next((r['params'] for r in task_runs.get('none', {}).values()), None)
    none_psnr = _mean_psnr(task_runs.get('none', {}))
    rows = []
    for variant, seeds in task_runs.items():
        finished = {seed: r['psnr'] for seed, r in sorted(seeds.items())}
        scores = [p for p in finished.values() if p is not None]
        params = next(iter(seeds.values()))['params']
        now = resolve(variant, entry['task'], group['steps'], group['sets'])
        row = {'variant': variant, 'description': now.description if now else variant,
               'control': variants.is_control(variant),
               'k': _amplification(now.config if now else None),
               'params': params,
               'params_vs_none': params / none_params - 1 if none_params else None,
               'seeds': finished,
               'diverged': [seed for seed, p in finished.items() if p is None]}
        if scores:
            row['psnr'], row['low'], row['high'] = verdicts.interval(scores)
        else:
            row['psnr'] = row['low'] = row['high'] = None
        # Compared in whole parameters: 1100 / 1000 - 1 is 0.10000000000000009 in floats.
        row['more_params'] = bool(none_params) and params - none_params > PARAMS_FLAG * none_params
        row['gap_closed'] = (verdicts.gap_closed(row['psnr'], none_psnr,
                                                 entry['ceilings']['oracle'])
                             if entry['ceilings'] and row['psnr'] is not None
                             and none_psnr is not None else None)
        row['vs_none'] = (verdicts.paired(images[variant], images['none'])
                          if 'none' in images and variant != 'none' else None)
        row['vs_reference'] = (verdicts.paired(images[variant], images[reference])
                               if reference in images and variant != reference else None)
        rows.append(row)
    rows.sort(key=lambda r: (r['psnr'] is None, -(r['psnr'] or 0.0)))
    entry['rows'] = rows


def _mean_psnr(seeds: dict) -> float | None:
    scores = [r['psnr'] for r in seeds.values() if r.get('psnr') is not None]
    return statistics.fmean(scores) if scores else None


def _amplification(config: ml_collections.ConfigDict | None) -> float | None:
    """The k of a row; None for plain EDSR, which has no attention."""
    if config is None or config.model.attention == 'none':
        return None
    return config.model.amplification


def _db(value: float | None, signed: bool = False) -> str:
    return '-' if value is None else (f'{value:+.2f}' if signed else f'{value:.2f}')


def _comparison(result: dict | None) -> str:
    """`+0.12 [+0.05, +0.19] better, 3/3`: the difference, its interval, the verdict and the
    seeds on which the row was ahead; `-` without a comparison."""
    if result is None:
        return '-'
    ahead = f"{result['positive']}/{result['seeds']}"
    if result['seeds'] < 2:
        return f"{result['difference']:+.2f} ({result['verdict']}), {ahead}"
    return (f"{result['difference']:+.2f} [{result['low']:+.2f}, {result['high']:+.2f}] "
            f"{result['verdict']}, {ahead}")


def _largest(cost: dict | None, key: str) -> float | None:
    """`key` of the largest size a cost measured (None where not run)."""
    if not cost or not cost.get('rows'):
        return None
    return cost['rows'][-1].get(key)


def _row_name(row: dict) -> str:
    marks = (' (control)' if row['control'] else '') + (' ⚑' if row['more_params'] else '')
    return f"`{row['variant']}`{marks}"


def markdown(report: dict) -> str:
    """The leaderboard as markdown: per budget, a summary (fraction of each task's gap closed,
    cost) and one table per task with intervals and paired verdicts; then the costs."""
    reference = report['reference']
    lines = ['# Attention leaderboard', '',
             'PSNR-Y of small x2 ENLCNs (4 blocks x 16 features, 2 attention modules) on '
             'synthetic tasks (`docs/tasks.md`), mean and 95 % interval over seeds. *gap '
             "closed*: the fraction of the gap between `none` (EDSR) and the task's oracle that "
             'a row closes. *vs none* / *vs ' + reference + '*: the paired difference (same '
             'seeds, same test images) in dB with its 95 % interval, the verdict, and on how '
             'many seeds the row was ahead. '
             '(control): a row that cannot select by content. ⚑: more than '
             f'{PARAMS_FLAG:.0%} more parameters than `none`. k: the amplification.', '']
    costs = report['costs']
    for group in report['groups']:
        sets = ', '.join(f'{k}={v}' for k, v in group['sets'].items()) or 'none'
        lines += [f"## {group['steps']} steps per run; --set: {sets}", '']
        task_keys = list(group['tasks'])
        summary = {}
        for task_key, entry in group['tasks'].items():
            for row in entry['rows']:
                summary.setdefault(row['variant'], {'row': row})[task_key] = row
        summary = dict(sorted(summary.items(), key=lambda item: -_mean_gap(item[1])))
        head = ['variant', 'k', 'params', 'fwd ms (largest size)', *task_keys]
        cells = []
        for variant, by_task in summary.items():
            row = by_task['row']
            cost = costs.get(variant)
            cells.append([_row_name(row), '-' if row['k'] is None else f"{row['k']:g}",
                          f"{row['params']:,}", _db(_largest(cost, 'fwd ms')) if cost else '-',
                          *[_gap(by_task.get(t)) for t in task_keys]])
        lines += ['Fraction of the gap closed per task (the verdict against `none` beside it):',
                  '', files.markdown_table(head, cells), '']
        for task_key, entry in group['tasks'].items():
            ceilings = entry['ceilings']
            ceiling_text = (', '.join(f'{name} {value:.2f} dB' for name, value in ceilings.items())
                            if ceilings else 'not computed (not the current version of the task)')
            lines += [f"### {task_key}: {entry['description']}", '',
                      f'Ceilings on the held-out images: {ceiling_text}.', '']
            head = ['variant', 'k', 'PSNR-Y (dB) [95 %]', 'gap closed', 'vs none (dB)',
                    f'vs {reference} (dB)', 'seeds', 'params vs none']
            cells = []
            for row in entry['rows']:
                psnr = ('diverged' if row['psnr'] is None else
                        f"{row['psnr']:.2f} [{row['low']:.2f}, {row['high']:.2f}]")
                seeds = f"{len(row['seeds'])}" + (f" ({len(row['diverged'])} diverged)"
                                                  if row['diverged'] else '')
                cells.append([_row_name(row), '-' if row['k'] is None else f"{row['k']:g}", psnr,
                              _gap(row, verdict=False), _comparison(row['vs_none']),
                              _comparison(row['vs_reference']), seeds,
                              '-' if row['params_vs_none'] is None
                              else f"{row['params_vs_none']:+.1%}"])
            lines += [files.markdown_table(head, cells), '']
            if entry['task'] == 'control':
                lines += [control_note(entry['rows']), '']
    if costs:
        lines += [f'## Cost of one attention module ({COST_CHANNELS} channels)', '',
                  _cost_table(costs), '']
    if report['stale']:
        variants_stale = sorted({s['variant'] for s in report['stale']})
        lines += [f"{len(report['stale'])} stored runs whose code or variant definition was "
                  'edited since (or that no longer import) are left out: '
                  + ', '.join(f'`{v}`' for v in variants_stale)
                  + '.', '']
    return '\n'.join(lines)


def control_note(rows: list[dict]) -> str:
    """What the control task says: the rows better than `none` there, which gain by something
    other than non-local information (the block's parameters, optimisation), and the largest
    such gain, below which a gain on another task is not evidence of attention."""
    confounded = [r for r in rows if r['vs_none'] and r['vs_none']['verdict'] == verdicts.BETTER]
    if not confounded:
        return 'On the control every row ties with or falls below `none`: no confound shows.'
    largest = max(r['vs_none']['difference'] for r in confounded)
    return ('On the control nothing non-local can help, yet these rows beat `none`: '
            + ', '.join(f'`{r["variant"]}`' for r in confounded) + '. They gain by something '
            'else (the attention block\'s parameters, optimisation), up to '
            f'{largest:+.2f} dB: a gain of that size on another task is not evidence of '
            'attention.')


def _mean_gap(by_task: dict) -> float:
    """The mean fraction of the gap a variant closes over the tasks that have one (-inf if
    none), the summary's order."""
    gaps = [row['gap_closed'] for key, row in by_task.items()
            if key != 'row' and row['gap_closed'] is not None]
    return statistics.fmean(gaps) if gaps else float('-inf')


def _gap(row: dict | None, verdict: bool = True) -> str:
    if row is None or row['gap_closed'] is None:
        return '-'
    text = f"{row['gap_closed']:+.0%}"
    if verdict and row['vs_none'] is not None:
        text += f" ({row['vs_none']['verdict']})"
    return text


def _cost_table(costs: dict) -> str:
    sides = [row['side'] for row in next(iter(costs.values()))['rows']]
    head = ['variant', *[f'fwd ms {s}²' for s in sides], *[f'MiB {s}²' for s in sides],
            f'GFLOP {sides[-1]}²', 'params']
    cells = []
    for variant, cost in costs.items():
        rows = {row['side']: row for row in cost['rows']}
        cells.append([f'`{variant}`', *[_db(rows.get(s, {}).get('fwd ms')) for s in sides],
                      *[_db(rows.get(s, {}).get('fwd MiB')) for s in sides],
                      _gflop(rows.get(sides[-1], {})), f"{cost['params']:,}"])
    device = next(iter(costs.values())).get('device', '?')
    return files.markdown_table(head, cells) + (
        f'\n\nMeasured on {device}: the median forward time of one compiled module on '
        '`[1, side, side, channels]`, XLA\'s memory estimate of that program and its FLOP count '
        '(≥: a lower bound, XLA counts a loop body once).')


def _gflop(row: dict) -> str:
    if row.get('GFLOP') is None:
        return '-'
    return ('≥' if row.get('GFLOP lower bound') else '') + f"{row['GFLOP']:.3g}"


def plot_rows(report: dict) -> tuple[list[dict], list[str]]:
    """The newest budget's rows for `plots.pareto_plot` and the tasks to draw: cost = forward ms
    at the largest size, quality = fraction of the gap closed per task, with its 95 % interval;
    tasks with no gap (the control) are not drawn."""
    if not report['groups']:
        return [], []
    group = report['groups'][0]
    rows: dict[str, dict] = {}
    for task_key, entry in group['tasks'].items():
        ceilings = entry['ceilings']
        none = next((r for r in entry['rows'] if r['variant'] == 'none'), None)
        for row in entry['rows']:
            item = rows.setdefault(row['variant'], {
                'variant': row['variant'], 'control': row['control'],
                'cost': _largest(report['costs'].get(row['variant']), 'fwd ms'),
                'quality': {}, 'interval': {}})
            item['quality'][task_key] = row['gap_closed']
            if row['gap_closed'] is not None and none and none['psnr'] is not None:
                gap = ceilings['oracle'] - none['psnr']
                item['interval'][task_key] = ((row['low'] - none['psnr']) / gap,
                                              (row['high'] - none['psnr']) / gap)
            else:
                item['interval'][task_key] = None
    # A task without a gap (the control: its oracle is no better than one cell's own estimate)
    # has no quality axis here; its table says what it shows.
    plotted = [key for key in group['tasks']
               if any(row['quality'].get(key) is not None for row in rows.values())]
    return list(rows.values()), plotted


def write_outputs(report: dict, workdir: str | Path) -> list[Path]:
    """Writes `leaderboard.md`, `.json` and `.png` in `workdir`, each atomically; returns the
    paths."""
    workdir = Path(workdir)
    paths = [files.write_text(workdir / 'leaderboard.md', markdown(report) + '\n'),
             files.write_text(workdir / 'leaderboard.json',
                              json.dumps(report, indent=1, default=str))]
    rows, task_keys = plot_rows(report)
    if rows and task_keys:
        paths.append(plots.pareto_plot(rows, workdir / 'leaderboard.png',
                                       cost_key_label='forward ms of one attention module '
                                       f'(largest size, {COST_CHANNELS} channels)',
                                       tasks=task_keys,
                                       quality_label="fraction of the gap to the oracle closed"))
    return paths
