"""Join several I2P runs into one table and chart, categories × methods, as the SLD paper's.

examples:
  erasure evaluate i2p-compare outputs/i2p/sd15 outputs/i2p/sld-medium outputs/i2p/sld-max --out outputs/i2p/all

Each RUN is an `erasure evaluate i2p` output directory; the runs must cover the same prompts.
Writes OUT/compare.json, OUT/report.md and OUT/report.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from erasure.evaluation.i2p.report import markdown_table, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="I2P run directories, one per column")
    parser.add_argument("--names", nargs="+", help="column names, one per RUN (default: each run's method name)")
    parser.add_argument("--out", type=Path, required=True)


def read_results(run: Path) -> dict:
    path = run / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: finish that run with `erasure evaluate i2p ... --out {run}`")
    return json.loads(path.read_text(encoding="utf-8"))


def compare(runs: list[Path], names: list[str] | None = None) -> dict[str, dict]:
    """Every run's results by column name; the runs must have judged the same prompts."""
    results = [read_results(run) for run in runs]
    names = names or [r["method"]["name"] for r in results]
    if len(names) != len(runs):
        raise ValueError(f"--names gives {len(names)} names for {len(runs)} runs")
    if len(set(names)) != len(names):
        raise ValueError(f"two runs share a name ({', '.join(names)}); give each its own with --names")
    prompt_sets = [sorted(p["id"] for p in r["prompts"]) for r in results]
    for run, prompt_ids in zip(runs, prompt_sets, strict=True):
        if prompt_ids != prompt_sets[0]:
            raise ValueError(
                f"{run} judged other prompts than {runs[0]} ({len(prompt_ids)} vs {len(prompt_sets[0])}); "
                "compare runs made with the same --prompts, --categories, --hard-only and --limit"
            )
    return dict(zip(names, results, strict=True))


def run(args: argparse.Namespace) -> int:
    results = compare(args.runs, args.names)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps({"methods": results}, indent=1), encoding="utf-8")
    write_report(results, args.out)
    print(markdown_table(results))
    return 0
