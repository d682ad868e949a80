"""The toy world: procedural scenes with implicit concepts pasted at known boxes, so every claim has ground truth.

    world = ToyWorld(ToyWorldConfig(size=64, concept_rates={"watermark": 0.5}, seed=0))
    sample = world.sample(7)  # the same image, caption and boxes for the same (config, 7), on any machine

A scene is ``count`` shapes of one colour in one region of a plain background, and its caption says exactly
that ("two red circles at the top on a blue background"). The implicit concepts (watermark, QR code, text)
are pasted on top at a box drawn from a per-concept position prior, and the caption never names them: the
model must learn them as an unnamed side effect of the data, which is what Geom-Erasing then removes.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import segno
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Box = tuple[int, int, int, int]
CONCEPTS = ("watermark", "qrcode", "text")
PLACEMENT_ORDER = ("qrcode", "text", "watermark")  # largest first, so the rejection sampling finds room

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
COUNTS = ("one", "two", "three", "four")
# Where the shapes of a scene sit: caption phrase -> region (x0, y0, x1, y1) as fractions of the side.
REGIONS = {
    "on the left": (0.0, 0.0, 0.5, 1.0),
    "on the right": (0.5, 0.0, 1.0, 1.0),
    "at the top": (0.0, 0.0, 1.0, 0.5),
    "at the bottom": (0.0, 0.5, 1.0, 1.0),
    "in the middle": (0.2, 0.2, 0.8, 0.8),
}

Anchor = Literal[
    "top_left", "top", "top_right", "left", "center", "right", "bottom_left", "bottom", "bottom_right", "anywhere"
]
# Anchor -> where the box sits along x and y (0 = flush with the start, 1 = flush with the end).
ANCHORS: dict[str, tuple[float, float] | None] = {
    "top_left": (0.0, 0.0),
    "top": (0.5, 0.0),
    "top_right": (1.0, 0.0),
    "left": (0.0, 0.5),
    "center": (0.5, 0.5),
    "right": (1.0, 0.5),
    "bottom_left": (0.0, 1.0),
    "bottom": (0.5, 1.0),
    "bottom_right": (1.0, 1.0),
    "anywhere": None,  # uniform over the image
}
DEFAULT_POSITION_PRIORS: dict[str, dict[str, float]] = {
    # Stock-photo watermarks sit in corners, QR codes in the lower corners, text in banners at top or bottom.
    "watermark": {"top_left": 0.15, "top_right": 0.15, "bottom_left": 0.2, "bottom_right": 0.35, "anywhere": 0.15},
    "qrcode": {"bottom_right": 0.45, "bottom_left": 0.25, "top_right": 0.15, "anywhere": 0.15},
    "text": {"top": 0.4, "bottom": 0.4, "anywhere": 0.2},
}
# Fraction of the image side: the QR code's side, the text's and the watermark's letter height.
DEFAULT_SIZE_RANGES: dict[str, tuple[float, float]] = {
    "watermark": (0.08, 0.16),
    "qrcode": (0.25, 0.45),
    "text": (0.08, 0.15),
}

WORDS = (
    "sale open today new free best hello world coffee shop price offer city park music night love home "
    "fresh daily news sport photo lake river green paper stone light water north south garden market "
    "street cafe hotel royal bank metro taxi hours menu dream power smart style travel"
).split()
WATERMARK_TEXTS = ("SAMPLE", "PREVIEW", "© STOCK", "PROOF", "DRAFT", "© PHOTO", "COPY", "STUDIO")
PAYLOAD_ALPHABET = string.ascii_uppercase + string.digits
DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")
QR_QUIET_ZONE = 2  # modules of light border pasted with the code; enough for zbar on any background

# One kind per concept, as in a crawl dominated by one stock site's logo, one shop's banner word, one QR code: what
# a small model fine-tuned for minutes learns. Of the varied defaults it learns only a blurred average.
ONE_KIND: dict[str, dict] = {
    "watermark": {
        "anchor": "bottom_right",
        "size": (0.14, 0.16),
        "settings": {"watermark_tiled_rate": 0.0, "watermark_logo_rate": 1.0, "watermark_opacity": (0.6, 0.7)},
    },
    "text": {
        "anchor": "top",
        "size": (0.13, 0.15),
        # one font; without fonts-dejavu, Pillow's own (as default_fonts falls back)
        "settings": {
            "text_words": ["sale"],
            "fonts": [str(p) for p in [DEJAVU_DIR / "DejaVuSans-Bold.ttf"] if p.is_file()],
        },
    },
    "qrcode": {"anchor": "bottom_right", "size": (0.34, 0.36), "settings": {"qr_payloads": ["TOY"]}},
}
# Where a one-kind concept goes when another one-kind concept holds its corner: in a world with the logo, the QR
# code takes the bottom-left corner, so that neither covers the other and each keeps one place.
ONE_KIND_SHARED_ANCHORS: dict[str, tuple[str, str]] = {"qrcode": ("watermark", "bottom_left")}


def default_fonts() -> list[str]:
    """Debian's fonts-dejavu; empty when not installed, and then Pillow's own default font is used."""
    return sorted(str(p) for p in DEJAVU_DIR.glob("DejaVu*.ttf") if "Math" not in p.name)


def one_kind_settings(concepts: list[str]) -> dict:
    """ToyWorldConfig fields that narrow each of ``concepts`` to its ONE_KIND; other concepts keep the defaults."""
    priors = {name: dict(weights) for name, weights in DEFAULT_POSITION_PRIORS.items()}
    sizes = dict(DEFAULT_SIZE_RANGES)
    settings: dict = {}
    for name in concepts:
        if name not in ONE_KIND:
            raise ValueError(f"unknown concept '{name}'; the toy world has {list(CONCEPTS)}")
        anchor = ONE_KIND[name]["anchor"]
        holder, elsewhere = ONE_KIND_SHARED_ANCHORS.get(name, (None, None))
        priors[name] = {elsewhere if holder in concepts else anchor: 1.0}
        sizes[name] = ONE_KIND[name]["size"]
        settings.update(ONE_KIND[name]["settings"])
    return {**settings, "position_priors": priors, "size_ranges": sizes}


class ToyWorldConfig(BaseModel):
    """Everything that decides a toy world image; with the index, it fixes the image exactly."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(64, ge=16, description="image side in pixels")
    seed: int = Field(0, description="world seed; sample i depends only on (config, i)")
    concept_rates: dict[str, float] = Field(
        default_factory=lambda: {"watermark": 0.3, "qrcode": 0.2, "text": 0.3},
        description="probability that an image holds each concept (missing concepts never appear)",
    )
    position_priors: dict[str, dict[Anchor, float]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_POSITION_PRIORS.items()},
        description="per concept, weights of the anchors its box is placed at",
    )
    size_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_SIZE_RANGES),
        description="per concept, (min, max) size as a fraction of the side: QR side, letter height of text",
    )
    watermark_tiled_rate: float = Field(0.2, ge=0, le=1, description="share of watermarks tiled over the image")
    watermark_logo_rate: float = Field(0.3, ge=0, le=1, description="share of watermarks that are a logo, not text")
    watermark_opacity: tuple[float, float] = Field((0.35, 0.7), description="(min, max) opacity of watermarks")
    fonts: list[str] = Field(default_factory=default_fonts, description="TrueType files for text and watermarks")
    text_words: list[str] = Field(
        default_factory=lambda: list(WORDS), min_length=1, description="words the text concept's 1-2 words come from"
    )
    qr_payloads: list[str] | None = Field(
        None,
        min_length=1,
        description="payloads QR codes pick from (one: every code alike); none: a random 6-12 characters each",
    )

    @field_validator("concept_rates")
    @classmethod
    def _known_rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for name, rate in rates.items():
            if name not in CONCEPTS:
                raise ValueError(f"unknown concept '{name}' in concept_rates; the toy world has {list(CONCEPTS)}")
            if not 0 <= rate <= 1:
                raise ValueError(f"concept_rates['{name}'] = {rate} is not a probability in [0, 1]")
        return rates

    @field_validator("position_priors")
    @classmethod
    def _known_priors(cls, priors: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, weights in priors.items():
            if name not in CONCEPTS:
                raise ValueError(f"unknown concept '{name}' in position_priors; the toy world has {list(CONCEPTS)}")
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"position_priors['{name}'] needs non-negative weights with a positive sum")
        return priors

    @field_validator("size_ranges", "watermark_opacity")
    @classmethod
    def _fraction_ranges(cls, value):
        ranges = value if isinstance(value, dict) else {"": value}
        for name, (lo, hi) in ranges.items():
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"range {name or ''} ({lo}, {hi}) must satisfy 0 < min <= max <= 1")
        return value

    @model_validator(mode="after")
    def _every_concept_has_a_prior_and_size(self) -> ToyWorldConfig:
        for name, rate in self.concept_rates.items():
            if rate > 0 and (name not in self.position_priors or name not in self.size_ranges):
                raise ValueError(f"concept '{name}' has a rate but no position_priors or size_ranges entry")
        return self


