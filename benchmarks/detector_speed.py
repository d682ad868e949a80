"""Images per second of every detector backend on this machine, at 64 px and 512 px toy-world images, and YOLO
in batches against one image at a time.

    python benchmarks/detector_speed.py --out outputs/bench/detector_speed    # writes .json and .md

YOLO reads every image at the size its weights were trained for (the safetensors header: 128 for the toy
weights), as it does in use. Measured results: benchmarks/RESULTS.md, "Detector speed".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from datasets_icd.toyworld import ToyWorld, ToyWorldConfig
from detectors import load

TOY_WEIGHTS = Path(__file__).parents[1] / "assets" / "detectors" / "toy_yolo.safetensors"


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
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/detector_speed"))
    args = parser.parse_args()

    rows = []
    for size in (64, 512):
        world = ToyWorld(ToyWorldConfig(size=size, concept_rates={"watermark": 0.5, "qrcode": 0.3, "text": 0.3}))
        images = [world.sample(i).image for i in range(args.num_images)]
        runs = [(spec, spec, 1) for spec in ("qr", "ocr", "ocr:tesseract", "nudenet")]
        runs += [("yolo (batch 32)", f"yolo:{args.yolo}?device=cpu", 32)]
        runs += [("yolo (one at a time)", f"yolo:{args.yolo}?device=cpu", 1)]
        for name, spec, batch_size in runs:
            speed = images_per_second(load(spec), images, batch_size)
            rows.append({"backend": name, "size": size, "images_per_second": speed})
            print(f"{name:22s} {size:4d} px  {speed:8.1f} images/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    table = ["| backend | 64 px | 512 px |", "|---|---|---|"]
    for name in dict.fromkeys(r["backend"] for r in rows):
        speeds = {r["size"]: r["images_per_second"] for r in rows if r["backend"] == name}
        table.append(f"| {name} | {speeds[64]:.1f} | {speeds[512]:.1f} |")
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
