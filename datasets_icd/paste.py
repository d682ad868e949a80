"""Implicit concepts pasted onto the user's own clean photos at known boxes: ground truth for real-looking data.

    icd build --source folder:photos --paste watermark=0.5 text=0.3 qrcode=0.2 --out outputs/pasted

    paster = Paster(PasteConfig(rates={"watermark": 1.0}, seed=0))
    image, concepts = paster.paste(photo, key="photo.jpg")  # the same result for the same (config, key)

What a scraped crawl holds: watermarks (``© name``, ``@handle``, site names, stock-photo words, alone in a corner,
tiled over the image or once across it diagonally, and small logos), text (captions with an outline or shadow,
banners on a plate) and QR codes, in the fonts Debian ships, with opacity, blend modes, rotation, and the
re-compression, resizing, blur and colour shifts the image went through on its way. Every pasted mark records one
``{name, score, box}`` with the box of the pixels it changed (a QR code's box leaves out its quiet zone, as a QR
detector reports it). ``split`` keeps some fonts and words for held-out data only, so a detector is measured on
lettering it never saw.
"""

from __future__ import annotations

import io
import string
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import segno
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont
from pydantic import BaseModel, ConfigDict, Field, field_validator

from datasets_icd.toyworld import ANCHORS, QR_QUIET_ZONE, Anchor

CONCEPTS = ("watermark", "text", "qrcode")
PLACEMENT_ORDER = ("qrcode", "text", "watermark")  # largest first, so the rejection sampling finds room
FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/share/fonts/opentype")
NOT_LETTERS = ("Math", "Symbol", "D050000L", "Dingbat", "Fallback")  # fonts without Latin letters to draw words in

FIRST_NAMES = (
    "anna lena maria sofia emma clara julia nina laura sara eva mila ivan marco paul david leo adam jonas felix "
    "tom hugo oscar lucas noah elias omar yusuf ken aiko mei ravi priya"
).split()
LAST_NAMES = (
    "berg novak rossi weber silva moreau lind costa fischer meyer kowalski dubois tanaka sato kim park chen wong "
    "patel shah garcia lopez nilsen horvat varga popescu ivanova brandt keller ortiz"
).split()
SITE_STEMS = (
    "luma pixel snap shot frame lens vista nord foto image stock click focus prism studio view capture bright "
    "urban wild peak aurora zen nova echo ember atlas orbit"
).split()
SITE_ENDINGS = (".com", ".net", ".org", ".photo", ".io", ".co", ".de", ".fr", "stock.com", "pix.com", "images.com")
STOCK_WORDS = (
    "SAMPLE PREVIEW PROOF COPYRIGHT DRAFT WATERMARKED COMP UNLICENSED DEMO CONFIDENTIAL PHOTO STOCK ARCHIVE "
    "LICENSED EXCLUSIVE"
).split()
CAPTION_WORDS = (
    "summer sale open today new best view city park music night love home fresh daily news sport lake river "
    "mountain garden market street coffee hotel grand opening free entry limited offer spring winter autumn "
    "festival morning sunset beach trail family weekend special happy travel dream season great local online "
    "shop now join book visit our welcome live event tickets menu"
).split()
LOGO_WORDS = ("LUMA", "NORD", "VISTA", "PRISM", "ORBIT", "ECHO", "NOVA", "ZEN", "ATLAS", "PEAK", "EMBER", "AURA")
QR_PREFIXES = ("https://", "http://www.", "https://m.", "")
PAYLOAD_ALPHABET = string.ascii_lowercase + string.digits

DEFAULT_POSITIONS: dict[str, dict[str, float]] = {
    # Scraped data: watermarks mostly in the corners (bottom right the most), text in a bottom band, QR codes low.
    "watermark": {"bottom_right": 0.35, "bottom_left": 0.15, "top_right": 0.1, "top_left": 0.1, "bottom": 0.1,
                  "center": 0.05, "anywhere": 0.15},
    "text": {"bottom": 0.45, "top": 0.2, "bottom_left": 0.1, "top_left": 0.05, "anywhere": 0.2},
    "qrcode": {"bottom_right": 0.45, "bottom_left": 0.25, "top_right": 0.1, "anywhere": 0.2},
}  # fmt: skip
DEFAULT_SIZES: dict[str, tuple[float, float]] = {
    # Fractions of the shorter image side: letter height of words, a logo's side, a QR code's side.
    "watermark": (0.035, 0.08),
    "logo": (0.08, 0.16),
    "text": (0.035, 0.075),
    "qrcode": (0.14, 0.28),
}


