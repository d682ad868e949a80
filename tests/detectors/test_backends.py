"""Each packaged backend finds what it should on a clean example, survives awkward images, runs offline, and
names the Debian package when its system binary is missing."""

from __future__ import annotations

import io
import sys

import pytest
import segno
from PIL import Image, ImageDraw, ImageFont

from datasets_icd.toyworld import ToyWorld, ToyWorldConfig, default_fonts
from detectors import load
from detectors.metrics import iou


def _qr_scene(size: int = 256) -> tuple[Image.Image, tuple[int, int, int, int]]:
    buffer = io.BytesIO()
    segno.make_qr("implicit-erasure").save(buffer, kind="png", scale=3, border=4)
    code = Image.open(buffer).convert("RGB")
    image = Image.new("RGB", (size, size), (40, 120, 200))
    image.paste(code, (30, 40))
    quiet = 4 * 3
    return image, (30 + quiet, 40 + quiet, 30 + code.width - quiet, 40 + code.height - quiet)


def _text_scene(line: str = "fresh coffee") -> tuple[Image.Image, tuple[float, float, float, float]]:
    image = Image.new("RGB", (256, 128), (250, 240, 200))
    font = ImageFont.truetype(default_fonts()[0], 28) if default_fonts() else ImageFont.load_default(28)
    draw = ImageDraw.Draw(image)
    draw.text((20, 40), line, font=font, fill=(20, 20, 20))
    return image, draw.textbbox((20, 40), line, font=font)


def _awkward_images() -> dict[str, Image.Image]:
    qr, _ = _qr_scene()
    rgba = qr.convert("RGBA")
    rgba.putalpha(200)
    return {
        "1x1": Image.new("RGB", (1, 1)),
        "gray": qr.convert("L"),
        "rgba": rgba,
        "palette": qr.convert("P"),
        "16bit": Image.new("I;16", (40, 30), 30000),
        "wide": Image.new("RGB", (3000, 20), (255, 255, 255)),
        "large": qr.resize((4000, 3000)),
    }


@pytest.mark.parametrize("spec", ["qr", "ocr", "ocr:tesseract", "nudenet"])
def test_awkward_images_give_one_list_each(spec, no_network):
    images = _awkward_images()
    found = load(spec).detect(list(images.values()))
    assert len(found) == len(images)
    assert found[0] == []  # nothing fits in one pixel
    for detections, image in zip(found, images.values(), strict=True):
        for d in detections:
            assert 0 <= d.box[0] <= d.box[2] <= image.width + 1 and 0 <= d.box[1] <= d.box[3] <= image.height + 1
    assert no_network == []


@pytest.mark.parametrize("second_opinion", [True, False])
def test_qr_finds_the_code_where_it_is(second_opinion):
    image, truth = _qr_scene()
    gray_large = image.convert("L").resize((1024, 1024), Image.NEAREST)
    found = load("qr", second_opinion=second_opinion).detect([image, gray_large, Image.new("RGB", (256, 256))])
    assert [len(f) for f in found] == [1, 1, 0]
    assert iou(found[0][0].box, truth) > 0.9
    assert iou(found[1][0].box, tuple(4 * v for v in truth)) > 0.9


def test_qr_boxes_every_code():
    world = ToyWorld(ToyWorldConfig(size=128, concept_rates={"qrcode": 1.0}, seed=5))
    left, right = world.sample(0).image, world.sample(1).image
    pair = Image.new("RGB", (256, 128))
    pair.paste(left, (0, 0))
    pair.paste(right, (128, 0))
    boxes = sorted(d.box for d in load("qr").detect([pair])[0])
    assert len(boxes) == 2 and boxes[0][2] <= 128 <= boxes[1][0]


@pytest.mark.parametrize("spec", ["ocr", "ocr:tesseract"])
def test_ocr_boxes_a_text_line(spec):
    image, truth = _text_scene()
    found = load(spec).detect([image, Image.new("RGB", (256, 128), (250, 240, 200))])
    assert len(found[0]) == 1 and found[1] == []
    assert iou(found[0][0].box, truth) > 0.5
    assert 0.5 <= found[0][0].score <= 1.0


def test_ocr_thresholds_filter_lines():
    image, _ = _text_scene("ok")
    assert len(load("ocr").detect([image])[0]) == 1
    assert load("ocr", min_chars=3).detect([image])[0] == []  # "ok" has two letters
    assert load("ocr", rec_threshold=1.01).detect([image])[0] == []
    assert load("ocr", det_threshold=1.01).detect([image])[0] == []


def test_nudenet_finds_no_nudity_in_toy_scenes(no_network):
    world = ToyWorld(ToyWorldConfig(size=128, concept_rates={"watermark": 0.5, "qrcode": 0.3, "text": 0.3}, seed=3))
    found = load("nudenet").detect([world.sample(i).image for i in range(16)])
    assert len(found) == 16 and all(f == [] for f in found)
    assert no_network == []


def test_nudenet_threshold_is_configurable():
    assert load("nudenet").threshold == 0.6
    assert load("nudenet?threshold=0.2").threshold == 0.2


def test_missing_zbar_names_the_debian_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyzbar.pyzbar", None)  # what a failed import of the wrapper looks like
    with pytest.raises(RuntimeError, match="libzbar0"):
        load("qr")


def test_missing_tesseract_names_the_debian_package(monkeypatch):
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(RuntimeError, match="tesseract-ocr"):
        load("ocr:tesseract")
