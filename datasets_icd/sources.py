"""Where the images of an Implicit Concept Dataset come from: the toy world, an image folder, or an HF dataset.

Every source is indexable (``len(source)``, ``source.load(i)``), so a build can split it across processes by
index and resume by index. ``load`` raises :class:`SkippedItem` with the reason for an item that cannot be used
(an unreadable file, a decompression bomb...): the build lists it and goes on. Spec strings, as ``icd build
--source`` takes them: ``synthetic``, ``folder:PATH``, ``hf:NAME`` (a hub name or a ``save_to_disk`` folder).
"""

from __future__ import annotations

import csv
import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from datasets_icd.paste import PasteConfig, Paster
from datasets_icd.toyworld import ToyWorld, ToyWorldConfig
from detectors.images import UnreadableImageError, open_image

# The file types Pillow opens that people keep photos in; HF's imagefolder accepts the same ones.
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption")  # looked up in this order when no caption column is named


class SkippedItem(Exception):
    """An item the build leaves out; the message says why and lands in the build report."""


@dataclass
class SourceItem:
    """One image with its caption; ``concepts`` is the ground truth when the source knows it (the toy world)."""

    source_id: str
    image: Image.Image
    caption: str
    concepts: list[dict] | None = None
    image_format: str = "PNG"  # how the build stores the image: PNG, or JPEG for sources that were JPEG


class Source(Protocol):
    name: str
    skipped: list[tuple[str, str]]  # (item, reason) found before any load, e.g. symlinks leaving a folder

    def __len__(self) -> int: ...

    def source_id(self, index: int) -> str:
        """The item's stable name, known without reading it: what the dataset and the skip list record."""
        ...

    def load(self, index: int) -> SourceItem: ...


class SyntheticSource:
    """The toy world's first ``num_images`` samples, with their ground truth boxes."""

    def __init__(self, config: ToyWorldConfig, num_images: int) -> None:
        self.name = "synthetic"
        self.world = ToyWorld(config)
        self.num_images = num_images
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return self.num_images

    def source_id(self, index: int) -> str:
        return f"toyworld/{index}"

    def load(self, index: int) -> SourceItem:
        sample = self.world.sample(index)
        return SourceItem(self.source_id(index), sample.image, sample.caption, sample.concepts)


