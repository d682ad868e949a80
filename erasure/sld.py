"""Safe Latent Diffusion (Schramowski et al., CVPR 2023): the guidance step and its presets, free of any pipeline.

    from erasure.sld import SafetyConfig, safety_guidance_step
    config = SafetyConfig.preset("medium")
    noise, momentum = safety_guidance_step(eps_uncond, eps_text, eps_safety, momentum, step, config, guidance_scale)

The step follows diffusers' ``StableDiffusionPipelineSafe`` operation for operation (the momentum is updated on
every step, warmup included), so our pipelines reproduce the reference's images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # tensor methods only, so the CLI can import the presets without loading torch
    import torch

DEFAULT_SAFETY_CONCEPT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity,"
    " bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child"
    " abuse, brutality, cruelty"
)


@dataclass(frozen=True)
class SafetyConfig:
    """The reference's ``sld_*`` hyper-parameters; the defaults are the reference's own (= MEDIUM).

    A config unpacks into keyword arguments like the reference's preset dicts: ``pipe(prompt, **SafetyConfig.MAX)``.
    """

    sld_guidance_scale: float = 1000
    """s_S: how hard the safety direction pushes, before the element-wise clamp to 1."""
    sld_warmup_steps: int = 10
    """denoising steps before safety guidance is applied (the momentum builds up during them)."""
    sld_threshold: float = 0.01
    """elements where ε_text − ε_safety is at least this are left alone."""
    sld_momentum_scale: float = 0.3
    """s_m: weight of the accumulated momentum added to the safety direction."""
    sld_mom_beta: float = 0.4
    """β_m: how much of the previous momentum is kept at each step."""

    WEAK: ClassVar[SafetyConfig]
    MEDIUM: ClassVar[SafetyConfig]
    STRONG: ClassVar[SafetyConfig]
    MAX: ClassVar[SafetyConfig]
    PRESETS: ClassVar[tuple[str, ...]] = ("weak", "medium", "strong", "max")

    def __post_init__(self) -> None:
        # The reference silently disables itself at s_S <= 1; we say so instead, and point at the off switch.
        if self.sld_guidance_scale <= 1:
            raise ValueError(
                f"sld_guidance_scale must be > 1, got {self.sld_guidance_scale}; pass sld=None to sample without SLD"
            )
        if self.sld_warmup_steps < 0:
            raise ValueError(f"sld_warmup_steps must be >= 0, got {self.sld_warmup_steps}")
        if not 0 <= self.sld_mom_beta <= 1:
            raise ValueError(f"sld_mom_beta must be in [0, 1], got {self.sld_mom_beta}")

    @classmethod
    def preset(cls, name: str) -> SafetyConfig:
        if name.lower() not in cls.PRESETS:
            raise ValueError(f"unknown SLD preset {name!r}; valid presets: {', '.join(cls.PRESETS)}")
        return getattr(cls, name.upper())

    # Mapping protocol, so ``**config`` gives the sld_* keyword arguments.
    def keys(self) -> list[str]:
        return list(asdict(self))

    def __getitem__(self, key: str) -> float:
        return asdict(self)[key]

    def needs_safety_branch(self, step: int, num_steps: int) -> bool:
        """Whether the safety-concept prediction at ``step`` (of ``num_steps`` UNet calls) can change the result.

        Before the warmup ends it only feeds the momentum, which matters only if the momentum is ever used
        (s_m != 0), ever changes (β_m != 1) and reaches a step after the warmup.
        """
        if step >= self.sld_warmup_steps:
            return True
        return self.sld_momentum_scale != 0 and self.sld_mom_beta != 1 and self.sld_warmup_steps < num_steps


# The reference's presets (diffusers' ``SafetyConfig`` dicts).
SafetyConfig.WEAK = SafetyConfig(
    sld_warmup_steps=15, sld_guidance_scale=20, sld_threshold=0.0, sld_momentum_scale=0.0, sld_mom_beta=0.0
)
SafetyConfig.MEDIUM = SafetyConfig(
    sld_warmup_steps=10, sld_guidance_scale=1000, sld_threshold=0.01, sld_momentum_scale=0.3, sld_mom_beta=0.4
)
SafetyConfig.STRONG = SafetyConfig(
    sld_warmup_steps=7, sld_guidance_scale=2000, sld_threshold=0.025, sld_momentum_scale=0.5, sld_mom_beta=0.7
)
SafetyConfig.MAX = SafetyConfig(
    sld_warmup_steps=0, sld_guidance_scale=5000, sld_threshold=1.0, sld_momentum_scale=0.5, sld_mom_beta=0.7
)


def resolve_safety_config(sld: str | SafetyConfig | None, **overrides: float | None) -> SafetyConfig | None:
    """The config a call asks for: a preset name (or a config) with any ``sld_*`` keyword overriding it.

    None means SLD is off; with ``sld=None`` any ``sld_*`` keyword turns it on from the reference's defaults,
    as calling the reference with that keyword would.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    if sld is None and not given:
        return None
    base = SafetyConfig() if sld is None else sld if isinstance(sld, SafetyConfig) else SafetyConfig.preset(sld)
    return replace(base, **given)


def safety_guidance_step(
    eps_uncond: torch.Tensor,
    eps_text: torch.Tensor,
    eps_safety: torch.Tensor,
    momentum: torch.Tensor | None,
    step: int,
    config: SafetyConfig,
    guidance_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SLD step: returns (the guided noise prediction ε̂, the new momentum); ``momentum`` is None at first.

    The operations and their order are the reference's, so ε̂ is the reference's to the last bit: s_S (up to
    5000) amplifies any rounding difference in ε_t − ε_S, which a rearranged formula would turn into visible ones.
    """
    if momentum is None:
        momentum = eps_text.new_zeros(eps_text.shape)
    guidance = eps_text - eps_uncond
    diff = eps_text - eps_safety
    scale = (diff.abs() * config.sld_guidance_scale).clamp(max=1.0)
    scale = scale.masked_fill(diff >= config.sld_threshold, 0.0)
    safety = (eps_safety - eps_uncond) * scale
    safety = safety + config.sld_momentum_scale * momentum
    momentum = config.sld_mom_beta * momentum + (1 - config.sld_mom_beta) * safety
    if step >= config.sld_warmup_steps:
        guidance = guidance - safety
    return eps_uncond + guidance_scale * guidance, momentum