class PasteConfig(BaseModel):
    """Everything that decides what is pasted on an image; with the image's key it fixes the result exactly."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="paste seed; an image's marks depend only on (config, its key)")
    rates: dict[str, float] = Field(
        default_factory=lambda: {"watermark": 0.5, "text": 0.3, "qrcode": 0.2},
        description="probability that an image gets each concept (missing concepts never appear)",
    )
    split: Literal["all", "train", "heldout"] = Field(
        "all", description="train: only the training fonts and words; heldout: only the held-out ones; all: both"
    )
    heldout_fonts: list[str] = Field(
        default_factory=lambda: ["DejaVuSerif", "NimbusRoman", "URWGothic", "NotoSansMono", "DejaVuSansCondensed"],
        description="font file names starting with one of these are held out (the rest train)",
    )
    heldout_word_share: float = Field(
        0.25, ge=0, le=1, description="share of each word list held out, chosen by a hash of the word"
    )
    fonts: list[str] = Field(
        default_factory=lambda: system_fonts(), description="font files to draw with; default: Debian's fonts"
    )
    repeats: int = Field(1, ge=1, description="pasted versions of every source image, each its own row")
    max_side: int | None = Field(1024, ge=32, description="source images are first shrunk to this longer side")
    crop_rate: float = Field(0.0, ge=0, le=1, description="share of images first cut to a random crop")
    crop_scale: tuple[float, float] = Field((0.4, 1.0), description="(min, max) side of a crop, share of the side")
    positions: dict[str, dict[Anchor, float]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_POSITIONS.items()},
        description="per concept, weights of the anchors a box is placed at",
    )
    sizes: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_SIZES),
        description="(min, max) share of the shorter side: letter height (watermark, text), side (logo, qrcode)",
    )
    watermark_kinds: dict[Literal["mark", "logo", "tiled", "diagonal"], float] = Field(
        default_factory=lambda: {"mark": 0.5, "logo": 0.2, "tiled": 0.15, "diagonal": 0.15},
        description="weights of a corner mark (name, handle, site), a logo, a tiled grid of marks, one big diagonal",
    )
    text_kinds: dict[Literal["caption", "banner"], float] = Field(
        default_factory=lambda: {"caption": 0.6, "banner": 0.4},
        description="weights of a caption line (outline or shadow) and a banner (text on a plate)",
    )
    watermark_opacity: tuple[float, float] = Field((0.35, 0.85), description="(min, max) opacity of watermarks")
    text_opacity: tuple[float, float] = Field((0.85, 1.0), description="(min, max) opacity of text and banners")
    blend_modes: dict[Literal["normal", "overlay", "screen_multiply"], float] = Field(
        default_factory=lambda: {"normal": 0.6, "overlay": 0.2, "screen_multiply": 0.2},
        description="watermark blending: normal, overlay, or screen (light marks) / multiply (dark marks)",
    )
    outline_rate: float = Field(0.3, ge=0, le=1, description="share of words drawn with an outline")
    shadow_rate: float = Field(0.3, ge=0, le=1, description="share of words drawn with a drop shadow")
    rotation: float = Field(8.0, ge=0, le=90, description="marks, text and QR codes turn by up to this many degrees")
    diagonal_rotation: tuple[float, float] = Field((20.0, 45.0), description="(min, max) turn of tiled/diagonal marks")
    jpeg_rate: float = Field(0.6, ge=0, le=1, description="share of images re-compressed as JPEG")
    jpeg_quality: tuple[int, int] = Field((35, 95), description="(min, max) JPEG quality")
    resize_rate: float = Field(0.4, ge=0, le=1, description="share of images resized after pasting")
    resize_scale: tuple[float, float] = Field((0.5, 1.0), description="(min, max) scale of that resize")
    blur_rate: float = Field(0.2, ge=0, le=1, description="share of images blurred")
    blur_radius: tuple[float, float] = Field((0.3, 1.2), description="(min, max) Gaussian blur radius in pixels")
    colour_rate: float = Field(0.3, ge=0, le=1, description="share of images with a brightness/contrast/colour shift")
    colour_strength: float = Field(0.2, ge=0, le=1, description="largest relative change of each colour factor")

    @field_validator("rates")
    @classmethod
    def _known_rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for name, rate in rates.items():
            if name not in CONCEPTS:
                raise ValueError(f"unknown concept '{name}' to paste; the concepts are {list(CONCEPTS)}")
            if not 0 <= rate <= 1:
                raise ValueError(f"the rate of '{name}' is {rate}, not a probability in [0, 1]")
        return rates

    @field_validator("fonts")
    @classmethod
    def _fonts_exist(cls, fonts: list[str]) -> list[str]:
        missing = [f for f in fonts if not Path(f).is_file()]
        if missing:
            raise ValueError(f"font files not found: {missing}")
        return fonts


def system_fonts() -> list[str]:
    """The TrueType/OpenType files of Debian's font packages that draw Latin letters (DejaVu, URW, Noto...)."""
    files = [p for d in FONT_DIRS for p in Path(d).rglob("*") if p.suffix.lower() in (".ttf", ".otf")]
    return sorted(str(p) for p in files if not any(word in p.name for word in NOT_LETTERS))


