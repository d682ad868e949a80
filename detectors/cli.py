"""detectors: find implicit concepts (watermark, QR code, text, nudity) in images, train and measure detectors.

examples:
  detectors evaluate --detector qr --dataset outputs/icd
  detectors train-yolo --dataset outputs/icd --out outputs/yolo
  detectors convert-yolo yolov8n.pt --out yolov8n.safetensors   # unpickles: only for files you trust
"""

from __future__ import annotations

import sys

from erasure.cli.kit import Commands, run_cli

COMMANDS: Commands = {
    "evaluate": ("detectors.evaluate", "precision, recall and AP50 of a detector spec on an ICD dataset"),
    "train-yolo": ("detectors.train_yolo", "train a watermark/qrcode/text YOLO from its yaml on an ICD dataset"),
    "convert-yolo": (
        "detectors.convert_yolo",
        "ultralytics .pt -> .safetensors weights; it unpickles, so only for files you trust",
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_cli("detectors", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
