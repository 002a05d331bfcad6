"""Images to predict on in every common pixel format: converted faithfully or refused by name."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from mtlora.data.io import DataError, read_rgb


def test_8bit_rgb_grey_and_palette_are_read_as_stored(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_rgb(tmp_path / "rgb.png"), rgb)
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.array_equal(read_rgb(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "palette.png")
    out = read_rgb(tmp_path / "palette.png")
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (200, 100, 50)


def test_16bit_grey_is_scaled_not_saturated(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    for name in ("grey16.png", "grey16.tif"):
        Image.fromarray(values).save(tmp_path / name)
        out = read_rgb(tmp_path / name)
        assert out[0, :, 0].tolist() == [0, 1, 128, 255] and (out[..., 0] == out[..., 2]).all()


def test_48bit_rgb_keeps_its_high_bytes(tmp_path):
    bgr = np.array([[[65535, 0, 32896]]], dtype=np.uint16)  # cv2 writes BGR
    cv2.imwrite(str(tmp_path / "rgb48.png"), bgr)
    assert read_rgb(tmp_path / "rgb48.png")[0, 0].tolist() == [128, 0, 255]


def test_float_tiff_in_unit_range_is_scaled_and_others_refused(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    assert read_rgb(tmp_path / "unit.tif")[0, :, 1].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 300.0]], dtype=np.float32)).save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match=r"wide\.tif: float image with values 0\.\.300"):
        read_rgb(tmp_path / "wide.tif")
    cv2.imwrite(str(tmp_path / "rgbfloat.tif"), np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"rgbfloat\.tif: cannot decode image"):
        read_rgb(tmp_path / "rgbfloat.tif")


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    out = read_rgb(tmp_path / "alpha.png")
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert abs(int(out[0, 2, 0]) - 127) <= 1 and out[0, 2, 2] == 255  # half blue over white
    grey_alpha = Image.fromarray(np.array([[[0, 0]]], dtype=np.uint8), mode="LA")
    grey_alpha.save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png")[0, 0].tolist() == [255, 255, 255]


def test_cmyk_is_converted_with_and_without_a_profile(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "plain.jpg", quality=100)
    red = read_rgb(tmp_path / "plain.jpg")[0, 0].astype(int)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "tagged.tif", icc_profile=srgb)
    # an embedded profile that cannot map CMYK: Pillow's conversion (white stays white)
    assert (read_rgb(tmp_path / "tagged.tif") == 255).all()


def test_exif_orientation_is_applied_only_when_asked(tmp_path):
    array = np.zeros((2, 3, 3), dtype=np.uint8)
    array[0, 0] = 255  # top-left white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    stored = read_rgb(tmp_path / "rotated.jpg")
    upright = read_rgb(tmp_path / "rotated.jpg", upright=True)
    assert stored.shape == (2, 3, 3) and upright.shape == (3, 2, 3)
    assert upright[0, 1].min() > 200  # the stored top-left corner is now top-right


def test_unsupported_mode_is_refused_naming_the_file(tmp_path):
    buf = io.BytesIO()
    Image.new("LAB", (2, 2)).save(buf, format="TIFF")
    (tmp_path / "lab.tif").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"lab\.tif: unsupported image mode 'LAB'"):
        read_rgb(tmp_path / "lab.tif")
