"""Outputs never clobber: eval.py's results files and upscale's image."""

import hashlib
import json
import subprocess
import sys

import numpy as np

from conftest import REPO, TEST_DATA, save_fixture_model
from enlcn_jax import image_io

SET5 = TEST_DATA / 'benchmark' / 'Set5' / 'HR'


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)


def small_folder(folder, names=('img_001.png', 'img_002.png')):
    folder.mkdir()
    for name in names:
        image_io.save_image(folder / name, image_io.load_image(SET5 / name)[:40, :44])
    return folder


def bicubic_eval(tmp_path, *extra):
    return run('eval.py', '--dataset', str(small_folder(tmp_path / 'tiny')), '--model', 'bicubic',
               '--scale', '2', *extra)


def test_output_names_the_format_and_the_json_record_is_kept_beside_it(tmp_path):
    result = bicubic_eval(tmp_path, '--output', str(tmp_path / 'r.csv'))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / 'r.csv').read_text().startswith('dataset,scale,model,name,psnr')
    record = json.loads((tmp_path / 'r.json').read_text())
    assert record['config']['output'] == str(tmp_path / 'r.csv') and len(record['images']) == 2
    assert (tmp_path / 'r.md').read_text().startswith('| dataset |')


def test_bad_output_paths_are_usage_errors_before_any_work(tmp_path):
    (tmp_path / 'a_dir').mkdir()
    (tmp_path / 'a_file').write_text('keep me')
    for extra, message in (
            (['--output', str(tmp_path / 'a_dir')], 'is a directory'),
            (['--output', str(tmp_path / 'r.txt')], 'name a .json, .csv, .md file'),
            (['--output', str(tmp_path / 'a_file' / 'r.json')], 'a parent is a file'),
            (['--save_images', str(tmp_path / 'a_file')], 'is a file: give a directory')):
        result = run('eval.py', '--dataset', str(SET5), '--model', 'bicubic', '--scale', '2',
                     *extra)
        assert result.returncode != 0 and message in result.stderr, (extra, result.stderr[-800:])
        assert 'Traceback' not in result.stderr and 'Set5' not in result.stdout
    assert (tmp_path / 'a_file').read_text() == 'keep me'
    assert list((tmp_path / 'a_dir').iterdir()) == []


def test_images_sharing_a_stem_get_distinct_rows_and_files(tmp_path):
    folder = small_folder(tmp_path / 'dups', names=('img_001.png',))
    image_io.save_image(folder / 'img_001.bmp', image_io.load_image(SET5 / 'img_002.png')[:40, :44])
    result = run('eval.py', '--dataset', str(folder), '--model', 'bicubic', '--scale', '2',
                 '--output', str(tmp_path / 'r.json'), '--save_images', str(tmp_path / 'sr'))
    assert result.returncode == 0, result.stderr[-2000:]
    names = [r['name'] for r in json.loads((tmp_path / 'r.json').read_text())['images']]
    assert sorted(names) == ['img_001.bmp', 'img_001.png']
    saved = sorted(p.name for p in (tmp_path / 'sr' / 'dups' / 'X2').iterdir())
    assert saved == ['img_001.bmp.png', 'img_001.png.png']


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upscale_never_writes_over_its_input_or_an_output_unless_told(reference, tmp_path):
    model = save_fixture_model(reference, tmp_path / 'model')
    image = tmp_path / 'in.png'
    image_io.save_image(image, image_io.load_image(SET5 / 'img_003.png')[:20, :24])
    before = digest(image)
    result = run('-m', 'enlcn_jax.upscale', str(image), str(image), '--checkpoint', str(model))
    assert result.returncode != 0 and 'is the input' in result.stderr
    assert digest(image) == before
    out = tmp_path / 'out.png'
    out.write_bytes(b'not yet an image')
    result = run('-m', 'enlcn_jax.upscale', str(image), str(out), '--checkpoint', str(model))
    assert result.returncode != 0 and 'exists: pass --overwrite' in result.stderr
    assert out.read_bytes() == b'not yet an image'
    result = run('-m', 'enlcn_jax.upscale', str(image), str(out), '--checkpoint', str(model),
                 '--overwrite')
    assert result.returncode == 0, result.stderr[-2000:]
    assert image_io.load_image(out).shape == (40, 48, 3)
    assert not np.array_equal(image_io.load_image(out)[:20, :24], image_io.load_image(image))


def test_a_dataset_with_no_scorable_image_fails_and_an_empty_folder_is_one_line(tmp_path):
    (tmp_path / 'empty').mkdir()
    result = run('eval.py', '--dataset', str(tmp_path / 'empty'), '--model', 'bicubic',
                 '--scale', '2', '--output', str(tmp_path / 'r.json'))
    assert result.returncode != 0 and 'no image files' in result.stderr
    assert 'Traceback' not in result.stderr
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'broken.png').write_bytes(b'not a png')
    (tmp_path / 'bad' / 'link.png').symlink_to(tmp_path / 'gone.png')
    result = run('eval.py', '--dataset', str(tmp_path / 'bad'), '--model', 'bicubic',
                 '--scale', '2', '--output', str(tmp_path / 'r.json'))
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert 'no image of bad x2 could be scored' in result.stderr
    skipped = json.loads((tmp_path / 'r.json').read_text())['skipped']
    assert sorted(s['name'] for s in skipped) == ['broken', 'link']
