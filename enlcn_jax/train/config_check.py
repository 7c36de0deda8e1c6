"""The checks of a training config, made before anything is loaded or compiled: the one place
every command (train.py, the benchmarks, the leaderboard and the ablation) checks one.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from enlcn_jax.data import input_pipeline
from enlcn_jax.data import sources as data_lib
from enlcn_jax.evaluation import inference
from enlcn_jax.nn import models, precision
from enlcn_jax.train import recipe

SOURCES = ('tfds', 'folder', 'skimage')
REDRAW_SCHEDULES = ('epoch', 'steps', 'never')
# Counts that must be >= 1, by dotted key.
POSITIVE_COUNTS = ('train.epochs', 'train.steps_per_epoch', 'train.log_every',
                   'train.checkpoint_every_steps', 'train.keep_checkpoints',
                   'train.eval_every_epochs', 'train.redraw.steps')


def _require_dir(key: str, value: str, why: str) -> None:
    if not value or not Path(value).is_dir():
        raise data_lib.DatasetNotFoundError(f'config.{key}={value!r} is not a directory ({why})')


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Cheap checks of a training config.

    Raises:
      ValueError: an unknown choice, a feature map / projection / attention / contrastive loss
        (when it is used) that cannot be imported or fails its check, a non-positive count, a
        patch too small for the contrastive loss, a batch that does not split over the devices,
        ...; the message names the config key.
      data_lib.DatasetNotFoundError: a dataset folder that does not exist.
    """
    model, data, train = config.model, config.data, config.train
    # Unknown keys or values, and every swappable function checked on a small input.
    models.from_config(model.to_dict())
    precision.check_trains(model.dtype)
    if data.source not in SOURCES:
        raise ValueError(f'config.data.source={data.source!r}; choose one of {SOURCES}')
    if data.val_source not in SOURCES + ('none',):
        raise ValueError(f"config.data.val_source={data.val_source!r}; choose one of "
                         f"{SOURCES + ('none',)}")
    if data.source == 'folder':
        _require_dir('data.hr_dir', data.hr_dir, 'data.source=folder needs the HR training images')
        if data.lr_dir:
            _require_dir('data.lr_dir', data.lr_dir, "DIV2K-layout LR images, or '' to make them")
    if data.val_source == 'folder':
        _require_dir('data.val_hr_dir', data.val_hr_dir, 'data.val_source=folder needs HR images')
        if data.val_lr_dir:
            _require_dir('data.val_lr_dir', data.val_lr_dir, "LR images, or '' to make them")
    if data.tfds_data_dir and 'tfds' in (data.source, data.val_source):
        _require_dir('data.tfds_data_dir', data.tfds_data_dir, 'the prepared TFDS data_dir')
    # The input pipeline's and the validation upscaler's own checks, naming the config keys.
    input_pipeline.check_counts('config.data.', lr_patch=data.lr_patch,
                                batch_size=data.batch_size, num_workers=data.num_workers)
    try:
        inference.ModelUpscaler.check_options(train.eval_bucket, None, 0)
    except ValueError as e:
        raise ValueError(f'config.train.eval_{e}') from None
    for key in POSITIVE_COUNTS:
        value = config[key]
        if value < 1:
            raise ValueError(f'config.{key} must be >= 1, got {value}')
    for key, value, minimum in (('train.lr', train.lr, 0.0),
                                ('train.lr_decay_factor', train.lr_decay_factor, 0.0)):
        if not (value > minimum and math.isfinite(value)):
            raise ValueError(f'config.{key} must be finite and > {minimum}, got {value}')
    for key, source, photos in (('data.photos', data.source, data.photos),
                                ('data.val_photos', data.val_source, data.val_photos)):
        if source == 'skimage' and not photos:
            raise ValueError(f'config.{key} is empty: name at least one scikit-image photo')
    if train.contrastive.weight < 0:
        raise ValueError(f'config.train.contrastive.weight must be >= 0, got '
                         f'{train.contrastive.weight}')
    if data.batch_size % jax.device_count():
        raise ValueError(f'config.data.batch_size={data.batch_size} does not split over '
                         f'{jax.device_count()} devices')
    if train.redraw.every not in REDRAW_SCHEDULES:
        raise ValueError(f'config.train.redraw.every={train.redraw.every!r}; choose one of '
                         f'{REDRAW_SCHEDULES}')
    if list(train.lr_decay_epochs) != sorted(train.lr_decay_epochs):
        raise ValueError(f'config.train.lr_decay_epochs must be increasing, got '
                         f'{train.lr_decay_epochs}')
    if model.attention != 'none' and train.contrastive.weight > 0:
        _check_contrastive_loss(config)


def _check_contrastive_loss(config: ml_collections.ConfigDict) -> None:
    """Resolves the configured contrastive loss (`recipe.contrastive_loss_fn`) and traces it on
    one LR patch's embeddings, `q, k [lr_patch^2, n_feats / reduction]` (`jax.eval_shape`).

    Raises:
      ValueError: a loss that cannot be resolved, or that refuses the patch (the registered
        losses need as many positions as their rank windows reach), naming the config keys.
    """
    loss = recipe.contrastive_loss_fn(config)
    patch = config.data.lr_patch
    embedding = jax.ShapeDtypeStruct((patch ** 2, config.model.n_feats // config.model.reduction),
                                     jnp.float32)
    try:
        jax.eval_shape(loss, embedding, embedding)
    except ValueError as e:
        raise ValueError(f'config.train.contrastive.loss={config.train.contrastive.loss!r} on '
                         f'config.data.lr_patch={patch} ({patch ** 2} positions per image): '
                         f'{e}') from e
