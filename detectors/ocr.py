"""Text lines: rapidocr's PP-OCR detection and recognition ONNX models (inside its wheel, so nothing is
downloaded) by default, tesseract as the second backend. A line counts when its recognised text clears
``rec_threshold`` and holds at least ``min_chars`` letters or digits; rapidocr also drops detected regions below
``det_threshold``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from detectors.base import Box, Detection
from detectors.images import as_array

CONCEPT = "text"
MIN_SIDE = 8  # no backend reads text from fewer pixels; tesseract errors out on tiny images instead


class RapidOCRDetector:
    """PP-OCR through rapidocr; every model path is pinned to the files in the wheel so it never downloads."""

    concepts = (CONCEPT,)

    def __init__(
        self,
        det_threshold: float = 0.5,
        rec_threshold: float = 0.5,
        min_chars: int = 2,
        max_side: int = 960,
        unclip_ratio: float = 1.2,  # PP-OCR pads boxes by 1.6 for its crops; 1.2 hugs the ink as ground truth does
        threads: int = 0,
    ) -> None:
        import rapidocr

        models = Path(rapidocr.__file__).parent / "models"
        paths = {
            "Det.model_path": models / "PP-OCRv6_det_small.onnx",
            "Rec.model_path": models / "PP-OCRv6_rec_small.onnx",
            "Cls.model_path": models / "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
        }
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise RuntimeError(f"rapidocr's packaged models are missing ({missing}): reinstall rapidocr>=3.10")
        params = {key: str(path) for key, path in paths.items()}
        params |= {
            "Global.log_level": "error",
            "Global.use_cls": False,  # scene text here is upright; the 180° classifier only costs time
            "Global.text_score": rec_threshold,
            "Det.box_thresh": det_threshold,
            # rapidocr's default scales the *shorter* side up to 736 px: 4x slower on small images and it makes
            # text of plain shapes; capping the longer side keeps small images at their own size
            "Det.limit_type": "max",
            "Det.limit_side_len": max_side,
            "Det.unclip_ratio": unclip_ratio,
        }
        if threads:
            params |= {"EngineConfig.onnxruntime.intra_op_num_threads": threads}
        self._engine = rapidocr.RapidOCR(params=params)
        self.min_chars = min_chars

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        return [self._detect_one(as_array(image)) for image in images]

    def _detect_one(self, rgb: np.ndarray) -> list[Detection]:
        if min(rgb.shape[:2]) < MIN_SIDE:
            return []
        output = self._engine(_pad_to_aspect(rgb[:, :, ::-1]))  # rapidocr reads OpenCV's BGR order
        if output.boxes is None:
            return []
        return [
            Detection(CONCEPT, float(score), _quad_box(quad))
            for quad, text, score in zip(output.boxes, output.txts, output.scores, strict=True)
            if _is_text(text, self.min_chars)
        ]


def _pad_to_aspect(pixels: np.ndarray, max_aspect: int = 16) -> np.ndarray:
    """Pad a very thin strip (right or bottom, so boxes keep their place): rapidocr fails when scaling it
    to ``max_side`` leaves the short side under one pixel block."""
    h, w = pixels.shape[:2]
    pad_h, pad_w = max(0, -(-w // max_aspect) - h), max(0, -(-h // max_aspect) - w)
    return np.ascontiguousarray(np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))


def _is_text(text: str, min_chars: int) -> bool:
    """A line must read as letters or digits: shapes come back as one-glyph lines such as "■", "O" or "V"."""
    return sum(ch.isalnum() for ch in text) >= min_chars


def _quad_box(quad: np.ndarray) -> Box:
    xs, ys = quad[:, 0], quad[:, 1]
    return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def _tesseract():
    """pytesseract shells out to the tesseract binary; name the Debian package when it is not installed."""
    import pytesseract

    try:
        pytesseract.get_tesseract_version()
    except pytesseract.TesseractNotFoundError as err:
        raise RuntimeError(
            "the tesseract binary is missing: install the Debian package tesseract-ocr "
            "(sudo apt-get install tesseract-ocr)"
        ) from err
    return pytesseract


class TesseractDetector:
    """Tesseract words grouped into its own lines; a line's score is the mean confidence of its kept words.
    ``psm`` 11 ("sparse text") suits scenes with a few scattered lines better than page layout analysis."""

    concepts = (CONCEPT,)

    def __init__(self, rec_threshold: float = 0.5, min_chars: int = 2, psm: int = 11, lang: str = "eng") -> None:
        self._pytesseract = _tesseract()
        self.rec_threshold = rec_threshold
        self.min_chars = min_chars
        self.config = f"--psm {int(psm)}"
        self.lang = lang

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        return [self._detect_one(as_array(image)) for image in images]

    def _detect_one(self, rgb: np.ndarray) -> list[Detection]:
        if min(rgb.shape[:2]) < MIN_SIDE:
            return []
        data = self._pytesseract.image_to_data(
            Image.fromarray(rgb), lang=self.lang, config=self.config, output_type=self._pytesseract.Output.DICT
        )
        lines: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for i, (text, conf) in enumerate(zip(data["text"], data["conf"], strict=True)):
            if float(conf) / 100.0 >= self.rec_threshold and _is_text(text, self.min_chars):
                lines[(data["block_num"][i], data["par_num"][i], data["line_num"][i])].append(i)
        detections = []
        for words in lines.values():
            x0 = min(data["left"][i] for i in words)
            y0 = min(data["top"][i] for i in words)
            x1 = max(data["left"][i] + data["width"][i] for i in words)
            y1 = max(data["top"][i] + data["height"][i] for i in words)
            score = sum(float(data["conf"][i]) for i in words) / (100.0 * len(words))
            detections.append(Detection(CONCEPT, score, (float(x0), float(y0), float(x1), float(y1))))
        return detections
