"""The released code's training recipe (EDSR-PyTorch + ENLCN): every key of a training config.

The config files `configs/x2.py`, `x3.py`, `x4.py` and `quickstart.py` at the repository root
start from it, as does the leaderboard (`research.runs`); `configs/default.py` is this file as a
config file. It imports no jax.

Every row of docs/method.md's "paper vs released code" table is a key here; the default is
always the released code's (the pretrained weights came from it) except `train.redraw.every`, which
redraws the random features at every epoch start (the paper's schedule, a deterministic function of
the epoch that a resumed run repeats). The comment of each key gives the paper's value.

Run: `python train.py --config configs/x2.py --config.data.hr_dir=... ` (see `data` below).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """ENLCN (32 blocks, 256 features, 5 ENLCA modules) at x2 on DIV2K, released-code recipe."""
    config = ml_collections.ConfigDict()
    # Several processes, one model: train.py initialises jax.distributed (see its
    # --coordinator_address, --num_processes, --process_id flags).
    config.distributed = False

    # Keyword arguments of models.ENLCN, saved as <workdir>/model_config.json for evaluation.
    config.model = ml_collections.ConfigDict()
    config.model.scale = 2                  # SR factor: 2, 3 or 4
    config.model.n_resblocks = 32           # EDSR residual blocks
    config.model.n_feats = 256              # channels C
    config.model.res_scale = 0.1            # residual scaling of blocks and ENLCA outputs
    # Swappable math: a registered name, or MODULE:NAME for a function of your own, either with
    # keyword options in parentheses: 'softmax_kernel(eps=0.0)' (README).
    config.model.attention = 'enla'         # 'enla' (linear ENLCA), 'exact' (softmax NLA), 'none' (EDSR)
    config.model.attention_every = 8        # an ENLCA first, then one after every 8th block
    # The attention module: 'enlca', or MODULE:NAME for a Flax module with ENLCA's fields and call.
    config.model.block = 'enlca'
    config.model.reduction = 4              # attention embedding C / 4 = 64
    config.model.num_random_features = 128  # m
    config.model.amplification = 6.0       # k: Q and K scaled to norm sqrt(k)
    config.model.feature_map = 'softmax_kernel'  # positive random features of exp(q.k); 'relu', ...
    config.model.projection = 'orthogonal'  # code and paper: orthogonal blocks; 'iid' Gaussian rows
    config.model.norm_eps = 5e-5            # code: ||x|| clamped at 5e-5 (paper: unspecified)
    # The feature map's eps option; None: its own default (softmax_kernel: the code's
    # (exp(.) + 1e-4) / sqrt(m)); paper: 0.0. Only for maps that have an eps argument.
    config.model.kernel_eps = config_dict.placeholder(float)
    # Compute precision of the convolutions: 'float32', 'bfloat16' (mixed precision: parameters,
    # optimizer state, attention and losses stay float32) or 'float16' (evaluation only).
    config.model.dtype = 'float32'
    config.model.rgb_range = 255.0          # EDSR's internal pixel scale (255 in the released code)

    config.data = ml_collections.ConfigDict()
    # Training images: 'tfds' (prepared div2k/bicubic_x{scale}, train split), 'folder' (HR images,
    # LR from lr_dir in the DIV2K layout or made by MATLAB bicubic), 'skimage' (photos bundled
    # with scikit-image; see quickstart.py).
    config.data.source = 'tfds'
    config.data.hr_dir = ''                 # folder source: e.g. /data/DIV2K_train_HR
    config.data.lr_dir = ''                 # folder source: e.g. /data/DIV2K_train_LR_bicubic ('' = make LR)
    config.data.tfds_data_dir = ''          # tfds source: data_dir ('' = ~/tensorflow_datasets)
    config.data.cache_dir = ''              # where generated LR images are kept ('' = not kept)
    config.data.photos = ('astronaut',)     # skimage source: names of skimage.data photos
    config.data.lr_patch = 48               # LR patch side; HR patch = 48 * scale (paper: 46 x2, 28 x4)
    config.data.batch_size = 16             # global batch, split over all devices
    config.data.num_workers = 4             # threads decoding images and cutting patches
    # Validation images: 'tfds' (DIV2K validation split), 'folder' (val_hr_dir, val_lr_dir),
    # 'skimage' (val_photos) or 'none'. EDSR validates on DIV2K 801-810: the first 10.
    config.data.val_source = 'tfds'
    config.data.val_hr_dir = ''
    config.data.val_lr_dir = ''
    config.data.val_photos = ('chelsea',)
    config.data.val_limit = 10              # first N validation images (0 = all)

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 1000
    config.train.steps_per_epoch = 1000     # EDSR's test_every: an "epoch" is 1000 batches
    config.train.lr = 1e-4
    config.train.lr_decay_epochs = (200, 400, 600, 800)  # lr *= factor at each (paper: (200,))
    config.train.lr_decay_factor = 0.5
    config.train.betas = (0.9, 0.999)       # Adam (paper: (0.9, 0.99))
    config.train.eps = 1e-8                 # Adam epsilon
    config.train.grad_clip = 0.0            # clip by global norm; 0 = off (the released code: off)
    config.train.contrastive = ml_collections.ConfigDict()
    config.train.contrastive.weight = 1e-3  # L = L1 + weight * mean over ENLCA modules of L_cl
    config.train.contrastive.start_epoch = 100  # L1 only before this epoch (paper: 150)
    # Swappable like the model's functions: 'code' (the released loss), 'paper' (Eq. 10), or
    # MODULE:NAME for a function loss(q [N, d], k [N, d], **options) -> scalar of your own; options
    # in parentheses, e.g. 'code(relevant=10, irrelevant=(40, 55))' (see nn/losses.py).
    config.train.contrastive.loss = 'code'
    # The loss's margin option; None: its own default (code and paper: 1.0).
    config.train.contrastive.margin = config_dict.placeholder(float)
    config.train.contrastive.block_size = 1024  # query rows scored at once (memory O(block N))
    config.train.redraw = ml_collections.ConfigDict()
    # Random features: 'epoch' (new draw at every epoch start, paper), 'steps' (every
    # redraw.steps steps; the code redraws every 640 forward calls), 'never' (keep the init draw).
    # Draw i uses fold_in(key, i): a resumed run redraws exactly as a straight one.
    config.train.redraw.every = 'epoch'
    config.train.redraw.steps = 640
    config.train.seed = 0                   # parameters, random features and patch sampling
    config.train.log_every = 100            # steps between train-metric logs (and NaN checks)
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 3       # latest checkpoints kept (the best one is kept apart)
    config.train.eval_every_epochs = 1      # validation PSNR-Y every N epochs and at the end
    # Validation runs eval.py's evaluator; LR sides padded to a multiple of this so sizes share
    # a compiled forward (the padding is masked, the numbers are the unpadded ones). The value
    # is `inference.DEFAULT_BUCKET`, eval.py's and upscale's default (a test checks they agree;
    # the configs stay free of jax imports).
    config.train.eval_bucket = 16
    return config
