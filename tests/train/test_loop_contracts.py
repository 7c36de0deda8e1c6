"""Contracts of the training loop (`train/loop.py`), read from two tiny trainings of the same
14-step run whose cadences do not line up: 7 epochs of 2 steps, logged every 5 steps, saved
every 4 (2 kept), validated every 3 epochs (6 steps). So after step

    4: log, save     5: log     6: log, validate     8: log, save     10: log
    12: log, save, validate     14 (the last): log, save, validate

`straight` trains it at once; `resumed` trains it in three starts: Ctrl-C during step 6 (saved
off the save cadence, not validated), a non-finite loss logged for step 11 (stops at the log of
step 12, after the log of step 10 and the save of step 8), then to the end. What the loop
writes, and in which order, is recorded by spies on the functions it calls (the train step,
the saves, the progress bar, its log lines). A copy of the straight run's workdir is started
again: after a kill between its last save and that save's validation, with changed images, a
changed config, a changed function source.

Also the one-line failures of `run_training` (checked before any training)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import error_message, tiny_config
from enlcn_jax.data import datasets, input_pipeline, sources
from enlcn_jax.evaluation import evaluator, inference
from enlcn_jax.storage import checkpoints, files
from enlcn_jax.train import config_check, loop, recipe, saving
from enlcn_jax.train import workdir as workdir_lib

RUN = dict(model__n_resblocks=1, model__n_feats=8, model__num_random_features=8,
           model__attention_every=1, data__batch_size=2, train__seed=1,
           train__epochs=7, train__steps_per_epoch=2, train__log_every=5,
           train__checkpoint_every_steps=4, train__eval_every_epochs=3, train__keep_checkpoints=2,
           train__lr_decay_epochs=(2,))
LOGGED, SAVED, VALIDATED = [4, 5, 6, 8, 10, 12, 14], [4, 8, 12, 14], [6, 12, 14]
TIMING = ('train/steps_per_s', 'train/images_per_s')
EXPLANATION = 'EXPLANATION.'


def config(**overrides):
    return tiny_config(**{**RUN, **overrides})


def read_records(workdir: Path) -> list[dict]:
    path = workdir / 'metrics.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kinds(records: list[dict]) -> list[tuple[int, str]]:
    """`(step, 'train' or 'val')` of each record, in order."""
    return [(r['step'], 'val' if 'val/psnr_y' in r else 'train') for r in records]


class Bar:
    """Stands for `tqdm.tqdm` in the loop: records its arguments and calls."""

    def __init__(self, bars: list, **kwargs):
        self.kwargs, self.updates, self.postfixes, self.closed = kwargs, 0, [], False
        bars.append(self)

    def update(self):
        self.updates += 1

    def set_postfix(self, **postfix):
        self.postfixes.append(postfix)

    def close(self):
        self.closed = True


class Spies:
    """Spies on what one training calls; `start(workdir, actions)` before each start, where
    `actions` maps a step (1-based) to 'ctrl-c' (SIGINT to this process during it) or 'nan'
    (its logged loss replaced by NaN)."""

    def __init__(self, patch: pytest.MonkeyPatch):
        self.events: list[tuple] = []  # in order: ('step', n), ('save', n, ...), ('best', ...)
        self.losses: dict[int, float] = {}
        self.batches: dict[int, dict] = {}
        self.bars: list[Bar] = []
        self.logs: list[logging.LogRecord] = []
        self.explained: list[dict] = []
        self.workdir, self.actions = None, {}
        real_step, real_save = recipe.compile_train_step, checkpoints.save_checkpoint
        real_best, real_check = checkpoints.save_best, workdir_lib.WorkdirLock.check_in_place
        real_finish = saving.Checkpointing.finish

        def compile_train_step(*args):
            train_step = real_step(*args)

            def step(state, batch):
                done = int(state.step) + 1
                self.events.append(('step', done))
                state, metrics = train_step(state, batch)
                self.losses[done] = float(metrics['loss'])
                self.batches[done] = jax.device_get(batch)
                action = self.actions.get(done)
                if action == 'ctrl-c':
                    os.kill(os.getpid(), signal.SIGINT)
                elif action == 'nan':
                    metrics = {**metrics, 'loss': jnp.full_like(metrics['loss'], jnp.nan)}
                return state, metrics
            return step

        def save_checkpoint(manager, step, items, record):
            self.events.append(('save', step, kinds(read_records(self.workdir)), record))
            real_save(manager, step, items, record)

        def save_best(manager, step, variables, psnr_y, record):
            self.events.append(('best', step, psnr_y, kinds(read_records(self.workdir))))
            real_best(manager, step, variables, psnr_y, record)

        def check_in_place(lock):
            self.events.append(('lock', kinds(read_records(self.workdir))))
            real_check(lock)

        def finish(saves):
            """Closes the managers; after a non-finite loss, then fails as a full disk would."""
            self.events.append(('finish',))
            real_finish(saves)
            if 'nan' in self.actions.values():
                raise files.WriteError('cannot write the checkpoint: no space left on device')

        def explain(config, model, manager, batch_of, step):
            self.explained.append({'config': config.to_dict(), 'model': model,
                                   'latest': manager.latest_step(), 'step': step,
                                   'batch': batch_of(step - 1)})
            return EXPLANATION

        patch.setattr(recipe, 'compile_train_step', compile_train_step)
        patch.setattr(checkpoints, 'save_checkpoint', save_checkpoint)
        patch.setattr(checkpoints, 'save_best', save_best)
        patch.setattr(workdir_lib.WorkdirLock, 'check_in_place', check_in_place)
        patch.setattr(recipe, 'explain_non_finite_loss', explain)
        patch.setattr(saving.Checkpointing, 'finish', finish)
        patch.setattr(loop.tqdm, 'tqdm', lambda **kwargs: Bar(self.bars, **kwargs))

    def start(self, workdir: Path, actions: dict | None = None) -> None:
        self.workdir, self.actions = workdir, actions or {}
        self.events.append(('start',))

    def emit(self, record: logging.LogRecord) -> None:
        self.logs.append(record)

    def messages(self) -> list[str]:
        """The loop's own log lines."""
        return [r.getMessage() for r in self.logs if r.filename == 'loop.py']


