"""Tests for enlcn_jax.data.image_io: decoding to uint8 RGB, warnings, errors, listing."""

import errno
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import benchmark_root
from enlcn_jax.storage import files
from enlcn_jax.data.image_io import ImageError, list_images, load_image, save_format, save_image


def _rgb(h=12, w=17, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_save_load_roundtrip_creates_dirs_without_warning(tmp_path):
    img = _rgb()
    path = tmp_path / "a" / "b" / "img.png"
    save_image(path, img)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    np.testing.assert_array_equal(out, img)


def test_save_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize(
    "mode, make",
    [
        ("L", lambda g: Image.fromarray(g)),
        ("I;16", lambda g: Image.fromarray(g.astype(np.uint16) * 257)),
        ("P", lambda g: Image.fromarray(g).convert("P")),
        ("LA", lambda g: Image.fromarray(np.stack([g, np.full_like(g, 7)], -1), "LA")),
    ],
)
def test_grayscale_converted_to_rgb_with_warning(tmp_path, mode, make):
    gray = np.random.default_rng(1).integers(0, 256, (9, 13), dtype=np.uint8)
    path = tmp_path / f"gray_{mode.replace(';', '')}.png"
    im = make(gray)
    assert im.mode == mode
    im.save(path)
    with pytest.warns(UserWarning, match=str(path.name)) as record:
        out = load_image(path)
    assert str(path) in str(record[0].message)
    assert out.dtype == np.uint8 and out.shape == (9, 13, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_alpha_dropped_with_warning(tmp_path):
    rgb = _rgb()
    path = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], axis=2)).save(path)
    with pytest.warns(UserWarning, match="alpha channel dropped"):
        out = load_image(path)
    np.testing.assert_array_equal(out, rgb)


def test_corrupt_file_raises_image_error_naming_file(tmp_path):
    good = tmp_path / "good.png"
    save_image(good, _rgb(64, 64))
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(good.read_bytes()[:200])  # truncated PNG
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    for path in (bad, garbage):
        with pytest.raises(ImageError, match=str(path.name)) as info:
            load_image(path)
        assert isinstance(info.value, ValueError) and str(path) in str(info.value)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_list_images_sorted_case_insensitive(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JpEg", "d.bmp", "e.tif"]:
        Image.fromarray(_rgb(4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JpEg", "d.bmp", "e.tif"]


def test_list_images_empty_or_missing_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=str(tmp_path.name)):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_images(tmp_path / "missing_dir")


def test_loads_set5():
    paths = list_images(benchmark_root("Set5") / "Set5" / "HR")
    assert len(paths) == 5
    img = load_image(paths[0])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_sixteen_bit_rgb_png_warns_and_exif_orientation_is_applied(tmp_path):
    rgb16 = (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000)
    path = tmp_path / "rgb16.png"
    _write_png16_rgb(path, rgb16)
    with pytest.warns(UserWarning, match="16-bit RGB reduced to 8 bits"):
        img = load_image(path)
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8

    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = 255  # a marked top-left corner
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    shown = load_image(tmp_path / "rotated.jpg")
    assert shown.shape == (3, 2, 3)  # displayed as portrait
    assert shown[0, -1].mean() > 128  # the marked corner is now top-right


def _write_png16_rgb(path, rgb16):
    """A 16-bit RGB PNG written by hand (PIL cannot write one): signature, IHDR, IDAT, IEND."""
    import struct  # pylint: disable=import-outside-toplevel
    import zlib  # pylint: disable=import-outside-toplevel
    h, w, _ = rgb16.shape

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _fail_half_way(image, path, *args, **kwargs):
    """Stands in for `PIL.Image.Image.save` on a disk that fills up mid-write."""
    with open(path, "wb") as f:
        f.write(b"\x89PNG half an image")
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_save_failing_half_way_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    save_image(path, _rgb())
    before = path.read_bytes()
    monkeypatch.setattr(Image.Image, "save", _fail_half_way)
    with pytest.raises(files.WriteError) as info:
        save_image(path, _rgb(seed=1))
    assert str(info.value).endswith(f"cannot write {path}: no space left on the device")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["img.png"]  # no temporary file left


def test_save_format_follows_the_suffix_pil_writes(tmp_path):
    assert save_format("a/b.png") == save_format("B.PNG") == "PNG"
    assert save_format("x.tif") == "TIFF" and save_format("x.jpeg") == "JPEG"
    for name in ("out", "out.xyz", "layers.psd"):  # no suffix, unknown, read-only in PIL
        assert save_format(name) is None, name
        with pytest.raises(ValueError, match=f"save_image\\({tmp_path / name}\\)"):
            save_image(tmp_path / name, _rgb())
    assert list(tmp_path.iterdir()) == []


def test_a_multi_frame_image_warns_that_only_its_first_frame_is_used(tmp_path):
    first, second = _rgb(8, 10, seed=0) // 64 * 64, _rgb(8, 10, seed=1) // 64 * 64  # 64 colours
    path = tmp_path / "anim.gif"
    Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)])
    with Image.open(path) as im:
        assert im.n_frames == 2
    with pytest.warns(UserWarning) as record:
        out = load_image(path)
    (message,) = [str(w.message) for w in record]
    assert message.startswith(str(path)) and "only the first of its 2 frames used" in message
    np.testing.assert_array_equal(out, first)
    save_image(tmp_path / "still.gif", first)
    with pytest.warns(UserWarning) as record:  # one frame: the palette warning only
        load_image(tmp_path / "still.gif")
    assert not any("frames" in str(w.message) for w in record)


def test_the_sixteen_bit_rgb_warning_is_exactly_one_clause(tmp_path):
    path = tmp_path / 'rgb16.png'
    _write_png16_rgb(path, np.full((2, 3, 3), 65535, np.uint16))
    with pytest.warns(UserWarning) as record:
        np.testing.assert_array_equal(load_image(path), 255)
    assert [str(w.message) for w in record] == [f'{path}: 16-bit RGB reduced to 8 bits']
