"""The Geom-Erasing region-reweighted diffusion loss, with an optional Min-SNR weighting.

With T latent positions of which K lie inside the concept's boxes, a position inside gets weight
T / (K + α(T − K)) and one outside α·T / (K + α(T − K)). The weights average to 1 over the image, so α only moves
attention between the concept region and the rest: α < 1 makes the model fit the concept's pixels (which the
caption now explains through location tokens) harder than the background; α = 1 is the plain MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr


def region_weights(masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-position weights from region masks ``(B, 1, h, w)`` (1 inside a concept box, 0 outside)."""
    total = masks[0].numel()
    inside = masks.flatten(1).sum(dim=1).view(-1, 1, 1, 1)
    denominator = inside + alpha * (total - inside)
    return torch.where(masks > 0, total / denominator, alpha * total / denominator)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights per sample (Hang et al. 2023), for the scheduler's prediction type."""
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"Unknown prediction type {prediction_type}: Min-SNR weighting needs epsilon or v_prediction")


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    masks: torch.Tensor,
    alpha: float,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of the region-weighted squared error; ``sample_weights`` (e.g. Min-SNR) scale each sample."""
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
    per_sample = (squared * region_weights(masks.float(), alpha)).mean(dim=(1, 2, 3))
    if sample_weights is not None:
        per_sample = per_sample * sample_weights
    return per_sample.mean()
