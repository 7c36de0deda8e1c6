"""Model checkpoints on disk: a model config plus its variables, written with orbax.

A *model directory* holds `model_config.json` (keyword arguments of `models.ENLCN`) and
`variables/` (an orbax StandardCheckpointer tree of `params` and `random_features`). The
converter writes one; training workdirs hold them too (see `train_lib`), and `load_model`
reads either.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

MODEL_CONFIG = 'model_config.json'
VARIABLES = 'variables'


def save_model(directory: str | Path, model_config: dict, variables: dict) -> Path:
    """Writes `model_config` and `variables` to `directory` (created; must not hold a model yet)."""
    directory = Path(directory).absolute()
    if (directory / VARIABLES).exists():
        raise FileExistsError(f'{directory / VARIABLES} already exists; choose another --out')
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / VARIABLES, variables)
    (directory / MODEL_CONFIG).write_text(json.dumps(model_config, indent=2, sort_keys=True))
    return directory


def load_model_dir(directory: str | Path) -> tuple[dict, dict]:
    """Reads a model directory written by `save_model`. Returns `(model_config, variables)`."""
    directory = Path(directory).absolute()
    config_path = directory / MODEL_CONFIG
    if not config_path.exists() or not (directory / VARIABLES).exists():
        raise FileNotFoundError(f'{directory} is not a model directory '
                                f'(needs {MODEL_CONFIG} and {VARIABLES}/)')
    config = json.loads(config_path.read_text())
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(directory / VARIABLES)
    return config, _as_numpy(variables)


def _as_numpy(tree):
    if isinstance(tree, dict):
        return {k: _as_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
