"""Train a YOLO detector for watermark, qrcode and text from an ultralytics model yaml (random init: nothing is
downloaded) on the ground-truth boxes of an Implicit Concept Dataset; write safetensors weights and metrics.

    detectors train-yolo --dataset outputs/icd --out outputs/yolo --model yolov8n.yaml --imgsz 64 --epochs 40

Writes OUT/yolo.safetensors (load with ``detectors.load("yolo:OUT/yolo.safetensors")``), OUT/metrics.json and
OUT/metrics.md (precision, recall, AP50 per class on the held-out rows), and ultralytics' run in OUT/train.
``--resume`` continues an interrupted run from its last epoch. ``--init`` fine-tunes weights written by this
command instead of starting from random; ``--negatives`` adds folders of images known to hold none of the
classes (a base model's samples, say), so the detector also learns what is *not* a concept; ``--vae-views``
adds each training image as a generator's VAE gives it back (same labels), so the detector also finds the blurred
concepts a model fine-tuned on them can draw.

Offline by construction: YOLO_OFFLINE stops hub and telemetry calls, ``amp=False`` skips the AMP check (it
downloads a model on GPUs), ``plots=False`` avoids the plot font download, and the model is built from its yaml.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import yaml
from PIL import Image
from tqdm import tqdm

from detectors.yolo import YOLODetector, import_ultralytics, load_yolo_model, save_yolo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

CLASSES = ("watermark", "qrcode", "text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, type=Path, help="an ICD directory written with save_to_disk")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--model",
        default="yolov8n.yaml",
        help="ultralytics architecture yaml (default yolov8n.yaml); with --init, the init weights' own architecture",
    )
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), help="concepts to learn, in class order")
    parser.add_argument("--imgsz", type=int, default=64, help="training and inference image size")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--hours", type=float, default=None, help="train for this long instead (ultralytics fits the epochs to it)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="last rows held out for validation")
    parser.add_argument("--num-images", type=int, default=None, help="use only the first N rows")
    parser.add_argument("--device", default=None, help='"cpu", "0" for the first GPU; default: GPU when present')
    parser.add_argument("--workers", type=int, default=2, help="data loader workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue OUT/train from its last checkpoint")
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (.safetensors from train-yolo or convert-yolo), not random",
    )
    parser.add_argument(
        "--negatives",
        type=Path,
        nargs="+",
        default=[],
        help="folders of images holding none of the classes, trained on with empty labels "
        "(e.g. a base model's samples: its rendering artefacts are not watermarks)",
    )
    parser.add_argument(
        "--vae-views",
        default=None,
        metavar="MODEL",
        help="also train on every training image encoded and decoded by this diffusers pipeline's VAE, with the "
        "same labels: a model draws concepts no sharper than its VAE, and the detector must still find them",
    )


def export_yolo_layout(dataset, out: Path, classes: list[str], val_fraction: float) -> Path:
    """Write the images and YOLO label files ultralytics reads, and the data yaml naming them.

    Idempotent: an image already exported is not written again, so a resumed run reuses the export."""
    class_of = {name: i for i, name in enumerate(classes)}
    num_val = max(1, round(len(dataset) * val_fraction))
    splits = ["train"] * (len(dataset) - num_val) + ["val"] * num_val
    for index, (row, split) in enumerate(tqdm(zip(dataset, splits, strict=True), total=len(dataset), desc="export")):
        image_path = out / "images" / split / f"{index:07d}.png"
        label_path = out / "labels" / split / f"{index:07d}.txt"
        if label_path.exists():
            continue
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        image = row["image"].convert("RGB")
        w, h = image.size
        lines = []
        for concept in row["concepts"]:
            if concept["name"] not in class_of:
                continue
            x0, y0, x1, y1 = concept["box"]
            lines.append(
                f"{class_of[concept['name']]} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
            )
        image.save(image_path)
        label_path.write_text("\n".join(lines) + ("\n" if lines else ""))
    data_yaml = out / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump({"path": str(out.resolve()), "train": "images/train", "val": "images/val", "names": classes})
    )
    return data_yaml


def add_negatives(folders: list[Path], out: Path) -> int:
    """Copy every image of ``folders`` into the training split with an empty label file; returns the count.

    Idempotent like the export, so a resumed run reuses them."""
    count = 0
    for number, folder in enumerate(folders):
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not paths:
            raise SystemExit(f"{folder}: no images to use as negatives")
        for path in paths:
            stem = f"neg{number}-{path.stem}"
            label_path = out / "labels" / "train" / f"{stem}.txt"
            if not label_path.exists():
                Image.open(path).convert("RGB").save(out / "images" / "train" / f"{stem}.png")
                label_path.write_text("")
            count += 1
    return count


def add_vae_views(model: str, out: Path, batch_size: int = 64) -> int:
    """Write a ``vae-`` twin of every exported training image (not of negatives) with the same label file.

    Idempotent like the export, so a resumed run reuses them."""
    from detectors.vae_views import load_vae, reconstruct

    labels = out / "labels" / "train"
    todo = sorted(p for p in labels.glob("*.txt") if not p.name.startswith(("neg", "vae-")))
    todo = [p for p in todo if not (labels / f"vae-{p.name}").exists()]
    vae = load_vae(model) if todo else None
    for start in tqdm(range(0, len(todo), batch_size), desc="vae views"):
        batch = todo[start : start + batch_size]
        images = [Image.open(out / "images" / "train" / f"{p.stem}.png") for p in batch]
        for label, view in zip(batch, reconstruct(vae, images), strict=True):
            view.save(out / "images" / "train" / f"vae-{label.stem}.png")
            (labels / f"vae-{label.name}").write_text(label.read_text())
    return sum(1 for _ in labels.glob("vae-*.txt"))


def _init_checkpoint(weights: Path, out: Path, classes: list[str]) -> tuple[str, str]:
    """Ultralytics fine-tunes from a ``pretrained`` checkpoint path and a model yaml: write both from our
    safetensors. Weights of other classes (converted COCO weights, say) keep every layer but the class branch of
    the head, which starts fresh; the same classes in another order are refused, as a slip that would swap labels."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    model, _ = load_yolo_model(weights)
    # The init's own architecture, whatever --model says. Ultralytics reads a yaml's scale (n, s, ...) from its file
    # name, and takes the first of ``scales`` when the name has none: keep the name and only the init's scale.
    spec = {**model.yaml, "nc": len(classes)}
    if spec.get("scale") in spec.get("scales", {}):
        spec["scales"] = {spec["scale"]: spec["scales"][spec["scale"]]}
    names = list(model.names.values())
    if names != list(classes):
        if sorted(names) == sorted(classes):
            raise SystemExit(f"{weights}: classes {names} differ from --classes {classes}: give them in that order")
        print(f"{weights}: classes {names} are not --classes {classes}: the class branch of the head starts fresh")
        # Hand ultralytics a model already of the new classes: left to itself it keeps the old class branch's
        # width, which the architecture in our header could not rebuild.
        fresh = DetectionModel(cfg=spec, nc=len(classes), verbose=False)
        state = fresh.state_dict()
        state.update({k: v for k, v in model.float().state_dict().items() if k in state and v.shape == state[k].shape})
        fresh.load_state_dict(state)
        fresh.names = dict(enumerate(classes))
        model = fresh
    out.mkdir(parents=True, exist_ok=True)
    path = out / "init.pt"
    torch.save({"model": model.float()}, path)
    architecture = out / f"init-{Path(spec.get('yaml_file', 'yolo.yaml')).name}"
    architecture.write_text(yaml.safe_dump(spec))
    return str(path), str(architecture)


