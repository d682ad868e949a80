"""The report beside a built dataset: how often each concept occurs, where, and how big (markdown + PNG), a sheet
of sample images with their boxes drawn, and how many images lack a caption.

Where a concept sits is what Geom-Erasing learns, so the box-centre heatmaps show whether the data has
geometry to learn at all; the frequent cells are the ones the exported negative prompt will name. The sample sheet
is where a user sees whether the detectors found what they should on *their* images; an image without a caption
teaches the model its concepts with no scene to tie them to, so those are counted and warned about.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from datasets import Dataset
from matplotlib.figure import Figure  # the object API draws with Agg and never touches a display
from PIL import Image, ImageDraw

from datasets_icd.geometry import frequent_cells, location_token


def concept_stats(dataset: Dataset, grid: int) -> dict:
    """Per concept: images holding it, their share, box count, and the most frequent grid cells."""
    table = dataset.select_columns(["concepts", "width", "height"])
    rows = table.to_list() if len(table) else []
    names = sorted({c["name"] for row in rows for c in row["concepts"]})
    sizes = [(row["width"], row["height"]) for row in rows]
    stats = {}
    for name in names:
        images = sum(any(c["name"] == name for c in row["concepts"]) for row in rows)
        top = frequent_cells([row["concepts"] for row in rows], sizes, name, grid, top_k=4)
        stats[name] = {
            "images": images,
            "rate": images / len(rows),
            "boxes": sum(c["name"] == name for row in rows for c in row["concepts"]),
            "frequent_cells": [{"token": location_token(*cell), "images": n} for cell, n in top],
        }
    return {"images": len(rows), "concepts": stats}


def _geometry(dataset: Dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per concept: box centres and box sides (sqrt of area), both as fractions of the image."""
    centres, sides = defaultdict(list), defaultdict(list)
    for row in dataset.select_columns(["concepts", "width", "height"]).to_list():
        w, h = row["width"], row["height"]
        for c in row["concepts"]:
            x0, y0, x1, y1 = c["box"]
            centres[c["name"]].append(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h))
            sides[c["name"]].append(np.sqrt((x1 - x0) * (y1 - y0) / (w * h)))
    return {name: (np.array(centres[name]), np.array(sides[name])) for name in sorted(centres)}


def plot_geometry(dataset: Dataset, path: Path, grid: int) -> None:
    """One row per concept: a heatmap of box centres (image coordinates, the token grid drawn) and box sizes."""
    geometry = _geometry(dataset)
    rows = max(1, len(geometry))
    fig = Figure(figsize=(8, 3.6 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    if not geometry:
        axes[0, 0].text(0.5, 0.5, "no concepts found", ha="center", va="center")
        axes[0, 1].set_visible(False)
    for (heat, hist), (name, (centres, sides)) in zip(axes, geometry.items(), strict=False):
        counts, _, _ = np.histogram2d(centres[:, 1], centres[:, 0], bins=4 * grid, range=[[0, 1], [0, 1]])
        image = heat.imshow(counts, extent=(0, 1, 1, 0), cmap="magma")
        heat.set_xticks(np.linspace(0, 1, grid + 1))
        heat.set_yticks(np.linspace(0, 1, grid + 1))
        heat.grid(color="white", alpha=0.4)
        heat.set_title(f"{name}: box centres ({len(centres)} boxes)")
        fig.colorbar(image, ax=heat, fraction=0.046)
        hist.hist(sides, bins=20, range=(0, 1), color="tab:blue")
        hist.set_xlabel("box side / image side (sqrt of area share)")
        hist.set_ylabel("boxes")
        hist.set_title(f"{name}: box sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


SHEET_COLOURS = {"watermark": (230, 40, 40), "text": (40, 110, 240), "qrcode": (40, 200, 80)}
OTHER_COLOUR = (250, 170, 20)


def sample_sheet(dataset: Dataset, path: Path, count: int = 16, tile: int = 256) -> None:
    """A grid of ``count`` images, those with concepts first, each box drawn in its concept's colour and named."""
    table = dataset.select_columns(["concepts"]).to_list() if len(dataset) else []
    with_concepts = [i for i, row in enumerate(table) if row["concepts"]]
    without = [i for i, row in enumerate(table) if not row["concepts"]]
    chosen = (with_concepts[: count - min(len(without), count // 4)] + without)[:count]
    columns = max(1, min(4, len(chosen)))
    sheet = Image.new("RGB", (columns * tile, max(1, -(-len(chosen) // columns)) * tile), "white")
    for slot, index in enumerate(sorted(chosen)):
        row = dataset[index]
        image = row["image"].convert("RGB")
        scale = tile / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        draw = ImageDraw.Draw(image)
        for concept in row["concepts"]:
            colour = SHEET_COLOURS.get(concept["name"], OTHER_COLOUR)
            box = [v * scale for v in concept["box"]]
            draw.rectangle(box, outline=colour, width=2)
            draw.text((box[0] + 2, max(0, box[1] - 11)), f"{concept['name']} {concept['score']:.2f}", fill=colour)
        sheet.paste(image, ((slot % columns) * tile, (slot // columns) * tile))
    sheet.save(path)


def write_report(dataset: Dataset, out: Path, skipped: list[dict], grid: int, title: str) -> dict:
    """``out/report.md`` and ``out/report.png``; returns the statistics it shows."""
    stats = concept_stats(dataset, grid)
    stats["uncaptioned"] = sum(not caption.strip() for caption in dataset["caption"]) if len(dataset) else 0
    plot_geometry(dataset, out / "report.png", grid)
    sample_sheet(dataset, out / "samples.png")
    lines = [
        f"# {title}",
        "",
        f"{stats['images']} images, {len(skipped)} skipped, {grid}x{grid} location grid.",
        "",
    ]
    if stats["uncaptioned"]:
        lines += [
            f"**Warning: {stats['uncaptioned']} of {stats['images']} images have no caption**: their training "
            "caption is only the concept tokens. Add captions (metadata.jsonl, NAME.txt, --caption-column) or "
            "write them with --captioner MODEL_DIR.",
            "",
        ]
    lines += [
        "| concept | images | rate | boxes | most frequent cells (images) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, s in stats["concepts"].items():
        cells = ", ".join(f"`{c['token']}` ({c['images']})" for c in s["frequent_cells"])
        lines.append(f"| {name} | {s['images']} | {s['rate']:.1%} | {s['boxes']} | {cells} |")
    lines += [
        "",
        "![box centres and sizes per concept](report.png)",
        "",
        "![sample images, boxes drawn](samples.png)",
        "",
    ]
    if skipped:
        lines += ["## Skipped", "", "| item | reason |", "|---|---|"]
        lines += [f"| `{s['item']}` | {s['reason'].replace('|', '/')} |" for s in skipped]
        lines.append("")
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return stats
