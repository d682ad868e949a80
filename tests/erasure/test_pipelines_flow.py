"""SLDSD3Pipeline / SLDFluxPipeline: parity with diffusers, the SLD step on velocities, one call per step, CLI."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

from erasure.guiders import SafeLatentDiffusionGuidance
from erasure.pipelines import SLDFluxPipeline, SLDSD3Pipeline
from erasure.sld import SafetyConfig, safety_guidance_step
from erasure.testing import save_tiny_flux, save_tiny_sd3, tiny_flux_components, tiny_sd3_components

PROMPTS = ["a red car", "a cat on grass"]
# a mild config: s_S = 5000 (max) would turn the batched-versus-separate rounding of v_t − v_S into visible differences
MILD = SafetyConfig(sld_guidance_scale=2, sld_warmup_steps=0, sld_threshold=1.0, sld_momentum_scale=0, sld_mom_beta=0)
# FLUX settings that keep the tiny model tiny: 32 px images, 16 T5 tokens
FLUX_SIZE = {"height": 32, "width": 32, "max_sequence_length": 16}
TRUE_CFG = {"true_cfg_scale": 3.0, "negative_prompt": "blurry"}


@functools.cache
def _pair(family: str) -> tuple:
    """(ours, diffusers') on the same tiny components; cached, so treat both as read-only."""
    if family == "sd3":
        components = tiny_sd3_components()
        pipes = SLDSD3Pipeline(**components), StableDiffusion3Pipeline(**components)
    else:
        components = tiny_flux_components()
        pipes = SLDFluxPipeline(**components), FluxPipeline(**components)
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


# family, the call's own options (FLUX: with or without true CFG)
CASES = {
    "sd3": ("sd3", {}),
    "flux-distilled": ("flux", FLUX_SIZE),
    "flux-true-cfg": ("flux", {**FLUX_SIZE, **TRUE_CFG}),
}


def _run(pipe, steps: int = 2, seed: int = 0, output_type: str = "latent", **kwargs):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(PROMPTS))]
    return pipe(PROMPTS, num_inference_steps=steps, generator=generators, output_type=output_type, **kwargs).images


def _record_velocity(scheduler) -> list[torch.Tensor]:
    """The guided velocity handed to ``scheduler.step`` at each step."""
    velocities: list[torch.Tensor] = []
    step = scheduler.step

    @functools.wraps(step)
    def recording_step(model_output, *args, **kwargs):
        velocities.append(model_output.clone())
        return step(model_output, *args, **kwargs)

    scheduler.step = recording_step
    return velocities


@pytest.mark.parametrize("case", CASES)
def test_without_sld_equals_diffusers(case):
    family, options = CASES[case]
    ours, theirs = _pair(family)
    mine = _run(ours, output_type="np", sld=None, **options)
    reference = _run(theirs, output_type="np", **options)
    assert mine.shape == (2, 32, 32, 3)
    assert np.abs(mine - reference).max() <= 1e-5


@pytest.mark.parametrize("preset", SafetyConfig.PRESETS)
@pytest.mark.parametrize("case", CASES)
def test_each_preset_changes_the_output(case, preset):
    family, options = CASES[case]
    ours, theirs = _pair(family)
    steps = SafetyConfig.preset(preset).sld_warmup_steps + 2  # the safety guidance acts on the last two steps
    plain = _run(theirs, steps, **options)
    assert (_run(ours, steps, sld=preset, **options) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("case", CASES)
def test_concept_negation_changes_the_output_and_the_prompt_itself_changes_nothing(case):
    family, options = CASES[case]
    ours, theirs = _pair(family)
    plain = _run(theirs, **options)
    # ε_text − ε_n = 0 when the concept negative prompt is the prompt; SLD with the prompt as safety concept has
    # ε_text − ε_S = 0, so a zero element scale and a zero momentum: both leave the estimate alone
    same = _run(ours, concept_negative_prompt="{prompt}", **options)
    safe_as_prompt = [_run(ours, sld=MILD, safety_concept=prompt, **options)[i] for i, prompt in enumerate(PROMPTS)]
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(safe_as_prompt), plain, atol=1e-5, rtol=0)
    assert (_run(ours, concept_negative_prompt="{prompt}, a dog", **options) - plain).abs().max() > 1e-3


def test_distilled_flux_concept_negation_is_true_cfg_with_the_concept_as_negative_prompt():
    ours, theirs = _pair("flux")
    negatives = [f"{p}, a dog" for p in PROMPTS]
    negated = _run(ours, concept_negative_prompt=negatives, concept_negative_scale=1.5, **FLUX_SIZE)
    reference = _run(theirs, true_cfg_scale=2.5, negative_prompt=negatives, **FLUX_SIZE)
    assert (negated - _run(theirs, **FLUX_SIZE)).abs().max() > 1e-3
    torch.testing.assert_close(negated, reference, atol=1e-5, rtol=0)


