"""Spec strings name detectors the same way in Python, recipes and CLIs."""

from __future__ import annotations

import pytest

from detectors import Detector, load
from detectors.nudity import NudityDetector
from detectors.ocr import RapidOCRDetector, TesseractDetector
from detectors.qr import QRDetector
from detectors.yolo import YOLODetector


@pytest.mark.parametrize(
    ("spec", "kind", "concepts"),
    [
        ("qr", QRDetector, ("qrcode",)),
        ("ocr", RapidOCRDetector, ("text",)),
        ("ocr:rapidocr", RapidOCRDetector, ("text",)),
        ("ocr:tesseract", TesseractDetector, ("text",)),
        ("nudenet", NudityDetector, ("nudity",)),
    ],
)
def test_specs_name_backends(spec, kind, concepts):
    detector = load(spec)
    assert isinstance(detector, kind) and isinstance(detector, Detector)
    assert detector.concepts == concepts


@pytest.mark.parametrize(
    ("spec", "options", "attribute", "expected"),
    [
        ("nudenet?threshold=0.3", {}, "threshold", 0.3),
        ("nudenet?threshold=0.3", {"threshold": 0.8}, "threshold", 0.8),  # keyword arguments win
        ("qr?second_opinion=false", {}, "second_opinion", False),
        ("ocr:tesseract?psm=6&min_chars=3", {}, "config", "--psm 6"),
        ("ocr:tesseract?psm=6&min_chars=3", {}, "min_chars", 3),
        ("ocr?min_chars=1", {}, "min_chars", 1),
    ],
)
def test_options_from_spec_and_keywords(spec, options, attribute, expected):
    assert getattr(load(spec, **options), attribute) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("watermark", "unknown detector spec"),
        ("ocr:easyocr", "ocr:tesseract"),
        ("qr:fast", "takes no"),
        ("nudenet?threshold", "key=value"),
        ("nudenet?thresh=0.5", "unexpected keyword argument 'thresh'"),
        ("yolo:", "weights path"),
        ("yolo:/nowhere/model.safetensors", "no such YOLO weights"),
        ("yolo:/nowhere/model.pt", "pickles"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load(spec)


def test_yolo_spec_maps_classes_to_concepts(random_yolo_weights):
    plain = load(f"yolo:{random_yolo_weights}")
    assert isinstance(plain, YOLODetector)
    assert plain.concepts == ("qrcode", "text", "watermark")
    renamed = load(f"yolo:{random_yolo_weights}:watermark=logo,text=caption?conf=0.5&device=cpu")
    assert renamed.concepts == ("caption", "logo", "qrcode")


def test_yolo_class_map_must_name_model_classes(random_yolo_weights):
    with pytest.raises(ValueError, match="class_map names \\['banner'\\]"):
        load(f"yolo:{random_yolo_weights}:banner=text")
