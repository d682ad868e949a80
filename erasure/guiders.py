"""Safe Latent Diffusion as a diffusers guider, for the modular pipelines (``diffusers.modular_pipelines``).

    from diffusers.modular_pipelines import StableDiffusion3AutoBlocks
    pipe = StableDiffusion3AutoBlocks().init_pipeline("stabilityai/stable-diffusion-3.5-medium")
    pipe.load_components()
    guider = SafeLatentDiffusionGuidance(guidance_scale=7.0, **SafetyConfig.MEDIUM)
    # the safety concept's embeddings, e.g. from a StableDiffusion3Pipeline `sd3` on the same text encoders
    embeds, _, pooled, _ = sd3.encode_prompt(DEFAULT_SAFETY_CONCEPT, None, None, do_classifier_free_guidance=False)
    guider.set_safety_conditioning(encoder_hidden_states=embeds, text_embeds=pooled)
    pipe.update_components(guider=guider)
    image = pipe(prompt="a photo", negative_prompt="", output="images")[0]

The math is ``erasure.sld.safety_guidance_step``, as in ``erasure.pipelines``. What differs is the plumbing: a modular
denoise step hands its guider the denoiser inputs as (conditional, unconditional) pairs and calls the denoiser once
per batch the guider prepares. The safety concept is no input of those steps, so the guider holds its conditioning
itself and prepares a third batch: the conditional one with the safety concept's inputs in place of the prompt's.
That is three denoiser calls per step (two in the steps where the safety branch cannot change the result), not the
single batched call of ``erasure.pipelines``. The SD3 and SDXL modular pipelines take guiders; the FLUX.1 one runs
the distilled model without any (use ``SLDFluxPipeline`` there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

from erasure.sld import SafetyConfig, safety_guidance_step

if TYPE_CHECKING:
    from diffusers.modular_pipelines.modular_pipeline import BlockState


class SafeLatentDiffusionGuidance(BaseGuidance):
    """Classifier-free guidance plus SLD's push away from a safety concept; ``sld_*`` as in :class:`SafetyConfig`."""

    _input_predictions = ["pred_cond", "pred_uncond", "pred_safety"]

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        sld_guidance_scale: float = SafetyConfig.sld_guidance_scale,
        sld_warmup_steps: int = SafetyConfig.sld_warmup_steps,
        sld_threshold: float = SafetyConfig.sld_threshold,
        sld_momentum_scale: float = SafetyConfig.sld_momentum_scale,
        sld_mom_beta: float = SafetyConfig.sld_mom_beta,
    ):
        super().__init__()
        self.guidance_scale = guidance_scale
        self.safety = SafetyConfig(
            sld_guidance_scale, sld_warmup_steps, sld_threshold, sld_momentum_scale, sld_mom_beta
        )
        self.safety_conditioning: dict[str, torch.Tensor] | None = None
        self.momentum: torch.Tensor | None = None

    def set_safety_conditioning(self, **conditioning: torch.Tensor) -> None:
        """The safety concept's denoiser inputs (one row, or one per image), named as the denoise step names its
        guider inputs: SD3 and SDXL ``encoder_hidden_states`` and ``text_embeds``."""
        self.safety_conditioning = conditioning

    def prepare_inputs(self, data: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> list[BlockState]:
        if self.safety_conditioning is None:
            raise ValueError("SafeLatentDiffusionGuidance needs set_safety_conditioning(...) before sampling")
        if not any(isinstance(value, tuple) for value in data.values()):
            raise ValueError('SLD needs the unconditional branch: pass a negative_prompt ("" for none)')
        if self._step == 0:
            self.momentum = None
        batches = [self._prepare_batch(data, 0, "pred_cond"), self._prepare_batch(data, 1, "pred_uncond")]
        if self.num_conditions == 3:
            conditional = {name: value[0] if isinstance(value, tuple) else value for name, value in data.items()}
            safety = {
                name: rows.to(conditional[name]).expand(conditional[name].shape[0], *rows.shape[1:])
                for name, rows in self.safety_conditioning.items()
            }
            batches.append(self._prepare_batch(conditional | safety, 0, "pred_safety"))
        return batches

    def forward(
        self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor, pred_safety: torch.Tensor | None = None
    ) -> GuiderOutput:
        if pred_safety is None:  # a warmup step whose safety prediction could not change the result
            pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        else:
            pred, self.momentum = safety_guidance_step(
                pred_uncond, pred_cond, pred_safety, self.momentum, self._step, self.safety, self.guidance_scale
            )
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared != 2  # the batches are prepared in the order cond, uncond, safety

    @property
    def num_conditions(self) -> int:
        if self._step is None:  # before sampling (a repr): the most it can ask for
            return 3
        return 3 if self.safety.needs_safety_branch(self._step, self._num_inference_steps) else 2
