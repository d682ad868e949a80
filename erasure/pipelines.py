"""Safe Latent Diffusion on today's diffusers pipelines: ``SLDPipeline`` (SD 1.x/2.x) and ``SLDXLPipeline`` (SDXL).

    pipe = SLDPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    image = pipe("a photo of a cat", sld="medium").images[0]      # or **SafetyConfig.MEDIUM, as the reference

diffusers' own ``__call__`` runs unchanged, so LoRA, textual inversion, negative prompts, ``prompt_embeds``, every
scheduler, callbacks and v-prediction behave as in ``StableDiffusionPipeline``. For the length of a call, two hooks
on the UNet add the safety concept's rows to its classifier-free-guidance batch (one UNet call per step for all
three branches) and hand back SLD's noise estimate in both halves, so diffusers' CFG line passes it through
unchanged. Steps where the safety branch cannot change the result run the plain two-branch batch.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from erasure.sld import DEFAULT_SAFETY_CONCEPT, SafetyConfig, resolve_safety_config, safety_guidance_step

# How diffusers pipelines pass the UNet's leading arguments positionally.
_UNET_POSITIONAL = ("sample", "timestep", "encoder_hidden_states")


class _SafetyGuidance:
    """The state of one SLD call: the safety concept's conditioning, the step counter and the momentum."""

    def __init__(self, config: SafetyConfig, safety_cond: dict[str, torch.Tensor], pipe: Any):
        self.config = config
        self.safety_cond = safety_cond  # UNet keyword (or added_cond_kwargs key) -> one row for the safety concept
        self.pipe = pipe
        self.step = 0
        self.momentum: torch.Tensor | None = None
        self.active = False

    def _with_safety_rows(self, name: str, value: Any, batch: int) -> Any:
        """Append a third block of ``batch`` rows: the safety concept's where it has one, else the text half's."""
        if name in self.safety_cond:
            row = self.safety_cond[name].to(value.device, value.dtype)
            return torch.cat([value, row.expand(batch, *row.shape[1:])])
        if isinstance(value, dict):
            return {key: self._with_safety_rows(key, item, batch) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._with_safety_rows(name, item, batch) for item in value)
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 2 * batch:
            return torch.cat([value, value[batch:]])
        return value

    def before_unet(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = {**dict(zip(_UNET_POSITIONAL, args, strict=False)), **kwargs}
        self.active = self.config.needs_safety_branch(self.step, len(self.pipe.scheduler.timesteps))
        if self.active:
            batch = kwargs["sample"].shape[0] // 2
            kwargs = {name: self._with_safety_rows(name, value, batch) for name, value in kwargs.items()}
        return (), kwargs

    def after_unet(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        step, self.step = self.step, self.step + 1
        if not self.active:
            return output
        eps_uncond, eps_text, eps_safety = output[0].chunk(3)
        noise, self.momentum = safety_guidance_step(
            eps_uncond, eps_text, eps_safety, self.momentum, step, self.config, self.pipe.guidance_scale
        )
        # diffusers' CFG line then computes ε̂ + s·(ε̂ − ε̂) = ε̂ exactly.
        guided = torch.cat([noise, noise])
        return (guided,) if isinstance(output, tuple) else UNet2DConditionOutput(sample=guided)

    @contextmanager
    def attached(self, unet: torch.nn.Module):
        # prepend: other hooks (CPU offload, counters) see the three-branch batch and the guided output.
        handles = [
            unet.register_forward_pre_hook(self.before_unet, with_kwargs=True, prepend=True),
            unet.register_forward_hook(self.after_unet, with_kwargs=True, prepend=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class _SafeLatentDiffusionMixin:
    """``__call__`` with the reference's SLD keywords on top of a diffusers text-to-image pipeline."""

    safety_concept: str = DEFAULT_SAFETY_CONCEPT
    """what SLD steers away from; set it on the pipeline (as with the reference) or per call."""

    @torch.no_grad()
    def __call__(
        self,
        *args: Any,
        sld: str | SafetyConfig | None = None,
        safety_concept: str | None = None,
        sld_guidance_scale: float | None = None,
        sld_warmup_steps: int | None = None,
        sld_threshold: float | None = None,
        sld_momentum_scale: float | None = None,
        sld_mom_beta: float | None = None,
        **kwargs: Any,
    ):
        """The parent pipeline's ``__call__``, plus Safe Latent Diffusion.

        Args:
            sld: a preset ("weak", "medium", "strong", "max") or a :class:`SafetyConfig`; None (default) is off
                unless an ``sld_*`` keyword is given, which then starts from the reference's defaults (= medium).
            safety_concept: text to steer away from; defaults to ``self.safety_concept``.
            sld_*: override the preset's fields, with the reference's meanings (see :class:`SafetyConfig`).
        """
        config = resolve_safety_config(
            sld,
            sld_guidance_scale=sld_guidance_scale,
            sld_warmup_steps=sld_warmup_steps,
            sld_threshold=sld_threshold,
            sld_momentum_scale=sld_momentum_scale,
            sld_mom_beta=sld_mom_beta,
        )
        if config is None:
            return super().__call__(*args, **kwargs)
        call = inspect.signature(super().__call__).bind(*args, **kwargs)
        call.apply_defaults()
        options = call.arguments
        if options["guidance_scale"] <= 1 or self.unet.config.time_cond_proj_dim is not None:
            raise ValueError(
                f"SLD needs classifier-free guidance: guidance_scale must be > 1 (got {options['guidance_scale']}) "
                "on a UNet without guidance embedding; pass sld=None to sample without SLD"
            )
        if options.get("guidance_rescale", 0.0) > 0:
            raise ValueError("guidance_rescale is not supported with SLD (nor by the reference); set it to 0")
        lora_scale = (options["cross_attention_kwargs"] or {}).get("scale")
        concept = safety_concept or self.safety_concept
        safety_cond = self._encode_safety_concept(concept, options["clip_skip"], lora_scale)
        with _SafetyGuidance(config, safety_cond, self).attached(self.unet):
            return super().__call__(*args, **kwargs)

    def _encode_safety_concept(
        self, concept: str, clip_skip: int | None, lora_scale: float | None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compile_unet(self, **compile_options: Any) -> None:
        """Opt-in fast path: ``torch.compile`` the UNet, by default with CUDA graphs ("reduce-overhead").

        An SD-sized UNet call is launch-bound on a large GPU; graphs remove the launches. The SLD hooks stay on the
        outer module, outside the graph, so each batch shape (two or three branches) gets its own graph.
        """
        options = {"mode": "reduce-overhead", "fullgraph": True} | compile_options
        self.unet.to(memory_format=torch.channels_last)
        self.unet = torch.compile(self.unet, **options)


class SLDPipeline(_SafeLatentDiffusionMixin, StableDiffusionPipeline):
    """Stable Diffusion 1.x/2.x with Safe Latent Diffusion; a drop-in for ``StableDiffusionPipelineSafe``."""

    def _encode_safety_concept(self, concept, clip_skip, lora_scale):
        embeds, _ = self.encode_prompt(
            concept, self._execution_device, 1, False, lora_scale=lora_scale, clip_skip=clip_skip
        )
        return {"encoder_hidden_states": embeds}


class SLDXLPipeline(_SafeLatentDiffusionMixin, StableDiffusionXLPipeline):
    """SDXL with Safe Latent Diffusion: the safety concept conditions both text encoders and the pooled embedding."""

    def _encode_safety_concept(self, concept, clip_skip, lora_scale):
        embeds, _, pooled, _ = self.encode_prompt(
            concept,
            device=self._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}
