"""Ground truth from the toy world against the real QR and OCR detectors, on a held-out split made by seed.

Watermarks are left out of these scenes on purpose: a text watermark ("SAMPLE") *is* readable text, so OCR
rightly reports it and the text ground truth (which only marks the text concept) would count it as an error.
"""

from __future__ import annotations

import pytest

from datasets_icd.toyworld import ToyWorld, ToyWorldConfig
from detectors import load
from detectors.metrics import concept_metrics

SEED = 20_240_601  # held out: no other test or training run uses it
SIZE = 256


def _split(num_images: int, concept: str) -> tuple[list, list[list[tuple]]]:
    world = ToyWorld(ToyWorldConfig(size=SIZE, concept_rates={"qrcode": 0.4, "text": 0.5}, seed=SEED))
    samples = [world.sample(i) for i in range(num_images)]
    truth = [[tuple(c["box"]) for c in s.concepts if c["name"] == concept] for s in samples]
    return [s.image for s in samples], truth


def _recall_of_large(predicted, truth, concept: str, large) -> float:
    """Recall over the true boxes that pass ``large``; smaller ones are neither required nor penalised."""
    kept = [[box for box in boxes if large(box)] for boxes in truth]
    assert sum(map(len, kept)) >= 20, "too few large boxes for a meaningful recall"
    return concept_metrics(concept, predicted, kept).recall


@pytest.mark.slow
def test_qr_detector_agrees_with_ground_truth():
    images, truth = _split(120, "qrcode")
    predicted = load("qr").detect(images)
    recall = _recall_of_large(predicted, truth, "qrcode", lambda b: min(b[2] - b[0], b[3] - b[1]) >= 48)
    overall = concept_metrics("qrcode", predicted, truth)
    assert recall >= 0.95
    assert overall.precision >= 0.9
    assert overall.images_without >= 40 and overall.clean_image_rate >= 0.9


@pytest.mark.slow
def test_ocr_detector_agrees_with_ground_truth():
    images, truth = _split(80, "text")
    predicted = load("ocr").detect(images)
    recall = _recall_of_large(predicted, truth, "text", lambda b: b[3] - b[1] >= 16)
    overall = concept_metrics("text", predicted, truth)
    assert recall >= 0.85
    assert overall.precision >= 0.9
    assert overall.images_without >= 25 and overall.clean_image_rate >= 0.9