def train(run, workdir: Path, starts: list[dict]) -> tuple[Spies, list]:
    """Trains the run in `workdir` with `run` (`loop.train_and_evaluate` or `run_training`),
    one start per `actions` dict of `starts`, spied on: `(spies, each start's result)`."""
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    with pytest.MonkeyPatch.context() as patch:
        spies, results = Spies(patch), []
        handler = logging.Handler(logging.INFO)
        handler.emit = spies.emit
        absl_logger.addHandler(handler)
        absl_logger.setLevel(logging.INFO)
        try:
            for actions in starts:
                spies.start(workdir, actions)
                results.append(run(config(), workdir))
        finally:
            absl_logger.removeHandler(handler)
            absl_logger.setLevel(level)
    return spies, results


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    """`(workdir, spies, final state)` of the run trained at once."""
    workdir = tmp_path_factory.mktemp('straight')
    spies, (state,) = train(loop.train_and_evaluate, workdir, [{}])
    return workdir, spies, state


@pytest.fixture(scope='module')
def resumed(tmp_path_factory):
    """`(workdir, spies, what each start returned)` of the run trained in three starts."""
    workdir = tmp_path_factory.mktemp('resumed')
    spies, results = train(loop.run_training, workdir, [{6: 'ctrl-c'}, {11: 'nan'}, {}])
    return workdir, spies, results


# --- the straight run --------------------------------------------------------------------------

def test_the_straight_run_logs_saves_and_validates_in_order_at_its_cadences(straight):
    """Every check below on the run trained at once. One test: mutmut runs, for a mutant, the
    tests that called the mutated function, and only the first test to use a module fixture
    calls the loop."""
    for check in (logs_saves_and_validations_come_at_their_cadences_and_after_the_last_step,
                  the_random_features_are_redrawn_at_each_epoch_start,
                  each_step_trains_on_the_batch_of_its_index_drawn_with_the_run_s_seed,
                  each_save_and_validation_follows_the_log_of_its_step_and_the_workdir_check,
                  each_record_holds_the_mean_of_its_window_and_the_speed,
                  validation_scores_the_saved_model_with_the_eval_bucket_and_offers_it_to_best,
                  every_checkpoint_records_the_config_data_and_code_of_the_run,
                  the_progress_bar_counts_the_steps_and_shows_each_logged_window,
                  the_log_tells_each_validation_and_the_final_score):
        check(straight)


