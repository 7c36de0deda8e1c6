"""enlcn_jax.evaluation.evaluator: what each scored image and each skipped one reports, the
timings and compilations counted, saved and kept images, the progress bar, image names in a
folder, the summary row and table, and the results files with their foreign-file check.

The upscaler is a stand-in (`Nearest`) and the clock a fake one, so every number is known; the
scores are checked against the protocol written out here (BT.601 Y, shave, PSNR in closed form,
scikit-image's SSIM with MATLAB's settings)."""

import hashlib
import json
import re

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from conftest import error_message
from enlcn_jax.data import image_io, sources
from enlcn_jax.data.imresize import imresize
from enlcn_jax.evaluation import evaluator


class Clock:
    """A fake `time` module: `perf_counter` reads `now`, which the test advances."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(evaluator, 'time', fake)
    return fake


class Nearest:
    """A stand-in upscaler: nearest-neighbour upsampling; one 'compilation' per new LR shape;
    each call takes `durations[i]` seconds of the fake clock."""

    def __init__(self, clock, scale=2, durations=(), compiled=()):
        self.scale, self.name = scale, 'nearest'
        self.compiled_shapes = list(compiled)
        self.clock, self.durations, self.calls = clock, list(durations), 0

    def __call__(self, lr):
        if self.clock is not None:
            self.clock.now += self.durations[self.calls]
        self.calls += 1
        if lr.shape not in self.compiled_shapes:
            self.compiled_shapes.append(lr.shape)
        return nearest(lr, self.scale)


def nearest(lr: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(lr, scale, 0), scale, 1)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 Y of MATLAB's rgb2ycbcr for uint8 RGB, float64."""
    r, g, b = np.moveaxis(rgb.astype(np.float64) / 255.0, -1, 0)
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def protocol_scores(sr, hr, scale):
    """PSNR (dB) and SSIM of the Y channels with `scale` pixels shaved from every border."""
    a, b = (luma(x)[scale:-scale, scale:-scale] for x in (sr, hr))
    psnr = 10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2))
    ssim = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255.0)
    return psnr, ssim


def pair(h, w, seed, scale=2):
    """A random HR image and its bicubic LR image (`h x w` LR pixels)."""
    hr = np.random.default_rng(seed).integers(0, 256, (h * scale, w * scale, 3), dtype=np.uint8)
    return hr, imresize(hr, 1 / scale)


# ---------------------------------------------------------------- evaluate_pairs


def test_each_pair_is_scored_timed_and_sized_and_the_dataset_timed_with_its_loading(clock,
                                                                                    capsys):
    pairs = {'a': pair(12, 14, 0), 'b': pair(13, 12, 1)}

    def loaded():
        for name, p in pairs.items():
            clock.now += 1.0  # reading the image: counted for the dataset, not the image
            yield name, p
    upscaler = Nearest(clock, durations=[0.5, 0.25])
    result = evaluator.evaluate_pairs('set', loaded(), upscaler, progress=False)
    assert (result.dataset, result.scale, result.model, result.skipped) == ('set', 2, 'nearest',
                                                                           [])
    assert [r['name'] for r in result.images] == ['a', 'b']
    for row, (hr, lr), seconds in zip(result.images, pairs.values(), [0.5, 0.25]):
        psnr, ssim = protocol_scores(nearest(lr, 2), hr, 2)
        assert row == {'name': row['name'], 'psnr': pytest.approx(psnr, abs=1e-9),
                       'ssim': pytest.approx(ssim, abs=1e-9), 'seconds': seconds,
                       'lr_height': lr.shape[0], 'lr_width': lr.shape[1]}
        assert list(row) == ['name', 'psnr', 'ssim', 'seconds', 'lr_height', 'lr_width']
    assert result.seconds == 2.75 and result.kept == {}
    assert capsys.readouterr() == ('', '')  # no bar


def test_only_new_compilations_are_counted():
    lrs = [pair(12, 14, 0), pair(12, 14, 1), pair(13, 14, 2), pair(12, 15, 3)]
    upscaler = Nearest(None, compiled=[(12, 14, 3), (99, 99, 3)])
    result = evaluator.evaluate_pairs('set', enumerate(lrs), upscaler, progress=False)
    assert result.compiles == 2 and len(result.images) == 4


