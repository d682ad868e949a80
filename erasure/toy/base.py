"""Train the toy world's base model from scratch: a small Stable-Diffusion-style pipeline on clean toy scenes.

    python -m erasure.toy.base --config recipes/toy_base.yaml [key=value ...]

The toy world needs a model that follows prompts ("two red circles on the left on a blue background") and has
never seen an implicit concept, so that a later fine-tune on concept-laden data is what teaches it watermarks,
QR codes or text. Three stages, each saved before the next starts: a CLIP tokenizer over the toy caption
vocabulary, an AutoencoderKL (4x down-sampling, 4 latent channels), then a UNet2DConditionModel trained
together with a small CLIPTextModel on cached latents. The result loads with
``StableDiffusionPipeline.from_pretrained(out_dir)``.
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
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel
from pydantic import Field
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from datasets_icd.toyworld import CONCEPTS, ToyWorld, ToyWorldConfig
from erasure.config import MixedPrecision, StrictModel, load_config
from erasure.testing import build_clip_tokenizer


class ToyBaseConfig(StrictModel):
    out_dir: str = Field("assets/toy-sd", description="where the pipeline is saved")
    work_dir: str = Field("outputs/toy-base", description="stage checkpoints and samples")
    resolution: int = Field(64, ge=16, description="image side in pixels")
    num_images: int = Field(20_000, ge=16, description="clean toy scenes to train on")
    world_seed: int = Field(1, description="toy-world seed of the training scenes")
    seed: int = Field(0)
    vae_channels: list[int] = Field([32, 64, 64], description="AutoencoderKL block widths; n blocks = 2^(n-1) down")
    vae_steps: int = Field(3000, ge=1)
    vae_batch_size: int = Field(32, ge=1)
    vae_learning_rate: float = Field(1e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0)
    decoder_concept_rates: dict[str, float] = Field(
        default_factory=dict, description="implicit concepts in the scenes of the decoder-only stage"
    )
    decoder_num_images: int = Field(6000, ge=16, description="scenes of the decoder-only stage")
    decoder_steps: int = Field(0, ge=0, description="decoder-only fine-tune steps after the UNet stage (0: none)")
    decoder_batch_size: int = Field(16, ge=1)
    decoder_learning_rate: float = Field(5e-4, gt=0)
    unet_channels: list[int] = Field([64, 128, 128], description="UNet block widths")
    text_width: int = Field(64, ge=8, description="text encoder hidden size = UNet cross-attention width")
    text_layers: int = Field(3, ge=1)
    max_length: int = Field(24, ge=8, description="caption tokens (the toy captions need about 14)")
    unet_steps: int = Field(12_000, ge=1)
    unet_batch_size: int = Field(64, ge=1)
    unet_learning_rate: float = Field(5e-4, gt=0)
    caption_dropout: float = Field(0.1, ge=0, le=1, description="share of empty captions, for CFG")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of UNet and text encoder weights (0: off)")
    time_limit_minutes: float | None = Field(
        None, gt=0, description="whole-run budget: the UNet stage stops early at it; toy_base.json records the steps"
    )
    mixed_precision: MixedPrecision = Field("no", description="accelerate mixed precision")
    weights_dtype: Literal["float32", "float16"] = Field(
        "float32", description="UNet and VAE files on disk; float16 halves them and they still load as float32"
    )


def toy_images(size: int, seed: int, count: int, rates: dict[str, float]) -> tuple[torch.Tensor, list[str]]:
    """Toy scenes as uint8 NCHW plus their captions."""
    world = ToyWorld(ToyWorldConfig(size=size, seed=seed, concept_rates=rates))
    pixels = np.empty((count, size, size, 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(count), desc="toy scenes", unit="img"):
        sample = world.sample(i)
        pixels[i] = np.asarray(sample.image)
        captions.append(sample.caption)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), captions


def _to_unit(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0


def train_vae(config: ToyBaseConfig, pixels: torch.Tensor, accelerator: Accelerator) -> AutoencoderKL:
    n = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, config.vae_channels[0]),
        sample_size=config.resolution,
    )
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    generator = torch.Generator().manual_seed(config.seed)
    for step in (bar := tqdm(range(config.vae_steps), desc="vae", disable=not accelerator.is_main_process)):
        idx = torch.randint(len(pixels), (config.vae_batch_size,), generator=generator)
        x = _to_unit(pixels[idx]).to(accelerator.device)
        with accelerator.autocast():
            posterior = accelerator.unwrap_model(vae).encode(x).latent_dist
            recon = accelerator.unwrap_model(vae).decode(posterior.sample()).sample
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + config.vae_kl_weight * posterior.kl().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return accelerator.unwrap_model(vae).eval()


def train_decoder(config: ToyBaseConfig, vae: AutoencoderKL, accelerator: Accelerator) -> dict:
    """Teach the decoder alone to draw the implicit concepts; returns a record of the stage.

    The VAE is the model's eye, not its taste: like SD's, it must be able to draw watermarks, QR codes and text,
    or no fine-tune could ever teach the model to make them (a VAE that saw only clean scenes blurs them away).
    The encoder stays frozen, so every latent the UNet learned from keeps its meaning.
    """
    if config.decoder_steps == 0:
        return {}
    seed = config.world_seed + 1  # other scenes than the UNet's
    pixels, _ = toy_images(config.resolution, seed, config.decoder_num_images, config.decoder_concept_rates)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.decoder_learning_rate)
    optimizer = accelerator.prepare(optimizer)
    vae.to(accelerator.device).train()
    generator = torch.Generator().manual_seed(config.seed + 2)
    started, losses = time.monotonic(), []
    for step in (bar := tqdm(range(config.decoder_steps), desc="decoder", disable=not accelerator.is_main_process)):
        idx = torch.randint(len(pixels), (config.decoder_batch_size,), generator=generator)
        x = _to_unit(pixels[idx]).to(accelerator.device)
        with accelerator.autocast():
            with torch.no_grad():
                z = vae.encode(x).latent_dist.sample()
            recon = vae.decode(z).sample
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    vae.requires_grad_(False).eval()
    return {
        "decoder_minutes": round((time.monotonic() - started) / 60, 2),
        "decoder_final_loss": round(float(np.mean(losses[-20:])), 5),
    }


@torch.no_grad()
def encode_all(vae: AutoencoderKL, pixels: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    """Latent means of every scene, cached once: the UNet stage never runs the encoder."""
    chunks = [
        vae.encode(_to_unit(pixels[i : i + batch_size]).to(device)).latent_dist.mean.cpu()
        for i in range(0, len(pixels), batch_size)
    ]
    return torch.cat(chunks)


def train_unet(
    config: ToyBaseConfig,
    latents: torch.Tensor,
    captions: list[str],
    tokenizer,
    accelerator: Accelerator,
    deadline: float = float("inf"),
) -> tuple[UNet2DConditionModel, CLIPTextModel, dict]:
    """The UNet and text encoder (their EMA weights when ``ema_decay`` > 0) and a record of the run."""
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_width,
            intermediate_size=4 * config.text_width,
            num_hidden_layers=config.text_layers,
            num_attention_heads=4,
            max_position_embeddings=config.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=config.text_width,
        )
    )
    n = len(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=latents.shape[-1],
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(config.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        layers_per_block=1,
        cross_attention_dim=config.text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    noise_scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ids = tokenizer(
        captions, padding="max_length", max_length=config.max_length, truncation=True, return_tensors="pt"
    ).input_ids
    empty = tokenizer([""], padding="max_length", max_length=config.max_length, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.unet_learning_rate, weight_decay=1e-2)
    lr_lambda = lambda step: min(1.0, (step + 1) / 500)  # noqa: E731 - a warm-up, then constant
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    unet, text_encoder, optimizer, scheduler = accelerator.prepare(unet, text_encoder, optimizer, scheduler)
    # The EMA weights sample far more cleanly than the last step's: a small model's loss stays noisy to the end.
    ema = EMAModel(params, decay=config.ema_decay, foreach=True) if config.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(config.seed + 1)
    alphas = noise_scheduler.alphas_cumprod
    started, losses, steps_done = time.monotonic(), [], 0
    for step in (bar := tqdm(range(config.unet_steps), desc="unet", disable=not accelerator.is_main_process)):
        if time.monotonic() > deadline:
            print(f"unet: time limit reached after {step} of {config.unet_steps} steps")
            break
        idx = torch.randint(len(latents), (config.unet_batch_size,), generator=generator)
        batch_ids = ids[idx].clone()
        drop = torch.rand(len(idx), generator=generator) < config.caption_dropout
        batch_ids[drop] = empty
        x0 = latents[idx].to(accelerator.device)
        noise = torch.randn(x0.shape, generator=generator).to(accelerator.device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, t.to(accelerator.device))
        with accelerator.autocast():
            hidden = text_encoder(batch_ids.to(accelerator.device))[0]
            pred = unet(noisy, t.to(accelerator.device), hidden).sample
            # Min-SNR(5) weighting: the small model spends its capacity on the steps that shape the image.
            snr = alphas[t] / (1 - alphas[t])
            weight = (torch.clamp(snr, max=5.0) / snr).to(accelerator.device)
            loss = (weight * F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
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
        "unet_steps_done": steps_done,
        "unet_minutes": round((time.monotonic() - started) / 60, 2),
        "unet_final_loss": round(float(np.mean(losses[-20:])), 5) if losses else None,
    }
    return accelerator.unwrap_model(unet).eval(), accelerator.unwrap_model(text_encoder).eval(), record


def train(config: ToyBaseConfig) -> Path:
    started = time.monotonic()
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    world = ToyWorld(ToyWorldConfig(size=config.resolution, concept_rates={}))
    tokenizer = build_clip_tokenizer(world.vocabulary() + list(CONCEPTS), work / "tokenizer", config.max_length)
    pixels, captions = toy_images(config.resolution, config.world_seed, config.num_images, {})
    vae = train_vae(config, pixels, accelerator)
    latents = encode_all(vae, pixels, accelerator.device)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    latents = latents * vae.config.scaling_factor
    deadline = started + 60 * (config.time_limit_minutes or float("inf"))
    unet, text_encoder, record = train_unet(config, latents, captions, tokenizer, accelerator, deadline)
    record |= train_decoder(config, vae, accelerator)
    scheduler = DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
    )
    # The text encoder stays float32: transformers would load float16 weights as float16.
    dtype = getattr(torch, config.weights_dtype)
    pipe = StableDiffusionPipeline(
        vae=vae.to("cpu", dtype),
        text_encoder=text_encoder.cpu(),
        tokenizer=tokenizer,
        unet=unet.to("cpu", dtype),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    out = Path(config.out_dir)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    record |= {"device": str(accelerator.device), "minutes": round((time.monotonic() - started) / 60, 2)}
    (out / "toy_base.json").write_text(json.dumps({"config": config.model_dump(mode="json"), "run": record}, indent=2))
    return out


def finetune_decoder(config: ToyBaseConfig, pipeline_dir: str | Path) -> Path:
    """Run only the decoder stage on an existing toy base pipeline and save its VAE back in place."""
    pipeline_dir = Path(pipeline_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)
    vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae", torch_dtype=torch.float32)
    record = train_decoder(config, vae, accelerator)
    vae.to("cpu", getattr(torch, config.weights_dtype)).save_pretrained(pipeline_dir / "vae", safe_serialization=True)
    info_path = pipeline_dir / "toy_base.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"run": {}}
    info["config"] = config.model_dump(mode="json")
    info["run"] |= record | {"decoder_device": str(accelerator.device)}
    info_path.write_text(json.dumps(info, indent=2))
    return pipeline_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/toy_base.yaml", help="YAML with ToyBaseConfig fields")
    parser.add_argument(
        "--decoder-only",
        metavar="PIPELINE_DIR",
        help="run only the decoder stage on this trained pipeline (its VAE is replaced in place)",
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    config = load_config(ToyBaseConfig, args.config, args.overrides)
    out = finetune_decoder(config, args.decoder_only) if args.decoder_only else train(config)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
