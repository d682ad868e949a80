"""A self-contained HTML page of an evaluation: per method its numbers, then its images laid out so that the same
prompt and seed line up across methods, the detector boxes drawn on them, and filters for flagged / unflagged images.

    erasure report outputs/icr/toy_watermark        # writes outputs/icr/toy_watermark/report.html

It reads what the evaluations leave on disk: an ICR folder (``icr.json``, per cell ``detections.jsonl`` and
``images/``), the demo's folder (its ICR in ``icr/``) or an I2P run (``results.json``, ``judgments/``, ``images/``).
Prompts are arbitrary text (I2P's come from the web), so every text is escaped, and the page's Content-Security-Policy
lets it load only the images beside it and run only its own script: nothing from outside its folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from erasure.evaluation.i2p.report import JUDGES, judged_by

REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Tile:
    """One image: whether the detector (or a judge) flagged it, the boxes it found, and what the judges said."""

    image: Path
    flagged: bool
    boxes: list[dict]  # detection records: {"name", "score", "box": [x0, y0, x1, y1]} in image pixels
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """The images of one prompt (and seed), one per column: a method of an ICR table, an image of an I2P prompt."""

    prompt: str
    about: str  # the seed, or the prompt's categories and rate
    tiles: dict[str, Tile]


def _records(cell_dir: Path) -> list[dict]:
    """A cell's ``detections.jsonl`` by image index (a later line of an index wins, as in erasure.evaluation.icr)."""
    path = cell_dir / "detections.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    records = {record["index"]: record for record in map(json.loads, filter(str.strip, lines))}
    return [records[i] for i in sorted(records)]


def icr_rows(icr_dir: Path, results: Mapping[str, dict]) -> list[Row]:
    """One row per prompt and seed of an ICR folder, in image order, holding each cell's image of that pair."""
    rows: dict[tuple[str, int], Row] = {}
    for cell, summary in results.items():
        for record in _records(icr_dir / cell):
            image = icr_dir / cell / "images" / f"{record['index']:05d}.png"
            if record["index"] >= summary["n"] or not image.is_file():
                continue
            key = (record["prompt"], record["seed"])
            row = rows.setdefault(key, Row(record["prompt"], f"seed {record['seed']}", {}))
            row.tiles[cell] = Tile(image, bool(record["detections"]), record["detections"])
    return list(rows.values())


def i2p_rows(run_dir: Path, results: dict) -> list[Row]:
    """One row per judged prompt of an I2P run, its images as columns, each with the verdicts of every judge."""
    rows = []
    for prompt in results["prompts"]:
        judgment = json.loads((run_dir / "judgments" / f"{prompt['id']:05d}.json").read_text(encoding="utf-8"))
        tiles = {}
        for k, image in enumerate(judgment["images"]):
            verdicts = {name: per_image[k] for name, per_image in judgment["judges"].items()}
            flagged_by = {name: v for name, v in verdicts.items() if v["flagged"]}
            notes = [" ".join([JUDGES.get(name, name), *_score(v.get("score"))]) for name, v in flagged_by.items()]
            boxes = [box for v in verdicts.values() for box in v.get("detections", [])]
            tiles[f"image {k + 1}"] = Tile(run_dir / image, bool(flagged_by), boxes, notes)
        about = f"{', '.join(prompt['categories'])}; {100 * prompt['rate']:.0f}% of its images inappropriate"
        rows.append(Row(prompt["prompt"], about, tiles))
    return rows


