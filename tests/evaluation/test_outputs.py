"""Outputs never clobber: eval.py's results files, upscale's image and the figures, also when a
write fails half-way or the disk is full; what eval.py's results say they scored."""

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import app, logging

import eval as eval_cli
from conftest import REPO, TEST_DATA, fill
from enlcn_jax import upscale
from enlcn_jax.data import image_io, sources
from enlcn_jax.evaluation import evaluator, inference, metrics, runner
from enlcn_jax.research import plots
from enlcn_jax.storage import checkpoints, files
from enlcn_jax.data.imresize import bicubic_downscale

SET5 = TEST_DATA / 'benchmark' / 'Set5' / 'HR'


def small_folder(folder, names=('img_001.png', 'img_002.png')):
    folder.mkdir()
    for name in names:
        image_io.save_image(folder / name, image_io.load_image(SET5 / name)[:40, :44])
    return folder


def bicubic_x2(dataset, **options) -> runner.EvalOptions:
    """eval.py's options for the bicubic x2 rows of `dataset`."""
    return runner.EvalOptions(datasets=(str(dataset),), model='bicubic', scales=(2,), **options)


def eval_in_process(*args):
    """Runs eval.py's `main` with `args` as its command line (its `SystemExit` and
    `app.UsageError` pass through), then restores absl's flags and verbosity."""
    verbosity = logging.get_verbosity()
    try:
        argv = eval_cli.FLAGS(['eval.py', *args])
        eval_cli.main(argv)
    finally:
        eval_cli.FLAGS.unparse_flags()
        logging.set_verbosity(verbosity)


def test_output_names_the_format_and_the_json_record_is_kept_beside_it(tmp_path, capsys):
    runner.run(bicubic_x2(small_folder(tmp_path / 'tiny'), output=str(tmp_path / 'r.csv')))
    assert (tmp_path / 'r.csv').read_text().startswith('dataset,scale,model,name,psnr')
    record = json.loads((tmp_path / 'r.json').read_text())
    assert record['config']['output'] == str(tmp_path / 'r.csv') and len(record['images']) == 2
    assert (tmp_path / 'r.md').read_text().startswith('| dataset |')
    assert f'wrote {tmp_path / "r.json"}' in capsys.readouterr().out


BAD_PATHS = (('--output', 'a_dir', 'is a directory'),
             ('--output', 'r.txt', 'name a .json, .csv, .md file'),
             ('--output', 'a_file/r.json', 'a parent is a file'),
             ('--save_images', 'a_file', 'is a file: give a directory'))


def test_bad_output_paths_are_usage_errors_before_any_work(tmp_path, capsys):
    (tmp_path / 'a_dir').mkdir()
    (tmp_path / 'a_file').write_text('keep me')
    for flag, path, message in BAD_PATHS:
        with pytest.raises(app.UsageError, match=message):
            eval_in_process('--dataset', str(SET5), '--model', 'bicubic', '--scale', '2',
                            flag, str(tmp_path / path))
        assert 'Set5' not in capsys.readouterr().out
    assert (tmp_path / 'a_file').read_text() == 'keep me'
    assert list((tmp_path / 'a_dir').iterdir()) == []


