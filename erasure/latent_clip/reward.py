"""Uses of a Latent-CLIP that read latents directly: zero-shot classification and a prompt reward with its gradient.

reward = LatentClipReward(model, "two red circles")
score, grad = reward.with_grad(latents)        # d score / d latents, no VAE decode anywhere
probs = zero_shot_classify(model, latents, ["circles", "squares"], template="a red {} on a blue background")
"""

from __future__ import annotations

import torch

from erasure.latent_clip.model import LatentClip


class LatentClipReward:
    """Cosine similarity of latents to a prompt. The prompt is encoded once; each call runs only the image tower."""

    def __init__(self, model: LatentClip, prompt: str):
        self.model = model
        self.prompt = prompt
        with torch.no_grad():
            self.text_embed = model.encode_text([prompt])[0]

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` rewards, differentiable with respect to ``latents``."""
        dtype = self.text_embed.dtype
        return self.model.encode_latents(latents.to(self.model.device, dtype)) @ self.text_embed

    def with_grad(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards, their gradient with respect to ``latents``), also inside a ``no_grad`` block (a pipeline)."""
        with torch.enable_grad():
            leaf = latents.detach().requires_grad_(True)
            rewards = self(leaf)
            (grad,) = torch.autograd.grad(rewards.sum(), leaf)
        return rewards.detach(), grad


@torch.no_grad()
def zero_shot_classify(
    model: LatentClip, latents: torch.Tensor, labels: list[str], template: str = "{}"
) -> torch.Tensor:
    """``(len(latents), len(labels))`` probabilities that each latent shows each label, as CLIP scores classes:
    softmax over the learned-temperature similarities to ``template.format(label)``."""
    if "{}" not in template:
        raise ValueError(f"template {template!r} must contain '{{}}' where the label goes")
    texts = [template.format(label) for label in labels]
    similarity = model.similarity(latents.to(model.device), texts)
    return (model.clip.logit_scale.exp() * similarity).softmax(dim=-1)