def _is_heldout(word: str, share: float) -> bool:
    return zlib.crc32(word.encode()) % 1000 < share * 1000


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@dataclass
class Mark:
    """A pasted thing as two greyscale masks of one size: ``ink`` (letters, logo, dark modules) and ``halo``
    (outline, shadow, plate, light modules), coloured only once the place and its background are known.
    ``extent`` marks what the box covers when that is not all of it (a QR code without its quiet zone)."""

    ink: Image.Image
    halo: Image.Image
    extent: Image.Image | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.ink.size

    def rotated(self, degrees: float) -> Mark:
        if not degrees:
            return self
        turn = [m.rotate(degrees, Image.BICUBIC, expand=True) for m in (self.ink, self.halo)]
        extent = self.extent.rotate(degrees, Image.NEAREST, expand=True) if self.extent else None
        return Mark(*turn, extent).cropped()

    def cropped(self) -> Mark:
        """Cut to the pixels it paints, so its size is its box."""
        bounds = Image.fromarray(np.maximum(np.asarray(self.ink), np.asarray(self.halo))).getbbox()
        if bounds is None:
            return self
        return Mark(
            *(m.crop(bounds) for m in (self.ink, self.halo)), self.extent.crop(bounds) if self.extent else None
        )

    def box_within(self) -> tuple[int, int, int, int]:
        bounds = self.extent.getbbox() if self.extent else None
        return bounds or (0, 0, *self.size)


