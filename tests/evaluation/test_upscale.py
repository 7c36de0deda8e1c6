"""Single-image upscaling: the `python -m enlcn_jax.upscale` CLI on odd image modes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enlcn_jax import upscale

from enlcn_jax.data import image_io

from enlcn_jax.evaluation import inference

ROOT = Path(__file__).resolve().parents[2]


def test_cli_upscales_a_grayscale_png(x4_model_dir, tmp_path, env):
    gray = np.random.default_rng(0).integers(0, 256, (13, 17), dtype=np.uint8)
    Image.fromarray(gray, 'L').save(tmp_path / 'gray.png')
    # Computed first: the command reads its compiled forward from the shared compilation cache.
    expected = inference.load_upscaler(x4_model_dir)(np.repeat(gray[..., None], 3, -1))
    result = subprocess.run([sys.executable, '-m', 'enlcn_jax.upscale', str(tmp_path / 'gray.png'),
                             str(tmp_path / 'sr.png'), '--checkpoint', str(x4_model_dir)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "mode 'L' converted to RGB" in result.stderr
    sr = image_io.load_image(tmp_path / 'sr.png')
    assert sr.shape == (52, 68, 3)
    np.testing.assert_array_equal(sr, expected)


def test_palette_image_with_alpha_warns_and_upscales(x4_model_dir, tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (10, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba, 'RGBA').convert('P').save(tmp_path / 'p.png', transparency=0)
    upscaler = inference.load_upscaler(x4_model_dir, bucket=1, tile=8, tile_overlap=4)
    with pytest.warns(UserWarning, match='alpha channel dropped'):
        sr = upscale.upscale_file(tmp_path / 'p.png', tmp_path / 'out' / 'p.png', upscaler)
    assert sr.shape == (40, 36, 3)
    np.testing.assert_array_equal(image_io.load_image(tmp_path / 'out' / 'p.png'), sr)


class Loaded(Exception):
    """Raised in place of loading the model: the arguments got past the checks before it."""


def load_upscaler_refused(*args, **kwargs):
    raise Loaded


def test_a_missing_input_is_one_line_naming_it(x4_model_dir, tmp_path):
    with pytest.raises(SystemExit) as info:
        upscale.main([str(tmp_path / 'nope.png'), str(tmp_path / 'sr.png'),
                      '--checkpoint', str(x4_model_dir)])
    message = str(info.value.code)
    assert message.startswith('upscale: ') and 'nope.png' in message and '\n' not in message
    assert not (tmp_path / 'sr.png').exists()


@pytest.mark.parametrize('options, message', [
    (['--bucket', '0'], '--bucket must be >= 1, got 0'),
    (['--tile', '0'], '--tile must be >= 1, got 0'),
    (['--tile', '8', '--tile_overlap', '8'], '--tile_overlap must be in [0, tile=8), got 8'),
    (['--tile', '8', '--tile_overlap', '-1'], '--tile_overlap must be in [0, tile=8), got -1')])
def test_inference_options_out_of_range_are_refused_before_the_model_loads(
        tmp_path, monkeypatch, capsys, options, message):
    image_io.save_image(tmp_path / 'in.png', np.zeros((4, 5, 3), np.uint8))
    monkeypatch.setattr(inference, 'load_upscaler', load_upscaler_refused)
    with pytest.raises(SystemExit) as info:
        upscale.main([str(tmp_path / 'in.png'), str(tmp_path / 'out.png'),
                      '--checkpoint', str(tmp_path / 'model'), *options])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_an_output_without_an_image_suffix_is_refused_before_the_model_loads(tmp_path,
                                                                               monkeypatch,
                                                                               capsys):
    image_io.save_image(tmp_path / 'in.png', np.zeros((4, 5, 3), np.uint8))
    monkeypatch.setattr(inference, 'load_upscaler', load_upscaler_refused)
    argv = lambda output: [str(tmp_path / 'in.png'), str(tmp_path / output),
                           '--checkpoint', str(tmp_path / 'model')]
    for output in ('out', 'out.xyz', 'out.psd'):
        with pytest.raises(SystemExit) as info:
            upscale.main(argv(output))
        assert info.value.code == 2, output
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert f'the output {tmp_path / output} does not end in a suffix' in error, error
    with pytest.raises(Loaded):
        upscale.main(argv('OUT.PNG'))
