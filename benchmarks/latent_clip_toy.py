"""Issue 8 on the toy world: does a Latent-CLIP know shape, colour and watermark, and does it help ReNO?

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/latent_clip_toy.py outputs/latent_clip_toy \
        --out outputs/latent_clip_toy/benchmark.json                       # add --steps 2 for a 2-step sampler

Zero-shot: ``--zero-shot-images`` scenes of the ICR's held-out world seed (no training image comes from it), a
watermark pasted on about half of them, encoded by the base model's VAE (latent means). Each latent is scored
against the texts of every class, made three ways:

- ``swap``: the scene's own caption with only the shape (or object colour) word swapped through every class; for the
  watermark, the caption without and with ", watermark". The other words are the true ones.
- ``ensemble``: a class is the mean embedding of every toy caption of that class (all counts, colours, positions and
  backgrounds; for the watermark, every caption without or with the suffix), CLIP's prompt ensembling: no ground
  truth is used.
- ``word``: the bare label ("circle", "red"); for the watermark, the AUROC of the similarity to "watermark" alone,
  the text that Latent-CLIP guidance pushes away from.

ReNO: the first ``--reno-prompts`` held-out prompts and seeds of ``erasure evaluate icr``, a few-step sampler of the
base model from the same initial noise, and the toy checker's prompt fidelity of the plain samples against the
ReNO-optimised ones (reward: the Latent-CLIP similarity to the prompt). Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from datasets_icd.toyworld import COLOURS, COUNTS, REGIONS, SHAPES, ToyWorld, ToyWorldConfig, scene_caption
from erasure.evaluation.icr import IcrConfig, heldout_prompts
from erasure.latent_clip import LatentClip, LatentClipReward, few_step_sampler, optimise_noise, zero_shot_classify
from erasure.toy.checker import fidelity, load_checker
from erasure.training.data import pixel_tensor

ATTRIBUTES = ("count", "colour", "shape", "position", "background")
WATERMARK_SUFFIX = ", watermark"  # how training captions name it: an ICD's geom_caption with its locations stripped


def every_scene() -> list[dict]:
    """The attributes of every toy scene a caption can describe (the object is never the background's colour)."""
    combos = itertools.product(COUNTS, COLOURS, SHAPES, REGIONS, COLOURS)
    return [dict(zip(ATTRIBUTES, combo, strict=True)) for combo in combos if combo[1] != combo[4]]


def caption(scene: dict, **swap: str) -> str:
    """The scene's caption, with some attributes replaced."""
    return scene_caption(*({**scene, **swap}[key] for key in ATTRIBUTES))


def image_side(pipe: StableDiffusionPipeline) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@torch.no_grad()
def encode_images(pipe: StableDiffusionPipeline, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
    """VAE-scaled latent means: what the Latent-CLIP trained on (it saw samples around them)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([pixel_tensor(image, image_side(pipe)) for image in images[start : start + batch_size]])
        chunks.append(pipe.vae.encode(pixels.to(pipe.device, pipe.vae.dtype)).latent_dist.mean)
    return torch.cat(chunks) * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> list[Image.Image]:
    pixels = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")


def accuracy(scores: torch.Tensor, labels: list[int]) -> float:
    return (scores.argmax(dim=1).cpu() == torch.tensor(labels)).float().mean().item()


@torch.no_grad()
def swap_scores(model: LatentClip, image_embeds: torch.Tensor, texts: list[list[str]]) -> torch.Tensor:
    """``(images, classes)`` similarities, where ``texts[i][c]`` is image i's own text for class c."""
    text_embeds = model.encode_text([text for row in texts for text in row]).view(len(texts), len(texts[0]), -1)
    return torch.einsum("nd,ncd->nc", image_embeds, text_embeds)


@torch.no_grad()
def ensemble_scores(model: LatentClip, image_embeds: torch.Tensor, class_texts: list[list[str]]) -> torch.Tensor:
    """``(images, classes)`` similarities to each class's normalised mean text embedding."""
    classes = torch.stack([F.normalize(model.encode_text(texts).mean(dim=0), dim=-1) for texts in class_texts])
    return image_embeds @ classes.T


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties counting half: threshold-free, as guidance's gate is tuned."""
    diff = scores[positive][:, None] - scores[~positive][None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


@torch.no_grad()
def zero_shot(model: LatentClip, pipe: StableDiffusionPipeline, num_images: int, world_seed: int) -> dict:
    """Zero-shot accuracies on unseen scenes: shape, object colour, watermark present or absent."""
    world = ToyWorld(ToyWorldConfig(size=image_side(pipe), seed=world_seed, concept_rates={"watermark": 0.5}))
    samples = [world.sample(i) for i in range(num_images)]
    latents = encode_images(pipe, [s.image for s in samples]).to(model.device)
    image_embeds = model.encode_latents(latents)
    scenes, all_scenes = [s.attributes for s in samples], every_scene()
    result: dict = {"images": num_images, "world_seed": world_seed}
    for key, classes in (("shape", list(SHAPES)), ("colour", list(COLOURS))):
        labels = [classes.index(scene[key]) for scene in scenes]
        swapped = [[caption(scene, **{key: c}) for c in classes] for scene in scenes]
        pooled = [[caption(scene) for scene in all_scenes if scene[key] == c] for c in classes]
        result[key] = {
            "swap": accuracy(swap_scores(model, image_embeds, swapped), labels),
            "ensemble": accuracy(ensemble_scores(model, image_embeds, pooled), labels),
            "word": accuracy(zero_shot_classify(model, latents, classes), labels),
        }
    present = torch.tensor([any(c["name"] == "watermark" for c in s.concepts) for s in samples])
    labels = present.long().tolist()
    swapped = [[caption(scene), caption(scene) + WATERMARK_SUFFIX] for scene in scenes]
    pooled = [[caption(scene) + suffix for scene in all_scenes] for suffix in ("", WATERMARK_SUFFIX)]
    result["watermark"] = {
        "share_present": present.float().mean().item(),
        "swap": accuracy(swap_scores(model, image_embeds, swapped), labels),
        "ensemble": accuracy(ensemble_scores(model, image_embeds, pooled), labels),
        "word_auroc": auroc((image_embeds @ model.encode_text(["watermark"]).T)[:, 0].cpu(), present),
    }
    return result


def reno(model: LatentClip, pipe: StableDiffusionPipeline, checker, args: argparse.Namespace) -> dict:
    """Fidelity of few-step samples before and after ReNO, from the ICR's held-out prompt and seed pairs."""
    config = IcrConfig(concept="none", detector="none", model=args.pipeline, cells=[], num_images=args.reno_prompts)
    prompts = heldout_prompts(config)
    side = pipe.unet.config.sample_size
    plain, optimised, before, after = [], [], [], []
    seconds = {"plain": 0.0, "reno": 0.0}
    for i, prompt in enumerate(tqdm(prompts, desc="ReNO prompts")):
        # The pipeline's own initial noise for image i (erasure evaluate icr seeds image i with seed + i).
        generator = torch.Generator().manual_seed(config.seed + i)
        noise = torch.randn((1, pipe.unet.config.in_channels, side, side), generator=generator).to(pipe.device)
        sample = few_step_sampler(pipe, prompt, args.steps, args.guidance)
        started = time.perf_counter()
        with torch.no_grad():
            plain.append(sample(noise))
        seconds["plain"] += time.perf_counter() - started
        started = time.perf_counter()
        result = optimise_noise(
            sample, LatentClipReward(model, prompt), noise, args.iterations, args.lr, args.grad_clip, progress=False
        )
        seconds["reno"] += time.perf_counter() - started
        optimised.append(result.latents)
        before.append(result.rewards[0])  # iteration 0 samples the initial noise: the plain sample's reward
        after.append(max(result.rewards))
    plain_images, reno_images = decode_latents(pipe, torch.cat(plain)), decode_latents(pipe, torch.cat(optimised))
    if args.save_images is not None:
        args.save_images.mkdir(parents=True, exist_ok=True)
        for i, (a, b) in enumerate(zip(plain_images, reno_images, strict=True)):
            a.save(args.save_images / f"{i:03d}_plain.png")
            b.save(args.save_images / f"{i:03d}_reno.png")
    return {
        "prompts": len(prompts),
        "sampler": {"steps": args.steps, "guidance_scale": args.guidance, "scheduler": type(pipe.scheduler).__name__},
        "reno": {"iterations": args.iterations, "lr": args.lr, "grad_clip": args.grad_clip},
        "plain": fidelity(checker, plain_images, prompts) | {"reward": sum(before) / len(before)},
        "optimised": fidelity(checker, reno_images, prompts) | {"reward": sum(after) / len(after)},
        "seconds": {key: round(value, 1) for key, value in seconds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Latent-CLIP directory (LatentClip.from_pretrained)")
    parser.add_argument("--pipeline", default="assets/toy-sd", help="toy base model: its VAE and its sampler")
    parser.add_argument("--checker", default="assets/toy-checker", help="toy checker for prompt fidelity")
    parser.add_argument("--zero-shot-images", type=int, default=1000, help="unseen scenes for zero-shot (0: skip)")
    parser.add_argument("--world-seed", type=int, default=IcrConfig.model_fields["prompt_seed"].default)
    parser.add_argument("--reno-prompts", type=int, default=100, help="held-out prompts for ReNO (0: skip)")
    parser.add_argument("--steps", type=int, default=1, help="few-step sampler steps (the pipeline's scheduler)")
    parser.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance of the sampler")
    parser.add_argument("--iterations", type=int, default=50, help="ReNO iterations (ReNO: 50)")
    parser.add_argument("--lr", type=float, default=5.0, help="ReNO learning rate (ReNO: 5)")
    parser.add_argument("--grad-clip", type=float, default=0.1, help="ReNO gradient-norm clip (ReNO: 0.1)")
    parser.add_argument("--save-images", type=Path, default=None, help="folder for plain/ReNO sample pairs")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = LatentClip.from_pretrained(args.model).eval().requires_grad_(False)
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    results: dict = {"model": args.model, "pipeline": args.pipeline}
    started = time.perf_counter()
    if args.zero_shot_images:
        results["zero_shot"] = zero_shot(model, pipe, args.zero_shot_images, args.world_seed)
        results["zero_shot"]["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(results["zero_shot"]), flush=True)
    if args.reno_prompts:
        results["reno"] = reno(model, pipe, load_checker(args.checker), args)
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