def run(args: argparse.Namespace) -> int:
    from datasets import load_from_disk

    import_ultralytics()
    from ultralytics import YOLO

    from detectors.evaluate import evaluate_dataset, write_report

    dataset = load_from_disk(str(args.dataset))
    if "concepts" not in dataset.column_names or "image" not in dataset.column_names:
        raise SystemExit(f"{args.dataset}: not an ICD dataset (needs 'image' and 'concepts' columns)")
    if args.num_images:
        dataset = dataset.select(range(min(args.num_images, len(dataset))))
    data_yaml = export_yolo_layout(dataset, args.out / "data", args.classes, args.val_fraction)
    if args.negatives:
        print(f"{add_negatives(args.negatives, args.out / 'data')} negative images added to the training split")
    if args.vae_views:
        print(f"{add_vae_views(args.vae_views, args.out / 'data')} VAE views added to the training split")
    last = args.out / "train" / "weights" / "last.pt"
    with _no_font_probe():
        if args.resume and last.is_file():
            model = YOLO(last)  # our own checkpoint from the interrupted run
            model.train(resume=True)
        else:
            # False: the yaml's random init; a path: fine-tune those weights (no warm-up from them)
            init, architecture = False, args.model
            if args.init is not None:
                init, architecture = _init_checkpoint(args.init, args.out, args.classes)
            model = YOLO(architecture, task="detect")
            model.train(
                data=str(data_yaml),
                epochs=args.epochs,
                **({} if args.hours is None else {"time": args.hours}),
                imgsz=args.imgsz,
                batch=args.batch,
                device=args.device,
                workers=args.workers,
                seed=args.seed,
                project=str(args.out.resolve()),
                name="train",
                exist_ok=True,
                pretrained=init,
                **({} if args.init is None else {"warmup_epochs": 0}),
                amp=False,
                plots=False,
                mosaic=0.0,  # at 64 px a mosaic shrinks the small concepts below what the stride can see
                verbose=False,
            )
    weights = save_yolo(model.model, args.out / "yolo.safetensors", imgsz=args.imgsz)
    num_val = max(1, round(len(dataset) * args.val_fraction))
    held_out = dataset.select(range(len(dataset) - num_val, len(dataset)))
    report = evaluate_dataset(YOLODetector(weights, device=args.device and _torch_device(args.device)), held_out)
    report = {"detector": f"yolo:{weights}", **report}
    report["command"] = "detectors train-yolo " + " ".join(f"{k}={v}" for k, v in vars(args).items() if k != "_run")
    write_report(report, args.out / "metrics")
    print(json.dumps(report["concepts"], indent=1))
    return 0


def _no_font_probe():
    """Ultralytics' dataset check asks GitHub for Arial.ttf (a plot font) whatever ``plots`` says; with plots
    off nothing draws text, so the probe is skipped rather than left to time out offline."""
    return mock.patch("ultralytics.data.utils.check_font", return_value=None)


def _torch_device(device: str) -> str:
    """Ultralytics says "0" for the first GPU; torch says "cuda:0"."""
    return f"cuda:{device}" if device.isdigit() else device
