"""The SLD step and presets, against diffusers' reference presets and values worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig as ReferenceSafetyConfig

from erasure.sld import SafetyConfig, resolve_safety_config, safety_guidance_step


@pytest.mark.parametrize("name", SafetyConfig.PRESETS)
def test_presets_equal_the_reference_dicts(name):
    assert dict(SafetyConfig.preset(name)) == getattr(ReferenceSafetyConfig, name.upper())
    assert SafetyConfig.preset(name.upper()) is SafetyConfig.preset(name)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="weak, medium, strong, max"):
        SafetyConfig.preset("extreme")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sld_guidance_scale", 1.0, "sld=None"),
        ("sld_warmup_steps", -1, "sld_warmup_steps"),
        ("sld_mom_beta", 1.5, "sld_mom_beta"),
    ],
)
def test_bad_config_values_are_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        SafetyConfig(**{field: value})


@pytest.mark.parametrize(
    ("sld", "overrides", "expected"),
    [
        (None, {}, None),
        (None, {"sld_threshold": None}, None),
        ("weak", {}, SafetyConfig.WEAK),
        (SafetyConfig.MAX, {}, SafetyConfig.MAX),
        # sld_* keywords alone start from the reference's defaults, as calling the reference does
        (None, {"sld_warmup_steps": 3}, replace(SafetyConfig.MEDIUM, sld_warmup_steps=3)),
        ("strong", {"sld_threshold": 0.5}, replace(SafetyConfig.STRONG, sld_threshold=0.5)),
    ],
)
def test_resolve_safety_config(sld, overrides, expected):
    assert resolve_safety_config(sld, **overrides) == expected


@pytest.mark.parametrize(
    ("config", "step", "num_steps", "needed"),
    [
        (SafetyConfig.WEAK, 0, 50, False),  # no momentum: warmup steps cannot matter
        (SafetyConfig.WEAK, 14, 50, False),
        (SafetyConfig.WEAK, 15, 50, True),
        (SafetyConfig.MEDIUM, 0, 50, True),  # momentum built in warmup is used later
        (SafetyConfig.MEDIUM, 0, 10, False),  # ... unless the warmup covers every step
        (replace(SafetyConfig.MEDIUM, sld_mom_beta=1.0), 3, 50, False),  # momentum never moves from zero
        (SafetyConfig.MAX, 0, 1, True),
    ],
)
def test_needs_safety_branch(config, step, num_steps, needed):
    assert config.needs_safety_branch(step, num_steps) is needed


def test_guidance_step_by_hand():
    """Three elements: pushed hard (clamped to 1), left alone (ε_t − ε_S above threshold), pushed at half scale."""
    config = SafetyConfig(
        sld_guidance_scale=8, sld_warmup_steps=1, sld_threshold=0.0, sld_momentum_scale=0.5, sld_mom_beta=0.25
    )
    eps_uncond = torch.tensor([0.0, 0.0, 0.0])
    eps_text = torch.tensor([1.0, 1.0, 1.0])
    eps_safety = torch.tensor([3.0, 0.5, 1.0625])  # ε_t − ε_S = -2 (scale 1), 0.5 (>= threshold), -0.0625 (scale 0.5)

    # step 0 (warmup): γ = [3, 0, 0.53125]; ν = 0.75 γ; plain CFG: ε_u + 2 (ε_t − ε_u)
    noise, momentum = safety_guidance_step(eps_uncond, eps_text, eps_safety, None, 0, config, 2.0)
    assert torch.equal(noise, torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(momentum, torch.tensor([2.25, 0.0, 0.3984375]))

    # step 1: γ = [3, 0, 0.53125] + 0.5 ν = [4.125, 0, 0.73046875]; ν = 0.25 ν + 0.75 γ; ε_u + 2 (ε_t − ε_u − γ)
    noise, momentum = safety_guidance_step(eps_uncond, eps_text, eps_safety, momentum, 1, config, 2.0)
    torch.testing.assert_close(noise, torch.tensor([-6.25, 2.0, 0.5390625]))
    torch.testing.assert_close(momentum, torch.tensor([3.65625, 0.0, 0.6474609375]))