def logs_saves_and_validations_come_at_their_cadences_and_after_the_last_step(straight) -> None:
    workdir, spies, state = straight
    assert int(state.step) == 14
    assert kinds(read_records(workdir)) == [(4, 'train'), (5, 'train'), (6, 'train'), (6, 'val'),
                                            (8, 'train'), (10, 'train'), (12, 'train'),
                                            (12, 'val'), (14, 'train'), (14, 'val')]
    assert [e[1] for e in spies.events if e[0] == 'save'] == SAVED
    assert [e[1] for e in spies.events if e[0] == 'best'] == VALIDATED
    assert [e[1] for e in spies.events if e[0] == 'step'] == list(range(1, 15))
    assert checkpoints.latest_manager(workdir, read_only=True).all_steps() == [12, 14]


def the_random_features_are_redrawn_at_each_epoch_start(straight) -> None:
    """The final features are draw 6 (the start of the last epoch, step 13) from the run's key,
    not the initial ones."""
    _, _, state = straight
    cfg = config()
    model = recipe.create_model(cfg)
    initial = recipe.create_train_state(cfg, model, jax.random.PRNGKey(cfg.train.seed))
    assert recipe.redraw_index(12, cfg) == 6
    expected = recipe.draw_random_features(model, initial.random_features, initial.rng, 6)
    leaves = jax.tree.leaves(state.random_features)
    assert leaves and not all(np.array_equal(a, b) for a, b in
                              zip(leaves, jax.tree.leaves(initial.random_features)))
    for a, b in zip(leaves, jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def assert_batches_drawn_with_the_run_s_seed(spies: Spies) -> None:
    """Step s trained on `PatchLoader(seed=train.seed).batch(s - 1)`, for every step."""
    cfg = config()
    train_ds, _ = datasets.load_datasets(cfg)
    loader = input_pipeline.PatchLoader(train_ds, cfg.data.batch_size, cfg.data.lr_patch,
                                        seed=cfg.train.seed)
    try:
        assert sorted(spies.batches) == list(range(1, 15))
        for step, batch in spies.batches.items():
            expected = loader.batch(step - 1)
            assert batch.keys() == expected.keys()
            assert all(np.array_equal(batch[k], expected[k]) for k in expected), step
    finally:
        loader.close()


def each_step_trains_on_the_batch_of_its_index_drawn_with_the_run_s_seed(straight) -> None:
    assert_batches_drawn_with_the_run_s_seed(straight[1])
    # The managers are closed once, after the last save.
    assert [e[0] for e in straight[1].events if e[0] in ('save', 'finish')][-2:] == [
        'save', 'finish']
    assert sum(e[0] == 'finish' for e in straight[1].events) == 1


def each_save_and_validation_follows_the_log_of_its_step_and_the_workdir_check(straight):
    """Before each log the workdir lock is checked in place; a save finds its step's record
    written (flushed); best/ is offered the model before its score is recorded."""
    _, spies, _ = straight
    after = {}
    for event in spies.events:
        if event[0] == 'lock':
            after.setdefault('locks', []).append(event[1][-1][0] if event[1] else 0)
        elif event[0] == 'save':
            assert event[2][-1] == (event[1], 'train'), event[:3]
        elif event[0] == 'best':
            assert event[3][-1] == (event[1], 'train'), event[:2]
    # Each check comes before its step's record: the previous logged step is the last written.
    assert after['locks'] == [0, *LOGGED[:-1]]


def each_record_holds_the_mean_of_its_window_and_the_speed(straight) -> None:
    workdir, spies, _ = straight
    train = [r for r in read_records(workdir) if 'train/loss' in r]
    batch_size = config().data.batch_size
    previous = 0
    for record in train:
        window = range(previous + 1, record['step'] + 1)
        assert record['train/loss'] == pytest.approx(
            np.mean([spies.losses[s] for s in window]), rel=1e-6), record['step']
        assert record['train/steps_per_s'] > 0
        assert record['train/images_per_s'] == pytest.approx(
            record['train/steps_per_s'] * batch_size, rel=1e-12)
        assert set(record) == {'step', 'train/loss', 'train/l1', 'train/contrastive',
                               'train/contrastive_weight', 'train/grad_norm', 'train/lr', *TIMING}
        previous = record['step']


def validation_scores_the_saved_model_with_the_eval_bucket_and_offers_it_to_best(straight):
    workdir, spies, _ = straight
    cfg = config()
    validations = [r for r in read_records(workdir) if 'val/psnr_y' in r]
    _, val_ds = datasets.load_datasets(cfg)
    bicubic = evaluator.evaluate_in_memory(
        val_ds, inference.BicubicUpscaler(val_ds.scale)).summary()['psnr']
    assert all(set(r) == {'step', 'val/psnr_y', 'val/ssim_y', 'val/bicubic_psnr_y'}
               for r in validations)
    assert all(r['val/bicubic_psnr_y'] == pytest.approx(bicubic, abs=1e-9) for r in validations)
    offered = {e[1]: e[2] for e in spies.events if e[0] == 'best'}
    assert offered == {r['step']: r['val/psnr_y'] for r in validations}
    best = checkpoints.best_manager(workdir, read_only=True)
    assert best.all_steps() == [max(offered, key=offered.get)]
    for which, step in (('latest', 14), ('best', best.all_steps()[0])):
        upscaler = inference.load_upscaler(workdir, which, bucket=cfg.train.eval_bucket)
        scores = evaluator.evaluate_in_memory(val_ds, upscaler).summary()
        (record,) = [r for r in validations if r['step'] == step]
        assert scores['psnr'] == pytest.approx(record['val/psnr_y'], abs=1e-9)
        assert scores['ssim'] == pytest.approx(record['val/ssim_y'], abs=1e-12)


def every_checkpoint_records_the_config_data_and_code_of_the_run(straight) -> None:
    workdir, spies, _ = straight
    cfg = config()
    train_ds, val_ds = datasets.load_datasets(cfg)
    expected = {'config': cfg.to_dict(),
                'data': {'train': datasets.fingerprint(train_ds),
                         'val': datasets.fingerprint(val_ds)},
                'code': workdir_lib.code_fingerprints(cfg)}
    assert all(e[3] == expected for e in spies.events if e[0] == 'save')
    manager = checkpoints.latest_manager(workdir, read_only=True)
    record = checkpoints.saved_record(manager, 14)
    assert {key: record[key] for key in expected} == json.loads(json.dumps(expected))
    assert json.loads((workdir / workdir_lib.CONFIG_FILE).read_text()) == json.loads(
        json.dumps(cfg.to_dict()))
    assert json.loads((workdir / checkpoints.MODEL_CONFIG).read_text()) == json.loads(
        json.dumps(cfg.model.to_dict()))


def the_progress_bar_counts_the_steps_and_shows_each_logged_window(straight) -> None:
    workdir, spies, _ = straight
    (bar,) = spies.bars
    assert bar.kwargs == {'total': 14, 'initial': 0, 'unit': 'step', 'disable': False,
                          'dynamic_ncols': True}
    assert bar.updates == 14 and bar.closed
    lr = recipe.create_learning_rate_fn(config())
    train = [r for r in read_records(workdir) if 'train/loss' in r]
    assert bar.postfixes == [{'loss': f'{r["train/loss"]:.4f}',
                              'lr': f'{float(lr(r["step"] - 1)):.2e}',
                              'steps_per_s': f'{r["train/steps_per_s"]:.2f}'} for r in train]
    assert lr(3) != lr(4)  # step 5's lr is the decayed one, step 4's is not


def the_log_tells_each_validation_and_the_final_score(straight) -> None:
    workdir, spies, _ = straight
    validations = [r for r in read_records(workdir) if 'val/psnr_y' in r]
    final = validations[-1]
    assert [m for m in spies.messages() if 'validation' in m] == [
        *(f'step {r["step"]}: validation PSNR-Y {r["val/psnr_y"]:.3f} dB '
          f'(bicubic {r["val/bicubic_psnr_y"]:.3f} dB)' for r in validations),
        f'final validation PSNR-Y {final["val/psnr_y"]:.3f} dB vs bicubic '
        f'{final["val/bicubic_psnr_y"]:.3f} dB '
        f'({final["val/psnr_y"] - final["val/bicubic_psnr_y"]:+.3f} dB) on 1 image(s)']
    assert not [m for m in spies.messages() if m.startswith('Resuming')]


# --- the run in three starts, and the straight one started again --------------------------------

def test_a_run_stopped_by_ctrl_c_and_by_a_non_finite_loss_resumes_as_the_straight_one(
        straight, resumed):
    """Ctrl-C saves the step in flight, unvalidated, and says how to resume; a non-finite loss
    stops at the next log naming its step and the last checkpoint (records logged after that
    checkpoint are dropped on resuming); a resumed run validates a saved step whose validation
    is not recorded, and ends where the straight run ends."""
    workdir, spies, returned = resumed
    latest = workdir / 'checkpoints'
    starts = np.cumsum([e[0] == 'start' for e in spies.events])
    trained = [[e[1] for e, s in zip(spies.events, starts) if s == i and e[0] == kind]
               for kind in ('step', 'save', 'best') for i in (1, 2, 3)]
    assert trained == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [9, 10, 11, 12, 13, 14],
                       [4, 6], [8], [12, 14],
                       [], [6], [12, 14]]
    # Each start closes its managers once, however it ends; a failure to close them after a
    # non-finite loss does not hide the loss.
    assert [sum(e[0] == 'finish' for e, s in zip(spies.events, starts) if s == i)
            for i in (1, 2, 3)] == [1, 1, 1]
    assert_batches_drawn_with_the_run_s_seed(spies)
    assert returned[0] == (f'interrupted after step 6; the last checkpoint, step 6 in {latest}, '
                           'was saved before it and is intact. Run the same command to resume.')
    assert np.isfinite(spies.losses[11])  # its real loss; the one logged was NaN
    assert returned[1].startswith('non-finite loss nan (gradient norm ')
    assert returned[1].endswith(f') at step 11: training stopped; the last checkpoint, step 8 in '
                                f'{latest}, was saved before it and is intact. {EXPLANATION}')
    (explained,) = spies.explained
    assert (explained['step'], explained['latest']) == (11, 8)
    assert explained['config'] == config().to_dict() and explained['model'].n_feats == 8
    assert all(np.array_equal(explained['batch'][k], spies.batches[11][k])
               for k in spies.batches[11]) and explained['batch'].keys() == spies.batches[11].keys()
    assert returned[2] is None
    assert [m for m in spies.messages() if m.startswith(('Resuming', 'Step '))] == [
        f'Resuming from step 6 of 14 ({latest}).',
        'Step 6 was saved but its validation not recorded: validating it.',
        f'Resuming from step 8 of 14 ({latest}).']
    assert [(b.kwargs['initial'], b.updates) for b in spies.bars] == [(0, 6), (6, 6), (8, 6)]
    # The whole run as the straight one: records, final variables, the final validation.
    a, b = read_records(straight[0]), read_records(workdir)
    assert kinds(b) == kinds(a)
    for x, y in zip(a, b, strict=True):
        for key in set(x) - set(TIMING):
            assert y[key] == pytest.approx(x[key], rel=1e-5), (x['step'], key)
    _, variables_a, _ = checkpoints.load_model(straight[0])
    _, variables_b, step = checkpoints.load_model(workdir)
    assert step == 14
    for u, v in zip(jax.tree.leaves(variables_a), jax.tree.leaves(variables_b), strict=True):
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-5, atol=1e-7)
    assert [m for m in spies.messages() if m.startswith('final')] == [
        m for m in straight[1].messages() if m.startswith('final')]
    # best/ holds the best of the validations, the one made on resuming included.
    validations = {r['step']: r['val/psnr_y'] for r in b if 'val/psnr_y' in r}
    best = max(validations, key=validations.get)
    assert checkpoints.best_manager(workdir, read_only=True).all_steps() == [best]
    _, val_ds = datasets.load_datasets(config())
    upscaler = inference.load_upscaler(workdir, 'best', bucket=config().train.eval_bucket)
    assert evaluator.evaluate_in_memory(val_ds, upscaler).summary()['psnr'] == pytest.approx(
        validations[best], abs=1e-9)


