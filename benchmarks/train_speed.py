"""Seconds per training step and peak memory of the Geom-Erasing step (cached latents, LoRA, location tokens).

    .venv/bin/python benchmarks/train_speed.py --model tiny --device cpu --steps 20
    python benchmarks/train_speed.py --model sd15 --device cuda --resolution 512 --batch-size 4 --mixed-precision fp16
    python benchmarks/train_speed.py --model sd15 --device cuda --gradient-checkpointing --use-8bit-adam

The step is the one train.py runs (latents come from the cache, so no VAE encode): text encoder with trainable
token rows, UNet with LoRA, region-weighted loss, AdamW. ``sd15`` is a random-init model with SD 1.5's shapes,
which times like the real one. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from diffusers import DDPMScheduler

from datasets_icd.geometry import location_vocabulary
from erasure.recipe import Recipe
from erasure.testing import sd15_shaped_components, tiny_sd_components
from erasure.training.loop import make_optimizer
from erasure.training.loss import diffusion_loss
from erasure.training.models import encode_prompts, tokenize, trainable_unet_parameters
from erasure.training.tokens import add_location_tokens, train_only_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--use-8bit-adam", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
    parts = tiny_sd_components() if args.model == "tiny" else sd15_shaped_components()
    recipe = Recipe.model_validate(
        {
            "name": "bench",
            "model": {"pretrained": "none"},
            "data": {"dataset": "none", "concepts": ["watermark"], "resolution": args.resolution},
            "train": {"mode": "geom_erasing", "use_8bit_adam": args.use_8bit_adam},
        }
    )
    unet, encoder, tokenizer = parts["unet"], parts["text_encoder"], parts["tokenizer"]
    tokens = location_vocabulary(recipe.data.grid)
    token_rows = train_only_rows(encoder, add_location_tokens(tokenizer, encoder, tokens))
    unet_params = trainable_unet_parameters(unet, recipe)
    unet.to(device, dtype)
    encoder.to(device, dtype)
    for param in [*unet_params, token_rows]:
        param.data = param.data.float()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = make_optimizer(recipe, unet_params, [token_rows])
    scheduler = DDPMScheduler.from_config(parts["scheduler"].config)

    latent = args.resolution // 8 if args.model == "sd15" else args.resolution // 2
    captions = ["a photo of a lake, watermark <loc_3_2> <loc_3_3>"] * args.batch_size
    input_ids = [ids.to(device) for ids in tokenize([tokenizer], captions)]
    latents = torch.randn(args.batch_size, 4, latent, latent, device=device, dtype=dtype)
    masks = torch.zeros(args.batch_size, 1, latent, latent, device=device)
    masks[..., latent // 2 :, latent // 2 :] = 1

    def step() -> None:
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (args.batch_size,), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            hidden, _ = encode_prompts([encoder], input_ids)
            prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, hidden).sample
            loss = diffusion_loss(prediction, noise, masks, 0.5)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet_params, token_rows], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: process peak RSS
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({**vars(args), "seconds_per_step": round(seconds, 4), "peak_memory_gib": round(peak_gib, 3)}))


if __name__ == "__main__":
    main()
