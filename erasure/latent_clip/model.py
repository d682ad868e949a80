"""Latent-CLIP: a CLIP whose image tower is a ViT over VAE latents, so rewards and guidance never decode.

    spec = LatentClipSpec.preset("latent-vit-b/8")             # 64x64x4 latents (512 px SD 1.5 images), patch 8
    model = LatentClip.build(spec, tokenizer)
    model.save_pretrained("outputs/latent-clip")               # model.safetensors + config.json + tokenizer
    model = LatentClip.from_pretrained("outputs/latent-clip")
    scores = model.similarity(latents, ["a photo of a cat"])   # latents as the UNet sees them (VAE-scaled)

Both towers are transformers' CLIP modules: the image tower is ``CLIPVisionModel`` with ``num_channels`` set to
the VAE's latent channels and ``image_size`` to the latent side, so a patch of ``patch_size`` latent pixels is one
token. ``CLIPModel`` supplies the projections, the learnable temperature (``logit_scale``) and the symmetric
contrastive loss, and saves as safetensors plus a JSON config.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

from erasure.config import StrictModel

# CLIP clamps its temperature so that logits stay below 100 (open_clip does the same after every step).
MAX_LOGIT_SCALE = math.log(100.0)


class LatentClipSpec(StrictModel):
    """Shape of a Latent-CLIP; the defaults are the paper's Latent-ViT-B/8 for SD 1.5's 64x64x4 latents."""

    latent_channels: int = Field(4, ge=1, description="VAE latent channels: 4 (SD 1.x/2.x, SDXL) or 16 (SD3, Flux)")
    latent_size: int = Field(64, ge=1, description="latent side (image side / VAE down-sampling factor)")
    patch_size: int = Field(8, ge=1, description="latent pixels per patch side; one patch is one token")
    width: int = Field(768, ge=8, description="image tower hidden size")
    layers: int = Field(12, ge=1, description="image tower transformer blocks")
    heads: int = Field(12, ge=1, description="image tower attention heads")
    text_width: int = Field(512, ge=8, description="text tower hidden size")
    text_layers: int = Field(12, ge=1, description="text tower transformer blocks")
    text_heads: int = Field(8, ge=1, description="text tower attention heads")
    max_length: int = Field(77, ge=4, description="caption tokens")
    projection_dim: int = Field(512, ge=1, description="shared embedding size of both towers")

    PRESETS: ClassVar[dict[str, dict]] = {
        "latent-vit-b/8": {},
        # SD3 / Flux latents of 1024 px images: 16 channels, 128x128, patch 16 keeps 64 tokens.
        "latent-vit-b/16-16ch": {"latent_channels": 16, "latent_size": 128, "patch_size": 16},
    }

    @model_validator(mode="after")
    def _check_shapes(self) -> LatentClipSpec:
        if self.latent_size % self.patch_size:
            raise ValueError(
                f"latent_size {self.latent_size} is not a multiple of patch_size {self.patch_size}: "
                "pick a patch size that tiles the latent"
            )
        towers = (("width", self.width, self.heads), ("text_width", self.text_width, self.text_heads))
        for tower, width, heads in towers:
            if width % heads:
                raise ValueError(f"{tower} {width} is not divisible by its attention heads ({heads})")
        return self

    @classmethod
    def preset(cls, name: str, **overrides) -> LatentClipSpec:
        if name not in cls.PRESETS:
            raise ValueError(f"unknown Latent-CLIP preset {name!r}; valid presets: {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def clip_config(self, tokenizer: CLIPTokenizer) -> CLIPConfig:
        vision = CLIPVisionConfig(
            num_channels=self.latent_channels,
            image_size=self.latent_size,
            patch_size=self.patch_size,
            hidden_size=self.width,
            intermediate_size=4 * self.width,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            projection_dim=self.projection_dim,
        )
        text = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.text_width,
            intermediate_size=4 * self.text_width,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=self.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=self.projection_dim,
        )
        return CLIPConfig(
            text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=self.projection_dim
        )


class LatentClip(torch.nn.Module):
    """A ``CLIPModel`` over latents plus its tokenizer: embeddings, similarities and the contrastive loss."""

    def __init__(self, clip: CLIPModel, tokenizer: CLIPTokenizer):
        super().__init__()
        if clip.config.vision_config.num_channels == 3:
            raise ValueError("this CLIPModel reads 3-channel pixels, not VAE latents: load a Latent-CLIP directory")
        self.clip = clip
        self.tokenizer = tokenizer

    @classmethod
    def build(cls, spec: LatentClipSpec, tokenizer: CLIPTokenizer) -> LatentClip:
        """A randomly initialised model of ``spec``'s shape (seed with ``torch.manual_seed`` first)."""
        return cls(CLIPModel(spec.clip_config(tokenizer)), tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LatentClip:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} holds no config.json: not a Latent-CLIP saved with save_pretrained")
        return cls(CLIPModel.from_pretrained(path, use_safetensors=True), CLIPTokenizer.from_pretrained(path))

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        self.clip.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        return path

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latents the image tower reads."""
        vision = self.clip.config.vision_config
        return vision.num_channels, vision.image_size, vision.image_size

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        max_length = self.clip.config.text_config.max_position_embeddings
        return self.tokenizer(
            texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    def _check_latents(self, latents: torch.Tensor) -> None:
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"latents of shape {tuple(latents.shape)} do not fit this Latent-CLIP, which reads "
                f"(batch, {', '.join(map(str, self.latent_shape))}): encode images at the matching resolution"
            )

    def encode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings of VAE-scaled latents; differentiable with respect to ``latents``."""
        self._check_latents(latents)
        features = self.clip.get_image_features(pixel_values=latents).pooler_output
        return F.normalize(features, dim=-1)

    def encode_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.get_text_features(input_ids=input_ids).pooler_output, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings."""
        return self.encode_input_ids(self.tokenize(texts))

    def similarity(self, latents: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity ``(len(latents), len(texts))``."""
        return self.encode_latents(latents) @ self.encode_text(texts).T

    def forward(self, latents: torch.Tensor, input_ids: torch.Tensor):
        """Training: ``CLIPModel``'s output for matching (latent, caption) pairs: the symmetric InfoNCE ``loss``
        with the learned temperature, and the unit-norm ``image_embeds`` / ``text_embeds``."""
        self._check_latents(latents)
        return self.clip(input_ids=input_ids, pixel_values=latents, return_loss=True)

    def clamp_temperature(self) -> None:
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
