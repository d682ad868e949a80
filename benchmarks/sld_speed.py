"""Seconds per image: our SLDPipeline vs diffusers' StableDiffusionPipelineSafe vs plain StableDiffusionPipeline.

    .venv/bin/python benchmarks/sld_speed.py             # SD 1.5-shaped random weights, 512 px, 50 steps (GPU)
    .venv/bin/python benchmarks/sld_speed.py --compile   # ... plus our opt-in CUDA-graph fast path
    .venv/bin/python benchmarks/sld_speed.py --tiny      # tiny model, 32 px, 20 steps: CPU smoke run

All pipelines share one set of random-init components (compute does not depend on the weights). Prints a
markdown table with the device and date, to paste under "## SLD speed" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
import warnings

import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

from erasure.pipelines import SLDPipeline
from erasure.sld import SafetyConfig
from erasure.testing import sd15_shaped_components, tiny_sd_components


def seconds_per_image(pipe, batch: int, steps: int, size: int, repeats: int, **options) -> float:
    run = dict(num_inference_steps=steps, height=size, width=size, output_type="np", **options)
    prompts = ["a photo of a cat"] * batch
    pipe(prompts, **run)  # warm-up: allocator, kernels, compiled graphs
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        pipe(prompts, **run)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (repeats * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random SD (CPU smoke run)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, help="default: 50, or 20 with --tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time SLDPipeline.compile_unet() (GPU)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    components = tiny_sd_components() if args.tiny else sd15_shaped_components(dtype=dtype)
    size, steps = (32, args.steps or 20) if args.tiny else (512, args.steps or 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipes = {
            "plain CFG (StableDiffusionPipeline)": StableDiffusionPipeline(**components),
            "reference SLD medium (StableDiffusionPipelineSafe)": StableDiffusionPipelineSafe(**components),
        }
    ours = SLDPipeline(**components)
    for pipe in (*pipes.values(), ours):
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
    cases = [(name, pipe, dict(SafetyConfig.MEDIUM) if "Safe" in name else {}) for name, pipe in pipes.items()]
    cases += [(f"SLDPipeline {preset}", ours, {"sld": preset}) for preset in ("medium", "weak")]

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, pipe, options in cases:
            timings = [seconds_per_image(pipe, b, steps, size, args.repeats, **options) for b in args.batches]
            rows.append((name, timings))
        if args.compile:
            ours.compile_unet()
            for preset in ("medium", "weak"):
                timings = [seconds_per_image(ours, b, steps, size, args.repeats, sld=preset) for b in args.batches]
                rows.append((f"SLDPipeline {preset}, compile_unet()", timings))

    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or 'unknown'})"
    model = "tiny random SD" if args.tiny else "SD 1.5-shaped random weights"
    print(f"{datetime.date.today()}, {device_name}, {dtype}, {model}, {size} px, {steps} steps\n")
    print("| pipeline | " + " | ".join(f"s/image, batch {b}" for b in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    for name, timings in rows:
        print(f"| {name} | " + " | ".join(f"{t:.4f}" for t in timings) + " |")


if __name__ == "__main__":
    main()
