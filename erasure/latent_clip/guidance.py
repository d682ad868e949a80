"""Safety guidance with a Latent-CLIP: after each early denoising step, push the latents away from a concept.

    guidance = LatentClipGuidance(LatentClip.from_pretrained(path), "watermark")
    image = pipe(prompt, callback_on_step_end=guidance.for_prompts(prompt)).images[0]   # SLDPipeline included

The push is the gradient of how much closer each image's latents are to its caption with the concept
(``"{prompt}, watermark"``) than to the caption alone, normalised per image so that ``scale`` is a step in units of
the latents' RMS. A small Latent-CLIP trained on captions knows a concept in that context, not as a bare word: on the
toy world the bare word "watermark" ranked watermarked latents at chance (AUROC 0.48) where the caption pair
separated all of them. The push acts on the early steps only (``warmup_steps`` to ``stop_step``): the gradient of a
small image tower is partly adversarial, small marks that the later steps denoise away, while a push late in
sampling leaves them in the image (benchmarks/NOTES.md, "Latent-CLIP on the toy world"). Like SLD it can wait for
a warm-up, gate on a threshold and build a momentum. No VAE decode: one image-tower forward and backward per step.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from erasure.latent_clip.model import LatentClip
from erasure.latent_clip.reward import LatentClipReward

DEFAULT_TEMPLATE = "{prompt}, {concept}"


class LatentClipGuidance:
    """A diffusers ``callback_on_step_end`` (reads and rewrites ``latents``) once bound to a call's prompts with
    :meth:`for_prompts`; its state resets at step 0."""

    tensor_inputs = ["latents"]

    def __init__(
        self,
        model: LatentClip,
        concept: str,
        scale: float = 0.05,
        warmup_steps: int = 0,
        stop_step: int | None = 8,
        threshold: float | None = None,
        momentum_scale: float = 0.3,
        mom_beta: float = 0.4,
        template: str = DEFAULT_TEMPLATE,
    ):
        if scale < 0:
            raise ValueError(f"scale must be >= 0 (a step away from the concept), got {scale}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if stop_step is not None and stop_step <= warmup_steps:
            raise ValueError(f"stop_step ({stop_step}) must come after warmup_steps ({warmup_steps})")
        if not 0 <= mom_beta <= 1:
            raise ValueError(f"mom_beta must be in [0, 1], got {mom_beta}")
        if "{prompt}" not in template or "{concept}" not in template:
            raise ValueError(f"template {template!r} must hold '{{prompt}}' and '{{concept}}'")
        self.model, self.concept, self.template = model, concept, template
        self.scale, self.warmup_steps, self.stop_step, self.threshold = scale, warmup_steps, stop_step, threshold
        self.momentum_scale, self.mom_beta = momentum_scale, mom_beta
        self.reward: LatentClipReward | None = None
        self.momentum: torch.Tensor | None = None

    def for_prompts(self, prompts: str | list[str], num_images_per_prompt: int = 1) -> LatentClipGuidance:
        """This guidance for a call with these prompts (the pipeline's order: each prompt's images together)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        captions = [p for p in prompts for _ in range(num_images_per_prompt)]
        concepts = [self.template.replace("{concept}", self.concept).replace("{prompt}", p) for p in captions]
        caption_ids = self.model.tokenize(captions)
        cut = (self.model.tokenize(concepts) == caption_ids).all(dim=1)
        if cut.any():  # the two texts read alike, so the direction is zero: those images go unguided
            warnings.warn(
                f"{int(cut.sum())} of {len(cut)} images go unguided: the Latent-CLIP reads "
                f"{caption_ids.shape[1]} tokens, which cut {self.concept!r} off "
                f"{concepts[int(cut.nonzero()[0])]!r}",
                stacklevel=2,
            )
        self.reward = LatentClipReward(self.model, concepts, baseline=captions)
        return self

    def push(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        """The latents after this step's guidance (unchanged outside the guided steps)."""
        if self.reward is None:
            raise RuntimeError("bind the call's prompts first: callback_on_step_end=guidance.for_prompts(prompts)")
        if step == 0 or self.momentum is None:
            self.momentum = torch.zeros_like(latents)
        if self.stop_step is not None and step >= self.stop_step:
            return latents
        if step < self.warmup_steps and self.momentum_scale == 0:
            return latents  # the warm-up only feeds a momentum that is never used
        shows, grad = self.reward.with_grad(latents)
        grad = grad.to(latents.dtype)
        per_image = (-1,) + (1,) * (grad.ndim - 1)
        rms = grad.flatten(1).pow(2).mean(dim=1).sqrt().clamp_min(1e-12).view(per_image)
        gate = torch.ones_like(shows) if self.threshold is None else (shows > self.threshold).to(shows.dtype)
        step_away = self.scale * gate.to(latents.dtype).view(per_image) * grad / rms
        step_away = step_away + self.momentum_scale * self.momentum
        self.momentum = self.mom_beta * self.momentum + (1 - self.mom_beta) * step_away
        return latents - step_away if step >= self.warmup_steps else latents

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        callback_kwargs["latents"] = self.push(callback_kwargs["latents"], step_index)
        return callback_kwargs
