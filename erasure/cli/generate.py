"""Generate images with Safe Latent Diffusion, a training run's LoRA and negative prompt, or neither.

examples:
  erasure generate "a photo of a cat" --model stable-diffusion-v1-5/stable-diffusion-v1-5 --sld medium
  erasure generate --prompts-file prompts.txt --model DIR --run outputs/RUN --use-run-negative-prompt --seeds 0 1 2
  erasure generate "a photo" --model model.safetensors --model-config BASE_DIR --run outputs/RUN --lora-scale 0.8

A run's negative prompt (``{prompt}, watermark <loc_3_2> <loc_3_3>``) holds the prompt, so by default it is applied
as concept negation: a push away from what it adds to the prompt, beside the usual guidance towards the prompt.

Writes OUT/NNNNN_seedS.png (prompt number, seed) and OUT/generate.json with every parameter and image. Running
the same command again skips the images already there; a different command needs a different --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from erasure.loading import DTYPES, LoadedPipeline
from erasure.runs import NEGATIVE_PROMPT_FILE, negative_prompt_template
from erasure.sld import DEFAULT_SAFETY_CONCEPT, SafetyConfig

RECORD_FILE = "generate.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", help="prompts (or use --prompts-file)")
    parser.add_argument("--prompts-file", type=Path, help="text file, one prompt per line (blank lines skipped)")
    parser.add_argument(
        "--model",
        required=True,
        help="hub id, diffusers folder or single .safetensors file (SD 1.x/2.x, SDXL, SD3, FLUX)",
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        metavar="DIR",
        help="for a single-file --model offline: a diffusers folder of its architecture",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/generate"), help="output directory")
    parser.add_argument("--sld", choices=SafetyConfig.PRESETS, help="Safe Latent Diffusion preset (default: off)")
    parser.add_argument("--safety-concept", default=DEFAULT_SAFETY_CONCEPT, help="what SLD steers away from")
    parser.add_argument("--negative-prompt", help="negative prompt for every prompt")
    parser.add_argument(
        "--run",
        type=Path,
        metavar="RUN_DIR",
        help="training run: load its LoRA (or fine-tuned model) and learned tokens",
    )
    parser.add_argument("--lora-scale", type=float, default=1.0, help="weight of the run's LoRA")
    parser.add_argument(
        "--use-run-negative-prompt",
        action="store_true",
        help="use RUN_DIR/negative_prompt.txt, filled with each prompt, against the concept (see --run-negative-as)",
    )
    parser.add_argument(
        "--run-negative-as",
        choices=["concept-negation", "negative-prompt"],
        default="concept-negation",
        help="concept-negation (default): push away from what the filled template adds to the prompt, beside the "
        "guidance towards the prompt; negative-prompt: diffusers' negative_prompt, which with the prompt inside it "
        "also cancels the guidance towards the prompt (washed-out images)",
    )
    parser.add_argument(
        "--concept-negative-scale",
        type=float,
        help="weight of the concept negation (default: the CFG scale minus 1; 1 on distilled FLUX)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one image per prompt and seed")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument(
        "--true-cfg-scale",
        type=float,
        help="FLUX only: true classifier-free guidance with --negative-prompt (guidance-distilled FLUX has none)",
    )
    parser.add_argument("--size", type=int, help="image height and width in pixels (default: the model's)")
    parser.add_argument("--device", default="auto", help="torch device; auto picks cuda when available")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: float16 on a GPU, float32 on the CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet with CUDA graphs (GPU)")
    parser.add_argument(
        "--latent-clip", type=Path, metavar="DIR", help="Latent-CLIP model (erasure.latent_clip.train)"
    )
    parser.add_argument("--latent-guidance", metavar="CONCEPT", help="with --latent-clip: push latents away from it")
    parser.add_argument("--latent-guidance-scale", type=float, default=0.05, help="step per guided denoising step")
    parser.add_argument("--latent-guidance-warmup", type=int, default=0, help="steps before latent guidance starts")
    parser.add_argument(
        "--latent-guidance-stop",
        type=int,
        default=8,
        help="step where latent guidance ends, so that later steps denoise the marks its gradient leaves",
    )


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        if not args.prompts_file.is_file():
            raise FileNotFoundError(f"--prompts-file {args.prompts_file} does not exist")
        lines = args.prompts_file.read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError("no prompts: give them as arguments or with --prompts-file")
    return prompts


def _check_negative_prompt_options(args: argparse.Namespace) -> None:
    if args.concept_negative_scale is not None and not (
        args.use_run_negative_prompt and args.run_negative_as == "concept-negation"
    ):
        raise ValueError(
            "--concept-negative-scale needs --use-run-negative-prompt with --run-negative-as concept-negation"
        )
    if not args.use_run_negative_prompt:
        return
    if args.run is None:
        raise ValueError("--use-run-negative-prompt needs --run RUN_DIR")
    if args.negative_prompt is not None:
        raise ValueError("give either --negative-prompt or --use-run-negative-prompt, not both")
    if negative_prompt_template(args.run) is None:
        raise FileNotFoundError(f"--use-run-negative-prompt: {args.run / NEGATIVE_PROMPT_FILE} is missing")


def _negatives(args: argparse.Namespace, loaded: LoadedPipeline, prompt: str) -> tuple[str | None, str | None]:
    """(negative_prompt, concept_negative_prompt) of one prompt."""
    if not args.use_run_negative_prompt:
        return args.negative_prompt, None
    filled = loaded.negative_prompt(prompt)
    return (None, filled) if args.run_negative_as == "concept-negation" else (filled, None)


def _parameters(args: argparse.Namespace, device: str, dtype: str) -> dict:
    import diffusers
    import torch

    sld = dict(SafetyConfig.preset(args.sld)) if args.sld else None
    return {
        "model": args.model,
        "model_config": str(args.model_config) if args.model_config else None,
        "sld": args.sld,
        "sld_config": sld,
        "safety_concept": args.safety_concept if args.sld else None,
        "negative_prompt": args.negative_prompt,
        "run": str(args.run) if args.run else None,
        "lora_scale": args.lora_scale,
        "use_run_negative_prompt": args.use_run_negative_prompt,
        "run_negative_as": args.run_negative_as if args.use_run_negative_prompt else None,
        "concept_negative_scale": args.concept_negative_scale,
        "seeds": args.seeds,
        "steps": args.steps,
        "guidance": args.guidance,
        "true_cfg_scale": args.true_cfg_scale,
        "size": args.size,
        "device": device,
        "dtype": dtype,
        "compile": args.compile,
        "latent_clip": str(args.latent_clip) if args.latent_clip else None,
        "latent_guidance": args.latent_guidance,
        "latent_guidance_scale": args.latent_guidance_scale if args.latent_guidance else None,
        "latent_guidance_warmup": args.latent_guidance_warmup if args.latent_guidance else None,
        "latent_guidance_stop": args.latent_guidance_stop if args.latent_guidance else None,
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
    }


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from erasure.loading import load_pipeline, resolve_device, resolve_dtype

    prompts = _read_prompts(args)
    _check_negative_prompt_options(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    parameters = _parameters(args, device, dtype)
    record_path = args.out / RECORD_FILE
    if record_path.is_file() and json.loads(record_path.read_text())["parameters"] != parameters:
        raise ValueError(f"{record_path} was written with other parameters: use another --out or delete it")
    args.out.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps({"parameters": parameters, "images": []}, indent=2))

    loaded = load_pipeline(
        args.model,
        model_config=args.model_config,
        device=device,
        dtype=dtype,
        run=args.run,
        lora_scale=args.lora_scale,
        latent_clip=args.latent_clip,
        latent_guidance=args.latent_guidance,
        latent_guidance_scale=args.latent_guidance_scale,
        latent_guidance_warmup=args.latent_guidance_warmup,
        latent_guidance_stop=args.latent_guidance_stop,
    )
    pipe = loaded.pipeline
    pipe.safety_concept = args.safety_concept
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.compile_unet()

    images = []
    for number, prompt in enumerate(tqdm(prompts, desc="prompts")):
        negative, concept_negative = _negatives(args, loaded, prompt)
        files = {seed: args.out / f"{number:05d}_seed{seed}.png" for seed in args.seeds}
        images += [
            {
                "file": path.name,
                "prompt": prompt,
                "negative_prompt": negative,
                "concept_negative_prompt": concept_negative,
                "seed": seed,
            }
            for seed, path in files.items()
        ]
        missing = [seed for seed, path in files.items() if not path.is_file()]
        if not missing:
            continue
        result = pipe(
            prompt,
            negative_prompt=negative,
            concept_negative_prompt=concept_negative,
            concept_negative_scale=args.concept_negative_scale,
            num_images_per_prompt=len(missing),
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in missing],
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            **({"true_cfg_scale": args.true_cfg_scale} if args.true_cfg_scale is not None else {}),
            height=args.size,
            width=args.size,
            sld=args.sld,
            callback_on_step_end=loaded.step_callback(prompt, len(missing)),
        )
        for seed, image in zip(missing, result.images, strict=True):
            image.save(files[seed])
    record_path.write_text(json.dumps({"parameters": parameters, "images": images}, indent=2))
    print(f"{len(images)} images in {args.out}")
    return 0
