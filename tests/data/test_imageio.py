"""Decoding: every Pillow mode becomes correct 8-bit RGB; corrupt files are named, never crash."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from medens.data import CorruptImageError, read_image, to_rgb8
from medens.data.imageio import probe_image


def test_grayscale_is_copied_into_three_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = np.asarray(read_image(tmp_path / "g.png"))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_rgba_is_composited_over_black(tmp_path):
    pixels = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = np.asarray(read_image(tmp_path / "a.png")).astype(int)
    np.testing.assert_array_equal(out[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])
    np.testing.assert_allclose(out[0, 2], np.array([200, 100, 50]) * 128 / 255, atol=1)


def test_palette_with_and_without_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "p.png")), [[[255, 0, 0], [0, 255, 0]]])
    image.save(tmp_path / "pt.png", transparency=0)  # index 0 fully transparent -> black
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "pt.png")), [[[0, 0, 0], [0, 255, 0]]])


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    out = np.asarray(read_image(tmp_path / "deep.png"))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 1, 4, 128, 255])


def _png_rgb16(path, values):
    """Write a 16-bit-per-channel RGB PNG (Pillow cannot write one) from uint16 values (H, W, 3)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16bit_colour_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[[0, 1000, 65535], [32768, 257, 40000]]], dtype=np.uint16)
    _png_rgb16(tmp_path / "rgb16.png", values)
    out = np.asarray(read_image(tmp_path / "rgb16.png"))
    np.testing.assert_array_equal(out, values >> 8)  # Pillow keeps the high byte: 1000 -> 3, not 255


def test_16bit_minmax_stretches_each_image_to_full_range(tmp_path):
    values = np.array([[1000, 2000, 3000]], dtype=np.uint16)  # 12-bit data in a 16-bit file
    Image.fromarray(values).save(tmp_path / "deep.png")
    out = np.asarray(read_image(tmp_path / "deep.png", high_bit_depth="minmax"))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 128, 255])


@pytest.mark.parametrize("mode", ["1", "F", "I", "CMYK", "LA"])
def test_other_modes_become_rgb8(mode):
    image = Image.new(mode, (3, 2))
    out = to_rgb8(image)
    assert out.mode == "RGB" and out.size == (3, 2)


def test_float_and_32bit_images_are_stretched():
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = np.asarray(to_rgb8(Image.fromarray(values)))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 128, 255])
    wide = np.array([[-100000, 0, 100000]], dtype=np.int32)  # outside 16-bit range: stretched, not wrapped
    out = np.asarray(to_rgb8(Image.fromarray(wide)))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 128, 255])


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (4, 2), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").size == (2, 4)


def test_truncated_jpeg_raises_corrupt_image_error_naming_the_file(tmp_path, layouts):
    path = layouts.truncate(layouts.big_jpeg(tmp_path / "cut.jpg"))
    with pytest.raises(CorruptImageError, match="cut.jpg") as info:
        read_image(path)
    assert info.value.path == str(path)
    with pytest.raises(CorruptImageError, match="truncated"):
        probe_image(path)  # found by the header check (missing end marker), confirmed by decoding


def test_truncated_png_is_found_by_the_header_check(tmp_path, layouts):
    path = layouts.write_image(tmp_path / "cut.png", (64, 64))
    layouts.truncate(path, 0.6)
    with pytest.raises(CorruptImageError, match="cut.png"):
        probe_image(path)


def test_probe_reads_header_of_whole_files(tmp_path, layouts):
    path = layouts.big_jpeg(tmp_path / "ok.jpg")
    info = probe_image(path)
    assert (info.width, info.height, info.format) == (96, 96, "JPEG")


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"this is not an image", "cannot identify")])
def test_empty_and_non_image_files_are_corrupt(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(CorruptImageError, match=reason):
        probe_image(path)
    with pytest.raises(CorruptImageError):
        read_image(path)


def test_unknown_high_bit_depth_mode_is_rejected():
    with pytest.raises(ValueError, match="high_bit_depth"):
        to_rgb8(Image.new("L", (1, 1)), high_bit_depth="clip")
