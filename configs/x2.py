"""ENLCN x2 with the released code's recipe (`enlcn_jax/train/default_config.py`)."""

import ml_collections

from enlcn_jax.train import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.model.scale = 2
    return config