def test_unreadable_and_unscorable_pairs_are_skipped_and_named_on_stderr(clock, capsys):
    """SSIM needs 11 rows after the shave: an HR of 14 rows at x2 keeps 10."""
    hr, lr = pair(7, 14, 0)
    pairs = [('broken', OSError('broken.png: cannot identify image file')),
             ('small', (hr, lr)), ('fine', pair(12, 12, 1))]
    upscaler = Nearest(clock, durations=[0.0, 0.0])
    result = evaluator.evaluate_pairs('set', pairs, upscaler, progress=False)
    cannot = 'cannot score: ssim needs H, W >= 11, got (10, 24)'
    assert result.skipped == [{'name': 'broken', 'error': 'broken.png: cannot identify image file'},
                              {'name': 'small', 'error': cannot}]
    assert [r['name'] for r in result.images] == ['fine']
    assert capsys.readouterr().err == ('skipping broken: broken.png: cannot identify image file\n'
                                       f'skipping small: {cannot}\n')


def test_sr_images_are_saved_under_the_dataset_and_scale_and_asked_for_ones_kept(tmp_path):
    pairs = [('a', pair(12, 14, 0, scale=3)), ('b', pair(12, 13, 1, scale=3)),
             ('c', OSError('c.png: unreadable'))]
    upscaler = Nearest(None, scale=3)
    result = evaluator.evaluate_pairs('set', pairs, upscaler, save_dir=tmp_path / 'sr',
                                      keep={'b', 'c', 'z'}, progress=False)
    assert sorted(p.name for p in (tmp_path / 'sr' / 'set' / 'X3').iterdir()) == ['a.png', 'b.png']
    for name, (hr, lr) in pairs[:2]:
        np.testing.assert_array_equal(image_io.load_image(tmp_path / 'sr' / 'set' / 'X3' /
                                                          f'{name}.png'), nearest(lr, 3))
    assert list(result.kept) == ['b']
    hr, lr, sr = result.kept['b']
    assert hr is pairs[1][1][0] and lr is pairs[1][1][1]
    np.testing.assert_array_equal(sr, nearest(lr, 3))


def test_the_progress_bar_names_the_dataset_and_scale_on_stderr(capsys):
    pairs = [(str(i), pair(12, 12, i)) for i in range(3)]
    evaluator.evaluate_pairs('set', iter(pairs), Nearest(None), total=3)
    out, err = capsys.readouterr()
    assert out == '' and re.search(r'set x2: 100%\|[^|]*\| 3/3 \[.*img', err), err
    evaluator.evaluate_pairs('set', iter(pairs), Nearest(None))
    assert re.search(r'set x2: 3img \[', capsys.readouterr().err)  # no total: a count


# ---------------------------------------------------------------- evaluate_dataset, in memory


def test_a_folder_s_images_are_named_by_stem_or_by_file_name_where_stems_repeat(tmp_path,
                                                                               capsys):
    folder = tmp_path / 'mine'
    folder.mkdir()
    for name, seed in [('a.png', 0), ('a.bmp', 1), ('b.png', 2)]:
        image_io.save_image(folder / name, pair(12, 13, seed)[0])
    source = sources.find_dataset(str(folder), 2)
    result = evaluator.evaluate_dataset(source, Nearest(None), keep={'b'})
    assert [r['name'] for r in result.images] == ['a.bmp', 'a.png', 'b']
    assert result.dataset == 'mine' and list(result.kept) == ['b']
    hr, lr, sr = result.kept['b']
    np.testing.assert_array_equal(hr, image_io.load_image(folder / 'b.png'))
    np.testing.assert_array_equal(lr, imresize(hr, 0.5))
    row = result.images[-1]
    assert row['psnr'] == pytest.approx(protocol_scores(sr, hr, 2)[0], abs=1e-9)
    assert (row['lr_height'], row['lr_width']) == (12, 13)
    assert re.search(r'mine x2: 100%\|[^|]*\| 3/3 ', capsys.readouterr().err)  # total given


def test_a_folder_with_an_lr_folder_is_scored_on_its_lr_files(tmp_path):
    """The LR images are read from `<lr_dir>/X2/<stem>x2.png` (here not the bicubic ones), and
    HR files sharing a stem are refused, since one LR file would serve both."""
    hr_dir, lr_dir = tmp_path / 'HR', tmp_path / 'LR'
    hr_dir.mkdir()
    hr, _ = pair(12, 13, 0)
    image_io.save_image(hr_dir / 'b.png', hr)
    lr = pair(12, 13, 1)[1]
    image_io.save_image(lr_dir / 'X2' / 'bx2.png', lr)
    source = sources.DatasetSource('mine', hr_dir, lr_dir)
    result = evaluator.evaluate_dataset(source, Nearest(None), keep={'b'}, progress=False)
    np.testing.assert_array_equal(result.kept['b'][1], lr)
    image_io.save_image(hr_dir / 'b.bmp', hr)
    with pytest.raises(sources.AmbiguousLRError) as info:
        evaluator.evaluate_dataset(source, Nearest(None), progress=False)
    assert (f"share the stem 'b', so both would be paired with the LR image "
            f"{lr_dir / 'X2' / 'bx2.png'}") in str(info.value)