def _score(score: float | None) -> list[str]:
    return [] if score is None else [f"{score:.2f}"]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """An HTML table of plain texts, escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="numbers"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _boxes_svg(tile: Tile, width: int, height: int) -> str:
    """The tile's boxes as an SVG in the image's own pixel coordinates, stretched over the image."""
    size = height / 12
    parts = []
    for box in tile.boxes:
        x0, y0, x1, y1 = box["box"]
        # the score on the box's edge, inside the image (the caption names the concept)
        x, anchor = (x1, "end") if x0 > width / 2 else (x0, "start")
        y = y0 + size if y0 < size else y0 - size / 4
        parts.append(
            f'<rect x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" height="{y1 - y0:g}">'
            f"<title>{escape(box['name'])} {box['score']:.2f}</title></rect>"
            f'<text x="{x:g}" y="{y:g}" font-size="{size:g}" text-anchor="{anchor}">{box["score"]:.2f}</text>'
        )
    return f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" aria-hidden="true">{"".join(parts)}</svg>'


def _tile_html(tile: Tile, page_dir: Path) -> str:
    with Image.open(tile.image) as image:
        width, height = image.size
    src = escape(quote(tile.image.relative_to(page_dir).as_posix()))
    boxes = ", ".join(f"{b['name']} {b['score']:.2f}" for b in tile.boxes)
    caption = "; ".join([*tile.notes, *([boxes] if boxes else [])]) or ("flagged" if tile.flagged else "clean")
    return (
        f'<td class="tile" data-flagged="{str(tile.flagged).lower()}"><figure><div class="frame">'
        f'<img src="{src}" width="{width}" height="{height}" alt="{escape(caption)}" loading="lazy">'
        f"{_boxes_svg(tile, width, height)}</div><figcaption>{escape(caption)}</figcaption></figure></td>"
    )


def _grid(columns: list[str], rows: list[Row], page_dir: Path) -> str:
    """Rows of images, one column per method (or image), with the filter that hides flagged or unflagged ones."""
    head = "<th>prompt</th>" + "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        f'<tr><th class="prompt">{escape(row.prompt)}<span class="about">{escape(row.about)}</span></th>'
        + "".join(_tile_html(row.tiles[c], page_dir) if c in row.tiles else "<td></td>" for c in columns)
        + "</tr>"
        for row in rows
    )
    choices = "".join(
        f'<label><input type="radio" name="show" value="{value}"{" checked" if value == "all" else ""}> {text}</label>'
        for value, text in (("all", "all images"), ("flagged", "flagged only"), ("unflagged", "unflagged only"))
    )
    return (
        f'<form class="filter">{choices} <output id="shown"></output></form>'
        f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _icr_body(icr_dir: Path, page_dir: Path) -> tuple[str, str]:
    payload = json.loads((icr_dir / "icr.json").read_text(encoding="utf-8"))
    results = payload["results"]
    numbers = [
        [
            name,
            _percent(r["icr"]),
            f"[{_percent(r['ci95'][0])}, {_percent(r['ci95'][1])}]",
            f"{r['flagged']} of {r['n']}",
            _percent(r["fidelity"]) if "fidelity" in r else "–",
            f"{r['fid']:.2f}" if "fid" in r else "–",
        ]
        for name, r in results.items()
    ]
    header = ["method", "ICR", "95% Wilson interval", "flagged images", "prompt fidelity", "toy FID"]
    intro = (
        f"<p>Concept <b>{escape(payload['concept'])}</b>, detector <code>{escape(payload['detector'])}</code>. "
        "Each row is one held-out prompt and seed; each column a method; a box is a detection with its score.</p>"
    )
    grid = _grid(list(results), icr_rows(icr_dir, results), page_dir)
    return f"Implicit concept ratio: {payload['concept']}", intro + _table(header, numbers) + grid


def _i2p_body(run_dir: Path) -> tuple[str, str]:
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    name = results["method"]["name"]
    judges = list(results["overall"]["judges"])
    groups = {**results["categories"], "Overall": results["overall"]}
    numbers = [
        [
            category,
            str(group["prompts"]),
            str(group["images"]),
            f"{group['inappropriate_probability']:.2f}",
            f"{group['expected_maximum']['mean']:.2f} ± {group['expected_maximum']['std']:.2f}",
            *(_percent(group["judges"][j]) for j in judges),
        ]
        for category, group in groups.items()
    ]
    header = ["category", "prompts", "images", "inappropriate probability", "expected maximum ± std"]
    header += [f"flagged by {JUDGES.get(j, j)}" for j in judges]
    intro = f"<p>Method <b>{escape(name)}</b>: {escape(judged_by({name: results}))}.</p>"
    rows = i2p_rows(run_dir, results)
    columns = list(dict.fromkeys(c for row in rows for c in row.tiles))
    return f"I2P inappropriateness: {name}", intro + _table(header, numbers) + _grid(columns, rows, run_dir)


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
table.numbers td:not(:first-child) { text-align: right; }
th.prompt { max-width: 16rem; font-weight: normal; white-space: pre-wrap; overflow-wrap: anywhere; }
.about { display: block; color: #777; font-size: 12px; }
figure { margin: 0; }
.frame { position: relative; }
.frame img { display: block; width: 12rem; height: auto; image-rendering: pixelated; }
.frame svg { position: absolute; inset: 0; width: 100%; height: 100%; overflow: hidden; }
svg rect { fill: none; stroke: #f22; stroke-width: 2px; vector-effect: non-scaling-stroke; }
svg text { fill: #fff; stroke: #f22; stroke-width: 3px; paint-order: stroke; vector-effect: non-scaling-stroke; }
figcaption { font-size: 12px; max-width: 12rem; overflow-wrap: anywhere; }
td.tile[data-flagged="true"] figcaption { color: #c00; }
td.off { visibility: hidden; }
.filter label { margin-right: 1rem; }
"""

SCRIPT = """
"use strict";
const rows = [...document.querySelectorAll("table.grid tbody tr")];
function show(which) {
  let shown = 0;
  for (const row of rows) {
    let any = false;
    for (const tile of row.querySelectorAll("td.tile")) {
      const match = which === "all" || tile.dataset.flagged === String(which === "flagged");
      tile.classList.toggle("off", !match);
      any = any || match;
    }
    row.hidden = !any;
    shown += any ? 1 : 0;
  }
  document.getElementById("shown").textContent = `${shown} of ${rows.length} rows`;
}
for (const input of document.querySelectorAll("input[name=show]")) {
  input.addEventListener("change", () => show(input.value));
}
show("all");
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only the page's own style and script run (by hash), images only from its folder: an injected tag would do nothing.
CSP = (
    f"default-src 'none'; img-src 'self'; style-src {_sha256(STYLE)}; script-src {_sha256(SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
{body}
<script>{script}</script>
</body>
</html>
"""


def write_html_report(out_dir: str | Path) -> Path:
    """``OUT_DIR/report.html`` of an ICR folder, the demo's folder or an I2P run; raises if it is none of them."""
    out = Path(out_dir)
    if (out / "icr.json").is_file():
        title, body = _icr_body(out, out)
    elif (out / "icr" / "icr.json").is_file():  # the demo's folder
        title, body = _icr_body(out / "icr", out)
    elif (out / "results.json").is_file() and (out / "judgments").is_dir():
        title, body = _i2p_body(out)
    else:
        raise FileNotFoundError(
            f"{out}: no icr.json, icr/icr.json or results.json with judgments/: not the output of "
            "`erasure evaluate icr`, the demo or `erasure evaluate i2p`"
        )
    page = out / REPORT_NAME
    page.write_text(
        PAGE.format(csp=escape(CSP), title=escape(title), style=STYLE, body=body, script=SCRIPT), encoding="utf-8"
    )
    return page
