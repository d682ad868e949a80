"""Measure any detector spec against the ground-truth boxes of an Implicit Concept Dataset: precision, recall and
AP50 per concept (IoU >= 0.5), the share of concept-free images left clean, and images per second.

    detectors evaluate --detector qr --dataset outputs/icd --out outputs/eval/qr
    detectors evaluate --detector yolo:assets/detectors/toy_yolo.safetensors --dataset outputs/icd --out out/yolo

Writes OUT.json and OUT.md (a markdown table).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from tqdm import tqdm

from detectors.base import Detection, Detector
from detectors.metrics import concept_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help='a detector spec: "qr", "ocr", "yolo:PATH", ...')
    parser.add_argument("--dataset", required=True, type=Path, help="an ICD directory written with save_to_disk")
    parser.add_argument("--out", required=True, type=Path, help="report path without extension (.json and .md)")
    parser.add_argument("--num-images", type=int, default=None, help="evaluate only the first N rows")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iou", type=float, default=0.5, help="IoU a detection needs to match a true box")


def evaluate_dataset(detector: Detector, dataset, batch_size: int = 16, iou_threshold: float = 0.5) -> dict:
    """Run ``detector`` over ``dataset`` (rows with ``image`` and ``concepts``); the report as a JSON-ready dict."""
    predicted: list[list[Detection]] = []
    truth_rows: list[list[dict]] = []
    seconds = 0.0
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluate", unit="batch"):
        rows = dataset[start : start + batch_size]
        began = time.perf_counter()
        predicted += detector.detect(rows["image"])
        seconds += time.perf_counter() - began
        truth_rows += rows["concepts"]
    concepts = {}
    for concept in detector.concepts:
        truth = [[tuple(c["box"]) for c in row if c["name"] == concept] for row in truth_rows]
        concepts[concept] = concept_metrics(concept, predicted, truth, iou_threshold).as_dict()
    return {
        "num_images": len(predicted),
        "iou_threshold": iou_threshold,
        "images_per_second": len(predicted) / seconds if seconds else float("nan"),
        "concepts": concepts,
    }


def markdown_table(report: dict) -> str:
    header = "| concept | true boxes | found | precision | recall | AP50 | clean images |\n" + "|---" * 7 + "|"
    lines = [
        f"| {m['concept']} | {m['ground_truth']} | {m['predicted']} | {_fmt(m['precision'])} | {_fmt(m['recall'])} "
        f"| {_fmt(m['ap50'])} | {_fmt(m['clean_image_rate'])} of {m['images_without']} |"
        for m in report["concepts"].values()
    ]
    speed = f"{report['num_images']} images, {report['images_per_second']:.1f} images/s"
    return "\n".join([f"detector `{report.get('detector', '?')}`: {speed}", "", header, *lines, ""])


def write_report(report: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown_table(report))


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    from datasets import load_from_disk

    from detectors.registry import load

    dataset = load_from_disk(str(args.dataset))
    if args.num_images:
        dataset = dataset.select(range(min(args.num_images, len(dataset))))
    report = evaluate_dataset(load(args.detector), dataset, args.batch_size, args.iou)
    report = {"detector": args.detector, "dataset": str(args.dataset), **report}
    write_report(report, args.out)
    print(markdown_table(report))
    return 0
