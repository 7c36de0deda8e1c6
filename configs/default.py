"""The released code's training recipe, every key of a training config: the package's
`enlcn_jax/train/default_config.py`, here as a config file (`--config configs/default.py`)."""

from enlcn_jax.train.default_config import get_config  # pylint: disable=unused-import
