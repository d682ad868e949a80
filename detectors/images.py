"""Turn any image a user hands us into the 8-bit RGB pixels every backend reads, and keep one bad file from
sinking a batch: detectors see only clean RGB, and unreadable files become error entries with their reason."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from detectors.base import Detection, Detector

ImageSource = str | Path | bytes | Image.Image


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, a decompression bomb)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: EXIF orientation applied, transparency flattened onto white, 16-bit and float rescaled."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = pixels.max(initial=0)
        # 16-bit files span 0..65535 and float images usually 0..1; values already within 0..255 stay as they are.
        full_scale = 65535.0 if peak > 255 else 1.0 if image.mode == "F" and peak <= 1.0 else 255.0
        image = Image.fromarray(np.clip(pixels * (255.0 / full_scale), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def as_array(image: Image.Image) -> np.ndarray:
    """``H x W x 3`` uint8 RGB pixels of any PIL image."""
    return np.ascontiguousarray(np.asarray(to_rgb(image), dtype=np.uint8))


def open_image(source: ImageSource) -> Image.Image:
    """Decode fully now, so a truncated or bogus file fails here with its name instead of deep inside a backend."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(
            f"{name}: cannot read image ({type(err).__name__}: {err}); re-save it as PNG or JPEG, or leave it out"
        ) from err


@dataclass
class ImageResult:
    """The detections of one input, or why there are none: ``error`` is set only when the image was unreadable."""

    source: str
    detections: list[Detection] = field(default_factory=list)
    error: str | None = None


def detect_sources(detector: Detector, sources: Sequence[ImageSource], batch_size: int = 16) -> list[ImageResult]:
    """Run ``detector`` over files, bytes or images in batches; unreadable ones yield an error entry, not a crash."""
    results: list[ImageResult] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        entries = [ImageResult(source=_name(s, start + i)) for i, s in enumerate(chunk)]
        readable: list[tuple[ImageResult, Image.Image]] = []
        for entry, source in zip(entries, chunk, strict=True):
            try:
                readable.append((entry, open_image(source)))
            except UnreadableImageError as err:
                entry.error = str(err)
        found = detector.detect([image for _, image in readable]) if readable else []
        for (entry, _), detections in zip(readable, found, strict=True):
            entry.detections = detections
        results.extend(entries)
    return results


def _name(source: ImageSource, index: int) -> str:
    return str(source) if isinstance(source, str | Path) else f"#{index}"
