"""Images per second of every detector backend on this machine, at 64 px and 512 px toy-world images, and YOLO
in batches against one image at a time; then the real-photo YOLO on 512 px and 1024 px images.

    python benchmarks/detector_speed.py --out outputs/bench/detector_speed    # writes .json and .md
    python benchmarks/detector_speed.py --photo-only --out outputs/bench/photo_yolo_speed

YOLO reads every image at the size its weights were trained for (the safetensors header: 128 for the toy
weights, 416 for the photo weights), as it does in use; the photo YOLO is also timed reading images at their own
size (``imgsz`` 512 / 1024), which finds smaller marks at a higher cost. Measured results: benchmarks/RESULTS.md,
"Detector speed" and "Real-photo detector".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from datasets_icd.toyworld import ToyWorld, ToyWorldConfig
from detectors import load

TOY_WEIGHTS = Path(__file__).parents[1] / "assets" / "detectors" / "toy_yolo.safetensors"
PHOTO_WEIGHTS = Path(__file__).parents[1] / "assets" / "detectors" / "photo_yolo.safetensors"
PHOTO_SIZES = (512, 1024)


def images_per_second(detector, images, batch_size: int) -> float:
    detector.detect(images[:1])  # warm-up: sessions, lazy model loads
    began = time.perf_counter()
    for start in range(0, len(images), batch_size):
        detector.detect(images[start : start + batch_size])
    return len(images) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--yolo", type=Path, default=TOY_WEIGHTS, help="YOLO weights (.safetensors)")
    parser.add_argument("--photo-yolo", type=Path, default=PHOTO_WEIGHTS, help="real-photo YOLO weights")
    parser.add_argument("--photo-only", action="store_true", help="time only the real-photo YOLO")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/detector_speed"))
    args = parser.parse_args()

    rows = [] if args.photo_only else backend_rows(args)
    table = [] if args.photo_only else markdown(rows, ("64", "512"))
    photo = photo_rows(args)
    rows += photo
    table += ["", *markdown(photo, tuple(str(size) for size in PHOTO_SIZES))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


def toy_images(size: int, count: int) -> list:
    world = ToyWorld(ToyWorldConfig(size=size, concept_rates={"watermark": 0.5, "qrcode": 0.3, "text": 0.3}))
    return [world.sample(i).image for i in range(count)]


def timed(rows: list[dict], name: str, size: int, spec: str, images: list, batch_size: int) -> None:
    speed = images_per_second(load(spec), images, batch_size)
    rows.append({"backend": name, "size": size, "images_per_second": speed})
    print(f"{name:28s} {size:4d} px  {speed:8.1f} images/s", flush=True)


def backend_rows(args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    for size in (64, 512):
        images = toy_images(size, args.num_images)
        runs = [(spec, spec, 1) for spec in ("qr", "ocr", "ocr:tesseract", "nudenet")]
        runs += [("yolo (batch 32)", f"yolo:{args.yolo}?device=cpu", 32)]
        runs += [("yolo (one at a time)", f"yolo:{args.yolo}?device=cpu", 1)]
        for name, spec, batch_size in runs:
            timed(rows, name, size, spec, images, batch_size)
    return rows


def photo_rows(args: argparse.Namespace) -> list[dict]:
    """The photo YOLO on square toy-world images of 512 and 1024 px (the time does not depend on what they show)."""
    rows: list[dict] = []
    for size in PHOTO_SIZES:
        images = toy_images(size, args.num_images)
        spec = f"yolo:{args.photo_yolo}?device=cpu"
        timed(rows, "photo yolo (batch 8, trained size)", size, spec, images, 8)
        timed(rows, "photo yolo (batch 8, imgsz = image)", size, f"{spec}&imgsz={size}", images, 8)
    return rows


def markdown(rows: list[dict], sizes: tuple[str, ...]) -> list[str]:
    table = ["| backend | " + " | ".join(f"{size} px" for size in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name in dict.fromkeys(r["backend"] for r in rows):
        speeds = {str(r["size"]): r["images_per_second"] for r in rows if r["backend"] == name}
        table.append(f"| {name} | " + " | ".join(f"{speeds[size]:.1f}" for size in sizes) + " |")
    return table


if __name__ == "__main__":
    main()
