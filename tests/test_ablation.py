"""The ablation script end to end at a tiny size."""

import json

import numpy as np
import pytest

from configs import ablation_small
from conftest import benchmark_images
from enlcn_jax import ablation, image_io


def test_variant_overrides():
    base = ablation_small.get_config()
    assert ablation.variant_config(base, 'none').model.attention == 'none'
    enla = ablation.variant_config(base, 'enla')
    assert enla.model.amplification == 1.0 and enla.train.contrastive.weight == 0.0
    assert ablation.variant_config(base, 'enla_k_cl').train.contrastive.weight == 1e-3
    assert base.model.attention == 'enla'  # the base is not modified
    with pytest.raises(ValueError, match="unknown ablation variant 'lsh'"):
        ablation.variant_config(base, 'lsh')


def test_ablation_runs_end_to_end_at_a_tiny_size(tmp_path):
    images = benchmark_images('Set5')[:2]
    for split, size in (('train', 96), ('test', 48)):
        for path in images:
            image_io.save_image(tmp_path / split / path.name, image_io.load_image(path)[:size, :size])
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
    config.ablation.datasets = str(tmp_path / 'test')
    config.ablation.tile, config.ablation.tile_overlap = 16, 4     # 24^2 LR test images: 4 tiles
    rows = ablation.run_ablation(config, tmp_path / 'work')
    assert [r['variant'] for r in rows] == list(ablation.VARIANTS)
    assert all(np.isfinite(r['test PSNR']) and r['params'] > 0 for r in rows)
    table = (tmp_path / 'work' / 'ablation.md').read_text()
    assert table.count('\n| ') == 1 + len(rows) and 'exact non-local attention' in table
    assert 'evaluated on 16^2 LR tiles overlapping by 4' in table
    assert len(json.loads((tmp_path / 'work' / 'ablation.json').read_text())) == len(rows)
    # EDSR has fewer parameters than the variants with attention modules.
    assert rows[0]['params'] < rows[1]['params'] == rows[3]['params']
