"""The datasets a training config names (`config.data`), loaded, and their fingerprints."""

from __future__ import annotations

import hashlib

import ml_collections
import numpy as np

from enlcn_jax.data import sources


class DataError(ValueError):
    """A configured dataset that cannot be trained on; the message names the config key."""


def load_datasets(config: ml_collections.ConfigDict) -> tuple[sources.SRDataset,
                                                               sources.SRDataset | None]:
    """`(train, validation or None)` as configured; `validation` cut to `data.val_limit` images.

    Raises:
      sources.DatasetNotFoundError: a dataset folder or TFDS dataset that does not exist.
      DataError: a dataset of which no image can be used, naming its config key.
    """
    data, scale = config.data, config.model.scale

    def load(source: str, split: str, hr_dir: str, lr_dir: str, photos,
             key: str) -> sources.SRDataset:
        try:
            if source == 'folder':
                return sources.load_folder(hr_dir, scale, lr_dir or None,
                                           data.cache_dir or None, data.num_workers)
            if source == 'tfds':
                return sources.load_div2k_tfds(split, scale, data.tfds_data_dir or None)
            return sources.load_skimage_photos(photos, scale)
        except sources.DatasetNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(f'config.{key}: no image can be used ({e})') from e

    train_ds = load(data.source, 'train', data.hr_dir, data.lr_dir, data.photos,
                    'data.hr_dir' if data.source == 'folder' else 'data.source')
    if data.val_source == 'none':
        return train_ds, None
    split = f'validation[:{data.val_limit}]' if data.val_limit else 'validation'
    val_ds = load(data.val_source, split, data.val_hr_dir, data.val_lr_dir, data.val_photos,
                  'data.val_hr_dir' if data.val_source == 'folder' else 'data.val_source')
    if data.val_limit:
        n = data.val_limit
        val_ds = sources.SRDataset(val_ds.names[:n], val_ds.hr[:n], val_ds.lr[:n], val_ds.scale)
    return train_ds, val_ds


def fingerprint(dataset: sources.SRDataset | None) -> dict | None:
    """`{'images': count, 'sha256': hex}` over the names, shapes and pixels of every pair (None
    for no dataset): equal exactly when the same images are loaded in the same order."""
    if dataset is None:
        return None
    digest = hashlib.sha256()
    for name, hr, lr in zip(dataset.names, dataset.hr, dataset.lr):
        digest.update(f'{name}|{hr.shape}|{lr.shape}|'.encode())
        digest.update(np.ascontiguousarray(hr).data)
        digest.update(np.ascontiguousarray(lr).data)
    return {'images': len(dataset), 'sha256': digest.hexdigest()}
