"""A small Table-2 ablation on real photographs, sized for a 2-core CPU.

One backbone (8 residual blocks, 32 features, x2, an ENLCA first and one after every 4th block)
trained on Sun-Hays 80 (`../shared/data/train/SunHays80/HR`, or any HR folder via
`--config.data.hr_dir`) for the same steps and seed under each row of the paper's Table 2
(`enlcn_jax.research.variants.TABLE2`: none / ENLA / ENLA + k / ENLA + k + CL / exact softmax),
then evaluated on Set5, Set14 and B100:

    python -m enlcn_jax.ablation --config configs/ablation_small.py --workdir workdirs/ablation

The budget (steps, patch, batch) is the only thing to raise on a GPU; see docs/results.md.
"""

from pathlib import Path

import ml_collections

from enlcn_jax.train import default_config

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'


def get_config() -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.model.scale = 2
    config.model.n_resblocks = 8
    config.model.n_feats = 32
    config.model.attention_every = 4
    config.model.num_random_features = 64
    config.model.rgb_range = 255.0

    config.data.source = 'folder'
    config.data.hr_dir = str(SHARED_DATA / 'train' / 'SunHays80' / 'HR')
    config.data.cache_dir = str(Path('workdirs') / 'lr_cache')
    config.data.lr_patch = 32
    config.data.batch_size = 8
    config.data.num_workers = 2
    config.data.val_source = 'folder'
    config.data.val_hr_dir = str(SHARED_DATA / 'benchmark' / 'Set5' / 'HR')
    config.data.val_limit = 0

    config.train.epochs = 12
    config.train.steps_per_epoch = 50
    config.train.lr = 5e-4
    config.train.lr_decay_epochs = (10,)
    config.train.contrastive.start_epoch = 6
    config.train.log_every = 25
    config.train.checkpoint_every_steps = 100
    config.train.eval_every_epochs = 12

    # Evaluation of every variant after training (enlcn_jax.ablation).
    config.ablation = ml_collections.ConfigDict()
    config.ablation.datasets = 'Set5,Set14,B100'
    config.ablation.data_dir = str(SHARED_DATA / 'benchmark')
    # Comma-separated variants, written as the leaderboard takes them ('' = Table 2).
    config.ablation.variants = ''
    # Exact softmax attention on whole B100/Set14 images costs 1-3 min per image on 2 CPU cores
    # (O(N^2), N up to 10^5), so every variant is scored on 64^2 LR tiles (4096 positions, the
    # attention's reach; 0 = whole images, the published protocol).
    config.ablation.tile = 64
    config.ablation.tile_overlap = 16
    return config
