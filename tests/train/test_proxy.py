"""The proxy benchmark: its synthetic task, its variants and its command, at a tiny size."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from enlcn_jax import proxy
from enlcn_jax.nn.registry import split_specs

# The size of the trainings below: the command's test finds 'none' in the compilation cache.
TINY = proxy.Task(lr_size=12)


def cell_values(image: np.ndarray, task: proxy.Task, inset: int) -> np.ndarray:
    """`[G, G, 3]` mean colour in [0, 1] of each cell of an `[G c, G c, 3]` uint8 image (c the
    cell side at the image's resolution), `inset` pixels left out at every cell border."""
    c = image.shape[0] // task.grid
    cells = image.reshape(task.grid, c, task.grid, c, 3)[:, inset:c - inset, :, inset:c - inset]
    return cells.mean(axis=(1, 3)) / 255.0


def test_the_task_is_deterministic_from_the_seed():
    task = proxy.Task()
    first = proxy.draw_batch(task, np.random.default_rng(5), 3)
    assert first['lr'].shape == (3, 16, 16, 3) and first['hr'].shape == (3, 32, 32, 3)
    assert first['lr'].dtype == first['hr'].dtype == np.uint8
    again = proxy.draw_batch(task, np.random.default_rng(5), 3)
    other = proxy.draw_batch(task, np.random.default_rng(6), 3)
    assert all(np.array_equal(first[k], again[k]) for k in ('lr', 'hr'))
    assert not np.array_equal(first['lr'], other['lr'])
    # Seeds train on different streams; the held-out images are one fixed set, in none of them.
    streams = [next(proxy.training_batches(task, seed, 4))['hr'] for seed in (0, 1)]
    assert not np.array_equal(*streams)
    held_out = proxy.held_out_set(task, 4)
    assert np.array_equal(np.stack(held_out.hr), np.stack(proxy.held_out_set(task, 4).hr))
    assert not any(np.array_equal(np.stack(held_out.hr), s) for s in streams)


def test_the_repeats_of_a_texture_share_its_colour_and_textures_differ():
    task = proxy.Task()
    mosaic = proxy.draw_mosaic(task, np.random.default_rng(0))
    counts = np.bincount(mosaic.layout.ravel(), minlength=task.textures)
    assert counts.min() >= 2 and counts.sum() == task.grid ** 2
    # The HR cells of a texture are identical (flat at its colour); two textures differ.
    hr_cells = cell_values(mosaic.hr, task, inset=0)
    hr_blocks = mosaic.hr.reshape(task.grid, 8, task.grid, 8, 3)
    assert np.all(hr_blocks == hr_blocks[:, :1, :, :1])
    for texture in range(task.textures):
        np.testing.assert_allclose(hr_cells[mosaic.layout == texture],
                                   np.broadcast_to(mosaic.colours[texture], (counts[texture], 3)),
                                   atol=0.5 / 255)
    assert np.abs(mosaic.colours[0] - mosaic.colours[1]).max() > 2 / 255
    # In the LR image each repeat carries its own grey cast: the same offset on R, G and B.
    # (Cells of 8 LR pixels: 2 pixels in, the bicubic kernel sees no other cell.)
    wide = proxy.Task(lr_size=32, cell=8)
    mosaic = proxy.draw_mosaic(wide, np.random.default_rng(0))
    offsets = cell_values(mosaic.lr, wide, inset=2) - cell_values(mosaic.hr, wide, inset=0)
    np.testing.assert_allclose(offsets, np.broadcast_to(mosaic.casts[..., None], offsets.shape),
                               atol=1 / 255)
    assert np.std(mosaic.casts) > wide.cast / 3


def test_one_repeat_does_not_determine_its_colour_but_all_repeats_do():
    """The best estimate of a cell's HR colour from its own LR pixels misses by the cast; the
    mean over the texture's repeats, wherever they are, misses by cast / sqrt(repeats)."""
    task = proxy.Task()
    rng = np.random.default_rng(1)
    own_errors, pooled_errors = [], []
    for _ in range(64):
        mosaic = proxy.draw_mosaic(task, rng)
        hr_cells = cell_values(mosaic.hr, task, inset=0)
        lr_cells = cell_values(mosaic.lr, task, inset=1)
        pooled = np.stack([lr_cells[mosaic.layout == t].mean(axis=0)
                           for t in range(task.textures)])[mosaic.layout]
        own_errors.append(lr_cells - hr_cells)
        pooled_errors.append(pooled - hr_cells)
    own, pooled = (float(np.sqrt(np.mean(np.square(e)))) for e in (own_errors, pooled_errors))
    repeats = task.grid ** 2 // task.textures
    assert own == pytest.approx(task.cast, rel=0.15)
    assert pooled == pytest.approx(task.cast / np.sqrt(repeats), rel=0.25)


def test_variants_are_split_and_parsed():
    text = 'none,feature_map=relu,my_kernels:favor(rho=0.5, s=(1, 2)),loss=code(relevant=10)'
    variants = split_specs(text)
    assert variants == ['none', 'feature_map=relu', 'my_kernels:favor(rho=0.5, s=(1, 2))',
                        'loss=code(relevant=10)']
    assert [proxy.parse_variant(v) for v in variants] == [
        (None, 'none'), ('feature_map', 'relu'),
        ('attention', 'my_kernels:favor(rho=0.5, s=(1, 2))'), ('loss', 'code(relevant=10)')]

    base = proxy.base_config(proxy.Task(), 100)
    config, description = proxy.variant_config(base, 'feature_map=relu')
    assert config.model.feature_map == 'relu' and config.model.attention == 'enla'
    assert config.model.amplification == 6.0 and config.train.contrastive.weight == 0.0
    assert description == 'enla_k with model.feature_map=relu'
    # The ablation's exact variant (k = 1) and exact softmax put on enla_k (k = 6).
    assert proxy.variant_config(base, 'exact')[0].model.amplification == 1.0
    exact_k = proxy.variant_config(base, 'attention=exact')[0]
    assert exact_k.model.attention == 'exact' and exact_k.model.amplification == 6.0
    loss = proxy.variant_config(base, 'loss=code(relevant=10)')[0]
    assert loss.train.contrastive.loss == 'code(relevant=10)'
    assert loss.train.contrastive.weight > 0
    assert proxy.variant_config(base, 'block=my_blocks:Block')[0].model.block == 'my_blocks:Block'
    assert base.model.feature_map == 'softmax_kernel'  # the base is left as it was
    with pytest.raises(proxy.VariantError, match=r"unknown variant key 'kernel'.*'feature_map'"):
        proxy.variant_config(base, 'kernel=relu')


@pytest.mark.parametrize('variants, named', [
    ('none,lsh', "unknown variant 'lsh': not one of ['none', 'enla', 'enla_k', 'enla_k_cl', "
                 "'exact']"),
    ('kernel=relu', "unknown variant key 'kernel'"),
    ('feature_map=no_such_map', "variant 'feature_map=no_such_map': model.feature_map="),
])
def test_a_bad_variant_is_one_line_before_anything_trains(tmp_path, variants, named):
    with pytest.raises(SystemExit) as stop:
        proxy.main(['--variants', variants, '--workdir', str(tmp_path)])
    message = str(stop.value.code)
    assert named in message and '\n' not in message
    assert not list(tmp_path.iterdir())


def test_a_variant_compiles_once_for_all_seeds():
    config, _ = proxy.check_variant(proxy.base_config(TINY, 2), 'none')
    trainer = proxy.VariantTrainer(config, TINY, proxy.held_out_set(TINY))
    scores = [trainer.score(trainer.train(seed, 2)) for seed in (0, 1)]
    assert trainer.train_step._cache_size() == 1  # pylint: disable=protected-access
    assert scores[0] != scores[1] and all(np.isfinite(scores))


def readme_proxy_commands() -> list[list[str]]:
    """The arguments of the README's `python -m enlcn_jax.proxy` commands."""
    text = (Path(__file__).resolve().parents[2] / 'README.md').read_text()
    return [shlex.split(line)[3:] for line in text.splitlines()
            if line.startswith('python -m enlcn_jax.proxy ')]


def test_the_readme_s_first_command_is_the_default_table():
    first = readme_proxy_commands()[0]
    assert first[first.index('--variants') + 1] == ','.join(proxy.ablation.VARIANTS)


def test_the_readme_s_command_writes_the_table_and_the_rows(tmp_path, capsys):
    """The README's command with a researcher's map, at a tiny budget."""
    args = readme_proxy_commands()[1]
    args[args.index('--workdir') + 1] = str(tmp_path)
    proxy.main([*args, '--seeds', '2', '--steps', '2', '--size', str(TINY.lr_size)])
    progress = [line for line in capsys.readouterr().out.splitlines() if ' seed ' in line]
    assert len(progress) == 4 and progress[0].startswith('none seed 0: PSNR-Y ')
    rows = json.loads((tmp_path / 'proxy.json').read_text())
    assert [row['variant'] for row in rows] == [
        'none', 'feature_map=examples.my_kernels:relu_squared']
    for row in rows:
        assert len(row['psnr']) == 2 and all(np.isfinite(row['psnr']))
        assert row['psnr_mean'] == pytest.approx(np.mean(row['psnr']))
        assert row['psnr_std'] == pytest.approx(np.std(row['psnr'], ddof=1))
        assert row['seconds'] > 0 and row['params'] > 0 and row['steps'] == 2
    assert rows[0]['gain_db'] == 0.0
    assert rows[1]['gain_db'] == pytest.approx(rows[1]['psnr_mean'] - rows[0]['psnr_mean'])
    assert rows[1]['params'] > rows[0]['params']
    assert rows[1]['description'].endswith('model.feature_map=examples.my_kernels:relu_squared')
    table = (tmp_path / 'proxy.md').read_text()
    assert table.count('\n| ') == 1 + len(rows)
    assert f"| {rows[1]['description']} | {rows[1]['psnr_mean']:.2f} ± " in table
