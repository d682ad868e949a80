"""Box matching and AP50 on hand-worked cases."""

from __future__ import annotations

import math

import pytest

from detectors.base import Detection
from detectors.metrics import average_precision, concept_metrics, iou, match


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges share no area
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # degenerate boxes do not divide by zero
    ],
)
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def _det(score, box, concept="qrcode"):
    return Detection(concept, score, box)


def test_match_gives_each_true_box_to_the_highest_scoring_overlap_only():
    truth = [(0, 0, 10, 10)]
    predicted = [_det(0.4, (0, 0, 10, 10)), _det(0.9, (1, 1, 10, 10))]
    assert match(predicted, truth) == [False, True]


def test_match_respects_the_iou_threshold():
    assert match([_det(1.0, (5, 0, 15, 10))], [(0, 0, 10, 10)], iou_threshold=0.5) == [False]
    assert match([_det(1.0, (5, 0, 15, 10))], [(0, 0, 10, 10)], iou_threshold=0.3) == [True]


@pytest.mark.parametrize(
    ("scores", "hits", "ground_truth", "expected"),
    [
        ([0.9, 0.8], [True, True], 2, 1.0),
        ([0.9, 0.8], [True, False], 2, 0.5),  # half the boxes found, at precision 1
        ([0.9, 0.8], [False, True], 1, 0.5),  # the only hit comes second: precision 1/2 at recall 1
        ([0.9, 0.8, 0.7], [True, False, True], 2, 0.5 * 1.0 + 0.5 * (2 / 3)),
        ([], [], 3, 0.0),
    ],
)
def test_average_precision(scores, hits, ground_truth, expected):
    assert average_precision(scores, hits, ground_truth) == pytest.approx(expected)


def test_average_precision_is_undefined_without_ground_truth():
    assert math.isnan(average_precision([0.5], [False], 0))


def test_concept_metrics_counts_boxes_and_clean_images():
    predicted = [
        [_det(0.9, (0, 0, 10, 10)), _det(0.8, (0, 0, 10, 10), concept="text")],  # the text box is not ours
        [_det(0.7, (50, 50, 60, 60))],  # a false alarm on an image without codes
        [],
        [],  # a missed code
    ]
    truth = [[(0, 0, 10, 10)], [], [], [(20, 20, 30, 30)]]
    m = concept_metrics("qrcode", predicted, truth)
    assert (m.ground_truth, m.predicted, m.true_positives) == (2, 2, 1)
    assert (m.precision, m.recall) == (0.5, 0.5)
    assert m.ap50 == pytest.approx(0.5)
    assert (m.images_without, m.clean_image_rate) == (2, 0.5)


def test_concept_metrics_needs_one_list_per_image():
    with pytest.raises(ValueError, match="one per image"):
        concept_metrics("qrcode", [[]], [[], []])
