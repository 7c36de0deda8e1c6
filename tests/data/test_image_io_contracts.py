"""enlcn_jax.data.image_io at the edges of its documented contract: every kind of alpha is named,
16-bit black stays black, which formats have frames, what save_image accepts, broken links and
the warnings' wording."""

import warnings

import numpy as np
import pytest
from PIL import Image

from enlcn_jax.data import image_io


def test_a_palette_png_with_a_transparent_colour_warns_of_both_conversions(tmp_path):
    path = tmp_path / 'palette.png'
    Image.new('P', (4, 3), 1).save(path, transparency=0)
    with pytest.warns(UserWarning) as record:
        image_io.load_image(path)
    assert [str(w.message) for w in record] == [
        f"{path}: mode 'P' converted to RGB, alpha channel dropped"]


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'RGBa', 'La'])
def test_premultiplied_and_straight_alpha_bands_are_both_alpha(mode):
    assert image_io._has_alpha(Image.new(mode, (2, 2)))  # pylint: disable=protected-access
    assert not image_io._has_alpha(Image.new('RGB', (2, 2)))  # pylint: disable=protected-access


def test_an_rgba_png_warns_only_that_its_alpha_is_dropped(tmp_path):
    path = tmp_path / 'rgba.png'
    Image.new('RGBA', (3, 2), (10, 20, 30, 40)).save(path)
    with pytest.warns(UserWarning) as record:
        image_io.load_image(path)
    assert [str(w.message) for w in record] == [f'{path}: alpha channel dropped']


def test_sixteen_bit_gray_keeps_black_and_white(tmp_path):
    path = tmp_path / 'gray16.png'
    Image.fromarray(np.array([[0, 65535], [257, 32896]], np.uint16)).save(path)
    with pytest.warns(UserWarning, match='converted to RGB'):
        img = image_io.load_image(path)
    np.testing.assert_array_equal(img[..., 0], [[0, 255], [1, 128]])


def test_a_format_without_frames_loads_without_a_warning(tmp_path):
    path = tmp_path / 'plain.bmp'
    Image.new('RGB', (3, 2), (1, 2, 3)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        img = image_io.load_image(path)
    assert img.shape == (2, 3, 3)


def test_save_image_writes_gray_and_refuses_four_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    image_io.save_image(tmp_path / 'gray.png', gray)
    with pytest.warns(UserWarning, match="mode 'L' converted to RGB"):
        np.testing.assert_array_equal(image_io.load_image(tmp_path / 'gray.png')[..., 1], gray)
    with pytest.raises(ValueError, match=r'expected uint8 \[H, W, 3\] or \[H, W\], got uint8 '
                                         r'\(3, 4, 4\)$'):
        image_io.save_image(tmp_path / 'rgba.png', np.zeros((3, 4, 4), np.uint8))


def test_broken_links_are_listed_and_links_to_folders_are_not(tmp_path):
    Image.new('RGB', (2, 2)).save(tmp_path / 'a.png')
    (tmp_path / 'gone.png').symlink_to(tmp_path / 'missing.png')
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'folder.png').symlink_to(tmp_path / 'folder')
    assert image_io.list_images(tmp_path) == [tmp_path / 'a.png', tmp_path / 'gone.png']


def test_an_empty_folder_names_the_suffixes_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf'^no image files \(\.bmp, \.jpeg, \.jpg, \.png, '
                                                rf'\.tif, \.tiff\) in folder {tmp_path}$'):
        image_io.list_images(tmp_path)
