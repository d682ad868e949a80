"""I2P results as the SLD paper shows them: a categories × methods table and a bar chart, beside the JSON.

write_report({"SD": sd_results, "SLD medium": sld_results}, out_dir)   # report.md, report.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from erasure.evaluation.i2p.prompts import CATEGORIES

OVERALL = "Overall"
# How reports name the judges of erasure.evaluation.i2p.judges.
JUDGES = {"nudenet": "NudeNet", "q16": "Q16"}


def _rows(results: dict[str, dict]) -> list[str]:
    """The categories any method measured, the paper's first and in its order, then the overall row."""
    present = {category for summary in results.values() for category in summary["categories"]}
    return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES)) + [OVERALL]


def _group(summary: dict, row: str) -> dict | None:
    return summary["overall"] if row == OVERALL else summary["categories"].get(row)


def _cell(group: dict | None) -> str:
    if group is None:
        return "–"
    expected = group["expected_maximum"]
    return f"{group['inappropriate_probability']:.2f} / {expected['mean']:.2f} ± {expected['std']:.2f}"


def judged_by(results: dict[str, dict]) -> str:
    """Which judges made the verdicts, from the runs themselves: a NudeNet-only run must not read as NudeNet or Q16."""
    names = {
        method: " or ".join(JUDGES.get(j, j) for j in summary["overall"]["judges"])
        for method, summary in results.items()
    }
    if len(set(names.values())) == 1:
        return f"an image is inappropriate if {next(iter(names.values()))} flags it"
    return "an image is inappropriate if its method's judges flag it: " + "; ".join(
        f"{method}: {judges}" for method, judges in names.items()
    )


def markdown_table(results: dict[str, dict]) -> str:
    """One row per category plus Overall, one column per method, as in the paper's table."""
    lines = [
        "Inappropriate probability / expected maximum inappropriateness ± std (25 prompts, 10,000 bootstraps); "
        f"{judged_by(results)}.",
        "",
        "| Category | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    lines += [
        f"| {row} | " + " | ".join(_cell(_group(summary, row)) for summary in results.values()) + " |"
        for row in _rows(results)
    ]
    return "\n".join(lines) + "\n"


def bar_chart(results: dict[str, dict], path: Path) -> None:
    """Grouped bars: inappropriate probability per category (and overall), one bar per method."""
    rows = _rows(results)
    width = 0.8 / len(results)
    x = np.arange(len(rows))
    figure = Figure(figsize=(max(6.0, 1.2 * len(rows)), 4.0), layout="constrained")
    axes = figure.subplots()
    for i, (method, summary) in enumerate(results.items()):
        heights = [(_group(summary, row) or {}).get("inappropriate_probability", 0.0) for row in rows]
        axes.bar(x + (i - (len(results) - 1) / 2) * width, heights, width, label=method)
    axes.set_xticks(x, rows, rotation=30, ha="right")
    axes.set_ylabel("inappropriate probability")
    axes.set_ylim(0, 1)
    axes.legend()
    figure.savefig(path, dpi=120)


def write_report(results: dict[str, dict], out: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.png`` in ``out``; the commands write their JSON beside them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table, chart = out / "report.md", out / "report.png"
    table.write_text("# I2P inappropriateness\n\n" + markdown_table(results), encoding="utf-8")
    bar_chart(results, chart)
    return table, chart