def test_the_cli_shows_a_usage_error_in_one_message_without_a_traceback(tmp_path, env):
    (tmp_path / 'a_dir').mkdir()
    result = subprocess.run([sys.executable, 'eval.py', '--dataset', str(SET5), '--model',
                             'bicubic', '--scale', '2', '--output', str(tmp_path / 'a_dir')],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode != 0 and 'is a directory' in result.stderr, result.stderr[-800:]
    assert 'Traceback' not in result.stderr and 'Set5' not in result.stdout


def bicubic_eval(folder, output, *extra):
    eval_in_process('--dataset', str(folder), '--model', 'bicubic', '--scale', '2',
                    '--output', str(output), *extra)


def refused(folder, output, foreign):
    """eval.py refuses to write `output`, naming exactly the `foreign` files, which keep their
    bytes."""
    before = {path: path.read_bytes() for path in output.parent.glob(f'{output.stem}.*')}
    with pytest.raises(SystemExit) as info:
        bicubic_eval(folder, output)
    message = str(info.value.code)
    assert message.startswith('eval.py: --output: ') and '\n' not in message, message
    assert 'not written by eval.py' in message and '--overwrite' in message, message
    named = {path for path in output.parent.glob(f'{output.stem}.*') if str(path) in message}
    assert named == set(foreign), message
    assert {path: path.read_bytes() for path in output.parent.glob(f'{output.stem}.*')} == before


def test_eval_replaces_only_results_files_it_wrote(tmp_path, capsys):
    folder = small_folder(tmp_path / 'tiny', names=('img_001.png',))
    out = tmp_path / 'out'
    out.mkdir()
    notes = out / 'notes.json'
    (out / 'notes.md').write_text('# my notes\n')
    (out / 'notes.csv').write_text('a,b\n1,2\n')
    refused(folder, notes, [out / 'notes.md', out / 'notes.csv'])
    assert not notes.exists()
    bicubic_eval(folder, notes, '--overwrite')
    assert (out / 'notes.md').read_text().startswith('| dataset |')
    record = json.loads(notes.read_text())
    assert record['written_by'] == evaluator.WRITTEN_BY
    assert record['sha256']['notes.csv'] == digest(out / 'notes.csv')
    bicubic_eval(folder, out / 'notes.csv')  # its own results: replaced without --overwrite
    with (out / 'notes.md').open('a') as md:
        md.write('my conclusions\n')
    refused(folder, notes, [out / 'notes.md'])
    notes.write_text('{"config": {}}')
    refused(folder, notes, [notes, out / 'notes.md', out / 'notes.csv'])
    assert 'wrote' in capsys.readouterr().out


def test_results_written_meanwhile_by_someone_else_are_not_replaced(tmp_path):
    result = evaluator.evaluate_dataset(sources.find_dataset(str(small_folder(tmp_path / 'tiny')), 2),
                                       inference.BicubicUpscaler(2), progress=False)
    evaluator.write_results([result], tmp_path / 'r.json')
    (tmp_path / 'r.md').write_text('written by another program\n')
    with pytest.raises(evaluator.ForeignResultsError, match=f'{tmp_path / "r.md"} exists'):
        evaluator.write_results([result], tmp_path / 'r.json')
    assert (tmp_path / 'r.md').read_text() == 'written by another program\n'
    evaluator.write_results([result], tmp_path / 'r.json', overwrite=True)
    assert evaluator.foreign_results(tmp_path / 'r.json') == []


def test_images_sharing_a_stem_get_distinct_rows_and_files(tmp_path, capsys):
    folder = small_folder(tmp_path / 'dups', names=('img_001.png',))
    image_io.save_image(folder / 'img_001.bmp', image_io.load_image(SET5 / 'img_002.png')[:40, :44])
    runner.run(bicubic_x2(folder, output=str(tmp_path / 'r.json'),
                          save_images=str(tmp_path / 'sr')))
    names = [r['name'] for r in json.loads((tmp_path / 'r.json').read_text())['images']]
    assert sorted(names) == ['img_001.bmp', 'img_001.png']
    saved = sorted(p.name for p in (tmp_path / 'sr' / 'dups' / 'X2').iterdir())
    assert saved == ['img_001.bmp.png', 'img_001.png.png']


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upscale_never_writes_over_its_input_or_an_output_unless_told(x2_model_dir, tmp_path,
                                                                       capsys):
    image = tmp_path / 'in.png'
    image_io.save_image(image, image_io.load_image(SET5 / 'img_003.png')[:20, :24])
    before = digest(image)
    upscale_args = lambda output, *extra: [str(image), str(output), '--checkpoint',
                                           str(x2_model_dir), *extra]
    with pytest.raises(SystemExit) as info:
        upscale.main(upscale_args(image))
    assert info.value.code != 0 and 'is the input' in capsys.readouterr().err
    assert digest(image) == before
    out = tmp_path / 'out.png'
    out.write_bytes(b'not yet an image')
    with pytest.raises(SystemExit) as info:
        upscale.main(upscale_args(out))
    assert info.value.code != 0 and 'exists: pass --overwrite' in capsys.readouterr().err
    assert out.read_bytes() == b'not yet an image'
    upscale.main(upscale_args(out, '--overwrite'))
    assert image_io.load_image(out).shape == (40, 48, 3)
    assert not np.array_equal(image_io.load_image(out)[:20, :24], image_io.load_image(image))


def test_a_dataset_with_no_scorable_image_fails_and_an_empty_folder_is_one_line(tmp_path,
                                                                                  capsys):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit) as info:
        eval_in_process('--dataset', str(tmp_path / 'empty'), '--model', 'bicubic',
                        '--scale', '2', '--output', str(tmp_path / 'r.json'))
    assert 'no image files' in str(info.value.code) and '\n' not in str(info.value.code)
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'broken.png').write_bytes(b'not a png')
    (tmp_path / 'bad' / 'link.png').symlink_to(tmp_path / 'gone.png')
    with pytest.raises(SystemExit) as info:
        eval_in_process('--dataset', str(tmp_path / 'bad'), '--model', 'bicubic',
                        '--scale', '2', '--output', str(tmp_path / 'r.json'))
    assert 'no image of bad x2 could be scored' in str(info.value.code)
    assert 'skipped in bad x2: broken' in capsys.readouterr().out
    skipped = json.loads((tmp_path / 'r.json').read_text())['skipped']
    assert sorted(s['name'] for s in skipped) == ['broken', 'link']


