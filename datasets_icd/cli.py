"""icd: build Implicit Concept Datasets (images + captions + concept existence and geometry tokens).

examples:
  icd build --source synthetic --num-images 2000 --out outputs/icd
  icd build --source folder:PATH --detectors qr ocr --out outputs/icd-folder
"""

from __future__ import annotations

import sys

from erasure.cli.kit import Commands, run_cli

COMMANDS: Commands = {"build": ("datasets_icd.build_command", "build an Implicit Concept Dataset from a source")}


def main(argv: list[str] | None = None) -> int:
    return run_cli("icd", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
