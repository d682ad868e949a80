"""How well toy base models follow prompts: checker fidelity and toy FID, no detector needed.

    .venv/bin/python benchmarks/toy_base_quality.py assets/toy-sd [more model dirs] --out outputs/quality.json \
        --detector yolo:assets/detectors/toy_yolo.safetensors
    .venv/bin/python benchmarks/toy_base_quality.py assets/toy-sd3 --guidance 3 5 7.5   # the flow model

For each model: images from the same held-out prompt and seed pairs as ``erasure evaluate icr`` (so the numbers
match its fidelity column), at each ``--guidance`` scale; plus the fidelity of the model's VAE reconstructions of
the clean reference scenes, the ceiling that the UNet cannot pass. With ``--detector``, also how often the detector
finds each implicit concept in the VAE's reconstructions of scenes that hold it: a model can only learn to make
what its VAE can draw, so this caps every ICR. Prints one JSON line per model and writes them all to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from detectors.vae_views import reconstruct
from erasure.evaluation.icr import IcrConfig, QualityJudge, heldout_prompts
from erasure.loading import load_pipeline
from erasure.toy.checker import fidelity


def concept_ceiling(pipe, detector, num_images: int = 100) -> dict[str, dict[str, float]]:
    """Per concept: the detector's hit rate on scenes that hold it, as drawn and as the VAE reconstructs them."""
    from datasets_icd.toyworld import CONCEPTS, ToyWorld, ToyWorldConfig

    rates = {}
    for concept in CONCEPTS:
        world = ToyWorld(ToyWorldConfig(size=64, seed=5, concept_rates={concept: 1.0}))
        originals = [world.sample(i).image for i in range(num_images)]
        hits = [
            np.mean([any(d.concept == concept for d in found) for found in detector.detect(images)])
            for images in (originals, reconstruct(pipe.vae, originals))
        ]
        rates[concept] = {"originals": float(hits[0]), "vae_reconstruction": float(hits[1])}
    return rates


def measure(model: str, args: argparse.Namespace) -> dict:
    config = IcrConfig(
        concept="none", detector="none", model=model, cells=[], num_images=args.num_images, checker=args.checker
    )
    prompts = heldout_prompts(config)
    judge = QualityJudge(config)
    pipe = load_pipeline(model, device=args.device, dtype="float32").pipeline  # SD, SDXL, SD3 or FLUX
    pipe.set_progress_bar_config(disable=True)
    # judge.reference holds the held-out world's scenes of exactly these prompts.
    result = {
        "model": model,
        "vae_reconstruction": fidelity(judge.checker, reconstruct(pipe.vae, judge.reference), prompts),
    }
    for scale in args.guidance:
        started, images = time.perf_counter(), []
        for start in range(0, len(prompts), args.batch_size):
            batch = range(start, min(start + args.batch_size, len(prompts)))
            images += pipe(
                [prompts[i] for i in batch],
                num_inference_steps=args.steps,
                guidance_scale=scale,
                generator=[torch.Generator().manual_seed(config.seed + i) for i in batch],
            ).images
        scores = fidelity(judge.checker, images, prompts) | judge(images, prompts)
        result[f"guidance_{scale:g}"] = scores | {"seconds": round(time.perf_counter() - started, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="pipeline directories (the toy SD or SD3 model)")
    parser.add_argument("--checker", default="assets/toy-checker")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25, help="sampler steps, as in erasure evaluate icr")
    parser.add_argument("--guidance", type=float, nargs="+", default=[7.5])
    parser.add_argument("--detector", help="detector spec, e.g. yolo:assets/detectors/toy_yolo.safetensors")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for all results")
    args = parser.parse_args()
    results = []
    for model in args.models:
        results.append(measure(model, args))
        print(json.dumps(results[-1]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
