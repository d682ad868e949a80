"""Implicit concept ratio (ICR) of methods: how often a detector finds the concept in each method's images.

    erasure evaluate icr --config recipes/icr_toy_watermark.yaml [key=value ...]

A table of cells (base model or training run, negative prompt, SLD preset), each sampled from the same held-out
prompt and seed pairs; images and detections stay on disk, so a killed evaluation resumes where it stopped. Writes
OUT/icr.json, icr.md and report.html (the config's fields: erasure.evaluation.icr.IcrConfig).
"""

from __future__ import annotations

from pathlib import Path

from erasure.evaluation.icr import IcrConfig, evaluate, markdown_table


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="YAML evaluation config (see IcrConfig's fields)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. num_images=50")


def run(args) -> int:
    from erasure.config import load_config
    from erasure.evaluation.report import write_html_report

    config = load_config(IcrConfig, args.config, args.overrides)
    results = evaluate(config)
    print(markdown_table(config.concept, results))
    print(f"results: {Path(config.out_dir) / 'icr.json'}")
    print(f"report: {write_html_report(config.out_dir)}")
    return 0
