"""Latent-CLIP: CLIP over VAE latents, for zero-shot classification, rewards, ReNO and safety guidance."""

from erasure.latent_clip.guidance import LatentClipGuidance
from erasure.latent_clip.model import LatentClip, LatentClipSpec
from erasure.latent_clip.reno import few_step_sampler, optimise_noise
from erasure.latent_clip.reward import LatentClipReward, zero_shot_classify

__all__ = [
    "LatentClip",
    "LatentClipGuidance",
    "LatentClipReward",
    "LatentClipSpec",
    "few_step_sampler",
    "optimise_noise",
    "zero_shot_classify",
]
