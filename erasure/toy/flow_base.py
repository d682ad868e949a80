"""Train the toy world's flow-matching base model: a small SD3 transformer on the toy VAE's latents.

    python -m erasure.toy.flow_base --config recipes/toy_flow_base.yaml [key=value ...]

The flow-matching side of the toy world needs what ``assets/toy-sd`` gives the UNet side: a model that follows
toy prompts and has never seen an implicit concept. It reuses the toy model's eye and ear (its VAE, which can draw
every concept, and its CLIP text encoder, frozen) and trains only a ``SD3Transformer2DModel`` from scratch on
clean scenes, with the flow-matching objective and logit-normal noise levels of diffusers' SD3 scripts. The
result loads with ``StableDiffusion3Pipeline.from_pretrained(out_dir)``; it has no T5 encoder (SD3 without one
pads the sequence with 256 zero rows when ``text_encoder_3`` is None; training reads them as one repeated row,
``erasure.attention.last_key_repeated``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.training_utils import EMAModel
from pydantic import Field
from tqdm.auto import tqdm
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from erasure.attention import last_key_repeated
from erasure.config import MixedPrecision, StrictModel, load_config
from erasure.toy.base import encode_all, toy_images
from erasure.training.models import flow_noising, flow_sigmas


class ToyFlowConfig(StrictModel):
    base: str = Field("assets/toy-sd", description="toy SD pipeline whose VAE, tokenizer and text encoder are reused")
    out_dir: str = Field("assets/toy-sd3", description="where the SD3 pipeline is saved")
    num_images: int = Field(20_000, ge=16, description="clean toy scenes to train on")
    world_seed: int = Field(1, description="toy-world seed of the training scenes")
    seed: int = Field(0)
    num_layers: int = Field(4, ge=1, description="joint (MMDiT) blocks")
    num_heads: int = Field(4, ge=1)
    head_dim: int = Field(32, ge=8, description="width = num_heads x head_dim")
    patch_size: int = Field(2, ge=1)
    shift: float = Field(1.0, gt=0, description="the flow scheduler's noise shift (SD3 uses 3.0 at 1024 px)")
    t5_length: int = Field(256, ge=1, description="zero rows standing in for T5, as sampling adds them by default")
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(300, ge=0)
    caption_dropout: float = Field(0.1, ge=0, le=1, description="share of empty captions, for CFG")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the transformer's weights (0: off)")
    time_limit_minutes: float | None = Field(None, gt=0, description="stop early at this budget; the record says when")
    mixed_precision: MixedPrecision = Field("no", description="accelerate mixed precision")
    weights_dtype: Literal["float32", "float16"] = Field(
        "float16", description="transformer and VAE files on disk; they still load as float32"
    )


def clip_with_projection(path: Path) -> CLIPTextModelWithProjection:
    """The toy text encoder as SD3's CLIP encoders are shaped: its own weights, an identity projection for the
    pooled embedding (SD3 reads ``text_embeds``), so the pooled vector is the toy encoder's own."""
    # transformers warns that text_projection is new: it is, and set just below.
    encoder = CLIPTextModelWithProjection.from_pretrained(path, torch_dtype=torch.float32)
    with torch.no_grad():
        encoder.text_projection.weight.copy_(torch.eye(encoder.config.hidden_size))
    return encoder.eval().requires_grad_(False)


