"""A few-minute ENLCN run on a 2-core CPU: no dataset to download.

Trains a small ENLCN x2 (4 blocks, 32 features, 3 ENLCA modules, 24x24 LR patches) for 400
steps on photos bundled with scikit-image and validates on one held-out photo (`chelsea`),
logging the bicubic PSNR-Y of that photo beside the model's (about 35.3 dB; the model passes it
after about 200 steps). Everything not set here is the released recipe
(`enlcn_jax/train/default_config.py`), scaled down: 50-step epochs, a 10x larger learning rate,
L1 alone for the first 5 epochs, then the contrastive loss (which costs about 4x the rest of the
step on a CPU).

    python train.py --config configs/quickstart.py --workdir /tmp/quickstart
"""

import ml_collections

from enlcn_jax.train import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.model.scale = 2
    config.model.n_resblocks = 4
    config.model.n_feats = 32
    config.model.attention_every = 2
    config.model.num_random_features = 32

    config.data.source = 'skimage'
    config.data.photos = ('astronaut', 'coffee', 'rocket', 'immunohistochemistry',
                          'hubble_deep_field', 'colorwheel')
    config.data.val_source = 'skimage'
    config.data.val_photos = ('chelsea',)
    config.data.val_limit = 0
    config.data.lr_patch = 24
    config.data.batch_size = 16
    config.data.num_workers = 2

    config.train.epochs = 8
    config.train.steps_per_epoch = 50
    config.train.lr = 1e-3
    config.train.lr_decay_epochs = (6, 7)
    config.train.contrastive.start_epoch = 5
    config.train.log_every = 25
    config.train.checkpoint_every_steps = 100
    config.train.eval_every_epochs = 2
    return config
