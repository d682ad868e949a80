"""Seconds per image of Safe Latent Diffusion against the plain pipelines, for SD 1.5, SD3.5 medium and FLUX.1-dev.

    .venv/bin/python benchmarks/sld_speed.py                  # SD 1.5-shaped random weights, 512 px, 50 steps (GPU)
    .venv/bin/python benchmarks/sld_speed.py --compile        # ... plus our opt-in CUDA-graph fast path
    .venv/bin/python benchmarks/sld_speed.py --tiny           # tiny model, 32 px, 20 steps: CPU smoke run
    .venv/bin/python benchmarks/sld_speed.py --family sd3     # SD3.5-medium-shaped, 1024 px, 28 steps (GPU)
    .venv/bin/python benchmarks/sld_speed.py --family flux    # FLUX.1-dev-shaped, 1024 px, 28 steps (GPU)
    .venv/bin/python benchmarks/sld_speed.py --family sd3 --layers 1 --size 256 --steps 3 --skip-decode   # a CPU

SD 1.5: our ``SLDPipeline`` against diffusers' ``StableDiffusionPipelineSafe`` (the reference) and the plain
``StableDiffusionPipeline``. SD3: ``SLDSD3Pipeline`` against ``StableDiffusion3Pipeline`` under CFG. FLUX:
``SLDFluxPipeline`` against ``FluxPipeline``, both with the distilled guidance alone and with true CFG. All pipelines
of a family share one set of random-init components (compute does not depend on the weights); ``--layers`` cuts the
transformer's depth (its cost is linear in it; on a CPU the real depth takes minutes per step). Each time is the
median of ``--repeats`` calls after one warm-up call. Prints a markdown table with the device and date, to paste under
"## SLD speed" in benchmarks/RESULTS.md; ``--out`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline
from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

from erasure.pipelines import SLDFluxPipeline, SLDPipeline, SLDSD3Pipeline
from erasure.sld import SafetyConfig
from erasure.testing import (
    flux_dev_shaped_components,
    sd15_shaped_components,
    sd35_medium_shaped_components,
    tiny_sd_components,
)

DEFAULTS = {"sd": (512, 50), "sd3": (1024, 28), "flux": (1024, 28)}  # (size, steps) of each family's model card


def seconds_per_image(pipe, batch: int, steps: int, size: int, repeats: int, **options) -> float:
    """Median seconds per image of ``repeats`` calls at ``batch`` prompts, after one warm-up call."""
    run = dict(num_inference_steps=steps, height=size, width=size, output_type="np") | options
    prompts = ["a photo of a cat"] * batch
    pipe(prompts, **run)  # warm-up: allocator, kernels, compiled graphs
    timings = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(prompts, **run)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings.append((time.perf_counter() - start) / batch)
    return statistics.median(timings)


def sd_cases(args: argparse.Namespace, dtype: torch.dtype) -> list[tuple[str, object, dict]]:
    components = tiny_sd_components() if args.tiny else sd15_shaped_components(dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = StableDiffusionPipeline(**components)
        reference = StableDiffusionPipelineSafe(**components)
    ours = SLDPipeline(**components)
    return [
        ("plain CFG (StableDiffusionPipeline)", plain, {}),
        ("reference SLD medium (StableDiffusionPipelineSafe)", reference, dict(SafetyConfig.MEDIUM)),
        ("SLDPipeline medium", ours, {"sld": "medium"}),
        ("SLDPipeline weak", ours, {"sld": "weak"}),
    ]


def sd3_cases(args: argparse.Namespace, dtype: torch.dtype) -> list[tuple[str, object, dict]]:
    components = sd35_medium_shaped_components(num_layers=args.layers or 24, dtype=dtype)
    plain, ours = StableDiffusion3Pipeline(**components), SLDSD3Pipeline(**components)
    return [
        ("plain CFG (StableDiffusion3Pipeline)", plain, {}),
        ("SLDSD3Pipeline medium", ours, {"sld": "medium"}),
        ("SLDSD3Pipeline weak", ours, {"sld": "weak"}),
    ]


def flux_cases(args: argparse.Namespace, dtype: torch.dtype) -> list[tuple[str, object, dict]]:
    layers = args.layers or 19
    components = flux_dev_shaped_components(num_layers=layers, num_single_layers=2 * layers, dtype=dtype)
    plain, ours = FluxPipeline(**components), SLDFluxPipeline(**components)
    true_cfg = {"true_cfg_scale": 4.0, "negative_prompt": ""}
    return [
        ("distilled guidance (FluxPipeline)", plain, {}),
        ("SLDFluxPipeline medium, distilled", ours, {"sld": "medium"}),
        ("true CFG 4 (FluxPipeline)", plain, true_cfg),
        ("SLDFluxPipeline medium, true CFG 4", ours, {"sld": "medium", **true_cfg}),
    ]


CASES = {"sd": sd_cases, "sd3": sd3_cases, "flux": flux_cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(CASES), default="sd", help="model family (default: sd)")
    parser.add_argument("--tiny", action="store_true", help="tiny random SD (CPU smoke run; --family sd)")
    parser.add_argument("--layers", type=int, help="transformer blocks (sd3, flux; FLUX gets twice as many single)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, help="image side in pixels; default: the model card's (32 with --tiny)")
    parser.add_argument("--steps", type=int, help="default: the model card's (20 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time SLDPipeline.compile_unet() (sd, GPU)")
    parser.add_argument(
        "--skip-decode",
        action="store_true",
        help="output latents: time text encoding and denoising, not the VAE decode that every arm shares (on a CPU "
        "with --layers the full-size VAE would otherwise dominate)",
    )
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    if args.tiny and args.family != "sd":
        parser.error("--tiny is the tiny SD model: use --layers / --size / --steps to shrink sd3 or flux")
    if args.compile and args.family != "sd":
        parser.error("--compile times SLDPipeline.compile_unet(), a UNet fast path: --family sd only")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    if args.family == "flux" and device == "cuda":
        dtype = torch.bfloat16  # FLUX's own dtype; it overflows in float16
    size, steps = DEFAULTS[args.family]
    if args.tiny:
        size, steps = 32, 20
    size, steps = args.size or size, args.steps or steps
    cases = CASES[args.family](args, dtype)
    if args.skip_decode:
        cases = [(name, pipe, options | {"output_type": "latent"}) for name, pipe, options in cases]
    for pipe in {id(pipe): pipe for _, pipe, _ in cases}.values():
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, pipe, options in cases:
            timings = [seconds_per_image(pipe, b, steps, size, args.repeats, **options) for b in args.batches]
            rows.append((name, timings))
            print(f"{name}: " + ", ".join(f"{t:.4f}" for t in timings), flush=True)
        if args.compile:
            ours = cases[-1][1]
            ours.compile_unet()
            for preset in ("medium", "weak"):
                timings = [seconds_per_image(ours, b, steps, size, args.repeats, sld=preset) for b in args.batches]
                rows.append((f"SLDPipeline {preset}, compile_unet()", timings))

    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or 'unknown'})"
    model = {"sd": "SD 1.5-shaped", "sd3": "SD3.5-medium-shaped", "flux": "FLUX.1-dev-shaped"}[args.family]
    model = "tiny random SD" if args.tiny else f"{model} random weights"
    if args.layers:
        single = f" + {2 * args.layers} single" if args.family == "flux" else ""
        model += f", {args.layers} transformer blocks{single}"
    heading = f"{datetime.date.today()}, {device_name}, {dtype}, {model}, {size} px, {steps} steps"
    heading += ", no VAE decode" if args.skip_decode else ""
    print(f"\n{heading}, median of {args.repeats}\n")
    print("| pipeline | " + " | ".join(f"s/image, batch {b}" for b in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    for name, timings in rows:
        print(f"| {name} | " + " | ".join(f"{t:.4f}" for t in timings) + " |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table = {name: dict(zip(map(str, args.batches), timings, strict=True)) for name, timings in rows}
        args.out.write_text(json.dumps({"setting": heading, "repeats": args.repeats, "s_per_image": table}, indent=2))


if __name__ == "__main__":
    main()
