"""Fixed-seed validation samples during training: each prompt plain and with the learned negative prompt.

The grid has one row per prompt and two columns (plain | with negative), so the effect of the negative prompt
is visible at a glance; it is written to ``RUN_DIR/validation/step-N.png`` and to the TensorBoard tracker. The
negative prompt is applied as the generation commands apply it: as concept negation (``erasure.pipelines``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler
from diffusers.utils import make_image_grid
from PIL import Image

from datasets_icd.geometry import fill_negative_prompt
from erasure.pipelines import SLDPipeline, SLDXLPipeline
from erasure.recipe import ValidationSection
from erasure.training.models import HALF_PRECISION, Components


def sampling_pipeline(parts: Components, unet) -> SLDPipeline | SLDXLPipeline:
    """A pipeline over the very modules being trained (no copy), with a DDIM sampler of the same schedule."""
    scheduler = DDIMScheduler.from_config(parts.scheduler.config)
    if parts.sdxl:
        return SLDXLPipeline(
            vae=parts.vae,
            text_encoder=parts.text_encoders[0],
            text_encoder_2=parts.text_encoders[1],
            tokenizer=parts.tokenizers[0],
            tokenizer_2=parts.tokenizers[1],
            unet=unet,
            scheduler=scheduler,
        )
    return SLDPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoders[0],
        tokenizer=parts.tokenizers[0],
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def validation_grid(
    pipe, settings: ValidationSection, negative_template: str, resolution: int, autocast
) -> Image.Image:
    images = []
    for prompt in settings.prompts:
        for negative in (None, fill_negative_prompt(negative_template, prompt)):
            generator = torch.Generator(pipe.device).manual_seed(settings.seed)
            with autocast():
                result = pipe(
                    prompt,
                    concept_negative_prompt=negative,
                    num_inference_steps=settings.num_inference_steps,
                    height=resolution,
                    width=resolution,
                    generator=generator,
                )
            images.append(result.images[0])
    return make_image_grid(images, rows=len(settings.prompts), cols=2)


def log_validation(
    accelerator: Accelerator, pipe, settings: ValidationSection, negative_template: str, resolution: int, step: int
) -> Path:
    """Sample, save the grid, log it to TensorBoard when that tracker is active; main process only."""
    pipe.set_progress_bar_config(disable=True)
    # The modules are in mixed dtypes (fp32 VAE and token encoders, half-precision UNet): sampling runs under autocast
    # in the training's dtype, which accelerate's own autocast skips for fp16 on a CPU.
    dtype = HALF_PRECISION.get(accelerator.mixed_precision)
    autocast = partial(torch.autocast, accelerator.device.type, dtype=dtype, enabled=dtype is not None)
    grid = validation_grid(pipe, settings, negative_template, resolution, autocast)
    out = Path(accelerator.project_dir) / "validation" / f"step-{step:06d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images(
                {"validation (plain | negative prompt)": np.asarray(grid)[None]}, step, dataformats="NHWC"
            )
    return out
