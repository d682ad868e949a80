"""Detector specs: the one string recipes and CLIs use to name a detector.

    qr                          zbar, with OpenCV as second opinion          (detectors.qr.QRDetector)
    ocr  |  ocr:rapidocr        PP-OCR through rapidocr, the default OCR     (detectors.ocr.RapidOCRDetector)
    ocr:tesseract               tesseract line boxes                         (detectors.ocr.TesseractDetector)
    yolo:PATH                   ultralytics YOLO (train-yolo, convert-yolo)  (detectors.yolo.YOLODetector)
    yolo:PATH:logo=watermark,banner=text   ... with model classes renamed to concepts
    nudenet                     NudeNet exposed parts -> "nudity"            (detectors.nudity.NudityDetector)

Options are the backend class's keyword arguments, given to ``load`` or appended to the spec URL-style:
``load("nudenet?threshold=0.5")`` equals ``load("nudenet", threshold=0.5)``; keyword arguments win.
"""

from __future__ import annotations

from collections.abc import Callable

from detectors.base import Detector


def _qr(arg: str, **options) -> Detector:
    from detectors.qr import QRDetector

    _no_argument("qr", arg)
    return QRDetector(**options)


def _ocr(arg: str, **options) -> Detector:
    from detectors.ocr import RapidOCRDetector, TesseractDetector

    backends = {"": RapidOCRDetector, "rapidocr": RapidOCRDetector, "tesseract": TesseractDetector}
    if arg not in backends:
        raise ValueError(f"unknown OCR backend 'ocr:{arg}': use 'ocr' (rapidocr) or 'ocr:tesseract'")
    return backends[arg](**options)


def _yolo(arg: str, **options) -> Detector:
    from detectors.yolo import YOLODetector

    path, _, mapping = arg.rpartition(":")
    if "=" not in mapping:  # no class map: the whole argument is the path
        path, mapping = arg, ""
    if not path:
        raise ValueError("'yolo' needs a weights path: 'yolo:PATH' or 'yolo:PATH:class=concept,...'")
    class_map = dict(pair.split("=", 1) for pair in mapping.split(",")) if mapping else None
    return YOLODetector(path, class_map=class_map, **options)


def _nudenet(arg: str, **options) -> Detector:
    from detectors.nudity import NudityDetector

    _no_argument("nudenet", arg)
    return NudityDetector(**options)


BACKENDS: dict[str, Callable[..., Detector]] = {"qr": _qr, "ocr": _ocr, "yolo": _yolo, "nudenet": _nudenet}


def load(spec: str, **options) -> Detector:
    """The detector a spec names (see the module docstring), built with its options."""
    spec, _, query = spec.partition("?")
    name, _, arg = spec.strip().partition(":")
    if name not in BACKENDS:
        raise ValueError(f"unknown detector spec '{spec}': the backends are {sorted(BACKENDS)}, e.g. 'ocr:tesseract'")
    merged = {**_parse_query(spec, query), **options}
    try:
        return BACKENDS[name](arg, **merged)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"detector '{spec}': {err}; see the backend class's arguments") from err


def _parse_query(spec: str, query: str) -> dict[str, object]:
    options: dict[str, object] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"detector '{spec}': option '{item}' must be key=value")
        options[key.strip()] = _value(value.strip())
    return options


def _value(text: str) -> object:
    """Spec options are text; numbers and booleans become what the backends expect."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _no_argument(name: str, arg: str) -> None:
    if arg:
        raise ValueError(f"'{name}' takes no ':{arg}' argument; pass options as '{name}?key=value'")
