"""Convert an ultralytics ``.pt`` detection checkpoint into the toolkit's YOLO ``.safetensors`` weights.

    detectors convert-yolo yolov8n.pt --out assets/detectors/yolov8n.safetensors
    detectors train-yolo --dataset outputs/icd --out outputs/yolo --init assets/detectors/yolov8n.safetensors

ONLY CONVERT FILES YOU TRUST. A ``.pt`` file is a pickle: loading it can run any code its author put in it. That
is why ``detectors.load("yolo:...")`` and ``train-yolo --init`` refuse pickles and read only safetensors; this
command is the one place a pickle is opened, once, on the user's say-so, and what it writes is plain tensors plus
the architecture and class names in the header (``detectors.yolo.save_yolo``). The result loads with
``detectors.load("yolo:OUT")`` (rename classes with ``yolo:OUT:person=nudity,...``) and fine-tunes with
``train-yolo --init`` (classes that differ from ``--classes`` get a fresh head; the rest is kept).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from detectors.yolo import import_ultralytics, save_yolo

WARNING = "convert-yolo unpickles its input: use it only on .pt files you trust (your own, or from a source you trust)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="an ultralytics detection checkpoint (.pt) that you trust")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    parser.add_argument(
        "--imgsz",
        type=int,
        default=None,
        help="inference image size (default: the checkpoint's training size, or 640)",
    )


def convert(checkpoint: Path, out: Path, imgsz: int | None = None) -> Path:
    """Unpickle ``checkpoint`` (trusted by the caller) and write its detection model as safetensors weights."""
    import torch

    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must be a .safetensors file")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    # weights_only=False is the point of this command, and why it must only see trusted files
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = (data.get("ema") or data.get("model")) if isinstance(data, dict) else data
    if not isinstance(model, DetectionModel):
        raise ValueError(
            f"{checkpoint}: holds {type(model).__name__}, not an ultralytics detection model "
            "(segmentation, pose and classification checkpoints are not supported)"
        )
    train_args = (data.get("train_args") or {}) if isinstance(data, dict) else {}
    size = imgsz or int(train_args.get("imgsz") or 640)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    return save_yolo(model.float(), out, imgsz=size, metadata={"converted_from": f"{checkpoint.name} sha256:{digest}"})


def run(args: argparse.Namespace) -> int:
    print(f"warning: {WARNING}")
    weights = convert(args.checkpoint, args.out, args.imgsz)
    print(f"wrote {weights}: load it with detectors.load('yolo:{weights}')")
    return 0