class Paster:
    """Pastes concepts onto images: ``paste(image, key)`` is a pure function of the config, the image and ``key``."""

    def __init__(self, config: PasteConfig | None = None) -> None:
        self.config = config or PasteConfig()
        cfg = self.config
        keep = {"all": lambda held: True, "train": lambda held: not held, "heldout": lambda held: held}[cfg.split]
        fonts = [f for f in cfg.fonts if keep(Path(f).name.startswith(tuple(cfg.heldout_fonts)))]
        if not fonts:
            raise ValueError(f"no font left for split '{cfg.split}' (fonts {cfg.fonts}, held out {cfg.heldout_fonts})")
        self.fonts = fonts

        def words(vocabulary) -> list[str]:
            kept = [w for w in vocabulary if keep(_is_heldout(w, cfg.heldout_word_share))]
            return kept or list(vocabulary)  # a share of 0 or 1 leaves one side empty: then it gets every word

        self.first, self.last, self.stems = words(FIRST_NAMES), words(LAST_NAMES), words(SITE_STEMS)
        self.stock, self.caption_words, self.logo_words = words(STOCK_WORDS), words(CAPTION_WORDS), words(LOGO_WORDS)

    def paste(self, image: Image.Image, key: str) -> tuple[Image.Image, list[dict]]:
        """``image`` with concepts pasted and degraded, and its ``{name, score, box}`` records."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, zlib.crc32(key.encode())])
        presence = {name: rng.random() for name in CONCEPTS}  # drawn first so rates never depend on the rest
        image = self._prepare(rng, image.convert("RGB"))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        records: list[dict] = []
        taken: list[tuple[int, int, int, int]] = []
        for name in PLACEMENT_ORDER:
            if presence[name] < cfg.rates.get(name, 0.0):
                paste = {"watermark": self._watermark, "text": self._text, "qrcode": self._qrcode}[name]
                boxes = paste(rng, pixels, taken)
                records += [{"name": name, "score": 1.0, "box": [float(v) for v in box]} for box in boxes]
        image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
        return self._degrade(rng, image, records)

    # -- the image before and after ----------------------------------------------------------------------------

    def _prepare(self, rng: np.random.Generator, image: Image.Image) -> Image.Image:
        cfg = self.config
        if cfg.max_side and max(image.size) > cfg.max_side:
            scale = cfg.max_side / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS
            )
        if rng.random() < cfg.crop_rate:
            w, h = (max(16, round(side * rng.uniform(*cfg.crop_scale))) for side in image.size)
            w, h = min(w, image.width), min(h, image.height)
            x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
            image = image.crop((x, y, x + w, y + h))
        return image

    def _degrade(self, rng: np.random.Generator, image: Image.Image, records: list[dict]):
        """What a scraped image went through after the marks were put on: edits, re-sizing, re-compression."""
        cfg = self.config
        draws = rng.random(4)  # one draw per degradation, so turning one off leaves the others' images unchanged
        if draws[0] < cfg.colour_rate:
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                image = enhance(image).enhance(1 + rng.uniform(-cfg.colour_strength, cfg.colour_strength))
        if draws[1] < cfg.blur_rate:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*cfg.blur_radius)))
        if draws[2] < cfg.resize_rate:
            scale = rng.uniform(*cfg.resize_scale)
            size = (max(16, round(image.width * scale)), max(16, round(image.height * scale)))
            sx, sy = size[0] / image.width, size[1] / image.height
            image = image.resize(size, Image.BICUBIC)
            for record in records:
                x0, y0, x1, y1 = record["box"]
                record["box"] = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
        if draws[3] < cfg.jpeg_rate:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
            image = Image.open(buffer).convert("RGB")
        return image, records

    # -- placing and blending --------------------------------------------------------------------------------

    def _place(self, rng, name: str, mark: Mark, shape: tuple[int, int], taken: list) -> tuple[int, int] | None:
        """A spot for ``mark`` at an anchor drawn from the concept's prior, clear of earlier concepts if it can be;
        None when the mark does not fit in the image at all."""
        height, width = shape
        w, h = mark.size
        if w > width or h > height:
            return None
        x = y = 0
        for _ in range(20):
            anchor = ANCHORS[_pick(rng, self.config.positions[name])]
            if anchor is None:
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            else:
                margin = rng.uniform(0.01, 0.05) * min(width, height)
                x = margin + anchor[0] * (width - w - 2 * margin) + rng.uniform(-0.02, 0.02) * width
                y = margin + anchor[1] * (height - h - 2 * margin) + rng.uniform(-0.02, 0.02) * height
            x, y = int(np.clip(x, 0, width - w)), int(np.clip(y, 0, height - h))
            if not any(_overlaps((x, y, x + w, y + h), other) for other in taken):
                break
        return x, y

    def _put(
        self, rng, pixels: np.ndarray, mark: Mark, at: tuple[int, int], opacity: float, mode: str, taken
    ) -> tuple:
        """Blend ``mark`` into ``pixels`` in place at ``at``; its colours contrast with what lies beneath."""
        x, y = at
        w, h = mark.size
        region = pixels[y : y + h, x : x + w]
        light = region.mean() < 0.55
        ink_colour = _tint(rng, light)
        halo_colour = _tint(rng, not light)
        ink = np.asarray(mark.ink, dtype=np.float32)[..., None] / 255.0
        halo = np.asarray(mark.halo, dtype=np.float32)[..., None] / 255.0
        colour = (ink * ink_colour + (1 - ink) * halo_colour).astype(np.float32)
        alpha = np.maximum(ink, halo) * opacity
        if mode == "overlay":
            top = np.where(region < 0.5, 2 * region * colour, 1 - 2 * (1 - region) * (1 - colour))
        elif mode == "screen_multiply":
            top = 1 - (1 - region) * (1 - colour) if light else region * colour
        else:
            top = colour
        region += alpha * (top - region)
        x0, y0, x1, y1 = mark.box_within()
        box = (x + x0, y + y0, x + x1, y + y1)
        taken.append((x, y, x + w, y + h))
        return box

    # -- the concepts ----------------------------------------------------------------------------------------

    def _letter_height(self, rng, name: str, pixels: np.ndarray) -> float:
        lo, hi = self.config.sizes[name]
        return rng.uniform(lo, hi) * min(pixels.shape[:2])

    def _words(self, rng, text: str, height: float, max_width: float, halo: bool = True) -> Mark:
        """The text's ink at ``height`` px letters, maybe with an outline or a drop shadow, no wider than
        ``max_width`` (shrunk to fit rather than cut)."""
        font = _font(self.fonts[rng.integers(len(self.fonts))], max(6, round(height * 1.35)))
        outline = round(max(1, height * 0.08)) if halo and rng.random() < self.config.outline_rate else 0
        shadow = round(max(1, height * 0.1)) if halo and rng.random() < self.config.shadow_rate else 0
        x0, y0, x1, y1 = font.getbbox(text, stroke_width=outline)
        pad = outline + 2 * shadow + 2
        size = (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad)
        ink, halo_mask = Image.new("L", size, 0), Image.new("L", size, 0)
        origin = (pad - x0, pad - y0)
        if shadow:
            ImageDraw.Draw(halo_mask).text((origin[0] + shadow, origin[1] + shadow), text, font=font, fill=200)
            halo_mask = halo_mask.filter(ImageFilter.GaussianBlur(shadow / 2))
        if outline:
            ImageDraw.Draw(halo_mask).text(origin, text, font=font, fill=255, stroke_width=outline, stroke_fill=255)
        ImageDraw.Draw(ink).text(origin, text, font=font, fill=255)
        mark = Mark(ink, halo_mask).cropped()
        if mark.size[0] > max_width:
            scale = max_width / mark.size[0]
            new = (max(1, int(max_width)), max(1, round(mark.size[1] * scale)))
            mark = Mark(mark.ink.resize(new, Image.LANCZOS), mark.halo.resize(new, Image.LANCZOS)).cropped()
        return mark

    def _watermark_text(self, rng) -> str:
        first, last = self.first[rng.integers(len(self.first))], self.last[rng.integers(len(self.last))]
        stem = self.stems[rng.integers(len(self.stems))]
        forms = (
            f"© {first.title()} {last.title()}",
            f"© {rng.integers(2005, 2027)} {first.title()} {last.title()}",
            f"@{first}{rng.choice(['', '.', '_'])}{last}",
            f"@{stem}{rng.choice(['', '_photo', '.pics', 'studio'])}",
            f"{stem}{SITE_ENDINGS[rng.integers(len(SITE_ENDINGS))]}",
            f"www.{stem}{rng.choice(SITE_ENDINGS[:4])}",
            f"© {stem.title()} Photography",
            self.stock[rng.integers(len(self.stock))],
        )
        text = forms[rng.integers(len(forms))]
        return text.upper() if rng.random() < 0.2 else text

    def _watermark(self, rng, pixels: np.ndarray, taken: list) -> list:
        cfg = self.config
        kind = _pick(rng, cfg.watermark_kinds)
        opacity = rng.uniform(*cfg.watermark_opacity)
        mode = _pick(rng, cfg.blend_modes)
        height, width = pixels.shape[:2]
        if kind == "logo":
            mark = self._logo(rng, rng.uniform(*cfg.sizes["logo"]) * min(height, width))
        elif kind == "diagonal":
            letters = self._letter_height(rng, "watermark", pixels) * rng.uniform(1.5, 3.0)
            mark = self._words(rng, self._watermark_text(rng), letters, 0.9 * min(height, width), halo=False)
        else:
            letters = self._letter_height(rng, "watermark", pixels)
            mark = self._words(rng, self._watermark_text(rng), letters, width / 2)
        turn = rng.uniform(*cfg.diagonal_rotation) * rng.choice([-1, 1]) if kind in ("tiled", "diagonal") else 0.0
        mark = mark.rotated(turn or rng.uniform(-cfg.rotation, cfg.rotation) * (rng.random() < 0.3))
        if kind == "tiled":
            return [self._put(rng, pixels, mark, at, opacity, mode, taken) for at in _grid(mark, pixels.shape, taken)]
        if kind == "diagonal":
            at = ((width - mark.size[0]) // 2, (height - mark.size[1]) // 2)
            fits = at[0] >= 0 and at[1] >= 0
        else:
            at = self._place(rng, "watermark", mark, (height, width), taken)
            fits = at is not None
        return [self._put(rng, pixels, mark, at, opacity, mode, taken)] if fits else []

    def _logo(self, rng, side: float) -> Mark:
        """A shape (ring, rounded square, diamond or triangle) with a brand word beside or under it."""
        scale = 4  # drawn large and reduced, for smooth edges
        s = max(8, round(side)) * scale
        shape = Image.new("L", (s, s), 0)
        draw = ImageDraw.Draw(shape)
        line = max(scale, s // 10)
        form = rng.integers(4)
        if form == 0:
            draw.ellipse((0, 0, s - 1, s - 1), outline=255, width=line)
            draw.ellipse((s * 0.3, s * 0.3, s * 0.7, s * 0.7), fill=255)
        elif form == 1:
            draw.rounded_rectangle((0, 0, s - 1, s - 1), radius=s // 5, outline=255, width=line)
            draw.polygon([(s * 0.35, s * 0.25), (s * 0.35, s * 0.75), (s * 0.75, s * 0.5)], fill=255)
        elif form == 2:
            draw.polygon([(s / 2, 0), (s - 1, s / 2), (s / 2, s - 1), (0, s / 2)], outline=255, width=line)
        else:
            draw.polygon([(s / 2, 0), (s - 1, s - 1), (0, s - 1)], fill=255)
        shape = shape.resize((s // scale, s // scale), Image.LANCZOS)
        word = self._words(rng, self.logo_words[rng.integers(len(self.logo_words))], side * 0.35, 4 * side, False)
        beside = rng.random() < 0.5
        w = shape.width + word.size[0] + 4 if beside else max(shape.width, word.size[0])
        h = max(shape.height, word.size[1]) if beside else shape.height + word.size[1] + 4
        ink = Image.new("L", (w, h), 0)
        ink.paste(shape, (0, 0) if beside else ((w - shape.width) // 2, 0))
        spot = (shape.width + 4, (h - word.size[1]) // 2) if beside else ((w - word.size[0]) // 2, shape.height + 4)
        ink.paste(word.ink, spot)
        return Mark(ink, Image.new("L", (w, h), 0))

    def _text(self, rng, pixels: np.ndarray, taken: list) -> list:
        cfg = self.config
        kind = _pick(rng, cfg.text_kinds)
        words = [self.caption_words[i] for i in rng.integers(len(self.caption_words), size=int(rng.integers(1, 5)))]
        if rng.random() < 0.2:
            words.insert(int(rng.integers(len(words) + 1)), rng.choice([f"{rng.integers(10, 90)}%", "2025", "$19"]))
        text = " ".join(words)
        text = text.upper() if rng.random() < 0.3 else text.capitalize() if rng.random() < 0.5 else text
        height, width = pixels.shape[:2]
        letters = self._letter_height(rng, "text", pixels)
        mark = self._words(rng, text, letters, 0.9 * width, halo=kind == "caption")
        if kind == "banner":  # the plate: text on a filled band with a margin of half a letter
            pad = max(2, round(letters * 0.4))
            w, h = mark.size[0] + 2 * pad, mark.size[1] + 2 * pad
            ink = Image.new("L", (w, h), 0)
            ink.paste(mark.ink, (pad, pad))
            mark = Mark(ink, Image.new("L", (w, h), 255))
        mark = mark.rotated(rng.uniform(-cfg.rotation, cfg.rotation) * (rng.random() < 0.3))
        at = self._place(rng, "text", mark, (height, width), taken)
        opacity = rng.uniform(*cfg.text_opacity)
        return [self._put(rng, pixels, mark, at, opacity, "normal", taken)] if at else []

    def _qrcode(self, rng, pixels: np.ndarray, taken: list) -> list:
        """A real, decodable QR code of a URL-like payload with its light quiet zone."""
        cfg = self.config
        stem = self.stems[rng.integers(len(self.stems))]
        path = "".join(rng.choice(list(PAYLOAD_ALPHABET), size=int(rng.integers(4, 12))))
        payload = f"{QR_PREFIXES[rng.integers(len(QR_PREFIXES))]}{stem}{rng.choice(SITE_ENDINGS[:6])}/{path}"
        matrix = np.array(segno.make_qr(payload, error="m").matrix, dtype=bool)
        padded = np.pad(matrix, QR_QUIET_ZONE, constant_values=False)
        n = padded.shape[0]
        lo, hi = cfg.sizes["qrcode"]
        module = max(2, round(rng.uniform(lo, hi) * min(pixels.shape[:2]) / n))  # whole pixels per module
        big = lambda a: Image.fromarray(a.astype(np.uint8) * 255).resize((n * module,) * 2, Image.NEAREST)  # noqa: E731
        symbol = np.zeros_like(padded)
        symbol[QR_QUIET_ZONE:-QR_QUIET_ZONE, QR_QUIET_ZONE:-QR_QUIET_ZONE] = True
        mark = Mark(big(padded), big(~padded), big(symbol))
        mark = mark.rotated(rng.uniform(-cfg.rotation, cfg.rotation) * (rng.random() < 0.2))
        at = self._place(rng, "qrcode", mark, pixels.shape[:2], taken)
        if at is None:
            return []
        x, y = at
        w, h = mark.size
        ink = np.asarray(mark.ink, dtype=np.float32)[..., None] / 255.0
        halo = np.asarray(mark.halo, dtype=np.float32)[..., None] / 255.0
        region = pixels[y : y + h, x : x + w]
        region *= 1 - np.maximum(ink, halo)  # black modules on white, opaque: a code must stay readable
        region += halo
        x0, y0, x1, y1 = mark.box_within()
        taken.append((x, y, x + w, y + h))
        return [(x + x0, y + y0, x + x1, y + y1)]


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """A key of ``weights`` drawn with probability proportional to its weight."""
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[rng.choice(len(names), p=p / p.sum())]


def _tint(rng: np.random.Generator, light: bool) -> np.ndarray:
    """A near-white or near-black colour, now and then tinted, as marks and captions are drawn."""
    base = rng.uniform(0.85, 1.0) if light else rng.uniform(0.0, 0.15)
    colour = np.full(3, base)
    if rng.random() < 0.25:
        colour = np.clip(colour + rng.uniform(-0.3, 0.3, size=3), 0, 1)
    return colour.astype(np.float32)


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _grid(mark: Mark, shape: tuple[int, ...], taken: list) -> list[tuple[int, int]]:
    """Spots of a regular grid of copies over the whole image, leaving out those that would cover another concept."""
    height, width = shape[:2]
    w, h = mark.size
    cols, rows = max(1, int(width // (w * 1.6))), max(1, int(height // (h * 1.8)))
    gap_x, gap_y = (width - cols * w) / cols, (height - rows * h) / rows
    spots = []
    for r in range(rows):
        for c in range(cols):
            x, y = int(gap_x / 2 + c * (w + gap_x)), int(gap_y / 2 + r * (h + gap_y))
            if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
                if not any(_overlaps((x, y, x + w, y + h), other) for other in taken):
                    spots.append((x, y))
    return spots
