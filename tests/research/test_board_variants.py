"""Every row of the board is a model that trains, is recorded, loads again and evaluates exactly
under padding, through the code train.py and eval.py run."""

import json

import jax
import numpy as np
import pytest

from conftest import TEST_DATA, TINY_MODEL, tiny_config
from enlcn_jax.data import sources
from enlcn_jax.evaluation import evaluator, inference
from enlcn_jax.nn import models
from enlcn_jax.research import variants
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import loop


def model_overrides(name: str) -> dict:
    """The `model.*` settings of a built-in variant, as model config keys."""
    return {key.split('.', 1)[1]: value for key, value in variants.VARIANTS[name].overrides.items()
            if key.startswith('model.')}


def distinct_models() -> list[str]:
    """One board variant per distinct set of model functions (the attention with its options,
    the feature map): rows that differ only in k, the sampler or training run the same code."""
    seen, names = set(), []
    for name in variants.VARIANTS:
        overrides = model_overrides(name)
        functions = (overrides.get('attention'), overrides.get('feature_map'))
        if overrides.get('attention') != 'none' and functions not in seen:
            seen.add(functions)
            names.append(name)
    return names


@pytest.mark.parametrize('name', distinct_models())
def test_a_board_variant_is_recorded_loads_and_pads_exactly(tmp_path, name):
    """Saved as a model directory, loaded as eval.py loads it (`inference.load_upscaler`), an
    image evaluated in a padded bucket gives the unpadded output."""
    config = {**TINY_MODEL, **model_overrides(name)}
    model = models.from_config(config)
    variables = models.init_variables(model, jax.random.key(0), (12, 12))
    checkpoints.save_model(tmp_path / name, config, jax.device_get(variables))
    assert json.loads((tmp_path / name / 'model_config.json').read_text())['attention'] == \
        config['attention']
    image = np.random.default_rng(0).integers(0, 256, (11, 13, 3), dtype=np.uint8)
    padded = inference.load_upscaler(tmp_path / name, bucket=16).predict(image)
    unpadded = inference.load_upscaler(tmp_path / name, bucket=1).predict(image)
    assert padded.shape == unpadded.shape == (22, 26, 3)
    np.testing.assert_allclose(padded, unpadded, atol=2e-5)


def test_shifted_windows_train_and_evaluate_as_train_py_and_eval_py_do(tmp_path):
    """The board's most structured row (windows shifted on alternate modules, which needs each
    module's ordinal) through the training loop and the evaluator."""
    config = tiny_config(model__attention='swin(window=4)', model__attention_every=1)
    assert loop.run_training(config, tmp_path / 'swin') is None
    records = [json.loads(line)
               for line in (tmp_path / 'swin' / 'metrics.jsonl').read_text().splitlines()]
    assert all(np.isfinite(r['train/loss']) for r in records if 'train/loss' in r)
    upscaler = inference.load_upscaler(tmp_path / 'swin', bucket=16)
    source = sources.find_dataset('Set5', 2, TEST_DATA / 'benchmark')
    summary = evaluator.evaluate_dataset(source, upscaler, progress=False).summary()
    assert summary['images'] == 5 and 5 < summary['psnr'] < 60
