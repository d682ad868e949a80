"""Concept geometry as caption tokens: the Geom-Erasing location bins.

An image is cut into a G x G grid. A box becomes the tokens ``<loc_r_c>`` of every cell between its two
corners (row r, column c, both from the top-left), and a present concept is written into the caption as its
name followed by those tokens: ``"two red circles on a blue background, watermark <loc_0_3> <loc_1_3>"``.
The trainer adds :func:`location_vocabulary` to the tokenizer; the exported negative prompt is built by
:func:`negative_prompt_template` from the cells where the concept was most often seen.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

Box = tuple[float, float, float, float]

DEFAULT_GRID = 4
DEFAULT_CONCEPT_TEMPLATE = "{concept} {tokens}"
DEFAULT_CAPTION_TEMPLATE = "{caption}, {concepts}"
LOCATION_TOKEN = re.compile(r"<loc_(\d+)_(\d+)>")


def location_token(row: int, col: int) -> str:
    return f"<loc_{row}_{col}>"


def location_vocabulary(grid: int = DEFAULT_GRID) -> list[str]:
    """Every location token of a grid, row-major: what the trainer adds to the tokenizer."""
    return [location_token(r, c) for r in range(grid) for c in range(grid)]


def box_cells(box: Box, width: int, height: int, grid: int = DEFAULT_GRID) -> list[tuple[int, int]]:
    """Grid cells (row, col) covered by a pixel box ``(x0, y0, x1, y1)``, row-major.

    A cell counts when the box reaches into it; a box edge lying exactly on a cell border does not claim
    the next cell, so a box of the top-left quarter of the image gets the top-left quarter of the cells.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {box} is empty: expected x0 < x1 and y0 < y1")

    def span(lo: float, hi: float, size: int) -> range:
        lo_cell = int(max(0.0, min(lo, size)) * grid // size)
        hi_cell = int(-(-max(0.0, min(hi, size)) * grid // size)) - 1  # ceil, then the last cell reached
        lo_cell = min(lo_cell, grid - 1)
        return range(lo_cell, max(lo_cell, min(hi_cell, grid - 1)) + 1)

    return [(r, c) for r in span(y0, y1, height) for c in span(x0, x1, width)]


def box_tokens(box: Box, width: int, height: int, grid: int = DEFAULT_GRID) -> list[str]:
    return [location_token(r, c) for r, c in box_cells(box, width, height, grid)]


def concept_phrase(
    concept: str,
    boxes: Iterable[Box],
    width: int,
    height: int,
    grid: int = DEFAULT_GRID,
    template: str = DEFAULT_CONCEPT_TEMPLATE,
) -> str:
    """``"watermark <loc_0_3> <loc_1_3>"``: the concept name and the union of its boxes' cells."""
    cells = sorted({cell for box in boxes for cell in box_cells(box, width, height, grid)})
    tokens = " ".join(location_token(r, c) for r, c in cells)
    return template.format(concept=concept, tokens=tokens).strip()


def geom_caption(
    caption: str,
    concepts: Sequence[dict],
    width: int,
    height: int,
    grid: int = DEFAULT_GRID,
    phrases: dict[str, str] | None = None,
    concept_template: str = DEFAULT_CONCEPT_TEMPLATE,
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
) -> str:
    """The augmented caption: the raw caption, then one phrase per present concept (in first-seen order).

    ``concepts`` are ``{"name", "score", "box"}`` records; ``phrases`` maps a concept name to the existence
    phrase written into the caption (the name itself by default).
    """
    by_name: dict[str, list[Box]] = {}
    for item in concepts:
        by_name.setdefault(item["name"], []).append(tuple(item["box"]))
    if not by_name:
        return caption
    parts = [
        concept_phrase((phrases or {}).get(name, name), boxes, width, height, grid, concept_template)
        for name, boxes in by_name.items()
    ]
    return caption_template.format(caption=caption, concepts=", ".join(parts))


def parse_location_tokens(text: str) -> list[tuple[int, int]]:
    """The (row, col) of every location token in a caption, in order."""
    return [(int(r), int(c)) for r, c in LOCATION_TOKEN.findall(text)]


def frequent_cells(
    concepts_per_image: Iterable[Sequence[dict]],
    sizes: Iterable[tuple[int, int]],
    concept: str,
    grid: int = DEFAULT_GRID,
    top_k: int = 2,
) -> list[tuple[tuple[int, int], int]]:
    """The ``top_k`` cells where ``concept`` appears most often in a dataset, with their counts."""
    counts: Counter[tuple[int, int]] = Counter()
    for items, (width, height) in zip(concepts_per_image, sizes, strict=True):
        cells = {cell for it in items if it["name"] == concept for cell in box_cells(it["box"], width, height, grid)}
        counts.update(cells)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]


def negative_prompt_template(
    concept: str,
    cells: Sequence[tuple[int, int]],
    phrase: str | None = None,
    concept_template: str = DEFAULT_CONCEPT_TEMPLATE,
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
) -> str:
    """``"{prompt}, watermark <loc_0_3> <loc_3_3>"``: filled with the user's prompt at generation.

    The model only saw location tokens after a scene caption, so the negative prompt keeps that form
    (a bare token list is out of distribution and erases much less; see DESIGN.md).
    """
    tokens = " ".join(location_token(r, c) for r, c in sorted(cells))
    phrase_text = concept_template.format(concept=phrase or concept, tokens=tokens).strip()
    return caption_template.format(caption="{prompt}", concepts=phrase_text)


def fill_negative_prompt(template: str, prompt: str) -> str:
    return template.replace("{prompt}", prompt)
