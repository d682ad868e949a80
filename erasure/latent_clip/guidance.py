"""Safety guidance with a Latent-CLIP: after each denoising step, push the latents away from a concept.

    guidance = LatentClipGuidance(LatentClip.from_pretrained(path), "a watermark", scale=0.05, warmup_steps=10)
    image = pipe(prompt, callback_on_step_end=guidance).images[0]     # any SD pipeline, SLDPipeline included

The push is the gradient of the latents' Latent-CLIP similarity to the concept, normalised per image so that
``scale`` is a step in units of the latents' RMS. It follows SLD's schedule: nothing during the warm-up, only
images whose similarity to the concept exceeds ``threshold``, and a momentum that builds from the first step.
No VAE decode: one image-tower forward and backward per step.
"""

from __future__ import annotations

from typing import Any

import torch

from erasure.latent_clip.model import LatentClip
from erasure.latent_clip.reward import LatentClipReward


class LatentClipGuidance:
    """A diffusers ``callback_on_step_end`` (reads and rewrites ``latents``); its state resets at step 0."""

    tensor_inputs = ["latents"]

    def __init__(
        self,
        model: LatentClip,
        concept: str,
        scale: float = 0.05,
        warmup_steps: int = 10,
        threshold: float = -1.0,
        momentum_scale: float = 0.3,
        mom_beta: float = 0.4,
    ):
        if scale < 0:
            raise ValueError(f"scale must be >= 0 (a step away from the concept), got {scale}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 <= mom_beta <= 1:
            raise ValueError(f"mom_beta must be in [0, 1], got {mom_beta}")
        self.reward = LatentClipReward(model, concept)
        self.scale, self.warmup_steps, self.threshold = scale, warmup_steps, threshold
        self.momentum_scale, self.mom_beta = momentum_scale, mom_beta
        self.momentum: torch.Tensor | None = None

    def push(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        """The latents after this step's guidance (unchanged during the warm-up)."""
        if step == 0 or self.momentum is None:
            self.momentum = torch.zeros_like(latents)
        if step < self.warmup_steps and self.momentum_scale == 0:
            return latents  # the warm-up only feeds a momentum that is never used
        similarity, grad = self.reward.with_grad(latents)
        grad = grad.to(latents.dtype)
        per_image = (-1,) + (1,) * (grad.ndim - 1)
        rms = grad.flatten(1).pow(2).mean(dim=1).sqrt().clamp_min(1e-12).view(per_image)
        gate = (similarity > self.threshold).to(latents.dtype).view(per_image)
        step_away = self.scale * gate * grad / rms + self.momentum_scale * self.momentum
        self.momentum = self.mom_beta * self.momentum + (1 - self.mom_beta) * step_away
        return latents - step_away if step >= self.warmup_steps else latents

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        callback_kwargs["latents"] = self.push(callback_kwargs["latents"], step_index)
        return callback_kwargs
