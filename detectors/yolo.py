"""YOLO: an ultralytics detection model whose class names map to concepts, run in batches on a chosen device.

Weights are the ``.safetensors`` file that ``detectors train-yolo`` (or ``detectors convert-yolo``) writes: the
tensors plus, in the header, the architecture (ultralytics' model yaml as JSON) and the class names. Ultralytics'
own ``.pt`` checkpoints are pickles, which this toolkit never loads from users; the file format keeps that promise
(``convert-yolo`` opens one only when the user asks, for a file they trust).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image

from detectors.base import Detection
from detectors.images import to_rgb

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no hub, no telemetry, no downloads

FORMAT = "implicit-erasure/ultralytics-detect"


def import_ultralytics() -> None:
    """Import ultralytics and undo its replacement of ``PIL.Image.open``: on a file Pillow cannot identify, the
    replacement tries to pip-install an HEIF plugin and then fails with ModuleNotFoundError, so once YOLO was loaded
    an unreadable image crashed a batch instead of being skipped with its reason (``detectors.images``)."""
    from ultralytics.utils import patches

    Image.open = patches._image_open


def save_yolo(model: torch.nn.Module, path: str | Path, imgsz: int, metadata: dict[str, str] | None = None) -> Path:
    """Write an ultralytics ``DetectionModel`` as safetensors with its architecture, class names and the image
    size it was trained at (the size inference should use); ``metadata`` adds header fields (provenance)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # half precision halves the file; ultralytics' own checkpoints store the same fp16 EMA weights
    state = {
        k: (v.half() if v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    names = [model.names[i] for i in range(len(model.names))]
    header = {
        **(metadata or {}),
        "format": FORMAT,
        "architecture": json.dumps(model.yaml),
        "names": json.dumps(names),
        "imgsz": str(imgsz),
    }
    save_file(state, str(path), metadata=header)
    return path


def load_yolo_model(path: str | Path) -> tuple[torch.nn.Module, int]:
    """Rebuild the ``DetectionModel`` from the header and load its tensors; no pickle is involved."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: YOLO weights must be a .safetensors file written by `detectors train-yolo` "
            "(ultralytics .pt checkpoints are pickles and are not loaded; convert one you trust with "
            "`detectors convert-yolo`)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such YOLO weights file")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a YOLO weights file of this toolkit (header format={metadata.get('format')!r})")
    names = json.loads(metadata["names"])
    model = DetectionModel(cfg=json.loads(metadata["architecture"]), nc=len(names), verbose=False)
    model.load_state_dict(load_file(str(path)))
    model.names = dict(enumerate(names))
    return model.eval(), int(metadata["imgsz"])


class YOLODetector:
    """``class_map`` renames model classes to concepts (``{"logo": "watermark"}``); classes it leaves out keep
    their own name. ``device`` is anything torch accepts ("cpu", "cuda:0"); ``None`` picks CUDA when present."""

    def __init__(
        self,
        weights: str | Path,
        class_map: dict[str, str] | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        device: str | None = None,
        batch_size: int = 32,
        imgsz: int | None = None,  # None: the size it was trained at
    ) -> None:
        from ultralytics.models.yolo.detect import DetectionPredictor

        model, trained_imgsz = load_yolo_model(weights)
        names = model.names
        unknown = set(class_map or {}) - set(names.values())
        if unknown:
            raise ValueError(f"{weights}: class_map names {sorted(unknown)}, but the model's classes are {names}")
        self._concept_of = {i: (class_map or {}).get(name, name) for i, name in names.items()}
        self.concepts = tuple(sorted(set(self._concept_of.values())))
        device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        overrides = {
            "conf": conf,
            "iou": iou,
            "device": device,
            "batch": batch_size,
            "imgsz": imgsz or trained_imgsz,
            "verbose": False,
            "save": False,
        }
        self._predictor = DetectionPredictor(overrides=overrides)
        self._predictor.setup_model(model=model, verbose=False)

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        detections: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            batch = [to_rgb(image) for image in images[start : start + self.batch_size]]
            for result in self._predictor(source=batch, stream=False):
                found = result.boxes
                boxes = zip(found.xyxy.tolist(), found.conf.tolist(), found.cls.tolist(), strict=True)
                detections.append([Detection(self._concept_of[int(c)], s, tuple(xyxy)) for xyxy, s, c in boxes])
        return detections
