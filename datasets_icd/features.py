"""The column schema of an Implicit Concept Dataset: one row per image. Every builder writes exactly this."""

from __future__ import annotations

from datasets import Features, Image, List, Value

CONCEPT = {
    "name": Value("string"),
    "score": Value("float32"),
    "box": List(Value("float32"), length=4),  # x0, y0, x1, y1 in pixels
}

ICD_FEATURES = Features(
    {
        "image": Image(),
        "caption": Value("string"),  # the raw caption: never names an implicit concept
        "geom_caption": Value("string"),  # caption + existence phrase + location tokens per concept
        "concepts": List(CONCEPT),
        "width": Value("int32"),
        "height": Value("int32"),
        "source_id": Value("string"),  # stable id of the item in its source (index, file path, hub row)
    }
)
