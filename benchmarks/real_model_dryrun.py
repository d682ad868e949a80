"""A committed real-model recipe, end to end, on random weights of the real model's shape: time per step and memory.

    python benchmarks/real_model_dryrun.py --family sd15 --out outputs/dryrun     # on a GPU
    python benchmarks/real_model_dryrun.py --family sdxl --out outputs/dryrun
    .venv/bin/python benchmarks/real_model_dryrun.py --family sd15 --tiny --out /tmp/dryrun  # the chain, CPU-sized

What a user's first run does, without the download: SD 1.5's (or SDXL's) exact UNet, VAE and text-encoder shapes
with random weights, saved as the fp16 variant the recipe names; a synthetic ICD of toy scenes at the recipe's
resolution (`icd build`); `recipes/sd15_geom_erasing_watermark.yaml` (or the SDXL one) with only the model, the
data, the step count and the latent cache (in memory, so that both timed runs start alike) swapped; export (the
recipe's kohya file too); `erasure.load_run` into `SLDPipeline` / `SLDXLPipeline` and one image with SLD medium and
the run's negative prompt as concept negation. Seconds per step are the difference between a run of 2 + STEPS steps
and one of 2 (model loading and latent caching cancel out). Peak GPU memory is that of the longer run. ``--tiny``
takes the tiny test models at 32 px in float32, so that the chain runs on a CPU: its numbers mean nothing.
Prints each stage and writes ``dryrun_FAMILY.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RECIPES = Path(__file__).parents[1] / "recipes"
FAMILIES = {
    "sd15": ("sd15_geom_erasing_watermark.yaml", "SLDPipeline"),
    "sdxl": ("sdxl_geom_erasing_watermark.yaml", "SLDXLPipeline"),
}


def save_model(family: str, tiny: bool, out: Path) -> Path:
    """The random model in the recipe's form: an fp16 variant of the real shapes, or a tiny float32 folder."""
    import diffusers

    from erasure import testing

    if (out / "model_index.json").is_file():
        return out
    pipeline = getattr(diffusers, {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}[family])
    if tiny:
        components = testing.tiny_sd_components() if family == "sd15" else testing.tiny_sdxl_components()
        pipeline(**components).save_pretrained(out)
    else:
        shaped = testing.sd15_shaped_components if family == "sd15" else testing.sdxl_shaped_components
        pipeline(**shaped(dtype=torch.float16)).save_pretrained(out, variant="fp16")
    return out


def build_icd(resolution: int, num_images: int, out: Path) -> Path:
    from datasets_icd.cli import main as icd_main

    if not (out / "build.json").is_file():
        icd_main(
            ["build", "--source", "synthetic", "--concepts", "watermark=0.6", "--one-kind"]
            + ["--num-images", str(num_images), "--size", str(resolution), "--out", str(out)]
        )
    return out


def train_for(recipe_file: Path, overrides: list[str], steps: int, out: Path) -> tuple[float, Path]:
    """Wall seconds of one run of ``steps`` steps (loading and caching included) and its run directory."""
    from erasure.recipe import load_recipe
    from erasure.training import train

    start = time.perf_counter()
    result = train(load_recipe(recipe_file, [*overrides, f"train.max_steps={steps}", f"output_dir={out}"]))
    return time.perf_counter() - start, result.run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=list(FAMILIES), required=True)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (after 2 untimed ones)")
    parser.add_argument("--tiny", action="store_true", help="tiny test models at 32 px, float32: the chain on a CPU")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import erasure
    from erasure import load_run
    from erasure.recipe import load_recipe

    recipe_file = RECIPES / FAMILIES[args.family][0]
    recipe = load_recipe(recipe_file, [])
    resolution = 32 if args.tiny else recipe.data.resolution
    work = args.out / args.family
    cuda = torch.cuda.is_available()
    report: dict = {"family": args.family, "recipe": recipe_file.name, "tiny": args.tiny, "resolution": resolution}
    report["device"] = torch.cuda.get_device_name() if cuda else "cpu"

    def stage(name: str, **values) -> None:
        report.update(values)
        print(f"[dryrun] {name}: {json.dumps(values)}", flush=True)
        (args.out / f"dryrun_{args.family}.json").write_text(json.dumps(report, indent=2))

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = save_model(args.family, args.tiny, work / "model")
    icd = build_icd(resolution, 4 * recipe.train.batch_size * recipe.train.gradient_accumulation_steps, work / "icd")
    stage("model and ICD", setup_s=round(time.perf_counter() - start, 1))

    overrides = [f"model.pretrained={model}", f"data.dataset={icd}", "data.cache_latents=memory", "report_to=null"]
    overrides += ["validation.prompts=[]", "train.num_workers=0"]
    if args.tiny:
        overrides += ["data.resolution=32", "model.variant=null", "train.mixed_precision=no"]
    short_s, _ = train_for(recipe_file, overrides, 2, work / "run-2")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    long_s, run_dir = train_for(recipe_file, overrides, 2 + args.steps, work / "run")
    stage(
        "training",
        seconds_per_step=round((long_s - short_s) / args.steps, 4),
        train_peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        mixed_precision=recipe.train.mixed_precision if not args.tiny else "no",
        batch_size=recipe.train.batch_size,
        gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
        gradient_checkpointing=recipe.train.gradient_checkpointing,
        files=sorted(p.name for p in run_dir.iterdir() if p.is_file()),
    )

    dtype = torch.float16 if cuda else torch.float32
    variant = None if args.tiny else "fp16"
    pipe = getattr(erasure, FAMILIES[args.family][1]).from_pretrained(model, variant=variant, torch_dtype=dtype)
    pipe.to("cuda" if cuda else "cpu")
    run = load_run(pipe, run_dir)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    image = pipe(
        "a photo of a lighthouse",
        concept_negative_prompt=run.negative_prompt_template,
        sld="medium",
        num_inference_steps=25,
        height=resolution,
        width=resolution,
        generator=torch.Generator(pipe.device).manual_seed(0),
    ).images[0]
    image.save(work / "sample.png")
    stage(
        "sampling (25 steps, SLD medium, concept negation)",
        negative_prompt_template=run.negative_prompt_template,
        sample_s=round(time.perf_counter() - start, 2),
        sample_peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    )


if __name__ == "__main__":
    main()
