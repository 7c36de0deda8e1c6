"""ENLCN x2 with the released code's recipe (configs/default.py)."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.scale = 2
    return config
