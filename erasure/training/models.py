"""The pieces of a diffusers pipeline that training touches, and text conditioning for SD 1.x/2.x, SDXL, SD3, FLUX.

SDXL conditions the UNet on both text encoders (penultimate hidden states side by side), the second encoder's
pooled output and the "time ids" (original size, crop corner, target size); SD 1.x on one encoder's last
hidden state. :func:`encode_prompts` hides that difference from the loop.

SD3 / SD3.5 and FLUX.1 are flow-matching transformers (:func:`flow_prediction`): SD3 reads both CLIP encoders'
penultimate states padded to T5's width and followed by T5's, with both pooled outputs; FLUX reads T5's states and
CLIP's pooled output, on latents packed into 2 x 2 patches. Location tokens are learned in the CLIP encoders only:
T5 sees ``<loc_3_3>`` as its sub-word pieces (the same pieces at training and at generation, so they still mark
the place consistently), while the CLIP rows carry the learned meaning. Growing T5's 32k-row table would add a
second set of trained rows per token to a 4.7B-parameter encoder for no tool that could load it: diffusers'
``load_textual_inversion`` only fills CLIP encoders.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import compute_density_for_timestep_sampling
from peft import LoraConfig

from erasure.attention import last_key_is_the_zero_row, last_key_repeated
from erasure.config import ConfigError
from erasure.loading import from_pretrained_any, model_index, pipeline_class
from erasure.recipe import ModelSection, Recipe

PIPELINES = {
    "sd": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
    "flux": FluxPipeline,
}
FLOW_KINDS = ("sd3", "flux")  # flow-matching transformers; the others are UNet (DDPM) models
T5_LENGTH = {"sd3": 256, "flux": 512}  # the pipelines' default max_sequence_length: train on what they sample with
FLUX_GUIDANCE = 3.5  # the guidance FLUX.1-dev's embedding is given in training, as in diffusers' FLUX LoRA script
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# The joint blocks' text-stream projections too: the location tokens reach the image only through that stream, so
# it is where the model can learn to tie the concept to them (as diffusers' SD3/FLUX LoRA scripts target).
TRANSFORMER_TARGETS = [*UNET_TARGETS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
HALF_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}  # accelerate's mixed-precision modes as dtypes


@dataclass
class Components:
    unet: UNet2DConditionModel  # the denoiser: the UNet, or the SD3 / FLUX transformer
    vae: AutoencoderKL
    scheduler: DDPMScheduler | FlowMatchEulerDiscreteScheduler
    tokenizers: list  # the CLIP ones, which learn the location tokens
    text_encoders: list
    kind: str = "sd"
    t5_tokenizer: object = None  # SD3 / FLUX: the frozen T5 beside the CLIP encoders
    t5: object = None

    @property
    def sdxl(self) -> bool:
        return self.kind == "sdxl"

    @property
    def flow(self) -> bool:
        return self.kind in FLOW_KINDS

    def tokenize(self, captions: list[str]) -> list[torch.Tensor]:
        """Token ids of every tokenizer: the CLIP ones', then T5's at the pipeline's sequence length."""
        ids = tokenize(self.tokenizers, captions)
        if self.t5_tokenizer is not None:
            ids += tokenize([self.t5_tokenizer], captions, T5_LENGTH[self.kind])
        return ids


def model_kind(model: ModelSection) -> str:
    """``model.kind``, or the family the model's ``model_index.json`` names (``model.config``'s for a single file)."""
    if model.kind is not None:
        return model.kind
    try:
        cls = pipeline_class(model_index(model.pretrained, model.config), model.pretrained)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.pretrained = '{model.pretrained}': {err}; or set model.kind (sd | sdxl)") from err
    kinds = {"SLDPipeline": "sd", "SLDXLPipeline": "sdxl", "SLDSD3Pipeline": "sd3", "SLDFluxPipeline": "flux"}
    if cls.__name__ not in kinds:
        raise ConfigError(
            f"model.pretrained = '{model.pretrained}' is a {cls.__name__.removeprefix('SLD')} model; "
            "training supports SD 1.x/2.x, SDXL, SD3 and FLUX.1 models"
        )
    return kinds[cls.__name__]


def load_components(model: ModelSection, prediction_type: str | None = None) -> Components:
    """Load the pipeline (hub id, folder or single file) and take its parts; the training scheduler is a DDPM with
    the base config (a flow-matching one for SD3 / FLUX). ``model.kind`` must be resolved (:func:`model_kind`)."""
    options = {key: value for key, value in (("revision", model.revision), ("variant", model.variant)) if value}
    if model.kind == "sd":
        options |= {"safety_checker": None, "requires_safety_checker": False}
    pipe = from_pretrained_any(PIPELINES[model.kind], model.pretrained, model.config, **options)
    if model.kind == "sd3":
        return Components(
            pipe.transformer,
            pipe.vae,
            FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config),
            [pipe.tokenizer, pipe.tokenizer_2],
            [pipe.text_encoder, pipe.text_encoder_2],
            "sd3",
            pipe.tokenizer_3,
            pipe.text_encoder_3,
        )
    if model.kind == "flux":
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        return Components(
            pipe.transformer,
            pipe.vae,
            scheduler,
            [pipe.tokenizer],
            [pipe.text_encoder],
            "flux",
            pipe.tokenizer_2,
            pipe.text_encoder_2,
        )
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
        kind=model.kind,
    )