def test_an_in_memory_dataset_is_scored_without_a_bar(capsys):
    (hr1, lr1), (hr2, lr2) = pair(12, 13, 0), pair(12, 12, 1)
    dataset = sources.SRDataset(['p', 'q'], [hr1, hr2], [lr1, lr2], 2)
    result = evaluator.evaluate_in_memory(dataset, Nearest(None))
    assert result.dataset == 'validation' and [r['name'] for r in result.images] == ['p', 'q']
    assert result.images[1]['ssim'] == pytest.approx(
        protocol_scores(nearest(lr2, 2), hr2, 2)[1], abs=1e-9)
    assert evaluator.evaluate_in_memory(dataset, Nearest(None), 'val2').dataset == 'val2'
    assert capsys.readouterr() == ('', '')


# ---------------------------------------------------------------- summary and table


def result_of(dataset='set', scale=2, images=(), skipped=(), seconds=1.0, compiles=0):
    rows = [{'name': n, 'psnr': p, 'ssim': s, 'seconds': 0.5, 'lr_height': 10, 'lr_width': 12}
            for n, p, s in images]
    return evaluator.DatasetResult(dataset, scale, 'enlcn', rows, list(skipped), seconds,
                                   compiles)


def test_the_summary_is_the_mean_over_the_scored_images_and_none_without_any():
    result = result_of(images=[('a', 30.0, 0.9), ('b', 31.0, 0.8), ('c', 32.5, 0.7)],
                       skipped=[{'name': 'd', 'error': 'x'}], seconds=7.5, compiles=2)
    assert result.summary() == {'dataset': 'set', 'scale': 2, 'model': 'enlcn',
                                'psnr': pytest.approx(31.166666666666668),
                                'ssim': pytest.approx(0.8), 'images': 3, 'skipped': 1,
                                'seconds': 7.5, 'compiles': 2}
    empty = result_of(skipped=[{'name': 'd', 'error': 'x'}]).summary()
    assert (empty['psnr'], empty['ssim'], empty['images'], empty['skipped']) == (None, None, 0, 1)


def test_the_table_has_one_row_per_result_with_rounded_means():
    table = evaluator.markdown_table([
        result_of('Set5', 2, [('a', 30.1234, 0.91234), ('b', 30.1334, 0.9124)], seconds=12.345,
                  compiles=1),
        result_of('Urban', 4, skipped=[{'name': 'x', 'error': 'e'}], seconds=0.04)])
    assert table == (
        '| dataset | scale | model | PSNR (dB) | SSIM | images | skipped | seconds | '
        'compiled shapes |\n'
        '|---|---|---|---|---|---|---|---|---|\n'
        '| Set5 | x2 | enlcn | 30.13 | 0.9124 | 2 | 0 | 12.3 | 1 |\n'
        '| Urban | x4 | enlcn | - | - | 0 | 1 | 0.0 | 0 |')


# ---------------------------------------------------------------- results files


def test_the_results_files_are_named_by_the_output_s_stem_and_suffix():
    for output in ('r/out.json', 'r/out.csv', 'r/out.md'):
        assert [str(p) for p in evaluator.result_paths(output)] == ['r/out.json', 'r/out.csv',
                                                                     'r/out.md']
    for output in ('r/out.txt', 'r/out', 'r/out.JSON'):
        assert error_message(lambda: evaluator.result_paths(output)) == (
            f'{output}: results are written as .json, .csv, .md')


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_three_files_hold_the_config_rows_table_skipped_images_and_digests(tmp_path):
    results = [result_of('Set5', 2, [('a', 30.5, 0.875)], seconds=2.5, compiles=1),
               result_of('B100', 3, [('b', 28.25, 0.75)],
                         skipped=[{'name': 'c', 'error': 'cannot score: tiny'}])]
    written = evaluator.write_results(results, tmp_path / 'out.md', {'checkpoint': 'ck'})
    json_path, csv_path, md_path = tmp_path / 'out.json', tmp_path / 'out.csv', tmp_path / 'out.md'
    assert written == [json_path, csv_path, md_path]
    assert csv_path.read_bytes() == (
        b'dataset,scale,model,name,psnr,ssim,seconds,lr_height,lr_width\r\n'
        b'Set5,2,enlcn,a,30.5,0.875,0.5,10,12\r\n'
        b'B100,3,enlcn,b,28.25,0.75,0.5,10,12\r\n')
    assert md_path.read_text() == (evaluator.markdown_table(results) +
                                   '\n\nSkipped images:\n- B100 x3 c: cannot score: tiny\n')
    record = json.loads(json_path.read_text())
    assert record == {
        'config': {'checkpoint': 'ck'}, 'summary': [r.summary() for r in results],
        'images': [{'dataset': 'Set5', 'scale': 2, 'model': 'enlcn', **results[0].images[0]},
                   {'dataset': 'B100', 'scale': 3, 'model': 'enlcn', **results[1].images[0]}],
        'skipped': [{'dataset': 'B100', 'scale': 3, 'name': 'c', 'error': 'cannot score: tiny'}],
        'written_by': 'enlcn_jax eval.py',
        'sha256': {'out.csv': sha256(csv_path), 'out.md': sha256(md_path)}}
    assert evaluator.foreign_results(tmp_path / 'out.csv') == []


