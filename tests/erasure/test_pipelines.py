"""SLDPipeline / SLDXLPipeline: parity with diffusers' StableDiffusionPipelineSafe, SDXL, UNet call counts, errors;
the concept negative prompt template and its length warning on all four families."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

from erasure.pipelines import SLDFluxPipeline, SLDPipeline, SLDSD3Pipeline, SLDXLPipeline
from erasure.sld import SafetyConfig
from erasure.testing import tiny_flux_components, tiny_sd3_components, tiny_sd_components, tiny_sdxl_components

PROMPTS = ["a red car", "a cat on grass", "a house", "a blue boat at sea", "a dog"]
NEGATIVES = ["blurry", "a dog", "dark", "grass", "a cat"]


def _pipelines(**component_options) -> tuple[SLDPipeline, StableDiffusionPipelineSafe]:
    components = tiny_sd_components(**component_options)
    ours = SLDPipeline(**components, requires_safety_checker=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference announces its deprecation
        reference = StableDiffusionPipelineSafe(**components, requires_safety_checker=False)
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    return ours, reference


@pytest.fixture(scope="module")
def sd_pair():
    return _pipelines()


def _generators(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _run_both(ours, reference, steps: int, config: SafetyConfig, batch: int, seed: int, negative: bool, **kwargs):
    common = {
        "num_inference_steps": steps,
        "output_type": "np",
        "negative_prompt": NEGATIVES[:batch] if negative else None,
        **kwargs,
    }
    n = batch * kwargs.get("num_images_per_prompt", 1)
    mine = ours(PROMPTS[:batch], generator=_generators(seed, n), sld=config, **common).images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Safety checker disabled!"-style notices
        theirs = reference(PROMPTS[:batch], generator=_generators(seed, n), **config, **common).images
    return mine, theirs


@pytest.mark.parametrize("negative", [False, True], ids=["plain", "negative"])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("preset", SafetyConfig.PRESETS)
def test_parity_with_diffusers_safe_pipeline(sd_pair, preset, batch, negative):
    config = SafetyConfig.preset(preset)
    steps = config.sld_warmup_steps + 2  # the safety guidance acts on the last two steps
    seed = 10 * batch + negative
    mine, theirs = _run_both(*sd_pair, steps, config, batch, seed, negative)
    assert mine.shape == theirs.shape == (batch, 32, 32, 3)
    assert np.abs(mine - theirs).max() <= 1e-5


def _record_noise(scheduler) -> list[torch.Tensor]:
    """The guided noise prediction handed to ``scheduler.step`` at each step."""
    noises: list[torch.Tensor] = []
    step = scheduler.step

    @functools.wraps(step)  # keeps the signature the pipelines inspect for eta / generator
    def recording_step(model_output, *args, **kwargs):
        noises.append(model_output.clone())
        return step(model_output, *args, **kwargs)

    scheduler.step = recording_step
    return noises


@pytest.mark.parametrize("preset", SafetyConfig.PRESETS)
def test_safety_guidance_acts_and_matches_the_reference_per_step(preset):
    """On this tiny model weak's effect on the image is below 1e-5, so compare the guided noise at each step too:
    ours must be far closer to the reference than the reference is to plain CFG."""
    ours, reference = _pipelines()
    noises = _record_noise(ours.scheduler)
    config = SafetyConfig.preset(preset)
    steps = config.sld_warmup_steps + 2
    _run_both(ours, reference, steps, config, 2, 0, False)
    mine, theirs = noises[:steps], noises[steps:]
    noises.clear()
    ours(PROMPTS[:2], generator=_generators(0, 2), num_inference_steps=steps, output_type="latent")
    effect = (theirs[-1] - noises[-1]).abs().max()
    assert effect > 1e-3
    assert max((a - b).abs().max() for a, b in zip(mine, theirs, strict=True)) < effect / 100


@pytest.mark.parametrize(
    ("component_options", "scheduler_class"),
    [
        ({"prediction_type": "v_prediction"}, None),
        ({}, EulerDiscreteScheduler),
        ({}, DPMSolverMultistepScheduler),
    ],
    ids=["v-prediction", "euler", "dpm-solver"],
)
def test_parity_with_other_schedulers_and_v_prediction(component_options, scheduler_class):
    ours, reference = _pipelines(**component_options)
    if scheduler_class is not None:
        ours.scheduler = reference.scheduler = scheduler_class.from_config(ours.scheduler.config)
    mine, theirs = _run_both(ours, reference, 4, SafetyConfig.MAX, 2, 0, True, num_images_per_prompt=3)
    assert mine.shape == (6, 32, 32, 3)
    assert np.abs(mine - theirs).max() <= 1e-5


def _count_unet_rows(pipe) -> list[int]:
    """Rows the UNet evaluates, per call: read from its first layer, inside whatever hooks wrap the UNet."""
    rows: list[int] = []
    pipe.unet.conv_in.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize(
    ("sld", "steps", "rows_per_step"),
    [
        (None, 4, [4] * 4),  # plain CFG: 2 images x (uncond, text)
        ("weak", 17, [4] * 15 + [6] * 2),  # zero momentum: the 15 warmup steps skip the safety branch
        ("medium", 12, [6] * 12),  # momentum from the warmup steps is used later: never skipped
        ("medium", 6, [4] * 6),  # ... unless the warmup never ends
        ("max", 3, [6] * 3),  # no warmup
    ],
)
def test_safety_branch_is_skipped_when_it_cannot_change_the_result(sld, steps, rows_per_step):
    ours, _ = _pipelines()
    rows = _count_unet_rows(ours)
    ours(PROMPTS[:2], num_inference_steps=steps, generator=_generators(0, 2), output_type="latent", sld=sld)
    assert rows == rows_per_step


def test_prompt_embeds_give_the_same_images(sd_pair):
    ours, _ = sd_pair
    embeds, negative_embeds = ours.encode_prompt(PROMPTS[:2], "cpu", 1, True, NEGATIVES[:2])
    run = dict(num_inference_steps=3, output_type="np", sld="max")
    from_text = ours(PROMPTS[:2], negative_prompt=NEGATIVES[:2], generator=_generators(0, 2), **run).images
    from_embeds = ours(
        prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, generator=_generators(0, 2), **run
    ).images
    np.testing.assert_allclose(from_embeds, from_text, atol=1e-6)


def test_callback_on_step_end_sees_the_two_branch_batch_and_can_steer(sd_pair):
    ours, _ = sd_pair
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, tensors["latents"].shape[0], tensors["prompt_embeds"].shape[0]))
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 2 else {}

    run = dict(num_inference_steps=3, output_type="latent", sld="max")
    inputs = ["latents", "prompt_embeds"]
    steered = ours(
        PROMPTS[:2],
        generator=_generators(0, 2),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=inputs,
        **run,
    ).images
    assert seen == [(0, 2, 4), (1, 2, 4), (2, 2, 4)]
    assert torch.count_nonzero(steered) == 0
    # the hooks are gone after the call: a plain call evaluates two rows per image again
    rows = _count_unet_rows(ours)
    ours(PROMPTS[:2], num_inference_steps=1, generator=_generators(0, 2), output_type="latent")
    assert rows == [4]


def test_concept_negation_pushes_away_from_what_the_negative_prompt_adds():
    """ε̂ = CFG + w·(ε_text − ε_n): checked at the first step against the UNet called by hand on the same input."""
    ours, _ = _pipelines()
    noises = _record_noise(ours.scheduler)
    prompts, negatives = PROMPTS[:2], [f"{p}, a dog" for p in PROMPTS[:2]]
    run = dict(num_inference_steps=1, output_type="latent", guidance_scale=3.0)
    ours(prompts, generator=_generators(0, 2), **run)
    inputs = []
    # registered after the pipeline's own hook (which runs first), so it sees the three-block batch as kwargs
    handle = ours.unet.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append((kwargs["sample"], kwargs["timestep"])), with_kwargs=True
    )
    ours(prompts, generator=_generators(0, 2), concept_negative_prompt=negatives, concept_negative_scale=2.0, **run)
    handle.remove()
    plain, negated = noises
    sample, timestep = inputs[0]
    assert sample.shape[0] == 6  # uncond, text, negative: one UNet call for the three branches
    text_embeds = ours.encode_prompt(prompts, "cpu", 1, False)[0]
    negative_embeds = ours.encode_prompt(negatives, "cpu", 1, False)[0]
    eps_text = ours.unet(sample[2:4], timestep, text_embeds).sample
    eps_negative = ours.unet(sample[2:4], timestep, negative_embeds).sample
    assert (eps_text - eps_negative).abs().max() > 1e-3
    torch.testing.assert_close(negated - plain, 2.0 * (eps_text - eps_negative), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sld", [None, "max"])
def test_concept_negation_with_the_prompt_itself_changes_nothing(sd_pair, sld):
    ours, _ = sd_pair
    run = dict(num_inference_steps=3, output_type="np", negative_prompt=NEGATIVES[:2], num_images_per_prompt=2)
    alone = ours(PROMPTS[:2], generator=_generators(0, 4), sld=sld, **run).images
    negated = ours(
        PROMPTS[:2], generator=_generators(0, 4), sld=sld, concept_negative_prompt=PROMPTS[:2], **run
    ).images
    other = ours(PROMPTS[:2], generator=_generators(0, 4), sld=sld, concept_negative_prompt="a dog", **run).images
    # a larger batch rounds the UNet's sums differently, and SLD's scales of up to 5000 magnify that
    np.testing.assert_allclose(negated, alone, atol=1e-5 if sld is None else 1e-4)
    assert np.abs(other - alone).max() > 1e-3


def test_concept_negation_adds_one_branch_beside_sld():
    ours, _ = _pipelines()
    rows = _count_unet_rows(ours)
    run = dict(num_inference_steps=17, generator=_generators(0, 2), output_type="latent")
    ours(PROMPTS[:2], sld="weak", concept_negative_prompt="a dog", **run)
    assert rows == [6] * 15 + [8] * 2  # weak skips the safety branch in its warmup, never the negation


# every family's pipeline on tiny components, and the options that keep its calls small
FAMILIES = {
    "sd": (lambda: SLDPipeline(**tiny_sd_components(), requires_safety_checker=False), {}),
    "sdxl": (lambda: SLDXLPipeline(**tiny_sdxl_components()), {}),
    "sd3": (lambda: SLDSD3Pipeline(**tiny_sd3_components()), {}),
    "flux": (
        lambda: SLDFluxPipeline(**tiny_flux_components()),
        {"height": 32, "width": 32, "max_sequence_length": 16},
    ),
}


@functools.cache
def _family(name: str):
    build, options = FAMILIES[name]
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    return pipe, {"num_inference_steps": 2, "output_type": "latent", **options}


@pytest.mark.parametrize("family", FAMILIES)
def test_concept_negative_template_is_filled_with_each_prompt(family):
    pipe, run = _family(family)
    filled = [f"{prompt}, a dog" for prompt in PROMPTS[:2]]
    from_list = pipe(PROMPTS[:2], generator=_generators(0, 2), concept_negative_prompt=filled, **run).images
    from_template = pipe(PROMPTS[:2], generator=_generators(0, 2), concept_negative_prompt="{prompt}, a dog", **run)
    plain = pipe(PROMPTS[:2], generator=_generators(0, 2), **run).images
    assert torch.equal(from_template.images, from_list)
    assert (from_list - plain).abs().max() > 1e-3


def test_a_template_needs_the_prompt_text(sd_pair):
    ours, _ = sd_pair
    embeds, _ = ours.encode_prompt(PROMPTS[:2], "cpu", 1, False)
    with pytest.raises(ValueError, match="fill the template yourself"):
        ours(prompt_embeds=embeds, concept_negative_prompt="{prompt}, a dog", num_inference_steps=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_concept_negative_prompt_cut_by_a_tokenizer_warns_once_per_call(family):
    pipe, run = _family(family)
    long_template = "{prompt}, " + " ".join(["watermark"] * 80) + " <loc_3_3>"  # > 77 tokens: the location is cut
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(PROMPTS[:2], generator=_generators(0, 2), concept_negative_prompt="{prompt}, a dog", **run)
        assert not caught
        pipe(PROMPTS[:2], generator=_generators(0, 2), concept_negative_prompt=long_template, **run)
    assert len(caught) == 1
    found = re.search(r"is (\d+) tokens long for tokenizer(?:_\d)?, which keeps (\d+)", str(caught[0].message))
    assert found, caught[0].message
    count, limit = map(int, found.groups())
    assert count > limit and limit in (77, run.get("max_sequence_length"))


def test_sdxl_without_sld_equals_diffusers_and_a_preset_differs():
    components = tiny_sdxl_components()
    ours, plain = SLDXLPipeline(**components), StableDiffusionXLPipeline(**components)
    for pipe in (ours, plain):
        pipe.set_progress_bar_config(disable=True)
    run = dict(num_inference_steps=3, output_type="np", negative_prompt=NEGATIVES[:2])
    theirs = plain(PROMPTS[:2], generator=_generators(0, 2), **run).images
    mine = ours(PROMPTS[:2], generator=_generators(0, 2), sld=None, **run).images
    safe = ours(PROMPTS[:2], generator=_generators(0, 2), sld="max", **run).images
    negated = ours(PROMPTS[:2], generator=_generators(0, 2), concept_negative_prompt="a dog", **run).images
    assert np.array_equal(mine, theirs)
    assert np.abs(safe - theirs).max() > 1e-3
    assert np.abs(negated - theirs).max() > 1e-3


def test_compiled_unet_gives_the_same_images():
    ours, _ = _pipelines()
    run = dict(num_inference_steps=2, output_type="np", sld="max")
    eager = ours(PROMPTS[:1], generator=_generators(0, 1), **run).images
    ours.compile_unet(mode=None, backend="eager")  # the graph capture without a GPU or a C++ toolchain
    compiled = ours(PROMPTS[:1], generator=_generators(0, 1), **run).images
    # channels_last reorders the convolutions, and SLD scales of up to 5000 magnify the rounding: 1e-4 of [0, 1]
    np.testing.assert_allclose(compiled, eager, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sld": "extreme"}, ValueError, "valid presets: weak, medium, strong, max"),
        ({"sld": "medium", "guidance_scale": 1.0}, ValueError, "need classifier-free guidance"),
        ({"sld_warmup_steps": 2, "guidance_scale": 0.5}, ValueError, "need classifier-free guidance"),
        ({"concept_negative_prompt": "a dog", "guidance_scale": 1.0}, ValueError, "need classifier-free guidance"),
        ({"concept_negative_prompt": NEGATIVES[:3]}, ValueError, "3 texts for a batch of 2 prompts"),
        ({"concept_negative_scale": 2.0}, ValueError, "needs a concept_negative_prompt"),
        ({"sld": "medium", "negative_prompt": NEGATIVES[:3]}, ValueError, "batch size"),
        ({"sld": "medium", "sld_guidance_scale": 0.5}, ValueError, "pass sld=None"),
        ({"sld": "max", "guidance_rescale": 0.7}, ValueError, "guidance_rescale"),
    ],
)
def test_bad_input_is_a_clear_error(sd_pair, kwargs, error, message):
    ours, _ = sd_pair
    with pytest.raises(error, match=message):
        ours(PROMPTS[:2], num_inference_steps=1, output_type="latent", **kwargs)


def test_package_exports_the_pipelines_lazily():
    # A fresh interpreter at the repository root: the package as users import it, not pytest's view of it.
    code = (
        "import sys, erasure; assert 'diffusers' not in sys.modules; "
        "from erasure import SLDPipeline, SLDXLPipeline, SafetyConfig; import erasure.pipelines as p; "
        "assert (SLDPipeline, SLDXLPipeline) == (p.SLDPipeline, p.SLDXLPipeline) and SafetyConfig.MAX"
    )
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], check=True)
