"""Safe Latent Diffusion and concept negation on today's diffusers pipelines: ``SLDPipeline`` (SD 1.x/2.x),
``SLDXLPipeline`` (SDXL), ``SLDSD3Pipeline`` (SD3 / SD3.5) and ``SLDFluxPipeline`` (FLUX.1).

    pipe = SLDPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    image = pipe("a photo of a cat", sld="medium").images[0]      # or **SafetyConfig.MEDIUM, as the reference

    # a Geom-Erasing run's learned negative prompt, as concept negation (beside the guidance towards the prompt)
    template = Path("outputs/RUN/negative_prompt.txt").read_text().strip()   # "{prompt}, watermark <loc_3_3>"
    image = pipe(prompt, concept_negative_prompt=template, sld="medium").images[0]   # {prompt} filled per prompt

diffusers' own ``__call__`` runs unchanged, so LoRA, textual inversion, negative prompts, ``prompt_embeds``, every
scheduler, callbacks and v-prediction behave as in the parent pipeline. For the length of a call, two hooks on the
denoiser (the UNet, or the transformer) add the extra branches' rows (the safety concept's, the concept negative
prompt's) to the batch the pipeline sends it (one denoiser call per step for all branches) and hand back the guided
estimate in every block of that batch, so diffusers' CFG line passes it through unchanged (ε̂ + s·(ε̂ − ε̂) = ε̂).
Steps where the safety branch cannot change the result leave it out.

Flow matching (SD3, FLUX). The transformer predicts the velocity v = noise − x0 of x_t = (1 − σ)·x0 + σ·noise; at a
given x_t, v = (ε − x_t) / (1 − σ), an increasing affine map of ε that is the same for every branch. So v points as ε
does (towards the noise), a difference of two branches is their ε difference times 1 / (1 − σ), and the linear parts
of the SLD step (guidance, safety direction, momentum) are the ε step mapped through that map. The step is applied to
the velocities as they come, v_u, v_t, v_S in place of ε_u, ε_t, ε_S, with the same signs. Its two non-linear parts
read velocity differences: leaving alone the elements where v_t − v_S ≥ ``sld_threshold``, and the element scale
min(1, s_S·|v_t − v_S|), are an ε threshold of ``sld_threshold``·(1 − σ) and an ε scale of s_S / (1 − σ): near pure
noise (σ → 1) almost every element where the safety concept pulls harder is pushed at full scale. The presets are the
reference's numbers, tuned on SD 1.5's ε predictions; on a flow model they are a starting point, not a calibration.

SD3 runs true CFG in one batch (uncond, text), so SLD is the reference's step on its velocities with
``guidance_scale``. diffusers' ``FluxPipeline`` calls the transformer once for the prompt and, under true CFG
(``true_cfg_scale > 1`` with a negative prompt), a second time for the negative prompt. With SLD or concept negation
on, ``SLDFluxPipeline`` keeps that second call from happening: it encodes the negative prompt itself as one more block
of the prompt's call and hands diffusers no negative prompt, so one call per step carries every branch; the step is
the reference's with v_u the negative prompt's velocity and the scale ``true_cfg_scale``.

Without true CFG, FLUX.1-dev (guidance-distilled) and schnell have no unconditional prediction. SLD then takes the
safety direction against the prompt's own prediction: ``safety_guidance_step`` with ε_u := v_t and scale 1, that is
v̂ = v_t − γ with γ = μ ⊙ (v_S − v_t) + s_m·ν. Scale 1 because the distilled prediction already carries the guidance:
v_t ≈ v_u + g·(v_c − v_u) for the embedded guidance g (``guidance_scale``), so v_S − v_t ≈ g·(v_s − v_c), and v_t − γ
holds the g·μ ⊙ (…) the reference's scale s gives its safety term. The direction starts at the prompt rather than at
the unconditional prediction, and the threshold and s_S read differences about g times the undistilled ones.

Concept negation adds w·(v_t − v_n) to the guided estimate in every case. Without an unconditional branch
v̂ = v_t + w·(v_t − v_n) is exactly true CFG at scale 1 + w with the concept negative prompt as negative prompt;
its default w = 1 (true CFG at 2). With CFG the default is the CFG scale minus 1.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders import TextualInversionLoaderMixin
from transformers import T5TokenizerFast

from erasure.attention import last_key_is_the_zero_row, transformer_with_last_key_repeated
from erasure.runs import PROMPT_FIELD, fill_template
from erasure.sld import DEFAULT_SAFETY_CONCEPT, SafetyConfig, resolve_safety_config, safety_guidance_step


def _per_prompt(text: str | list[str], prompt: str | list[str] | None, prompt_embeds: Any) -> list[str]:
    """One text per prompt of the call: a single text is repeated, a list must match the prompts, and a text
    holding ``{prompt}`` is a template (a run's ``negative_prompt.txt``) filled with its prompt."""
    batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
    texts = [text] * batch if isinstance(text, str) else list(text)
    if len(texts) != batch:
        raise ValueError(f"concept_negative_prompt has {len(texts)} texts for a batch of {batch} prompts")
    if not any(PROMPT_FIELD in text for text in texts):
        return texts
    if prompt is None:
        raise ValueError(
            f"concept_negative_prompt is a template ({PROMPT_FIELD}) but the call has prompt_embeds, not the prompt "
            "text: fill the template yourself"
        )
    prompts = [prompt] * batch if isinstance(prompt, str) else prompt
    return [fill_template(text, p) for text, p in zip(texts, prompts, strict=True)]


@dataclass(frozen=True)
class _Denoiser:
    """Where a pipeline family's denoiser is and how its pipeline calls it."""

    name: str
    """the pipeline attribute holding it."""
    positional: tuple[str, ...]
    """the names of the arguments the pipeline passes positionally; the first is the latent input."""
    unbatched: tuple[str, ...] = ()
    """inputs shared by all rows of the batch (FLUX's position ids), never given extra rows."""


@dataclass(frozen=True)
class _Plan:
    """How one call's guided estimate is made from the blocks of the denoiser's batch."""

    own_blocks: tuple[str, ...]
    """the blocks of rows the pipeline itself sends: ("uncond", "text") under its CFG, ("text",) without."""
    scale: float
    """the CFG scale; 1 where there is no unconditional prediction."""
    negation_scale: float
    """``concept_negative_scale``'s default."""
    uncond: dict[str, torch.Tensor] | None = None
    """the conditioning of an unconditional block added by us (FLUX's true CFG), or None."""


def _cfg_plan(guidance_scale: float, guidance_embedded: bool = False) -> _Plan:
    """The plan of a pipeline that batches (uncond, text) itself: CFG must be on, as the reference requires."""
    if guidance_scale <= 1 or guidance_embedded:
        raise ValueError(
            "SLD and concept negation need classifier-free guidance: guidance_scale must be > 1 (got "
            f"{guidance_scale}) on a denoiser without guidance embedding; pass sld=None and "
            "concept_negative_prompt=None to sample without them"
        )
    return _Plan(("uncond", "text"), guidance_scale, guidance_scale - 1)


class _ExtraGuidance:
    """The state of one call with extra guidance branches: an unconditional block (FLUX's true CFG), SLD's safety
    concept, a concept negative prompt.

    Each branch is a block of ``batch`` rows appended to the blocks the pipeline sends (``plan.own_blocks``); its
    conditioning maps denoiser keywords (or keys of dict keywords such as ``added_cond_kwargs``) to one row (expanded
    to the batch) or ``batch`` rows, and every other batched input repeats the text block.
    """

    def __init__(
        self,
        pipe: Any,
        denoiser: _Denoiser,
        plan: _Plan,
        branches: dict[str, dict[str, torch.Tensor]],
        sld: SafetyConfig | None = None,
        negation_scale: float = 0.0,
    ):
        self.pipe, self.denoiser, self.plan, self.branches = pipe, denoiser, plan, branches
        self.sld, self.negation_scale = sld, negation_scale
        self.step = 0
        self.momentum: torch.Tensor | None = None
        self.active: list[str] = []

    def _with_rows(self, name: str, value: Any, batch: int) -> Any:
        if isinstance(value, dict):
            return {key: self._with_rows(key, item, batch) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._with_rows(name, item, batch) for item in value)
        own_rows = len(self.plan.own_blocks) * batch
        batched = isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == own_rows
        if not batched or name in self.denoiser.unbatched:
            return value
        extra = []
        for branch in self.active:
            block = self.branches[branch]
            rows = block[name].to(value.device, value.dtype) if name in block else value[-batch:]
            extra.append(rows.expand(batch, *rows.shape[1:]))
        return torch.cat([value, *extra])

    def before_denoiser(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        positional = self.denoiser.positional
        kwargs = {**dict(zip(positional, args, strict=False)), **kwargs}
        num_steps = len(self.pipe.scheduler.timesteps)
        safety = self.sld is not None and self.sld.needs_safety_branch(self.step, num_steps)
        self.active = [name for name in self.branches if name != "safety" or safety]
        if self.active:
            batch = kwargs[positional[0]].shape[0] // len(self.plan.own_blocks)
            kwargs = {name: self._with_rows(name, value, batch) for name, value in kwargs.items()}
        return (), kwargs

    def after_denoiser(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        step, self.step = self.step, self.step + 1
        if not self.active:
            return output
        names = [*self.plan.own_blocks, *self.active]
        eps = dict(zip(names, output[0].chunk(len(names)), strict=True))
        eps_text = eps["text"]
        eps_uncond = eps.get("uncond", eps_text)  # without one, the safety direction is taken against the text's
        if "safety" in eps:
            noise, self.momentum = safety_guidance_step(
                eps_uncond, eps_text, eps["safety"], self.momentum, step, self.sld, self.plan.scale
            )
        else:
            noise = eps_uncond + self.plan.scale * (eps_text - eps_uncond)
        if "negation" in eps:
            noise = noise + self.negation_scale * (eps_text - eps["negation"])
        guided = torch.cat([noise] * len(self.plan.own_blocks))
        return (guided,) if isinstance(output, tuple) else type(output)(sample=guided)

    @contextmanager
    def attached(self, denoiser: torch.nn.Module):
        # prepend: other hooks (CPU offload, counters) see the whole batch and the guided output.
        handles = [
            denoiser.register_forward_pre_hook(self.before_denoiser, with_kwargs=True, prepend=True),
            denoiser.register_forward_hook(self.after_denoiser, with_kwargs=True, prepend=True),
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
    _denoiser = _Denoiser("unet", ("sample", "timestep", "encoder_hidden_states"))

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
            concept_negative_prompt: the prompt with the unwanted concept added, one per prompt or one for all; a
                text holding ``{prompt}`` (a Geom-Erasing run's ``negative_prompt.txt``) is filled with each prompt.
                Its estimate ε_n adds ``concept_negative_scale · (ε_text − ε_n)`` to the guided one: a push away from
                what it adds to the prompt alone. As diffusers' ``negative_prompt`` it would replace the
                unconditional branch and, holding the prompt, cancel the guidance towards the prompt as well. A
                filled text longer than a tokenizer keeps (its end, the location tokens, would be cut) warns.
            concept_negative_scale: weight of that push; defaults to the CFG scale minus 1, the weight the same
                text gets against the prompt as a ``negative_prompt`` (1 without CFG: see the module docstring).
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
        options = call.arguments  # _plan may edit it: the parent is called with what it holds then
        plan = self._plan(options)
        branches = {"uncond": plan.uncond} if plan.uncond is not None else {}
        if config is not None:
            branches["safety"] = self._encode_branch(safety_concept or self.safety_concept, 1, options)
        negation_scale = 0.0
        if concept_negative_prompt is not None:
            negatives = _per_prompt(concept_negative_prompt, options["prompt"], options["prompt_embeds"])
            self._warn_if_cut(negatives, options)
            branches["negation"] = self._encode_branch(negatives, options["num_images_per_prompt"], options)
            negation_scale = plan.negation_scale if concept_negative_scale is None else concept_negative_scale
        guidance = _ExtraGuidance(self, self._denoiser, plan, branches, config, negation_scale)
        with guidance.attached(getattr(self, self._denoiser.name)):
            return super().__call__(*call.args, **call.kwargs)

    def _plan(self, options: dict[str, Any]) -> _Plan:
        """Check the call's options, and say how its guided estimate is made."""
        raise NotImplementedError

    def _encode_branch(self, text: str | list[str], num_images_per_prompt: int, options: dict[str, Any]) -> dict:
        """The denoiser conditioning of an extra branch's text, rows repeated per image as the prompt's are."""
        raise NotImplementedError

    def _token_limits(self, options: dict[str, Any]) -> dict[str, int]:
        """Tokenizer attribute → how many tokens of a text (special ones included) the pipeline keeps: a CLIP
        tokenizer its ``model_max_length``, SD3's and FLUX's T5 the call's ``max_sequence_length``."""
        tokenizers = {  # a tokenizer without its encoder (SD3 without T5) limits nothing
            name: getattr(self, name, None)
            for name in ("tokenizer", "tokenizer_2", "tokenizer_3")
            if getattr(self, name.replace("tokenizer", "text_encoder"), None) is not None
        }
        return {
            name: options["max_sequence_length"]
            if isinstance(tokenizer, T5TokenizerFast)
            else tokenizer.model_max_length
            for name, tokenizer in tokenizers.items()
            if tokenizer is not None
        }

    def _warn_if_cut(self, texts: list[str], options: dict[str, Any]) -> None:
        """One warning per call for concept negative prompts longer than a tokenizer keeps: the cut-off end is
        where a run's template puts the concept's location tokens."""
        over = []
        for attribute, limit in self._token_limits(options).items():
            tokenizer = getattr(self, attribute)
            for text in texts:
                if isinstance(self, TextualInversionLoaderMixin):  # multi-vector tokens take several positions
                    text = self.maybe_convert_prompt(text, tokenizer)
                count = len(tokenizer(text).input_ids)
                if count > limit:
                    over.append((count, limit, attribute, text))
        if over:
            count, limit, attribute, text = max(over)
            warnings.warn(
                f"concept_negative_prompt {text!r} is {count} tokens long for {attribute}, which keeps {limit}: "
                "its end (the concept's location tokens) is cut off; shorten the prompt",
                stacklevel=4,
            )

    def compile_unet(self, **compile_options: Any) -> None:
        """Opt-in fast path: ``torch.compile`` the denoiser (the UNet, or SD3's / FLUX's transformer), by default
        with CUDA graphs ("reduce-overhead").

        An SD-sized UNet call is launch-bound on a large GPU; graphs remove the launches. The SLD hooks stay on the
        outer module, outside the graph, so each batch shape (two or three branches) gets its own graph.
        """
        options = {"mode": "reduce-overhead", "fullgraph": True} | compile_options
        denoiser = getattr(self, self._denoiser.name).to(memory_format=torch.channels_last)
        setattr(self, self._denoiser.name, torch.compile(denoiser, **options))


def _lora_scale(attention_kwargs: dict[str, Any] | None) -> float | None:
    return (attention_kwargs or {}).get("scale")


class SLDPipeline(_SafeLatentDiffusionMixin, StableDiffusionPipeline):
    """Stable Diffusion 1.x/2.x with Safe Latent Diffusion; a drop-in for ``StableDiffusionPipelineSafe``."""

    def _plan(self, options):
        if options["guidance_rescale"] > 0:
            raise ValueError(
                "guidance_rescale is not supported with SLD (nor by the reference) or concept negation; set it to 0"
            )
        return _cfg_plan(options["guidance_scale"], self.unet.config.time_cond_proj_dim is not None)

    def _encode_branch(self, text, num_images_per_prompt, options):
        embeds, _ = self.encode_prompt(
            text,
            self._execution_device,
            num_images_per_prompt,
            False,
            lora_scale=_lora_scale(options["cross_attention_kwargs"]),
            clip_skip=options["clip_skip"],
        )
        return {"encoder_hidden_states": embeds}


class SLDXLPipeline(_SafeLatentDiffusionMixin, StableDiffusionXLPipeline):
    """SDXL with Safe Latent Diffusion: the safety concept conditions both text encoders and the pooled embedding."""

    _plan = SLDPipeline._plan

    def _encode_branch(self, text, num_images_per_prompt, options):
        embeds, _, pooled, _ = self.encode_prompt(
            text,
            device=self._execution_device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=False,
            lora_scale=_lora_scale(options["cross_attention_kwargs"]),
            clip_skip=options["clip_skip"],
        )
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}


_SD3_T5_ROWS = inspect.signature(StableDiffusion3Pipeline.__call__).parameters["max_sequence_length"].default


class SLDSD3Pipeline(_SafeLatentDiffusionMixin, StableDiffusion3Pipeline):
    """SD3 / SD3.5 with Safe Latent Diffusion on its velocity predictions (see the module docstring for the mapping):
    the safety concept conditions the three text encoders and the pooled embedding."""

    _denoiser = _Denoiser("transformer", ("hidden_states",))

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any):
        """The SLD call above. Without T5 (``text_encoder_3=None``) the ``max_sequence_length`` zero rows that stand
        for it run as one row that attention weighs as all of them (:mod:`erasure.attention`): the same images, and
        a text stream of 78 rows instead of 333 (SD3.5 Medium's MMDiT-X keeps its 256 rows)."""
        count = kwargs.get("max_sequence_length", _SD3_T5_ROWS)
        given = any(kwargs.get(name) is not None for name in ("prompt_embeds", "negative_prompt_embeds"))
        if self.text_encoder_3 is not None or given or count == 1 or not last_key_is_the_zero_row(self.transformer):
            return super().__call__(*args, **kwargs)
        with transformer_with_last_key_repeated(self.transformer, count):
            return super().__call__(*args, **kwargs | {"max_sequence_length": 1})

    def _plan(self, options):
        if options["skip_guidance_layers"] is not None:
            raise ValueError(
                "skip_guidance_layers (skip-layer guidance) is not supported with SLD or concept negation: its extra "
                "transformer call has no room for their branches; set it to None"
            )
        return _cfg_plan(options["guidance_scale"])

    def _encode_branch(self, text, num_images_per_prompt, options):
        embeds, _, pooled, _ = self.encode_prompt(
            text,
            None,
            None,
            device=self._execution_device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=False,
            clip_skip=options["clip_skip"],
            max_sequence_length=options["max_sequence_length"],
            lora_scale=_lora_scale(options["joint_attention_kwargs"]),
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


class SLDFluxPipeline(_SafeLatentDiffusionMixin, FluxPipeline):
    """FLUX.1 with Safe Latent Diffusion: under true CFG the reference's step, without it (FLUX.1-dev's distilled
    guidance) the safety direction taken against the prompt's prediction; see the module docstring."""

    _denoiser = _Denoiser("transformer", ("hidden_states",), unbatched=("img_ids", "txt_ids"))
    _NEGATIVE_INPUTS = (
        "negative_prompt",
        "negative_prompt_2",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
    )
    _IP_ADAPTER_INPUTS = (
        "ip_adapter_image",
        "ip_adapter_image_embeds",
        "negative_ip_adapter_image",
        "negative_ip_adapter_image_embeds",
    )

    def _plan(self, options):
        has_negative = options["negative_prompt"] is not None or (
            options["negative_prompt_embeds"] is not None and options["negative_pooled_prompt_embeds"] is not None
        )
        if options["true_cfg_scale"] <= 1 or not has_negative:  # FluxPipeline's own rule for true CFG
            return _Plan(("text",), 1.0, 1.0)
        if any(options[name] is not None for name in self._IP_ADAPTER_INPUTS):
            raise ValueError(
                "IP-Adapter images are not supported with SLD or concept negation under true CFG (true_cfg_scale > 1 "
                "with a negative prompt): the negative branch would need its own image embeddings in the shared call"
            )
        uncond = self._encode_branch(
            options["negative_prompt"],
            options["num_images_per_prompt"],
            options,
            prompt_2=options["negative_prompt_2"],
            prompt_embeds=options["negative_prompt_embeds"],
            pooled_prompt_embeds=options["negative_pooled_prompt_embeds"],
        )
        # Our block in the prompt's call replaces the parent's second transformer call for the negative prompt.
        options.update(dict.fromkeys(self._NEGATIVE_INPUTS))
        scale = options["true_cfg_scale"]
        return _Plan(("text",), scale, scale - 1, uncond)

    def _encode_branch(self, text, num_images_per_prompt, options, **encode_options):
        embeds, pooled, _ = self.encode_prompt(
            text,
            device=self._execution_device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=options["max_sequence_length"],
            lora_scale=_lora_scale(options["joint_attention_kwargs"]),
            **encode_options,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