def test_a_finished_run_started_again_validates_its_last_step_only_if_not_recorded(straight,
                                                                                   tmp_path):
    """As after a kill between the last save and its validation: the record of step 14's
    validation removed, starting again validates step 14 (the same score); then nothing."""
    workdir = tmp_path / 'run'
    shutil.copytree(straight[0], workdir)
    path = workdir / 'metrics.jsonl'
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(''.join(lines[:-1]))
    for _ in range(2):
        assert loop.run_training(config(), workdir) is None
        assert kinds(read_records(workdir)) == kinds(read_records(straight[0]))
        assert read_records(workdir)[-1] == pytest.approx(read_records(straight[0])[-1],
                                                          abs=1e-9)
    assert checkpoints.latest_manager(workdir, read_only=True).all_steps() == [12, 14]


def test_allowed_changes_resume_and_other_validation_images_restart_best(straight, tmp_path,
                                                                        caplog, monkeypatch):
    """New validation images move best/ aside; a changed seed, training images or source of a
    configured function are refused, and resumed when allowed (with a warning):
    `run_training` and `train_and_evaluate` pass the flag on to each check."""
    workdir = tmp_path / 'run'
    shutil.copytree(straight[0], workdir)
    assert loop.run_training(config(data__val_photos=('colorwheel',)), workdir) is None
    assert [p.name[:9] for p in workdir.iterdir() if p.name.startswith('best.')] == ['best.val-']
    changed = config(train__seed=2, data__photos=('colorwheel',),
                     data__val_photos=('colorwheel',))
    assert loop.run_training(changed, workdir) == error_message(
        lambda: workdir_lib.check_resume(workdir, changed.to_dict(), False),
        workdir_lib.WorkdirError)
    caplog.clear()
    assert loop.run_training(changed, workdir, allow_config_changes=True) is None
    assert json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())['train']['seed'] == 2
    assert [r.getMessage()[:62] for r in caplog.records if 'differ from' in r.getMessage()] == [
        'the training images differ from the ones that trained the chec']
    # As if the source of a function named by the config changed since the checkpoint.
    real_check_resume = workdir_lib.check_resume
    monkeypatch.setattr(workdir_lib, 'check_resume', lambda *args: {
        **real_check_resume(*args), 'code': {'examples.losses:mine': 'old'}})
    monkeypatch.setattr(workdir_lib, 'code_fingerprints',
                        lambda config: {'examples.losses:mine': 'new'})
    again = config(data__val_photos=('colorwheel',))  # the checkpoint's config and images
    with pytest.raises(workdir_lib.WorkdirError, match='^the source of examples.losses:mine '):
        loop.train_and_evaluate(again, workdir)
    caplog.clear()
    state = loop.train_and_evaluate(again, workdir, allow_config_changes=True)
    assert int(state.step) == 14
    assert json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())['train']['seed'] == 1
    assert [r.getMessage()[:36] for r in caplog.records if 'changed since' in r.getMessage()] == [
        'the source of examples.losses:mine c']