def read_image(path: Path) -> Image.Image:
    """Decode a file into upright RGB, or raise :class:`SkippedItem` naming what is wrong with it.

    The size check reads only the header, so a decompression bomb is refused before any pixel is decoded;
    Pillow alone only warns between its limit (``PIL.Image.MAX_IMAGE_PIXELS``) and twice that.
    """
    try:
        if path.stat().st_size == 0:
            raise SkippedItem("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # decided below, with the file named
            with Image.open(path) as probe:
                width, height = probe.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit and width * height > limit:
            raise SkippedItem(f"decompression bomb: {width}x{height} pixels is over Pillow's limit of {limit}")
        return open_image(path)
    except (UnreadableImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise SkippedItem(f"unreadable: {type(err).__name__}: {err}") from err


class FolderSource:
    """Images under a folder, captioned by HF imagefolder ``metadata.jsonl``/``.csv`` or a sidecar ``NAME.txt``.

    Metadata rows name the image in ``file_name`` (relative to the metadata file) and the caption in
    ``caption_column`` (``text`` or ``caption`` when not given). Symlinks that lead out of the folder and
    anything that is not a regular file are skipped at scan time, so the build never reads outside ``root``.
    """

    def __init__(self, root: str | Path, caption_column: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        self.name = f"folder:{self.root}"
        self.caption_column = caption_column
        self.skipped: list[tuple[str, str]] = []
        self.files = self._scan()
        self.captions = self._metadata_captions()

    def __len__(self) -> int:
        return len(self.files)

    def _scan(self) -> list[str]:
        real_root = self.root.resolve()
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):  # symlinked folders are listed as folders and never entered
                path = Path(dirpath) / name
                relative = path.relative_to(self.root).as_posix()
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                    self.skipped.append((relative, f"symlink leaves the folder (to {os.readlink(path)})"))
                elif path.exists() and not stat.S_ISREG(path.stat().st_mode):
                    self.skipped.append((relative, "not a regular file"))
                else:
                    files.append(relative)  # a dangling symlink stays, and is reported unreadable at load
        return files

    def _metadata_captions(self) -> dict[str, str]:
        captions: dict[str, str] = {}
        for dirpath, _, filenames in os.walk(self.root):
            for name in METADATA_FILES:
                if name in filenames:
                    captions.update(self._read_metadata(Path(dirpath) / name))
        return captions

    def _read_metadata(self, path: Path) -> dict[str, str]:
        base = path.parent.relative_to(self.root)
        captions = {}
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = (
                csv.DictReader(handle)
                if path.suffix == ".csv"
                else (json.loads(line) for line in handle if line.strip())
            )
            try:
                for line, row in enumerate(rows, start=1):
                    if "file_name" not in row:
                        raise ValueError(f"row {line} has no 'file_name' column naming its image")
                    column = self.caption_column or next((c for c in CAPTION_COLUMNS if c in row), None)
                    if column not in row:
                        raise ValueError(
                            f"row {line} has no caption column {column or CAPTION_COLUMNS}; "
                            f"its columns are {sorted(row)} (choose one with --caption-column)"
                        )
                    captions[(base / row["file_name"]).as_posix()] = str(row[column] or "").strip()
            except (json.JSONDecodeError, ValueError) as err:
                raise ValueError(f"{path}: {err}") from err
        return captions

    def source_id(self, index: int) -> str:
        return self.files[index]

    def load(self, index: int) -> SourceItem:
        relative = self.files[index]
        path = self.root / relative
        image = read_image(path)
        caption = self.captions.get(relative)
        sidecar = path.with_suffix(".txt")
        if caption is None and sidecar.is_file():
            caption = sidecar.read_text(encoding="utf-8-sig", errors="replace").strip()
        image_format = "JPEG" if path.suffix.lower() in {".jpg", ".jpeg", ".jpe", ".jfif"} else "PNG"
        return SourceItem(relative, image, caption or "", image_format=image_format)


class HFSource:
    """Rows of an HF dataset, from ``load_from_disk`` when ``name`` is a folder, else ``load_dataset``."""

    def __init__(self, name: str, image_column: str = "image", caption_column: str = "text", split: str = "train"):
        from datasets import DatasetDict, load_dataset, load_from_disk

        self.name = f"hf:{name}"
        self.split = split
        dataset = load_from_disk(name) if Path(name).is_dir() else load_dataset(name, split=split)
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"{name} has no split '{split}'; it has {list(dataset)} (choose one with --split)")
            dataset = dataset[split]
        for role, column in (("image", image_column), ("caption", caption_column)):
            if column not in dataset.column_names:
                raise ValueError(
                    f"{name} has no {role} column '{column}'; its columns are {dataset.column_names} "
                    f"(choose one with --{role}-column)"
                )
        self.dataset = dataset
        self.image_column, self.caption_column = image_column, caption_column
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def source_id(self, index: int) -> str:
        return f"{self.split}/{index}"

    def load(self, index: int) -> SourceItem:
        source_id = self.source_id(index)
        try:
            row = self.dataset[index]
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # an Image column decodes on access
            raise SkippedItem(f"unreadable row: {type(err).__name__}: {err}") from err
        value = row[self.image_column]
        try:
            if isinstance(value, dict):  # an undecoded Image column: {"bytes", "path"}
                value = value.get("bytes") or value.get("path")
            image = open_image(value)
        except (UnreadableImageError, TypeError, AttributeError) as err:
            raise SkippedItem(f"unreadable image: {err}") from err
        return SourceItem(source_id, image, str(row[self.caption_column] or "").strip())


class PastedSource:
    """Another source's images with concepts pasted on (``datasets_icd.paste``), ``repeats`` versions of each:
    the pasted boxes are the ground truth."""

    def __init__(self, source: Source, config: PasteConfig) -> None:
        self.source = source
        self.paster = Paster(config)
        self.repeats = config.repeats
        self.name = f"{source.name}+paste"
        self.skipped = source.skipped
        self._last: tuple[int, SourceItem] | None = None  # the versions of an image are consecutive: decode it once

    def __len__(self) -> int:
        return len(self.source) * self.repeats

    def source_id(self, index: int) -> str:
        base = self.source.source_id(index // self.repeats)
        return base if self.repeats == 1 else f"{base}#{index % self.repeats}"

    def load(self, index: int) -> SourceItem:
        base = index // self.repeats
        if self._last is None or self._last[0] != base:
            self._last = (base, self.source.load(base))
        item = self._last[1]
        source_id = self.source_id(index)
        image, concepts = self.paster.paste(item.image, source_id)
        return SourceItem(source_id, image, item.caption, concepts, image_format=item.image_format)


def open_source(
    spec: str,
    num_images: int | None = None,
    toy_config: ToyWorldConfig | None = None,
    image_column: str = "image",
    caption_column: str | None = None,
    split: str = "train",
) -> Source:
    """A source from its ``--source`` spec; ``num_images`` sizes the toy world (real sources are cut by the build)."""
    kind, _, target = spec.partition(":")
    if kind == "synthetic" and not target:
        return SyntheticSource(toy_config or ToyWorldConfig(), num_images or 1000)
    if kind == "folder" and target:
        return FolderSource(target, caption_column)
    if kind == "hf" and target:
        return HFSource(target, image_column, caption_column or "text", split)
    raise ValueError(f"unknown source '{spec}': use synthetic, folder:PATH or hf:NAME")
