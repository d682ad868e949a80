"""Stage 1: find implicit concepts and their boxes in images. See ``detectors.load`` for the spec strings."""

from detectors.base import Box, Detection, Detector
from detectors.registry import load

__all__ = ["Box", "Detection", "Detector", "load"]
