"""Cost per image of a reward and its gradient with respect to the latents: Latent-CLIP against decode + pixel CLIP.

    .venv/bin/python benchmarks/reward_cost.py --model tiny --device cpu
    python benchmarks/reward_cost.py --model sd15 --device cuda --batch-size 4 --dtype float16

Both paths start from the same latents and end with d reward / d latents, as guidance and ReNO need:
- latent: Latent-CLIP's image tower on the latents (``LatentClipReward.with_grad``);
- pixel: VAE decode, resize to the pixel tower's input, CLIP normalisation, a pixel ViT of the same width, depth
  and heads, and the backward pass through all of it.
The prompt embedding is computed once in both, so text towers are not timed. ``sd15``: SD 1.5's VAE and
Latent-ViT-B/8 on 64x64x4 latents against ViT-B/16 at 224 px, random weights (they time like trained ones).
``tiny``: the test-sized VAE (32 px), both towers at 64 tokens. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from erasure.latent_clip import LatentClip, LatentClipReward, LatentClipSpec
from erasure.testing import sd15_shaped_components, tiny_tokenizer, tiny_vae

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Latent tower spec, pixel tower (image side, patch), latent side.
SETUPS = {
    "tiny": (
        {"latent_size": 16, "patch_size": 2, "width": 64, "layers": 4, "heads": 4, "projection_dim": 64},
        (32, 4),
    ),
    "sd15": ({}, (224, 16)),  # Latent-ViT-B/8 (the spec's defaults) vs ViT-B/16
}


def pixel_reward_with_grad(vae, tower, image_side: int, text_embed: torch.Tensor) -> Callable:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def reward_with_grad(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = latents.detach().requires_grad_(True)
        pixels = vae.decode(leaf / vae.config.scaling_factor).sample
        pixels = F.interpolate((pixels + 1) / 2, size=(image_side, image_side), mode="bilinear", antialias=False)
        pixels = (pixels - mean.to(pixels)) / std.to(pixels)
        embeds = F.normalize(tower(pixel_values=pixels).image_embeds, dim=-1)
        rewards = embeds @ text_embed
        (grad,) = torch.autograd.grad(rewards.sum(), leaf)
        return rewards.detach(), grad

    return reward_with_grad


def seconds_per_image(fn: Callable, latents: torch.Tensor, iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        fn(latents)
    if latents.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        fn(latents)
    if latents.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations / len(latents)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(SETUPS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    spec_fields, (image_side, pixel_patch) = SETUPS[args.model]
    spec = LatentClipSpec(**spec_fields)
    torch.manual_seed(0)
    vae = tiny_vae() if args.model == "tiny" else sd15_shaped_components()["vae"]
    vae = vae.to(device, dtype).eval().requires_grad_(False)
    latent_clip = LatentClip.build(spec, tiny_tokenizer()).to(device, dtype).eval().requires_grad_(False)
    pixel_tower = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=image_side,
            patch_size=pixel_patch,
            hidden_size=spec.width,
            intermediate_size=4 * spec.width,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            projection_dim=spec.projection_dim,
        )
    )
    pixel_tower = pixel_tower.to(device, dtype).eval().requires_grad_(False)

    latent_reward = LatentClipReward(latent_clip, "a photo of a cat")
    pixel_reward = pixel_reward_with_grad(vae, pixel_tower, image_side, latent_reward.text_embed)
    latents = torch.randn(args.batch_size, *latent_clip.latent_shape, device=device, dtype=dtype)
    latent_s = seconds_per_image(latent_reward.with_grad, latents, args.iterations, args.warmup)
    pixel_s = seconds_per_image(pixel_reward, latents, args.iterations, args.warmup)
    result = {
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "latent_tower": f"{spec.latent_channels}x{spec.latent_size}x{spec.latent_size}/patch {spec.patch_size}",
        "pixel_tower": f"{image_side}px/patch {pixel_patch}",
        "width": spec.width,
        "layers": spec.layers,
        "latent_clip_s_per_image": latent_s,
        "decode_pixel_clip_s_per_image": pixel_s,
        "ratio": latent_s / pixel_s,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
