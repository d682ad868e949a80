"""Uses of a Latent-CLIP that read latents directly: zero-shot classification and a prompt reward with its gradient.

reward = LatentClipReward(model, "two red circles")
score, grad = reward.with_grad(latents)        # d score / d latents, no VAE decode anywhere
# per image: how much closer to the caption with the concept than to the caption alone
shows = LatentClipReward(model, ["two red circles, watermark"], baseline=["two red circles"])
probs = zero_shot_classify(model, latents, ["circles", "squares"], template="a red {} on a blue background")
"""

from __future__ import annotations

import torch

from erasure.latent_clip.model import LatentClip


class LatentClipReward:
    """Cosine similarity of latents to a prompt, or one prompt per image. The texts are encoded once; each call
    runs only the image tower.

    With a ``baseline`` the reward is the similarity to the prompt minus that to the baseline: a direction that
    holds only what the prompt adds, e.g. a concept in the context of the caption it was trained with. A small
    Latent-CLIP that only read full captions knows "watermark" that way and not as a bare word (benchmarks/NOTES.md).
    """

    def __init__(self, model: LatentClip, prompt: str | list[str], baseline: str | list[str] | None = None):
        self.model = model
        self.prompt = prompt
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        with torch.no_grad():
            embed = model.encode_text(texts)
            if baseline is not None:
                baselines = [baseline] if isinstance(baseline, str) else list(baseline)
                if len(baselines) != len(texts):
                    raise ValueError(f"{len(baselines)} baselines for {len(texts)} prompts: give one per prompt")
                embed = embed - model.encode_text(baselines)
        self.text_embed = embed[0] if isinstance(prompt, str) else embed
        """``(dim,)`` for one prompt, ``(n, dim)`` for a list: one row per image of a call."""

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` rewards, differentiable with respect to ``latents``."""
        dtype = self.text_embed.dtype
        if self.text_embed.ndim == 2 and len(self.text_embed) != len(latents):
            raise ValueError(f"{len(latents)} latents for {len(self.text_embed)} prompts: give one prompt per image")
        embeds = self.model.encode_latents(latents.to(self.model.device, dtype))
        return (embeds * self.text_embed).sum(dim=-1)

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
