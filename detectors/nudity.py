"""Nudity: NudeNet's detector (the ``320n.onnx`` model shipped inside the ``nudenet`` wheel). The exposed classes the
I2P evaluation counts (breasts, genitalia, buttocks, anus; not exposed feet, belly, armpits or a male chest) become
the one concept ``nudity``; covered parts and faces are ignored. I2P counts a part at score 0.6, the default here."""

from __future__ import annotations

from PIL import Image

from detectors.base import Detection
from detectors.images import as_array

CONCEPT = "nudity"
EXPOSED_CLASSES = frozenset(
    {
        "ANUS_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
    }
)


class NudityDetector:
    """``classes`` chooses which NudeNet labels count as nudity."""

    concepts = (CONCEPT,)

    def __init__(self, threshold: float = 0.6, classes: frozenset[str] = EXPOSED_CLASSES, batch_size: int = 8) -> None:
        from nudenet import NudeDetector  # loads the packaged model; no download path exists

        self._nudenet = NudeDetector()
        self.threshold = threshold
        self.classes = frozenset(classes)
        self.batch_size = batch_size

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        bgr = [as_array(image)[:, :, ::-1].copy() for image in images]  # what cv2.imread would give NudeNet
        found = self._nudenet.detect_batch(bgr, batch_size=self.batch_size)
        return [
            [
                Detection(CONCEPT, d["score"], _xywh_to_box(d["box"]))
                for d in per_image
                if d["class"] in self.classes and d["score"] >= self.threshold
            ]
            for per_image in found
        ]


def _xywh_to_box(xywh: list[int]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in xywh)
    return (x, y, x + w, y + h)