# --- run_training's one-line failures ----------------------------------------------------------

def test_run_training_returns_one_line_for_each_failure_the_user_can_act_on(tmp_path, monkeypatch):
    bad = config(train__log_every=0)
    assert loop.run_training(bad, tmp_path / 'a') == 'invalid config: ' + error_message(
        lambda: config_check.validate_config(bad))
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert loop.run_training(config(data__source='folder', data__hr_dir=str(empty)),
                             tmp_path / 'b') == 'dataset not found: ' + error_message(
        lambda: sources.load_folder(str(empty), 2), sources.DatasetNotFoundError)
    train_ds, _ = datasets.load_datasets(config())
    real_finish = saving.Checkpointing.finish

    def finish_on_a_full_disk(saves):
        real_finish(saves)
        raise files.WriteError('cannot write the checkpoint: no space left on device')

    # The error that stopped the start is the one told, not a failure to close the managers.
    monkeypatch.setattr(saving.Checkpointing, 'finish', finish_on_a_full_disk)
    assert loop.run_training(config(data__lr_patch=400), tmp_path / 'c') == (
        'config.data.lr_patch=400: ' + error_message(
            lambda: input_pipeline.PatchLoader(train_ds, 2, 400)))
    monkeypatch.setattr(saving.Checkpointing, 'finish', real_finish)
    not_a_dir = tmp_path / 'file'
    not_a_dir.write_text('')
    assert loop.run_training(config(), not_a_dir) == error_message(
        lambda: workdir_lib.WorkdirLock(not_a_dir).__enter__(), workdir_lib.WorkdirError)

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, 'load_datasets', interrupted)
    assert loop.run_training(config(), tmp_path / 'd') == (
        'interrupted while starting: no step was trained and nothing was saved')
