"""Safe Latent Diffusion on today's diffusers pipelines: ``SLDPipeline`` (SD 1.x/2.x) and ``SLDXLPipeline`` (SDXL).

    pipe = SLDPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    image = pipe("a photo of a cat", sld="medium").images[0]      # or **SafetyConfig.MEDIUM, as the reference

    # a Geom-Erasing run's learned negative prompt, as concept negation (beside the guidance towards the prompt)
    template = Path("outputs/RUN/negative_prompt.txt").read_text().strip()   # "{prompt}, watermark <loc_3_3>"
    image = pipe(prompt, concept_negative_prompt=template.replace("{prompt}", prompt), sld="medium").images[0]

diffusers' own ``__call__`` runs unchanged, so LoRA, textual inversion, negative prompts, ``prompt_embeds``, every
scheduler, callbacks and v-prediction behave as in ``StableDiffusionPipeline``. For the length of a call, two hooks
on the UNet add the extra branches' rows (the safety concept's, the concept negative prompt's) to its
classifier-free-guidance batch (one UNet call per step for all branches) and hand back the guided noise estimate in
both halves, so diffusers' CFG line passes it through unchanged. Steps where the safety branch cannot change the
result leave it out.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from erasure.sld import DEFAULT_SAFETY_CONCEPT, SafetyConfig, resolve_safety_config, safety_guidance_step

# How diffusers pipelines pass the UNet's leading arguments positionally.
_UNET_POSITIONAL = ("sample", "timestep", "encoder_hidden_states")


def _per_prompt(text: str | list[str], prompt: str | list[str] | None, prompt_embeds: Any) -> list[str]:
    """One text per prompt of the call: a single text is repeated, a list must match the prompts."""
    batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
    texts = [text] * batch if isinstance(text, str) else list(text)
    if len(texts) != batch:
        raise ValueError(f"concept_negative_prompt has {len(texts)} texts for a batch of {batch} prompts")
    return texts


class _ExtraGuidance:
    """The state of one call with extra guidance branches: SLD's safety concept, a concept negative prompt, or both.

    Each branch is a block of ``batch`` rows appended to the UNet's classifier-free-guidance batch; its
    conditioning maps UNet keywords (or ``added_cond_kwargs`` keys) to one row (expanded to the batch) or ``batch``
    rows, and every other batched input repeats the text half.
    """

    def __init__(
        self,
        pipe: Any,
        sld: SafetyConfig | None = None,
        safety_cond: dict[str, torch.Tensor] | None = None,
        negation_cond: dict[str, torch.Tensor] | None = None,
        negation_scale: float = 0.0,
    ):
        self.pipe = pipe
        self.sld, self.safety_cond = sld, safety_cond
        self.negation_cond, self.negation_scale = negation_cond, negation_scale
        self.step = 0
        self.momentum: torch.Tensor | None = None
        self.safety_active = False
        self.blocks: list[dict[str, torch.Tensor]] = []

    def _with_rows(self, name: str, value: Any, batch: int) -> Any:
        if isinstance(value, dict):
            return {key: self._with_rows(key, item, batch) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._with_rows(name, item, batch) for item in value)
        if not (isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 2 * batch):
            return value
        extra = []
        for block in self.blocks:
            rows = block[name].to(value.device, value.dtype) if name in block else value[batch:]
            extra.append(rows.expand(batch, *rows.shape[1:]))
        return torch.cat([value, *extra])

    def before_unet(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = {**dict(zip(_UNET_POSITIONAL, args, strict=False)), **kwargs}
        num_steps = len(self.pipe.scheduler.timesteps)
        self.safety_active = self.sld is not None and self.sld.needs_safety_branch(self.step, num_steps)
        self.blocks = [self.safety_cond] if self.safety_active else []
        self.blocks += [self.negation_cond] if self.negation_cond is not None else []
        if self.blocks:
            batch = kwargs["sample"].shape[0] // 2
            kwargs = {name: self._with_rows(name, value, batch) for name, value in kwargs.items()}
        return (), kwargs

    def after_unet(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        step, self.step = self.step, self.step + 1
        if not self.blocks:
            return output
        eps_uncond, eps_text, *eps_extra = output[0].chunk(2 + len(self.blocks))
        scale = self.pipe.guidance_scale
        if self.safety_active:
            noise, self.momentum = safety_guidance_step(
                eps_uncond, eps_text, eps_extra[0], self.momentum, step, self.sld, scale
            )
        else:
            noise = eps_uncond + scale * (eps_text - eps_uncond)
        if self.negation_cond is not None:
            noise = noise + self.negation_scale * (eps_text - eps_extra[-1])
        # diffusers' CFG line then computes ε̂ + s·(ε̂ − ε̂) = ε̂ exactly.
        guided = torch.cat([noise, noise])
        return (guided,) if isinstance(output, tuple) else UNet2DConditionOutput(sample=guided)

    @contextmanager
    def attached(self, unet: torch.nn.Module):
        # prepend: other hooks (CPU offload, counters) see the whole batch and the guided output.
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
    """``__call__`` with the reference's SLD keywords, and concept negation, on a diffusers text-to-image pipeline."""

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
        concept_negative_prompt: str | list[str] | None = None,
        concept_negative_scale: float | None = None,
        **kwargs: Any,
    ):
        """The parent pipeline's ``__call__``, plus Safe Latent Diffusion and concept negation.

        Args:
            sld: a preset ("weak", "medium", "strong", "max") or a :class:`SafetyConfig`; None (default) is off
                unless an ``sld_*`` keyword is given, which then starts from the reference's defaults (= medium).
            safety_concept: text to steer away from; defaults to ``self.safety_concept``.
            sld_*: override the preset's fields, with the reference's meanings (see :class:`SafetyConfig`).
            concept_negative_prompt: the prompt with the unwanted concept added (a Geom-Erasing run's
                ``negative_prompt.txt`` filled with the prompt), one per prompt or one for all. Its noise estimate
                ε_n adds ``concept_negative_scale · (ε_text − ε_n)`` to the guided one: a push away from what it
                adds to the prompt alone. As diffusers' ``negative_prompt`` it would replace the unconditional
                branch and, holding the prompt, cancel the guidance towards the prompt as well.
            concept_negative_scale: weight of that push; defaults to ``guidance_scale - 1``, the weight the same
                text gets against the prompt as a ``negative_prompt``.
        """
        config = resolve_safety_config(
            sld,
            sld_guidance_scale=sld_guidance_scale,
            sld_warmup_steps=sld_warmup_steps,
            sld_threshold=sld_threshold,
            sld_momentum_scale=sld_momentum_scale,
            sld_mom_beta=sld_mom_beta,
        )
        if concept_negative_prompt is None and concept_negative_scale is not None:
            raise ValueError("concept_negative_scale needs a concept_negative_prompt")
        if config is None and concept_negative_prompt is None:
            return super().__call__(*args, **kwargs)
        call = inspect.signature(super().__call__).bind(*args, **kwargs)
        call.apply_defaults()
        options = call.arguments
        if options["guidance_scale"] <= 1 or self.unet.config.time_cond_proj_dim is not None:
            raise ValueError(
                "SLD and concept negation need classifier-free guidance: guidance_scale must be > 1 (got "
                f"{options['guidance_scale']}) on a UNet without guidance embedding; pass sld=None and "
                "concept_negative_prompt=None to sample without them"
            )
        if options.get("guidance_rescale", 0.0) > 0:
            raise ValueError(
                "guidance_rescale is not supported with SLD (nor by the reference) or concept negation; set it to 0"
            )
        lora_scale = (options["cross_attention_kwargs"] or {}).get("scale")
        encode = functools.partial(self._encode_branch, clip_skip=options["clip_skip"], lora_scale=lora_scale)
        safety_cond = encode(safety_concept or self.safety_concept, 1) if config is not None else None
        negation_cond, negation_scale = None, 0.0
        if concept_negative_prompt is not None:
            negatives = _per_prompt(concept_negative_prompt, options["prompt"], options["prompt_embeds"])
            negation_cond = encode(negatives, options["num_images_per_prompt"])
            negation_scale = (
                options["guidance_scale"] - 1 if concept_negative_scale is None else concept_negative_scale
            )
        guidance = _ExtraGuidance(self, config, safety_cond, negation_cond, negation_scale)
        with guidance.attached(self.unet):
            return super().__call__(*args, **kwargs)

    def _encode_branch(
        self, text: str | list[str], num_images_per_prompt: int, clip_skip: int | None, lora_scale: float | None
    ) -> dict[str, torch.Tensor]:
        """The UNet conditioning of an extra branch's text, rows repeated per image as the prompt's are."""
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

    def _encode_branch(self, text, num_images_per_prompt, clip_skip, lora_scale):
        embeds, _ = self.encode_prompt(
            text, self._execution_device, num_images_per_prompt, False, lora_scale=lora_scale, clip_skip=clip_skip
        )
        return {"encoder_hidden_states": embeds}


class SLDXLPipeline(_SafeLatentDiffusionMixin, StableDiffusionXLPipeline):
    """SDXL with Safe Latent Diffusion: the safety concept conditions both text encoders and the pooled embedding."""

    def _encode_branch(self, text, num_images_per_prompt, clip_skip, lora_scale):
        embeds, _, pooled, _ = self.encode_prompt(
            text,
            device=self._execution_device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=False,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}
