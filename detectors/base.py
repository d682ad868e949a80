"""What every detector returns and how detectors are named in recipes and CLIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One found concept: its name, a confidence in [0, 1], and a pixel box ``(x0, y0, x1, y1)``."""

    concept: str
    score: float
    box: Box

    def as_record(self) -> dict:
        """The ``{name, score, box}`` record an Implicit Concept Dataset stores."""
        return {"name": self.concept, "score": float(self.score), "box": [float(v) for v in self.box]}


@runtime_checkable
class Detector(Protocol):
    """Batched: one list of detections per input image, in input order."""

    concepts: tuple[str, ...]

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]: ...
