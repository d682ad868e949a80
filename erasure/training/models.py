"""The pieces of a diffusers pipeline that training touches, and text conditioning for SD 1.x/2.x and SDXL.

SDXL conditions the UNet on both text encoders (penultimate hidden states side by side), the second encoder's
pooled output and the "time ids" (original size, crop corner, target size); SD 1.x on one encoder's last
hidden state. :func:`encode_prompts` hides that difference from the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig

from erasure.config import ConfigError
from erasure.loading import from_pretrained_any, model_index, pipeline_class
from erasure.recipe import ModelSection, Recipe

PIPELINES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
HALF_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}  # accelerate's mixed-precision modes as dtypes


@dataclass
class Components:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDPMScheduler
    tokenizers: list
    text_encoders: list

    @property
    def sdxl(self) -> bool:
        return len(self.text_encoders) == 2


def model_kind(model: ModelSection) -> str:
    """``model.kind``, or the family the model's ``model_index.json`` names (``model.config``'s for a single file)."""
    if model.kind is not None:
        return model.kind
    try:
        cls = pipeline_class(model_index(model.pretrained, model.config), model.pretrained)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.pretrained = '{model.pretrained}': {err}; or set model.kind (sd | sdxl)") from err
    kinds = {"SLDPipeline": "sd", "SLDXLPipeline": "sdxl"}
    if cls.__name__ not in kinds:
        raise ConfigError(
            f"model.pretrained = '{model.pretrained}' is a {cls.__name__.removeprefix('SLD')} model; "
            "training supports SD 1.x/2.x and SDXL UNet models"
        )
    return kinds[cls.__name__]


def load_components(model: ModelSection, prediction_type: str | None = None) -> Components:
    """Load the pipeline (hub id, folder or single file) and take its parts; the training scheduler is a DDPM with
    the base config. ``model.kind`` must be resolved (:func:`model_kind`)."""
    options = {key: value for key, value in (("revision", model.revision), ("variant", model.variant)) if value}
    if model.kind == "sd":
        options |= {"safety_checker": None, "requires_safety_checker": False}
    pipe = from_pretrained_any(PIPELINES[model.kind], model.pretrained, model.config, **options)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if prediction_type is not None:
        scheduler.register_to_config(prediction_type=prediction_type)
    sdxl = model.kind == "sdxl"
    return Components(
        unet=pipe.unet,
        vae=pipe.vae,
        scheduler=scheduler,
        tokenizers=[pipe.tokenizer, pipe.tokenizer_2] if sdxl else [pipe.tokenizer],
        text_encoders=[pipe.text_encoder, pipe.text_encoder_2] if sdxl else [pipe.text_encoder],
    )


def tokenize(tokenizers: list, captions: list[str]) -> list[torch.Tensor]:
    """Padded token ids per tokenizer, ``(B, max_length)`` each."""
    return [
        tok(
            captions, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt"
        ).input_ids
        for tok in tokenizers
    ]


def encode_prompts(
    text_encoders: list,
    input_ids: list[torch.Tensor],
    time_ids: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, dict | None]:
    """UNet conditioning in the UNet's ``dtype``: ``encoder_hidden_states`` and, for SDXL, ``added_cond_kwargs``
    with each example's ``time_ids`` ``(B, 6)``: original size, crop top-left, target size (``Crop.time_ids``).

    Encoders that train token rows run in fp32, a frozen UNet in half precision without autocast: the cast here
    is what lets them meet, as diffusers' textual-inversion scripts cast.
    """
    if len(text_encoders) == 1:
        return text_encoders[0](input_ids[0], return_dict=False)[0].to(dtype), None
    hidden, pooled = [], None
    for encoder, ids in zip(text_encoders, input_ids, strict=True):
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder (with projection) gives the pooled text embedding
    added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(pooled.device, dtype)}
    return torch.cat(hidden, dim=-1).to(dtype), added


def trainable_unet_parameters(unet: UNet2DConditionModel, recipe: Recipe) -> list[torch.nn.Parameter]:
    """Attach LoRA adapters (or unfreeze every weight for a full fine-tune); none in ``tokens_only`` mode."""
    unet.requires_grad_(False)
    if recipe.train.mode == "tokens_only":
        return []
    if recipe.lora.full_unet:
        unet.requires_grad_(True)
    else:
        lora = recipe.lora
        config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha or lora.rank,
            init_lora_weights="gaussian",
            target_modules=lora.target_modules,
        )
        unet.add_adapter(config)
    return [p for p in unet.parameters() if p.requires_grad]
