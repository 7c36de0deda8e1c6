"""The ablation script end to end at a tiny size."""

import json
import re

import numpy as np
import pytest

from configs import ablation_small
from conftest import benchmark_images
from enlcn_jax.research import ablation, variants
from enlcn_jax.data import image_io


def test_variant_overrides():
    base = ablation_small.get_config()
    config = lambda name: variants.variant_config(base, name)[0]
    assert config('none').model.attention == 'none'
    enla = config('enla')
    assert enla.model.amplification == 1.0 and enla.train.contrastive.weight == 0.0
    assert config('enla_k_cl').train.contrastive.weight == 1e-3
    assert config('exact').model.amplification == 1.0
    assert base.model.attention == 'enla'  # the base is not modified
    with pytest.raises(variants.VariantError, match="unknown variant 'lsh'"):
        variants.check_variant(base, 'lsh')


def psnr_cells(table: str) -> dict[str, list[str]]:
    """`column -> cells` of the PSNR columns of the markdown table in ablation.md."""
    rows = [[c.strip() for c in line.strip().strip('|').split('|')]
            for line in table.splitlines() if line.startswith('|')]
    head, body = rows[0], [r for r in rows[1:] if not set(''.join(r)) <= set('-')]
    return {h: [r[i] for r in body] for i, h in enumerate(head) if h.endswith(' PSNR')}


def test_ablation_runs_end_to_end_at_a_tiny_size(tmp_path):
    images = benchmark_images('Set5')[:2]
    for split, size, count in (('train', 96, 2), ('test', 48, 2), ('benchmark/Set5/HR', 48, 1)):
        for path in images[:count]:
            crop = image_io.load_image(path)[:size, :size]
            image_io.save_image(tmp_path / split / path.name, crop)
    config = ablation_small.get_config()
    config.model.n_resblocks, config.model.n_feats = 2, 8
    config.model.attention_every, config.model.num_random_features = 1, 8
    config.data.hr_dir, config.data.cache_dir = str(tmp_path / 'train'), ''
    config.data.val_source = 'none'
    config.data.lr_patch, config.data.batch_size = 16, 2
    config.train.epochs, config.train.steps_per_epoch = 1, 2
    config.train.contrastive.start_epoch = 0
    config.train.log_every = config.train.checkpoint_every_steps = 2
    config.train.eval_every_epochs = 1
    # One dataset given as a folder path, one by name in another case: both are reported under
    # the name data.find_dataset resolves ('test', 'Set5').
    config.ablation.datasets = f"{tmp_path / 'test'},set5"
    config.ablation.data_dir = str(tmp_path / 'benchmark')
    config.ablation.tile, config.ablation.tile_overlap = 16, 4     # 24^2 LR test images: 4 tiles
    rows = ablation.run_ablation(config, tmp_path / 'work')
    assert [r['variant'] for r in rows] == list(variants.TABLE2)
    assert all(np.isfinite(r['test PSNR']) and np.isfinite(r['Set5 PSNR']) and r['params'] > 0
               for r in rows)
    table = (tmp_path / 'work' / 'ablation.md').read_text()
    cells = psnr_cells(table)
    assert list(cells) == ['test PSNR', 'Set5 PSNR']
    for column, values in cells.items():
        assert len(values) == len(rows)
        for row, value in zip(rows, values):
            assert re.fullmatch(r'\d+\.\d\d', value), (column, values)
            assert float(value) == pytest.approx(row[column], abs=0.005)
    assert table.count('\n| ') == 1 + len(rows) and 'exact non-local attention' in table
    assert 'evaluated on 16^2 LR tiles overlapping by 4' in table
    assert len(json.loads((tmp_path / 'work' / 'ablation.json').read_text())) == len(rows)
    # EDSR has fewer parameters than the variants with attention modules.
    assert rows[0]['params'] < rows[1]['params'] == rows[3]['params']