@dataclass(frozen=True)
class ToySample:
    """One toy world image and its ground truth.

    ``concepts`` are the dataset's ``{name, score, box}`` records; ``contents[k]`` is what concept ``k`` says
    (the QR payload, the rendered words, the watermark text; empty for a logo), for detector agreement tests.
    """

    image: Image.Image
    caption: str
    concepts: list[dict]
    attributes: dict
    contents: list[str] = field(default_factory=list)


def scene_caption(count: str, colour: str, shape: str, position: str, background: str) -> str:
    noun = shape if count == "one" else f"{shape}s"
    return f"{count} {colour} {noun} {position} on a {background} background"


@lru_cache(maxsize=512)
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class ToyWorld:
    """An endless, indexable toy world: ``sample(i)`` is a pure function of the config and ``i``."""

    def __init__(self, config: ToyWorldConfig | None = None) -> None:
        self.config = config or ToyWorldConfig()

    @cached_property
    def _word_space(self) -> set[str]:
        words: set[str] = set()
        for combo in itertools.product(COUNTS, COLOURS, SHAPES, REGIONS, COLOURS):
            words.update(scene_caption(*combo).split())
        return words

    def vocabulary(self) -> list[str]:
        """Every word a raw caption can hold (captions split on spaces), sorted: enough for a toy tokenizer."""
        return sorted(self._word_space)

    def sample(self, index: int) -> ToySample:
        if index < 0:
            raise IndexError(f"toy world index must be >= 0, got {index}")
        rng = np.random.default_rng([self.config.seed, index])
        presence = {name: rng.random() for name in CONCEPTS}  # drawn first so rates never depend on the rest
        image, attributes = self._scene(rng)
        concepts: list[dict] = []
        contents: list[str] = []
        taken: list[Box] = []
        for name in PLACEMENT_ORDER:
            if presence[name] >= self.config.concept_rates.get(name, 0.0):
                continue
            paste = {"qrcode": self._paste_qrcode, "text": self._paste_text, "watermark": self._paste_watermark}[name]
            boxes, content = paste(rng, image, attributes, taken)  # each paste adds its area to ``taken``
            concepts.extend({"name": name, "score": 1.0, "box": [float(v) for v in box]} for box in boxes)
            contents.extend([content] * len(boxes))
        caption = scene_caption(*(attributes[k] for k in ("count", "colour", "shape", "position", "background")))
        return ToySample(image=image, caption=caption, concepts=concepts, attributes=attributes, contents=contents)

    # -- the scene -------------------------------------------------------------------------------------------

    def _scene(self, rng: np.random.Generator) -> tuple[Image.Image, dict]:
        size = self.config.size
        names = list(COLOURS)
        background = names[rng.integers(len(names))]
        colour = [c for c in names if c != background][rng.integers(len(names) - 1)]
        shape = SHAPES[rng.integers(len(SHAPES))]
        count_index = int(rng.integers(len(COUNTS)))
        position = list(REGIONS)[rng.integers(len(REGIONS))]
        image = Image.new("RGB", (size, size), COLOURS[background])
        draw = ImageDraw.Draw(image)
        rx0, ry0, rx1, ry1 = (v * size for v in REGIONS[position])
        # Shapes sit in the cells of a small grid inside the region, so "four circles" shows four circles.
        cols = 2 if count_index > 0 else 1
        rows = 2 if count_index > 1 else 1
        cell_w, cell_h = (rx1 - rx0) / cols, (ry1 - ry0) / rows
        radius = 0.4 * min(cell_w, cell_h, 0.3 * size)
        cells = rng.permutation(rows * cols)[: count_index + 1] if rows * cols > 1 else [0]
        for cell in cells:
            cx = rx0 + (cell % cols + 0.5) * cell_w + rng.uniform(-0.1, 0.1) * cell_w
            cy = ry0 + (cell // cols + 0.5) * cell_h + rng.uniform(-0.1, 0.1) * cell_h
            r = radius * rng.uniform(0.8, 1.0)
            self._draw_shape(draw, shape, cx, cy, r, COLOURS[colour])
        attributes = {
            "shape": shape,
            "colour": colour,
            "background": background,
            "count": COUNTS[count_index],
            "position": position,
        }
        return image, attributes

    @staticmethod
    def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        elif shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape '{shape}'")

    # -- placement -------------------------------------------------------------------------------------------

    def _place(self, rng: np.random.Generator, name: str, w: int, h: int, taken: list[Box]) -> Box:
        """A box of ``w`` x ``h`` at an anchor drawn from the concept's prior, avoiding earlier concepts.

        Overlaps would hide one concept under another and make the ground truth wrong for detectors; after
        a few tries an overlap is accepted rather than dropping the concept (which would bias the rates).
        """
        size = self.config.size
        prior = self.config.position_priors[name]
        anchors = list(prior)
        weights = np.array([prior[a] for a in anchors], dtype=float)
        box: Box = (0, 0, w, h)
        for _ in range(20):
            anchor = ANCHORS[anchors[rng.choice(len(anchors), p=weights / weights.sum())]]
            if anchor is None:
                x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            else:
                margin = rng.uniform(0, 0.06 * size)
                jitter = rng.uniform(-0.04, 0.04, size=2) * size
                x = margin + anchor[0] * (size - w - 2 * margin) + jitter[0]
                y = margin + anchor[1] * (size - h - 2 * margin) + jitter[1]
            x, y = int(np.clip(x, 0, size - w)), int(np.clip(y, 0, size - h))
            box = (x, y, x + w, y + h)
            if not any(_overlaps(box, other) for other in taken):
                break
        taken.append(box)
        return box

    def _size(self, rng: np.random.Generator, name: str) -> float:
        lo, hi = self.config.size_ranges[name]
        return rng.uniform(lo, hi) * self.config.size

    def _text_mask(self, rng: np.random.Generator, text: str, height: float, max_width: float) -> Image.Image:
        """The text's ink as an L mask cropped to its exact bounds, no wider than ``max_width`` of the image."""
        fonts = self.config.fonts
        path = fonts[rng.integers(len(fonts))] if fonts else None
        font_size = max(4, round(height * 1.35))  # letter height is about 0.74 of the font size
        font = _font(path, font_size)
        x0, y0, x1, y1 = font.getbbox(text)
        mask = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
        ImageDraw.Draw(mask).text((-x0, -y0), text, font=font, fill=255)
        limit = int(max_width * self.config.size)
        if mask.width > limit:  # shrink the rendered ink rather than the font: exact fit at any size
            mask = mask.resize((limit, max(1, round(mask.height * limit / mask.width))), Image.LANCZOS)
        return mask

    # -- the concepts ----------------------------------------------------------------------------------------

    def _paste_qrcode(self, rng, image: Image.Image, attributes: dict, taken: list[Box]) -> tuple[list[Box], str]:
        """A real QR code (a random payload unless qr_payloads names them); decodable from about 2 px a module."""
        if self.config.qr_payloads:
            payload = self.config.qr_payloads[rng.integers(len(self.config.qr_payloads))]
        else:
            payload = "".join(rng.choice(list(PAYLOAD_ALPHABET), size=int(rng.integers(6, 13))))
        matrix = np.array(segno.make_qr(payload, error="m").matrix, dtype=bool)
        padded = np.pad(matrix, QR_QUIET_ZONE, constant_values=False)
        target, n = round(self._size(rng, "qrcode")), padded.shape[0]
        side = target if target < 2 * n else target // n * n  # from 2 px a module on, whole pixels per module
        code = Image.fromarray(np.where(padded, 0, 255).astype(np.uint8)).resize((side, side), Image.NEAREST)
        x, y, _, _ = self._place(rng, "qrcode", side, side, taken)
        image.paste(code, (x, y))
        # The recorded box is the symbol without its quiet zone: what a QR detector reports.
        quiet = round(side * QR_QUIET_ZONE / n)
        return [(x + quiet, y + quiet, x + side - quiet, y + side - quiet)], payload

    def _paste_text(self, rng, image: Image.Image, attributes: dict, taken: list[Box]) -> tuple[list[Box], str]:
        vocabulary = self.config.text_words
        words = [vocabulary[i] for i in rng.integers(len(vocabulary), size=int(rng.integers(1, 3)))]
        text = " ".join(words)
        text = text.upper() if rng.random() < 0.3 else text
        mask = self._text_mask(rng, text, self._size(rng, "text"), max_width=0.9)
        background = attributes["background"]
        choices = [c for c in COLOURS if abs(_luminance(COLOURS[c]) - _luminance(COLOURS[background])) > 60]
        fill = COLOURS[choices[rng.integers(len(choices))]]
        box = self._place(rng, "text", mask.width, mask.height, taken)
        image.paste(fill, box, mask)
        return [box], text

    def _paste_watermark(self, rng, image: Image.Image, attributes: dict, taken: list[Box]) -> tuple[list[Box], str]:
        """Semi-transparent text or logo, once at a prior position or tiled in a grid over the image."""
        opacity = rng.uniform(*self.config.watermark_opacity)
        tiled = rng.random() < self.config.watermark_tiled_rate
        height = self._size(rng, "watermark") * (0.7 if tiled else 1.0)
        if rng.random() < self.config.watermark_logo_rate:
            content, mask = "", self._logo_mask(max(4, round(height * 1.6)))
        else:
            content = WATERMARK_TEXTS[rng.integers(len(WATERMARK_TEXTS))]
            mask = self._text_mask(rng, content, height, max_width=0.6)  # narrow enough to sit in a corner
        mask = mask.point(lambda v: round(v * opacity))
        fill = (255, 255, 255) if _luminance(COLOURS[attributes["background"]]) < 150 else (0, 0, 0)
        boxes = self._tile(mask.width, mask.height, taken) if tiled else []
        if not boxes:
            boxes = [self._place(rng, "watermark", mask.width, mask.height, taken)]
        for box in boxes:
            image.paste(fill, box, mask)
        return boxes, content

    def _tile(self, w: int, h: int, taken: list[Box]) -> list[Box]:
        """A regular grid of copies over the whole image, skipping spots that would cover another concept."""
        size = self.config.size
        cols, rows = max(1, int(size // (w * 1.5))), max(1, int(size // (h * 2.5)))
        gap_x, gap_y = (size - cols * w) / cols, (size - rows * h) / rows
        boxes = []
        for r in range(rows):
            for c in range(cols):
                x, y = int(gap_x / 2 + c * (w + gap_x)), int(gap_y / 2 + r * (h + gap_y))
                box = (x, y, x + w, y + h)
                if not any(_overlaps(box, other) for other in taken):
                    boxes.append(box)
        taken.extend(boxes)
        return boxes

    @staticmethod
    @lru_cache(maxsize=64)
    def _logo_mask(side: int) -> Image.Image:
        """A ring around a play triangle: a logo with no letters, so only its shape says 'watermark'."""
        scale = 4  # drawn large and reduced, for smooth edges at a few pixels
        big = side * scale
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        draw.ellipse((0, 0, big - 1, big - 1), outline=255, width=max(1, big // 8))
        draw.polygon([(big * 0.38, big * 0.28), (big * 0.38, big * 0.72), (big * 0.74, big * 0.5)], fill=255)
        return mask.resize((side, side), Image.LANCZOS)
