"""Every kind of image a user may hand over reaches the backends as upright 8-bit RGB; bad files become errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from detectors.base import Detection
from detectors.images import UnreadableImageError, as_array, detect_sources, open_image, to_rgb


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _exif_rotated() -> Image.Image:
    """A 40x20 image stored sideways with EXIF orientation 6 (rotate 90° clockwise to view)."""
    stored = Image.new("RGB", (20, 40), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, 20, 5))  # red strip at the stored top: the viewed right edge
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    ("image", "size", "pixel", "expected"),
    [
        (Image.new("L", (8, 6), 128), (8, 6), (0, 0), (128, 128, 128)),
        (Image.new("1", (8, 6), 1), (8, 6), (0, 0), (255, 255, 255)),
        (Image.new("RGBA", (8, 6), (255, 0, 0, 0)), (8, 6), (0, 0), (255, 255, 255)),  # transparent -> white
        (Image.new("RGBA", (8, 6), (255, 0, 0, 255)), (8, 6), (0, 0), (255, 0, 0)),
        (Image.new("LA", (8, 6), (0, 255)), (8, 6), (0, 0), (0, 0, 0)),
        (Image.new("CMYK", (8, 6), (0, 0, 0, 0)), (8, 6), (0, 0), (255, 255, 255)),
        (Image.new("P", (8, 6), 0), (8, 6), (0, 0), (0, 0, 0)),
        (Image.fromarray(np.full((6, 8), 65535, dtype=np.uint16)), (8, 6), (0, 0), (255, 255, 255)),
        (Image.fromarray(np.full((6, 8), 32896, dtype=np.uint16)), (8, 6), (0, 0), (128, 128, 128)),
        (Image.fromarray(np.full((6, 8), 0.5, dtype=np.float32)), (8, 6), (0, 0), (127, 127, 127)),
        (Image.new("RGB", (1, 1), (9, 8, 7)), (1, 1), (0, 0), (9, 8, 7)),
    ],
    ids=[
        "gray",
        "bilevel",
        "rgba-clear",
        "rgba-opaque",
        "gray-alpha",
        "cmyk",
        "palette",
        "16bit-max",
        "16bit-mid",
        "float",
        "1x1",
    ],
)
def test_to_rgb_makes_8bit_rgb(image, size, pixel, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.size == size
    assert rgb.getpixel(pixel) == expected


def test_palette_transparency_is_flattened_onto_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30] * 256)
    image.info["transparency"] = 0
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    rgb = to_rgb(_exif_rotated())
    assert rgb.size == (40, 20)
    pixels = np.asarray(rgb).astype(int)
    assert pixels[10, 37, 0] > 200 and pixels[10, 37, 1] < 60  # the strip now runs down the right edge
    assert pixels[10, 2].sum() < 60


def test_sixteen_bit_png_file_round_trip(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)).save(path)
    pixels = as_array(open_image(path))
    assert pixels.dtype == np.uint8 and pixels.shape == (8, 8, 3)
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("zero.png", b""),
        ("text.jpg", b"this is not an image"),
        ("truncated.png", _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60]),
    ],
)
def test_unreadable_files_raise_with_their_name(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=name):
        open_image(path)


class _CountingDetector:
    """Reports one box per image covering it, and remembers what it was shown."""

    concepts = ("thing",)

    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def detect(self, images):
        self.seen += [image.size for image in images]
        return [[Detection("thing", 1.0, (0, 0, *image.size))] for image in images]


def test_a_corrupt_file_yields_an_error_entry_not_a_crashed_batch(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (5, 7)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    detector = _CountingDetector()
    results = detect_sources(detector, [good, bad, Image.new("L", (3, 2)), _png_bytes(Image.new("RGB", (2, 2)))], 3)
    assert [r.error is None for r in results] == [True, False, True, True]
    assert "bad.png" in results[1].error and results[1].detections == []
    assert [r.detections[0].box for r in results if r.error is None] == [(0, 0, 5, 7), (0, 0, 3, 2), (0, 0, 2, 2)]
    assert detector.seen == [(5, 7), (3, 2), (2, 2)]


def test_a_batch_of_only_unreadable_files_does_not_call_the_detector(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    detector = _CountingDetector()
    assert [r.error is not None for r in detect_sources(detector, [bad, bad])] == [True, True]
    assert detector.seen == []
