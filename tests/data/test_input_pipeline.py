"""Tests for enlcn_jax.data.input_pipeline and transforms: aligned crops, the dihedral group, the
patch loader."""

import itertools
import shutil

import numpy as np
import pytest

from conftest import benchmark_images
from enlcn_jax.data.sources import SRDataset, load_folder
from enlcn_jax.data.input_pipeline import PatchLoader, prefetch_to_device, random_crop_pair
from enlcn_jax.data.transforms import dihedral, inverse_dihedral

SCALE = 2


def _kron_up(lr, scale=SCALE):
    """Nearest-neighbour upscaling: HR pixel (y, x) == LR pixel (y // s, x // s)."""
    return np.kron(lr, np.ones((scale, scale, 1), np.uint8))


def _kron_dataset(sizes=((20, 24), (31, 17), (16, 40)), scale=SCALE, seed=0):
    rng = np.random.default_rng(seed)
    lrs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    return SRDataset(
        names=[f"im{i}" for i in range(len(lrs))],
        hr=[_kron_up(lr, scale) for lr in lrs],
        lr=lrs,
        scale=scale,
    )


# --- crops and dihedral transforms --------------------------------------------------------


def test_random_crop_pair_aligned():
    ds = _kron_dataset()
    rng = np.random.default_rng(3)
    for _ in range(20):
        hr_p, lr_p = random_crop_pair(ds.hr[1], ds.lr[1], 7, SCALE, rng, "im1")
        assert lr_p.shape == (7, 7, 3) and hr_p.shape == (14, 14, 3)
        np.testing.assert_array_equal(hr_p, _kron_up(lr_p))


def test_random_crop_pair_too_small_names_image():
    ds = _kron_dataset(sizes=((10, 30),))
    with pytest.raises(ValueError, match="tiny.png"):
        random_crop_pair(ds.hr[0], ds.lr[0], 12, SCALE, np.random.default_rng(0), "tiny.png")


def test_dihedral_group():
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    images = [dihedral(x, k) for k in range(8)]
    assert len({(im.shape, im.tobytes()) for im in images}) == 8
    np.testing.assert_array_equal(images[0], x)
    np.testing.assert_array_equal(images[4], x.transpose(1, 0, 2))
    for k in range(8):
        np.testing.assert_array_equal(inverse_dihedral(images[k], k), x)
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_dihedral_batched_and_axes():
    xb = np.random.default_rng(1).integers(0, 256, (2, 4, 7, 3), dtype=np.uint8)
    channels_first = xb.transpose(0, 3, 1, 2)  # [B, C, H, W]
    for k in range(8):
        out = dihedral(xb, k)
        for b in range(2):
            np.testing.assert_array_equal(out[b], dihedral(xb[b], k))
        np.testing.assert_array_equal(dihedral(channels_first, k, axes=(2, 3)), out.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(inverse_dihedral(out, k), xb)


def test_dihedral_on_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    x = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
    for k in range(8):
        y = dihedral(jnp.asarray(x), k)
        np.testing.assert_array_equal(np.asarray(y), dihedral(x, k))
        np.testing.assert_array_equal(np.asarray(inverse_dihedral(y, k)), x)


# --- PatchLoader ---------------------------------------------------------------------------


def _take(loader, n):
    with loader:
        return list(itertools.islice(loader, n))


def test_patch_loader_shapes_and_alignment():
    ds = _kron_dataset()
    (batch,) = _take(PatchLoader(ds, batch_size=6, lr_patch=8, seed=1), 1)
    assert batch["lr"].shape == (6, 8, 8, 3) and batch["lr"].dtype == np.uint8
    assert batch["hr"].shape == (6, 16, 16, 3) and batch["hr"].dtype == np.uint8
    for lr, hr in zip(batch["lr"], batch["hr"]):  # dihedral commutes with kron upscaling
        np.testing.assert_array_equal(hr, _kron_up(lr))


def test_patch_loader_deterministic_and_resumable():
    ds = _kron_dataset()
    kwargs = dict(batch_size=4, lr_patch=8, seed=7)
    straight = _take(PatchLoader(ds, num_workers=2, prefetch=3, **kwargs), 8)
    again = _take(PatchLoader(ds, num_workers=1, prefetch=1, **kwargs), 8)
    resumed = _take(PatchLoader(ds, start_step=5, **kwargs), 3)
    other_seed = _take(PatchLoader(ds, batch_size=4, lr_patch=8, seed=8), 1)
    for a, b in zip(straight, again):
        np.testing.assert_array_equal(a["lr"], b["lr"])
        np.testing.assert_array_equal(a["hr"], b["hr"])
    for a, b in zip(straight[5:], resumed):
        np.testing.assert_array_equal(a["lr"], b["lr"])
        np.testing.assert_array_equal(a["hr"], b["hr"])
    assert not np.array_equal(straight[0]["lr"], straight[1]["lr"])
    assert not np.array_equal(straight[0]["lr"], other_seed[0]["lr"])


def test_patch_loader_validation():
    ds = _kron_dataset(sizes=((20, 24), (9, 40)))
    with pytest.raises(ValueError, match="empty"):
        PatchLoader(SRDataset(names=[], hr=[], lr=[], scale=2), batch_size=1, lr_patch=4)
    with pytest.raises(ValueError, match="batch_size"):
        PatchLoader(ds, batch_size=0, lr_patch=4)
    with pytest.raises(ValueError, match="im1"):
        PatchLoader(ds, batch_size=2, lr_patch=10)


def test_patch_loader_closed():
    loader = PatchLoader(_kron_dataset(), batch_size=1, lr_patch=4)
    next(loader)
    loader.close()
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_prefetch_to_device_order_and_lookahead():
    consumed = []

    def source():
        for i in range(5):
            consumed.append(i)
            yield i

    it = prefetch_to_device(source(), 2, lambda x: ("dev", x))
    assert next(it) == ("dev", 0) and consumed == [0, 1]
    assert next(it) == ("dev", 1) and consumed == [0, 1, 2]
    assert list(it) == [("dev", 2), ("dev", 3), ("dev", 4)]
    with pytest.raises(ValueError):
        prefetch_to_device(iter([]), 0, lambda x: x)


def test_set5_folder_to_batches(tmp_path):
    set5 = {p.name: p for p in benchmark_images("Set5")}
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for name in ("img_002.png", "img_003.png"):
        shutil.copy(set5[name], hr_dir / name)
    ds = load_folder(hr_dir, SCALE, cache_dir=tmp_path / "cache")
    assert ds.names == ["img_002", "img_003"]
    assert [lr.shape for lr in ds.lr] == [(144, 144, 3), (128, 128, 3)]
    (batch,) = _take(PatchLoader(ds, batch_size=3, lr_patch=48), 1)
    assert batch["hr"].shape == (3, 96, 96, 3)