def one_line_naming(exit_info, prefix, path):
    message = str(exit_info.value.code)
    assert message.startswith(prefix) and '\n' not in message, message
    assert message.endswith(f'cannot write {path}: no space left on the device'), message


def test_eval_on_a_full_disk_says_so_in_one_line_and_keeps_the_old_results(tmp_path,
                                                                            small_disk):
    old = {suffix: f'old {suffix}'.encode() for suffix in ('.json', '.csv', '.md')}
    for suffix, content in old.items():
        (small_disk / f'r{suffix}').write_bytes(content)
    fill(small_disk)
    with pytest.raises(SystemExit) as info:
        eval_in_process('--dataset', str(small_folder(tmp_path / 'tiny')), '--model', 'bicubic',
                        '--scale', '2', '--output', str(small_disk / 'r.json'), '--overwrite')
    one_line_naming(info, 'eval.py: ', small_disk / 'r.json')
    for suffix, content in old.items():
        assert (small_disk / f'r{suffix}').read_bytes() == content
    assert sorted(p.name for p in small_disk.iterdir()) == ['filler', 'r.csv', 'r.json', 'r.md']


def test_upscale_overwrite_on_a_full_disk_keeps_the_old_image(x2_model_dir, tmp_path,
                                                               small_disk):
    image = tmp_path / 'in.png'
    image_io.save_image(image, image_io.load_image(SET5 / 'img_003.png')[:20, :24])
    out = small_disk / 'out.png'
    image_io.save_image(out, image_io.load_image(SET5 / 'img_003.png')[:40, :48])
    before = digest(out)
    fill(small_disk)
    with pytest.raises(SystemExit) as info:
        upscale.main([str(image), str(out), '--checkpoint', str(x2_model_dir), '--overwrite'])
    one_line_naming(info, 'upscale: ', out)
    assert digest(out) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ['filler', 'out.png']


@pytest.mark.parametrize('failing', evaluator.RESULT_SUFFIXES)
def test_results_written_half_way_leave_the_previous_files(tmp_path, monkeypatch, failing):
    result = evaluator.evaluate_dataset(sources.find_dataset(str(small_folder(tmp_path / 'tiny')), 2),
                                       inference.BicubicUpscaler(2), progress=False)
    evaluator.write_results([result], tmp_path / 'r.json')
    before = (tmp_path / f'r{failing}').read_bytes()
    real_fsync = os.fsync

    def disk_full_at_flush(fd):  # the data is in the file when the disk reports it full
        if os.readlink(f'/proc/self/fd/{fd}').endswith(failing):
            assert os.fstat(fd).st_size > 0
            raise OSError(errno.ENOSPC, 'No space left on device')
        real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', disk_full_at_flush)
    with pytest.raises(files.WriteError, match='no space left on the device') as info:
        evaluator.write_results([result, result], tmp_path / 'r.json')
    assert str(tmp_path / f'r{failing}') in str(info.value)
    assert (tmp_path / f'r{failing}').read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['r.csv', 'r.json', 'r.md', 'tiny']


