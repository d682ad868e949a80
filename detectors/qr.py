"""QR codes: zbar (through pyzbar) finds and decodes them; OpenCV's QR detector is a second opinion for codes zbar
misses. Every code found gets its own box."""

from __future__ import annotations

import importlib

import cv2
import numpy as np
from PIL import Image

from detectors.base import Box, Detection
from detectors.images import as_array
from detectors.metrics import iou

CONCEPT = "qrcode"
MIN_SIDE = 21  # the smallest QR code (version 1) is 21 modules wide: nothing smaller can hold one


def _zbar():
    """pyzbar only wraps the system library; say which Debian package provides it when it is missing."""
    try:
        pyzbar = importlib.import_module("pyzbar.pyzbar")  # loading this module loads libzbar
    except (ImportError, OSError) as err:
        raise RuntimeError(
            f"the zbar library is missing ({err}): install the Debian package libzbar0 (sudo apt-get install libzbar0)"
        ) from err
    return pyzbar


class QRDetector:
    """Scores: 1.0 for a code that zbar or OpenCV decodes, ``located_score`` for one OpenCV locates but cannot read."""

    concepts = (CONCEPT,)

    def __init__(self, second_opinion: bool = True, located_score: float = 0.5, min_score: float = 0.0) -> None:
        self._pyzbar = _zbar()
        self.second_opinion = second_opinion
        self.located_score = located_score
        self.min_score = min_score
        self._opencv = cv2.QRCodeDetector()

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        return [self._detect_one(as_array(image)) for image in images]

    def _detect_one(self, rgb: np.ndarray) -> list[Detection]:
        if min(rgb.shape[:2]) < MIN_SIDE:
            return []
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        symbols = self._pyzbar.decode(gray, symbols=[self._pyzbar.ZBarSymbol.QRCODE])
        found = [Detection(CONCEPT, 1.0, _polygon_box([(p.x, p.y) for p in s.polygon])) for s in symbols]
        if self.second_opinion:
            found += [d for d in self._opencv_codes(gray) if all(iou(d.box, z.box) < 0.3 for z in found)]
        return [d for d in found if d.score >= self.min_score]

    def _opencv_codes(self, gray: np.ndarray) -> list[Detection]:
        try:
            located, texts, corners, _ = self._opencv.detectAndDecodeMulti(gray)
        except cv2.error:  # OpenCV rejects some degenerate inputs instead of returning "nothing found"
            return []
        if not located or corners is None:
            return []
        return [
            Detection(CONCEPT, 1.0 if text else self.located_score, _polygon_box(quad.tolist()))
            for text, quad in zip(texts, corners, strict=True)
        ]


def _polygon_box(points: list) -> Box:
    xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    return (min(xs), min(ys), max(xs), max(ys))