def test_without_skipped_images_the_table_stands_alone_and_no_config_is_an_empty_one(tmp_path):
    results = [result_of(images=[('a', 30.0, 0.9)])]
    evaluator.write_results(results, tmp_path / 'out.json')
    assert (tmp_path / 'out.md').read_text() == evaluator.markdown_table(results) + '\n'
    assert json.loads((tmp_path / 'out.json').read_text())['config'] == {}


def test_the_foreign_message_is_one_line_in_the_singular_or_plural():
    tail = (' not written by eval.py (its .json marks its results and records the SHA-256 of '
            'the .csv and .md): move them away, or pass --overwrite to replace them')
    assert evaluator.foreign_message([evaluator.Path('r/out.csv')]) == (
        'r/out.csv exists and was' + tail)
    assert evaluator.foreign_message([evaluator.Path('r/out.json'),
                                      evaluator.Path('r/out.md')]) == (
        'r/out.json, r/out.md exist and were' + tail)


def test_files_not_written_by_write_results_are_foreign(tmp_path):
    out = tmp_path / 'out.json'
    paths = json_path, csv_path, md_path = evaluator.result_paths(out)
    assert evaluator.foreign_results(out) == []  # nothing there
    csv_path.write_text('mine\n')
    assert evaluator.foreign_results(out) == [csv_path]  # no .json to vouch for it
    evaluator.write_results([result_of(images=[('a', 30.0, 0.9)])], out, overwrite=True)
    assert evaluator.foreign_results(out) == []
    record = json.loads(json_path.read_text())
    md_path.write_text(md_path.read_text() + 'edited\n')
    assert evaluator.foreign_results(md_path) == [md_path]
    cases = [
        ({**record, 'written_by': 'someone'}, [json_path, csv_path, md_path]),
        ({k: v for k, v in record.items() if k != 'written_by'}, [json_path, csv_path, md_path]),
        ({**record, 'sha256': 'none'}, [csv_path, md_path]),  # marked, but no digests
        ({**record, 'sha256': {'out.md': record['sha256']['out.md']}}, [csv_path, md_path]),
        ([record], [json_path, csv_path, md_path])]  # not a record
    for content, foreign in cases:
        json_path.write_text(json.dumps(content))
        assert evaluator.foreign_results(out) == foreign, content
    json_path.write_text('{not json')
    assert evaluator.foreign_results(out) == [json_path, csv_path, md_path]
    for path in paths:
        path.unlink()
    for path in paths:  # unreadable (a folder): not known to be ours
        path.mkdir()
    assert evaluator.foreign_results(out) == [json_path, csv_path, md_path]


def test_foreign_files_are_refused_unless_overwrite_and_nothing_is_written(tmp_path):
    out = tmp_path / 'out.csv'
    (tmp_path / 'out.md').write_text('notes\n')
    results = [result_of(images=[('a', 30.0, 0.9)])]
    with pytest.raises(evaluator.ForeignResultsError) as info:
        evaluator.write_results(results, out)
    assert str(info.value) == evaluator.foreign_message([tmp_path / 'out.md'])
    assert isinstance(info.value, FileExistsError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.md']
    assert (tmp_path / 'out.md').read_text() == 'notes\n'
    evaluator.write_results(results, out, overwrite=True)
    assert (tmp_path / 'out.md').read_text() == evaluator.markdown_table(results) + '\n'
    evaluator.write_results(results, out)  # its own files are replaced without being asked
