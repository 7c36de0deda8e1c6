"""Tests for enlcn_jax.data.sources: folder and TFDS sources, the LR cache, pair checks."""

import errno

import numpy as np
import pytest
from PIL import Image

import enlcn_jax.data.sources as data
from enlcn_jax.data.sources import (
    DatasetNotFoundError,
    SRDataset,
    div2k_lr_path,
    load_div2k_tfds,
    load_folder,
)
from enlcn_jax.data.image_io import save_image
from enlcn_jax.data.imresize import bicubic_downscale

SCALE = 2


# --- folder source and LR cache ---------------------------------------------------------


def test_load_folder_div2k_layout(tmp_path):
    rng = np.random.default_rng(0)
    hr_dir, lr_dir = tmp_path / "DIV2K_train_HR", tmp_path / "DIV2K_train_LR_bicubic"
    hrs = {"0001": rng.integers(0, 256, (33, 50, 3), dtype=np.uint8),  # odd H: modcropped
           "0002": rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)}
    for stem, hr in hrs.items():
        save_image(hr_dir / f"{stem}.png", hr)
        save_image(div2k_lr_path(lr_dir, stem, SCALE), hr[::2, ::2][:16 if stem == "0001" else 20])
    assert div2k_lr_path(lr_dir, "0001", 2) == lr_dir / "X2" / "0001x2.png"
    ds = load_folder(hr_dir, SCALE, lr_dir=lr_dir)
    assert ds.names == ["0001", "0002"] and ds.scale == SCALE and len(ds) == 2
    assert ds.lr[0].shape == (16, 25, 3) and ds.hr[0].shape == (32, 50, 3)
    np.testing.assert_array_equal(ds.hr[0], hrs["0001"][:32])
    np.testing.assert_array_equal(ds.lr[1], hrs["0002"][::2, ::2])


def test_load_folder_lr_size_mismatch_names_file(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    save_image(hr_dir / "0007.png", np.zeros((40, 40, 3), np.uint8))
    save_image(div2k_lr_path(lr_dir, "0007", SCALE), np.zeros((19, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="0007x2.png"):
        load_folder(hr_dir, SCALE, lr_dir=lr_dir)


def test_load_folder_missing_lr_names_expected_path(tmp_path):
    save_image(tmp_path / "hr" / "0003.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="0003x2.png"):
        load_folder(tmp_path / "hr", SCALE, lr_dir=tmp_path / "lr")


def test_bicubic_lr_cache_written_and_reused(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    hr_dir, cache = tmp_path / "hr", tmp_path / "cache"
    hr = rng.integers(0, 256, (30, 23, 3), dtype=np.uint8)
    save_image(hr_dir / "img_001.png", hr)
    first = load_folder(hr_dir, SCALE, cache_dir=cache)
    hr_ref, lr_ref = bicubic_downscale(hr, SCALE)
    np.testing.assert_array_equal(first.lr[0], lr_ref)
    np.testing.assert_array_equal(first.hr[0], hr_ref)
    (cached,) = (cache / "X2").glob("img_001x2_*.png")
    mtime = cached.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("bicubic_downscale called although the LR is cached")

    monkeypatch.setattr(data, "bicubic_downscale", fail)
    second = load_folder(hr_dir, SCALE, cache_dir=cache)
    np.testing.assert_array_equal(second.lr[0], lr_ref)
    np.testing.assert_array_equal(second.hr[0], hr_ref)
    assert cached.stat().st_mtime_ns == mtime
    assert [p.name for p in (cache / "X2").iterdir()] == [cached.name]  # no temp files left

    # An equally named file with other content (Set5 vs Set14 img_001.png) is not confused.
    monkeypatch.undo()
    save_image(tmp_path / "other" / "img_001.png", hr[::-1])
    other = load_folder(tmp_path / "other", SCALE, cache_dir=cache)
    np.testing.assert_array_equal(other.lr[0], bicubic_downscale(hr[::-1], SCALE)[1])
    assert len(list((cache / "X2").iterdir())) == 2


def test_div2k_tfds_missing_gives_helpful_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_div2k_tfds("train", 2, data_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "tfds build div2k/bicubic_x2" in message and str(tmp_path) in message
    assert "data.source=folder" in message and "data.hr_dir=/path/DIV2K_train_HR" in message
    assert "data.lr_dir=/path/DIV2K_train_LR_bicubic" in message


def test_srdataset_rejects_inconsistent_pair():
    with pytest.raises(ValueError, match="bad"):
        SRDataset(names=["bad"], hr=[np.zeros((10, 10, 3), np.uint8)],
                  lr=[np.zeros((4, 5, 3), np.uint8)], scale=2)


def test_a_truncated_image_or_broken_link_is_left_out_with_a_warning(tmp_path, caplog):
    hr = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    for name in ("a.png", "c.png"):
        save_image(tmp_path / name, hr)
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(good[: len(good) // 2])  # cut short by a failed copy
    (tmp_path / "d.png").symlink_to(tmp_path / "gone.png")
    with caplog.at_level("WARNING"):
        ds = load_folder(tmp_path, SCALE)
    assert ds.names == ["a", "c"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "b.png" in warned and "d.png" in warned


def test_a_folder_with_no_usable_image_is_an_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no image files"):
        load_folder(tmp_path, SCALE)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="x.png"):
        load_folder(tmp_path, SCALE)


def test_hr_files_sharing_a_stem_are_refused_with_an_lr_folder(tmp_path):
    """`a.png` and `a.bmp` would both be paired with `X2/ax2.png`; without an LR folder each
    gets the bicubic LR of its own pixels."""
    rng = np.random.default_rng(0)
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR_bicubic"
    photos = {name: rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for name in ("a.png", "a.bmp")}
    for name, hr in photos.items():
        save_image(hr_dir / name, hr)
    save_image(div2k_lr_path(lr_dir, "a", SCALE), photos["a.png"][::2, ::2])
    for load in (lambda: load_folder(hr_dir, SCALE, lr_dir=lr_dir),
                 lambda: next(data.iter_folder(hr_dir, SCALE, lr_dir))):
        with pytest.raises(data.AmbiguousLRError) as info:
            load()
        message = str(info.value)
        assert str(hr_dir / "a.png") in message and str(hr_dir / "a.bmp") in message
        assert "ax2.png" in message and "\n" not in message
    ds = load_folder(hr_dir, SCALE)
    assert ds.names == ["a", "a"]
    for name, lr in zip(["a.bmp", "a.png"], ds.lr):
        np.testing.assert_array_equal(lr, bicubic_downscale(photos[name], SCALE)[1])


def test_an_lr_cache_that_cannot_be_written_keeps_the_image(tmp_path, monkeypatch, caplog):
    hr = np.random.default_rng(0).integers(0, 256, (16, 18, 3), dtype=np.uint8)
    save_image(tmp_path / "hr" / "img.png", hr)

    def full_disk(image, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with caplog.at_level("WARNING"):
        ds = load_folder(tmp_path / "hr", SCALE, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.lr[0], bicubic_downscale(hr, SCALE)[1])
    (warning,) = [r.getMessage() for r in caplog.records if "LR cache" in r.getMessage()]
    assert "no space left on the device" in warning and "img" in warning
    assert list((tmp_path / "cache" / "X2").iterdir()) == []
