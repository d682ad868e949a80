"""ReNO (Eyring et al., NeurIPS 2024) with a Latent-CLIP reward: optimise the initial noise of a few-step sampler.

    sample = few_step_sampler(pipe, "two red circles on the left", num_inference_steps=1)
    result = optimise_noise(sample, LatentClipReward(model, "two red circles on the left"), noise)
    image = pipe.vae.decode(result.latents / pipe.vae.config.scaling_factor).sample   # decode once, at the end

ReNO's defaults: SGD with Nesterov momentum 0.9, lr 5, 50 iterations, gradient-norm clip 0.1, and its noise-norm
regulariser, the negative log-density of the noise's norm under the chi distribution that a Gaussian's norm
follows, λ (½‖z‖² − (d − 1) log‖z‖) with λ = 0.01, which keeps the noise where the sampler was trained.
Because the reward reads latents, each iteration runs the sampler and the image tower only: no VAE decode.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm


def noise_norm_regulariser(noise: torch.Tensor) -> torch.Tensor:
    """Per image: −log chi_d(‖z‖) up to a constant; smallest at ‖z‖² = d − 1, where Gaussian noise lives."""
    dim = noise[0].numel()
    norm = torch.linalg.vector_norm(noise.flatten(1).float(), dim=1)
    return 0.5 * norm**2 - (dim - 1) * torch.log(norm)


def few_step_sampler(
    pipe, prompt: str, num_inference_steps: int = 1, guidance_scale: float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``noise -> final latents`` of an SD 1.x/2.x pipeline, differentiable (diffusers' ``__call__`` is no_grad).

    The final latents are VAE-scaled, as the pipeline decodes them and as a Latent-CLIP reads them.
    """
    if hasattr(pipe, "text_encoder_2"):
        raise ValueError("few_step_sampler supports SD 1.x/2.x pipelines; SDXL needs its added time conditioning")
    do_cfg = guidance_scale > 1
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, pipe.unet.device, 1, do_cfg)
    rows = [uncond, cond] if do_cfg else [cond]

    def sample(noise: torch.Tensor) -> torch.Tensor:
        scheduler = copy.deepcopy(pipe.scheduler)  # schedulers keep per-run state (step index, history)
        scheduler.set_timesteps(num_inference_steps, device=noise.device)
        latents = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            hidden = torch.cat([row.expand(len(noise), *row.shape[1:]) for row in rows])
            eps = pipe.unet(model_input, t, encoder_hidden_states=hidden).sample
            if do_cfg:
                eps_uncond, eps_text = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_text - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        return latents

    return sample


@dataclass
class NoiseOptimisation:
    """The best noise found (by reward, as ReNO keeps it), its latents, and every iteration's numbers."""

    noise: torch.Tensor
    latents: torch.Tensor
    rewards: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def optimise_noise(
    sample: Callable[[torch.Tensor], torch.Tensor],
    reward: Callable[[torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    iterations: int = 50,
    lr: float = 5.0,
    grad_clip: float = 0.1,
    regulariser_weight: float = 0.01,
    progress: bool = True,
) -> NoiseOptimisation:
    """Maximise ``reward(sample(noise))`` over ``noise``; the last iteration only evaluates, as in ReNO."""
    noise = noise.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([noise], lr=lr, momentum=0.9, nesterov=True)
    history = NoiseOptimisation(noise.detach().clone(), noise.detach().clone())
    for iteration in tqdm(range(iterations), desc="ReNO", disable=not progress):
        optimizer.zero_grad(set_to_none=True)
        latents = sample(noise)
        score = reward(latents).mean()
        loss = -score + regulariser_weight * noise_norm_regulariser(noise).mean()
        if not history.rewards or score.item() > max(history.rewards):
            history.noise, history.latents = noise.detach().clone(), latents.detach().clone()
        history.rewards.append(score.item())
        history.losses.append(loss.item())
        if iteration < iterations - 1:
            loss.backward()
            torch.nn.utils.clip_grad_norm_([noise], grad_clip)
            optimizer.step()
    return history
