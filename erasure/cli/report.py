"""Write OUT_DIR/report.html: per method its numbers, its images beside the other methods' images of the same prompt
and seed, the detector boxes drawn on them, and filters for flagged and unflagged images.

examples:
  erasure report outputs/icr/toy_watermark      # an `erasure evaluate icr` out_dir
  erasure report outputs/i2p/sld-medium         # an `erasure evaluate i2p` --out
  erasure report outputs/demo                   # a `python -m erasure.toy.demo` --out

The page is self-contained: open it in a browser from its folder; it shows the images beside it and loads nothing
else. The evaluations write it themselves when they finish.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="an ICR, demo or I2P output folder")


def run(args: argparse.Namespace) -> int:
    from erasure.evaluation.report import write_html_report

    print(f"report: {write_html_report(args.out_dir)}")
    return 0
