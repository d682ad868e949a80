import pytest
from hypothesis import given
from hypothesis import strategies as st

from datasets_icd.geometry import (
    box_cells,
    fill_negative_prompt,
    frequent_cells,
    geom_caption,
    location_vocabulary,
    negative_prompt_template,
    parse_location_tokens,
)


@pytest.mark.parametrize(
    ("box", "grid", "cells"),
    [
        ((0, 0, 32, 32), 4, [(0, 0), (0, 1), (1, 0), (1, 1)]),  # top-left quarter, edges on cell borders
        ((48, 0, 64, 10), 4, [(0, 3)]),  # top-right corner
        ((0, 0, 64, 64), 2, [(0, 0), (0, 1), (1, 0), (1, 1)]),
        ((15, 15, 17, 17), 4, [(0, 0), (0, 1), (1, 0), (1, 1)]),  # straddles a grid point
        ((-5, 60, 3, 90), 4, [(3, 0)]),  # clipped to the image
        ((10, 10, 11, 11), 1, [(0, 0)]),
    ],
)
def test_box_cells_table(box, grid, cells):
    assert box_cells(box, 64, 64, grid) == cells


def test_empty_box_and_bad_grid_are_errors():
    with pytest.raises(ValueError, match="empty"):
        box_cells((5, 5, 5, 9), 64, 64)
    with pytest.raises(ValueError, match="grid"):
        box_cells((0, 0, 1, 1), 64, 64, grid=0)


@st.composite
def boxes(draw):
    width = draw(st.integers(8, 512))
    height = draw(st.integers(8, 512))
    x0 = draw(st.integers(0, width - 1))
    y0 = draw(st.integers(0, height - 1))
    x1 = draw(st.integers(x0 + 1, width))
    y1 = draw(st.integers(y0 + 1, height))
    return (x0, y0, x1, y1), width, height, draw(st.integers(1, 8))


@given(boxes())
def test_geom_caption_tokens_match_the_box(case):
    """Every token names a cell the box overlaps, and every cell the box covers with area is named."""
    box, width, height, grid = case
    caption = geom_caption("two red circles", [{"name": "qrcode", "score": 1.0, "box": box}], width, height, grid)
    assert caption.startswith("two red circles, qrcode <loc_")
    cells = parse_location_tokens(caption)
    assert cells == sorted(set(cells))
    cw, ch = width / grid, height / grid
    for r in range(grid):
        for c in range(grid):
            overlap_w = min(box[2], (c + 1) * cw) - max(box[0], c * cw)
            overlap_h = min(box[3], (r + 1) * ch) - max(box[1], r * ch)
            assert ((r, c) in cells) == (overlap_w > 0 and overlap_h > 0), (r, c)


def test_geom_caption_several_concepts_and_none():
    concepts = [
        {"name": "watermark", "score": 1.0, "box": (48, 48, 64, 64)},
        {"name": "text", "score": 0.9, "box": (0, 0, 10, 10)},
        {"name": "watermark", "score": 1.0, "box": (0, 48, 10, 64)},
    ]
    caption = geom_caption("a cat", concepts, 64, 64)
    assert caption == "a cat, watermark <loc_3_0> <loc_3_3>, text <loc_0_0>"
    assert geom_caption("a cat", [], 64, 64) == "a cat"
    assert geom_caption("a cat", concepts[:1], 64, 64, phrases={"watermark": "wm"}) == "a cat, wm <loc_3_3>"


def test_vocabulary_and_negative_prompt():
    vocab = location_vocabulary(3)
    assert len(vocab) == 9 and vocab[0] == "<loc_0_0>" and vocab[-1] == "<loc_2_2>"
    data = [[{"name": "watermark", "box": (48, 48, 64, 64)}], [{"name": "watermark", "box": (40, 48, 64, 64)}], []]
    top = frequent_cells(data, [(64, 64)] * 3, "watermark", top_k=2)
    assert top == [((3, 3), 2), ((3, 2), 1)]
    template = negative_prompt_template("watermark", [cell for cell, _ in top])
    assert template == "{prompt}, watermark <loc_3_2> <loc_3_3>"
    assert fill_negative_prompt(template, "two red circles") == "two red circles, watermark <loc_3_2> <loc_3_3>"