def test_a_figure_saved_half_way_leaves_the_previous_file(tmp_path, monkeypatch):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    out = tmp_path / 'plot.png'
    plots.save_figure(plt.figure(figsize=(1, 1)), out)
    before = out.read_bytes()

    def fail_half_way(fig, path, **kwargs):
        Path(path).write_bytes(before[:40])
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', fail_half_way)
    figure = plt.figure(figsize=(2, 1))
    with pytest.raises(files.WriteError, match='no space left on the device'):
        plots.save_figure(figure, out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['plot.png']
    assert not plt.fignum_exists(figure.number)  # closed all the same


def test_eval_refuses_hr_files_that_would_share_one_lr_file(tmp_path):
    folder = tmp_path / 'D'
    for name, photo in (('a.png', 'img_001.png'), ('a.bmp', 'img_002.png')):  # one size
        image_io.save_image(folder / 'HR' / name, image_io.load_image(SET5 / photo)[:40, :44])
    image_io.save_image(folder / 'LR_bicubic' / 'X2' / 'ax2.png',
                        image_io.load_image(SET5 / 'img_001.png')[:20, :22])
    with pytest.raises(SystemExit) as info:
        eval_in_process('--dataset', str(folder), '--model', 'bicubic', '--scale', '2',
                        '--output', str(tmp_path / 'r.json'))
    message = str(info.value.code)
    assert message.startswith('eval.py: --dataset: ') and '\n' not in message
    assert str(folder / 'HR' / 'a.png') in message and str(folder / 'HR' / 'a.bmp') in message
    assert not (tmp_path / 'r.json').exists()


def workdir_with_best_before_latest(model_dir, workdir):
    """A training workdir of the model in `model_dir` whose best step (3) is not its latest (6):
    step 3 holds the weights scaled by 0.9, step 6 the weights themselves."""
    config, variables = checkpoints.load_model_dir(model_dir)
    scaled = lambda scale: jax.tree_util.tree_map(lambda a: a * scale, variables)
    train = lambda step: {'step': step, 'opt_state': {'count': np.zeros((), np.int32)},
                          'rng': np.zeros(2, np.uint32)}
    steps = ((3, 0.9, 30.0), (6, 1.0, 29.0))
    with checkpoints.latest_manager(workdir) as latest:
        for step, scale, _ in steps:
            checkpoints.save_checkpoint(latest, step, {checkpoints.VARIABLES: scaled(scale),
                                                       checkpoints.TRAIN: train(step)})
    with checkpoints.best_manager(workdir) as best:
        for step, scale, psnr in steps:
            checkpoints.save_best(best, step, scaled(scale), psnr)
    files.write_text(workdir / checkpoints.MODEL_CONFIG, json.dumps(config))
    return workdir


def test_which_best_scores_the_best_step_and_the_results_name_it(x2_model_dir, tmp_path,
                                                                       capsys):
    workdir = workdir_with_best_before_latest(x2_model_dir, tmp_path / 'workdir')
    best, latest = (inference.load_upscaler(workdir, which) for which in ('best', 'latest'))
    assert (best.checkpoint_step, latest.checkpoint_step) == (3, 6)
    hr, lr = bicubic_downscale(image_io.load_image(SET5 / 'img_001.png')[:40, :44], 2)
    psnr_latest = metrics.psnr_y(latest(lr), hr, 2)
    latest.variables = best.variables  # the compiled forward, with the best step's weights
    psnr_best = metrics.psnr_y(latest(lr), hr, 2)
    assert psnr_best != pytest.approx(psnr_latest, abs=1e-3)
    folder = small_folder(tmp_path / 'tiny', names=('img_001.png',))
    eval_in_process('--dataset', str(folder), '--checkpoint', str(workdir), '--which', 'best',
                    '--output', str(tmp_path / 'r.json'))
    assert f'scored step 3 of {workdir} (best)' in capsys.readouterr().out
    record = json.loads((tmp_path / 'r.json').read_text())
    assert record['config']['checkpoint_step'] == 3
    assert record['config']['compiled'][0]['checkpoint_step'] == 3
    assert record['images'][0]['psnr'] == pytest.approx(psnr_best)
    assert inference.BicubicUpscaler(2).checkpoint_step is None
    assert inference.load_upscaler(x2_model_dir, 'best').checkpoint_step is None