def tokenize(tokenizers: list, captions: list[str], max_length: int | None = None) -> list[torch.Tensor]:
    """Padded token ids per tokenizer, ``(B, max_length)`` each (the tokenizer's own limit by default)."""
    return [
        tok(
            captions,
            padding="max_length",
            truncation=True,
            max_length=max_length or tok.model_max_length,
            return_tensors="pt",
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


def lora_targets(kind: str) -> list[str]:
    """The default LoRA target modules of a model family (``lora.target_modules: null``)."""
    return TRANSFORMER_TARGETS if kind in FLOW_KINDS else UNET_TARGETS


def flow_sigmas(
    scheduler: FlowMatchEulerDiscreteScheduler, batch: int, weighting: str, generator: torch.Generator
) -> torch.Tensor:
    """Noise levels σ ``(B,)`` as diffusers' SD3/FLUX scripts draw them: a density (logit-normal by default) over
    the scheduler's training schedule, whose shift (SD3's 3.0; none for FLUX's dynamic shifting) it keeps."""
    u = compute_density_for_timestep_sampling(
        weighting, batch, logit_mean=0.0, logit_std=1.0, mode_scale=1.29, device=generator.device, generator=generator
    )
    indices = (u * scheduler.config.num_train_timesteps).long().clamp(max=len(scheduler.sigmas) - 2)
    return scheduler.sigmas[indices.cpu()].to(generator.device)  # the last sigma is the terminal 0


def flow_noising(
    latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow-matching pair: x_t = (1 - σ) x0 + σ ε and its velocity target v = ε - x0."""
    sigma = sigmas.view(-1, 1, 1, 1).to(latents.dtype)
    return (1 - sigma) * latents + sigma * noise, noise - latents


def flow_prediction(
    parts: Components,
    transformer,
    noisy: torch.Tensor,
    sigmas: torch.Tensor,
    text_encoders: list,
    input_ids: list[torch.Tensor],
    dtype: torch.dtype,
    train_tokens: bool,
) -> torch.Tensor:
    """The SD3 / FLUX transformer's velocity for ``noisy`` latents ``(B, C, h, w)``, in that layout.

    FLUX runs on 2 x 2 patches packed into a sequence; its prediction is unpacked again, so the loss and the region
    mask stay in the latent grid the UNet path uses. CLIP states carry gradients only when ``train_tokens`` (to the
    token rows); T5 is frozen.
    """
    timestep = (sigmas * 1000).to(dtype)
    if parts.t5 is None:  # SD3 without T5: one zero row standing for the pipeline's 256, where that is exact
        clip_ids, t5_ids = input_ids, None
        width = transformer.config.joint_attention_dim
        one_row = last_key_is_the_zero_row(transformer)
        rows = 1 if one_row else T5_LENGTH["sd3"]
        t5_states = torch.zeros(len(noisy), rows, width, device=noisy.device, dtype=dtype)
        repeated = last_key_repeated(T5_LENGTH["sd3"]) if one_row else contextlib.nullcontext()
    else:
        *clip_ids, t5_ids = input_ids
        with torch.no_grad():
            t5_states = parts.t5(t5_ids.to(noisy.device), return_dict=False)[0].to(dtype)
        repeated = contextlib.nullcontext()
    if parts.kind == "sd3":
        hidden, pooled = [], []
        for encoder, ids in zip(text_encoders, clip_ids, strict=True):
            with torch.set_grad_enabled(train_tokens):
                out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(hidden, dim=-1).to(dtype)
        clip = torch.nn.functional.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        with repeated:
            return transformer(
                hidden_states=noisy,
                timestep=timestep,
                encoder_hidden_states=torch.cat([clip, t5_states], dim=-2),
                pooled_projections=torch.cat(pooled, dim=-1).to(dtype),
                return_dict=False,
            )[0]
    batch, channels, height, width = noisy.shape
    with torch.set_grad_enabled(train_tokens):
        pooled = text_encoders[0](clip_ids[0], return_dict=False)[1].to(dtype)
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((batch,), FLUX_GUIDANCE, device=noisy.device, dtype=dtype)
    packed = transformer(
        hidden_states=FluxPipeline._pack_latents(noisy, batch, channels, height, width),
        timestep=timestep / 1000,  # FLUX takes σ itself
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=t5_states,
        txt_ids=torch.zeros(t5_states.shape[1], 3, device=noisy.device, dtype=dtype),
        img_ids=FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, dtype),
        return_dict=False,
    )[0]
    # _unpack_latents takes the image size in pixels: with a scale factor of 1 that is the latent size itself.
    return FluxPipeline._unpack_latents(packed, height, width, 1)


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
            target_modules=lora.target_modules or lora_targets(recipe.model.kind),
        )
        unet.add_adapter(config)
    return [p for p in unet.parameters() if p.requires_grad]
