"""Box-level precision, recall and AP50 of detections against ground truth, per concept, plus the image-level
view a caption builder cares about: does the detector stay silent on images that do not hold the concept?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from detectors.base import Box, Detection


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class ConceptMetrics:
    """Box metrics at the detector's own operating point; ``ap50`` ranks every returned box by score.
    ``clean_image_rate`` is the share of images without the concept on which nothing was reported."""

    concept: str
    ground_truth: int
    predicted: int
    true_positives: int
    precision: float
    recall: float
    ap50: float
    images_without: int
    clean_image_rate: float

    def as_dict(self) -> dict:
        return asdict(self)


def match(predicted: Sequence[Detection], truth: Sequence[Box], iou_threshold: float = 0.5) -> list[bool]:
    """Greedy by score, as VOC and COCO do: each prediction takes the best-overlapping unclaimed true box."""
    order = sorted(range(len(predicted)), key=lambda i: -predicted[i].score)
    claimed: set[int] = set()
    hits = [False] * len(predicted)
    for i in order:
        overlaps = [(iou(predicted[i].box, box), j) for j, box in enumerate(truth) if j not in claimed]
        best, j = max(overlaps, default=(0.0, -1))
        if best >= iou_threshold:
            claimed.add(j)
            hits[i] = True
    return hits


def average_precision(scores: Sequence[float], hits: Sequence[bool], ground_truth: int) -> float:
    """Area under the precision envelope over recall (all-point interpolation, VOC 2010+)."""
    if ground_truth == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.cumsum(np.asarray(hits, dtype=np.float64)[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / ground_truth
    precision = np.concatenate([[1.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * envelope[1:]))


def concept_metrics(
    concept: str,
    predicted: Sequence[Sequence[Detection]],
    truth: Sequence[Sequence[Box]],
    iou_threshold: float = 0.5,
) -> ConceptMetrics:
    """``predicted`` and ``truth`` hold one list per image, in the same order."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} prediction lists for {len(truth)} images: they must be one per image")
    scores: list[float] = []
    hits: list[bool] = []
    without = clean = 0
    for found, boxes in zip(predicted, truth, strict=True):
        found = [d for d in found if d.concept == concept]
        scores += [d.score for d in found]
        hits += match(found, boxes, iou_threshold)
        if not boxes:
            without += 1
            clean += not found
    ground_truth = sum(len(boxes) for boxes in truth)
    true_positives = sum(hits)
    return ConceptMetrics(
        concept=concept,
        ground_truth=ground_truth,
        predicted=len(scores),
        true_positives=true_positives,
        precision=true_positives / len(scores) if scores else float("nan"),
        recall=true_positives / ground_truth if ground_truth else float("nan"),
        ap50=average_precision(scores, hits, ground_truth),
        images_without=without,
        clean_image_rate=clean / without if without else float("nan"),
    )