@torch.no_grad()
def encode_captions(
    encoder: CLIPTextModelWithProjection, tokenizer: CLIPTokenizer, captions: list[str], batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the SD3 pipeline feeds the transformer for each caption, cached once (the encoder is frozen): the
    penultimate states of both CLIP encoders side by side ``(N, L, 2 W)`` and their pooled embeddings ``(N, 2 W)``.
    Both encoders are the same toy encoder, so one pass serves both."""
    states, pooled = [], []
    for start in range(0, len(captions), batch_size):
        ids = tokenizer(
            captions[start : start + batch_size],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2].repeat(1, 1, 2))
        pooled.append(out.text_embeds.repeat(1, 2))
    return torch.cat(states), torch.cat(pooled)


def build_transformer(config: ToyFlowConfig, latent_size: int, text_width: int) -> SD3Transformer2DModel:
    width = config.num_heads * config.head_dim
    return SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=config.patch_size,
        in_channels=4,
        out_channels=4,
        num_layers=config.num_layers,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=2 * text_width,  # both CLIP encoders' states, no T5 padding
        caption_projection_dim=width,
        pooled_projection_dim=2 * text_width,
        pos_embed_max_size=latent_size // config.patch_size,
    )


def train_transformer(
    config: ToyFlowConfig,
    latents: torch.Tensor,
    states: torch.Tensor,
    pooled: torch.Tensor,
    empty: tuple[torch.Tensor, torch.Tensor],
    scheduler: FlowMatchEulerDiscreteScheduler,
    accelerator: Accelerator,
) -> tuple[SD3Transformer2DModel, dict]:
    """The transformer (its EMA weights when ``ema_decay`` > 0) and a record of the run."""
    torch.manual_seed(config.seed)
    transformer = build_transformer(config, latents.shape[-1], states.shape[-1] // 2)
    params = list(transformer.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)
    warmup = max(config.warmup_steps, 1)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    transformer, optimizer, lr_schedule = accelerator.prepare(transformer, optimizer, lr_schedule)
    ema = EMAModel(params, decay=config.ema_decay, foreach=True) if config.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(config.seed + 1)
    deadline = time.monotonic() + 60 * (config.time_limit_minutes or float("inf"))
    started, losses, steps_done = time.monotonic(), [], 0
    for step in (bar := tqdm(range(config.steps), desc="transformer", disable=not accelerator.is_main_process)):
        if time.monotonic() > deadline:
            print(f"transformer: time limit reached after {step} of {config.steps} steps")
            break
        idx = torch.randint(len(latents), (config.batch_size,), generator=generator)
        drop = torch.rand(len(idx), generator=generator) < config.caption_dropout
        text, text_pooled = states[idx].clone(), pooled[idx].clone()
        text[drop], text_pooled[drop] = empty[0], empty[1]
        # The pipeline's stand-in for T5, max_sequence_length zero rows after the CLIP states: one row, repeated.
        text = torch.cat([text, text.new_zeros(len(idx), 1, text.shape[-1])], dim=1)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=generator)
        sigmas = flow_sigmas(scheduler, len(idx), "logit_normal", generator)
        noisy, target = flow_noising(x0, noise, sigmas)
        device = accelerator.device
        with accelerator.autocast(), last_key_repeated(config.t5_length):
            pred = transformer(
                hidden_states=noisy.to(device),
                timestep=(sigmas * 1000).to(device),
                encoder_hidden_states=text.to(device),
                pooled_projections=text_pooled.to(device),
                return_dict=False,
            )[0]
            loss = F.mse_loss(pred.float(), target.to(device))
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        steps_done = step + 1
        if step % 50 == 0:
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if ema is not None:
        ema.copy_to(params)
    record = {
        "steps_done": steps_done,
        "minutes": round((time.monotonic() - started) / 60, 2),
        "final_loss": round(float(np.mean(losses[-20:])), 5) if losses else None,
        "parameters": sum(p.numel() for p in params),
    }
    return accelerator.unwrap_model(transformer).eval(), record


def train(config: ToyFlowConfig) -> Path:
    started = time.monotonic()
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    base = Path(config.base)
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    encoder = clip_with_projection(base / "text_encoder")
    vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float32).eval()
    pixels, captions = toy_images(vae.config.sample_size, config.world_seed, config.num_images, {})
    latents = encode_all(vae, pixels, accelerator.device).cpu()
    # SD3 normalises latents as (z - shift) * scale; the toy VAE's own statistics stand in for SD3's constants.
    vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1.0 / latents.std()))
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    states, pooled = encode_captions(encoder, tokenizer, captions)
    empty = encode_captions(encoder, tokenizer, [""])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=config.shift)
    transformer, record = train_transformer(config, latents, states, pooled, empty, scheduler, accelerator)
    dtype = getattr(torch, config.weights_dtype)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.to("cpu", dtype),
        vae=vae.to("cpu", dtype),
        text_encoder=encoder,
        tokenizer=tokenizer,
        text_encoder_2=encoder,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
        scheduler=scheduler,
    )
    out = Path(config.out_dir)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    record |= {"device": str(accelerator.device), "total_minutes": round((time.monotonic() - started) / 60, 2)}
    (out / "toy_base.json").write_text(json.dumps({"config": config.model_dump(mode="json"), "run": record}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/toy_flow_base.yaml", help="YAML with ToyFlowConfig fields")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    print(f"saved {train(load_config(ToyFlowConfig, args.config, args.overrides))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