def _branch_velocity(pipe, family: str, sample, timestep, guidance, texts) -> torch.Tensor:
    """One branch's velocity, from the transformer called by hand on that branch's rows alone."""
    if family == "sd3":
        embeds, _, pooled, _ = pipe.encode_prompt(texts, None, None, do_classifier_free_guidance=False)
        return pipe.transformer(
            hidden_states=sample, timestep=timestep, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
    embeds, pooled, text_ids = pipe.encode_prompt(texts, max_sequence_length=FLUX_SIZE["max_sequence_length"])
    height = width = 2 * (FLUX_SIZE["height"] // (pipe.vae_scale_factor * 2)) // 2
    image_ids = pipe._prepare_latent_image_ids(1, height, width, sample.device, sample.dtype)
    return pipe.transformer(
        hidden_states=sample,
        timestep=timestep,
        guidance=guidance,
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        txt_ids=text_ids,
        img_ids=image_ids,
    ).sample


@pytest.mark.parametrize("case", CASES)
def test_first_step_is_the_sld_step_on_velocities(case):
    """The guided velocity of step 0 against ``safety_guidance_step`` on branches computed one by one: SD3 and true
    CFG with the unconditional (negative) branch and the CFG scale, distilled FLUX against the text branch at 1."""
    family, options = CASES[case]
    ours, _ = _pair(family)
    velocities = _record_velocity(ours.scheduler)
    seen = []
    # registered after the pipeline's hook (which runs first), so it sees the whole batch as keywords
    handle = ours.transformer.register_forward_pre_hook(lambda m, a, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        _run(ours, 1, sld=MILD, safety_concept="a dog", **options)
    finally:
        handle.remove()
        del ours.scheduler.step
    inputs = seen[0]
    batch = len(PROMPTS)
    sample, timestep = inputs["hidden_states"][-batch:], inputs["timestep"][-batch:]
    guidance = inputs.get("guidance")
    guidance = None if guidance is None else guidance[-batch:]
    velocity = functools.partial(_branch_velocity, ours, family, sample, timestep, guidance)
    v_text, v_safety = velocity(PROMPTS), velocity(["a dog"] * batch)
    if family == "sd3":
        v_uncond, scale = velocity([""] * batch), 7.0
    elif "true_cfg_scale" in options:
        v_uncond, scale = velocity([options["negative_prompt"]] * batch), options["true_cfg_scale"]
    else:
        v_uncond, scale = v_text, 1.0
    expected, _ = safety_guidance_step(v_uncond, v_text, v_safety, None, 0, MILD, scale)
    assert (expected - (v_uncond + scale * (v_text - v_uncond))).abs().max() > 1e-3
    torch.testing.assert_close(velocities[0][:batch], expected, atol=1e-5, rtol=0)


def _count_calls(transformer) -> list[int]:
    """Rows per transformer call, read inside whatever hooks wrap it."""
    rows: list[int] = []
    first_layer = getattr(transformer, "x_embedder", None) or transformer.pos_embed  # FLUX's, SD3's patch embedding
    first_layer.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize(
    ("case", "kwargs", "rows_per_step"),
    [
        ("sd3", {}, [4] * 3),  # diffusers' own batch: 2 images x (uncond, text)
        ("sd3", {"sld": "max"}, [6] * 3),
        ("sd3", {"sld": "max", "concept_negative_prompt": "{prompt}, a dog"}, [8] * 3),
        ("flux-distilled", {"sld": "max"}, [4] * 3),  # text, safety
        ("flux-distilled", {"sld": "max", "concept_negative_prompt": "a dog"}, [6] * 3),
        ("flux-true-cfg", {}, [2, 2] * 3),  # diffusers: two calls per step
        ("flux-true-cfg", {"sld": "max"}, [6] * 3),  # ours: text, negative, safety in one call
        ("flux-true-cfg", {"sld": "max", "concept_negative_prompt": "a dog"}, [8] * 3),
    ],
)
def test_one_transformer_call_per_step_for_all_branches(case, kwargs, rows_per_step):
    family, options = CASES[case]
    ours, _ = _pair(family)
    components = tiny_sd3_components() if family == "sd3" else tiny_flux_components()
    pipe = type(ours)(**components)  # fresh modules: the counting hook stays on them
    pipe.set_progress_bar_config(disable=True)
    rows = _count_calls(pipe.transformer)
    _run(pipe, 3, **options, **kwargs)
    assert rows == rows_per_step


def test_weak_skips_the_safety_branch_in_its_warmup_on_flux():
    pipe = SLDFluxPipeline(**tiny_flux_components())
    pipe.set_progress_bar_config(disable=True)
    rows = _count_calls(pipe.transformer)
    _run(pipe, 17, sld="weak", **FLUX_SIZE)
    assert rows == [2] * 15 + [4] * 2


def _modular_sd3(config: SafetyConfig, safety_concept: str = "a dog"):
    """A modular SD3 pipeline on the tiny components with the SLD guider, and the counter of its transformer calls."""
    from diffusers.modular_pipelines import StableDiffusion3AutoBlocks

    ours, _ = _pair("sd3")
    pipe = StableDiffusion3AutoBlocks().init_pipeline()
    pipe.update_components(**{name: c for name, c in tiny_sd3_components().items() if c is not None})
    guider = SafeLatentDiffusionGuidance(guidance_scale=7.0, **config)
    embeds, _, pooled, _ = ours.encode_prompt(safety_concept, None, None, do_classifier_free_guidance=False)
    guider.set_safety_conditioning(encoder_hidden_states=embeds, text_embeds=pooled)
    pipe.update_components(guider=guider)
    pipe.set_progress_bar_config(disable=True)
    return pipe, _count_calls(pipe.transformer)


def _run_modular(pipe, steps: int, **kwargs):
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    return pipe(prompt=PROMPTS, num_inference_steps=steps, generator=generators, output="latents", **kwargs)


def test_sld_guider_in_a_modular_sd3_pipeline_equals_sld_sd3_pipeline():
    config = dataclasses.replace(MILD, sld_warmup_steps=1, sld_momentum_scale=0.5, sld_mom_beta=0.5)
    pipe, _ = _modular_sd3(config)
    ours, theirs = _pair("sd3")
    guided = _run_modular(pipe, 3, negative_prompt="")
    reference = _run(ours, 3, sld=config, safety_concept="a dog")
    assert (reference - _run(theirs, 3)).abs().max() > 1e-3
    torch.testing.assert_close(guided, reference, atol=1e-5, rtol=0)


def test_sld_guider_skips_the_safety_batch_where_it_cannot_matter_and_needs_cfg():
    pipe, rows = _modular_sd3(dataclasses.replace(MILD, sld_warmup_steps=1))  # no momentum: warmup step 0 skips it
    _run_modular(pipe, 2, negative_prompt="")
    assert rows == [2] * 5  # one call per batch: cond, uncond at step 0; cond, uncond, safety at step 1
    with pytest.raises(ValueError, match="needs the unconditional branch"):
        _run_modular(pipe, 1)


def test_sld_guider_config_round_trips(tmp_path):
    guider = SafeLatentDiffusionGuidance(guidance_scale=5.0, **SafetyConfig.STRONG)
    guider.save_pretrained(tmp_path)
    loaded = SafeLatentDiffusionGuidance.from_pretrained(tmp_path)
    assert (loaded.guidance_scale, loaded.safety) == (5.0, SafetyConfig.STRONG)
    assert guider.new(sld_threshold=0.5).safety == dataclasses.replace(SafetyConfig.STRONG, sld_threshold=0.5)


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        ("sd3", {"sld": "medium", "guidance_scale": 1.0}, "need classifier-free guidance"),
        ("sd3", {"sld": "medium", "skip_guidance_layers": [0]}, "skip_guidance_layers"),
        ("sd3", {"sld": "extreme"}, "valid presets"),
        ("sd3", {"concept_negative_prompt": ["a", "b", "c"]}, "3 texts for a batch of 2 prompts"),
        ("flux-distilled", {"concept_negative_scale": 2.0}, "needs a concept_negative_prompt"),
        ("flux-true-cfg", {"sld": "max", "ip_adapter_image_embeds": [torch.zeros(2, 1, 4)]}, "IP-Adapter"),
    ],
)
def test_bad_input_is_a_clear_error(case, kwargs, message):
    family, options = CASES[case]
    ours, _ = _pair(family)
    with pytest.raises(ValueError, match=message):
        _run(ours, 1, **options, **kwargs)


@pytest.mark.parametrize(("save", "cls"), [(save_tiny_sd3, SLDSD3Pipeline), (save_tiny_flux, SLDFluxPipeline)])
def test_saved_tiny_models_load_as_diffusers_and_as_ours(tmp_path, save, cls):
    path = save(tmp_path / "model")
    parent = {SLDSD3Pipeline: StableDiffusion3Pipeline, SLDFluxPipeline: FluxPipeline}[cls]
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == parent.__name__
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer_2("a cat").input_ids[-1] == pipe.tokenizer_2.eos_token_id  # CLIP, or FLUX's T5
    size = {"height": 32, "width": 32} if cls is SLDFluxPipeline else {}
    images = pipe("a cat", num_inference_steps=2, output_type="np", sld="max", **size).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


@pytest.mark.parametrize(
    ("save", "extra"),
    [
        (save_tiny_sd3, []),
        (save_tiny_flux, ["--size", "32"]),
        (save_tiny_flux, ["--size", "32", "--true-cfg-scale", "2", "--negative-prompt", "blurry"]),
    ],
)
def test_generate_cli_with_sld_on_a_saved_folder(tmp_path, save, extra):
    from erasure.cli import main

    model, out = save(tmp_path / "model"), tmp_path / "out"
    argv = ["generate", "a prompt", "--model", str(model), "--sld", "medium", "--out", str(out), "--steps", "2"]
    assert main(argv + extra) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000_seed0.png"]
    parameters = json.loads((out / "generate.json").read_text())["parameters"]
    assert parameters["sld"] == "medium"
    assert parameters["true_cfg_scale"] == (2.0 if "--true-cfg-scale" in extra else None)
    if "--true-cfg-scale" in extra:  # the option reaches the pipeline: the negative prompt now counts
        plain = tmp_path / "plain"
        assert (
            main([*argv[:-4], "--out", str(plain), "--steps", "2", "--size", "32", "--negative-prompt", "blurry"]) == 0
        )
        pixels = [np.asarray(Image.open(d / "00000_seed0.png"), dtype=int) for d in (out, plain)]
        assert np.abs(pixels[0] - pixels[1]).max() > 0


def test_package_exports_the_flow_pipelines_lazily():
    code = (
        "import sys, erasure; assert 'diffusers' not in sys.modules; "
        "from erasure import SLDSD3Pipeline, SLDFluxPipeline; import erasure.pipelines as p; "
        "assert (SLDSD3Pipeline, SLDFluxPipeline) == (p.SLDSD3Pipeline, p.SLDFluxPipeline)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], check=True)


@pytest.mark.parametrize(("dual_attention_layers", "rows"), [((), 1), ((0,), 256)])
def test_sd3_without_t5_runs_its_zero_rows_as_one_and_samples_the_same_images(dual_attention_layers, rows):
    """SD3 with ``text_encoder_3=None``: the 256 zero rows standing for T5 reach the transformer as one row (all 256
    for SD3.5 Medium's MMDiT-X, whose image-only attention would bias an image token), and the images equal diffusers'
    (plain) and the 256-row path's (SLD + concept negation, prompt embeddings given)."""
    components = tiny_sd3_components(t5=False, dual_attention_layers=dual_attention_layers)
    ours, theirs = SLDSD3Pipeline(**components), StableDiffusion3Pipeline(**components)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    text_rows: list[int] = []
    ours.transformer.context_embedder.register_forward_hook(lambda m, args, out: text_rows.append(args[0].shape[1]))
    np.testing.assert_allclose(_run(ours, output_type="np"), _run(theirs, output_type="np"), atol=1e-5, rtol=0)
    clip_rows = ours.tokenizer.model_max_length
    assert text_rows == [clip_rows + rows] * 2 + [clip_rows + 256] * 2  # ours, then diffusers' 256

    guidance = {"sld": MILD, "concept_negative_prompt": [f"{p}, a dog" for p in PROMPTS]}
    fast = _run(ours, **guidance)
    embeds, negative, pooled, negative_pooled = ours.encode_prompt(PROMPTS, None, None, max_sequence_length=256)
    given = {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
    given |= {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    text_rows.clear()
    slow = ours(num_inference_steps=2, generator=generators, output_type="latent", **given, **guidance).images
    assert set(text_rows) == {clip_rows + 256}
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_the_one_row_bias_puts_back_an_offload_hooks_forward():
    """accelerate's hooks (``enable_model_cpu_offload``) replace the module's forward on the instance: the bias
    wraps that forward for the call and leaves it in place afterwards."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    from erasure.attention import transformer_with_last_key_repeated

    module = add_hook_to_module(torch.nn.Linear(2, 2), ModelHook())
    hooked = module.forward
    with transformer_with_last_key_repeated(module, 256):
        assert module.forward is not hooked
        module(torch.zeros(1, 2))
    assert module.forward is hooked
    plain = torch.nn.Linear(2, 2)
    with transformer_with_last_key_repeated(plain, 256):
        pass
    assert "forward" not in vars(plain)  # the class's forward again
