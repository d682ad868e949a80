"""Latent-CLIP: shapes, save/load, gradients to the latents, guidance on/off, ReNO, zero-shot."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from erasure.latent_clip import (
    LatentClip,
    LatentClipGuidance,
    LatentClipReward,
    LatentClipSpec,
    few_step_sampler,
    optimise_noise,
    zero_shot_classify,
)
from erasure.latent_clip.reno import noise_norm_regulariser
from erasure.testing import tiny_sd_pipeline, tiny_tokenizer

TINY = {
    "latent_size": 16,
    "patch_size": 4,
    "width": 32,
    "layers": 2,
    "heads": 4,
    "text_width": 32,
    "text_layers": 2,
    "text_heads": 4,
    "max_length": 16,
    "projection_dim": 16,
}


def tiny_model(seed: int = 0, **overrides) -> LatentClip:
    torch.manual_seed(seed)
    return LatentClip.build(LatentClipSpec(**{**TINY, **overrides}), tiny_tokenizer()).eval()


@pytest.fixture(scope="module")
def model() -> LatentClip:
    return tiny_model()


@pytest.mark.parametrize(
    ("channels", "size", "patch"), [(4, 16, 4), (16, 16, 8), (4, 8, 2)], ids=["sd-4ch", "sd3-16ch", "patch2"]
)
def test_embeddings_have_the_projection_shape_and_unit_norm(channels, size, patch):
    model = tiny_model(latent_channels=channels, latent_size=size, patch_size=patch)
    latents = torch.randn(3, channels, size, size)
    image = model.encode_latents(latents)
    text = model.encode_text(["a red circle", "a blue square"])
    assert image.shape == (3, TINY["projection_dim"]) and text.shape == (2, TINY["projection_dim"])
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    assert model.similarity(latents, ["a", "b"]).shape == (3, 2)
    assert model.clip.vision_model.embeddings.num_patches == (size // patch) ** 2


def test_paper_preset_is_latent_vit_b8_on_64x64x4():
    spec = LatentClipSpec.preset("latent-vit-b/8")
    assert (spec.latent_channels, spec.latent_size, spec.patch_size, spec.width, spec.layers) == (4, 64, 8, 768, 12)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"latent_size": 16, "patch_size": 5}, "not a multiple"), ({"width": 30, "heads": 4}, "not divisible")],
)
def test_bad_spec_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        LatentClipSpec(**{**TINY, **fields})


def test_latents_of_the_wrong_shape_are_refused_with_the_expected_shape(model):
    with pytest.raises(ValueError, match=r"\(batch, 4, 16, 16\)"):
        model.encode_latents(torch.randn(1, 4, 32, 32))


def test_save_load_round_trip_is_safetensors_and_gives_the_same_embeddings(model, tmp_path):
    path = model.save_pretrained(tmp_path / "latent-clip")
    assert (path / "config.json").is_file() and load_file(path / "model.safetensors")
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    loaded = LatentClip.from_pretrained(path).eval()
    latents = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_latents(latents), model.encode_latents(latents))
        torch.testing.assert_close(loaded.encode_text(["a red circle"]), model.encode_text(["a red circle"]))
    torch.testing.assert_close(loaded.clip.logit_scale, model.clip.logit_scale)


def test_loading_a_directory_without_a_config_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        LatentClip.from_pretrained(tmp_path)


def test_contrastive_loss_trains_the_temperature_and_both_towers(model):
    trained = tiny_model()
    latents = torch.randn(4, 4, 16, 16)
    output = trained(latents, trained.tokenize(["a", "b", "c", "d"]))
    output.loss.backward()
    assert trained.clip.logit_scale.grad is not None and trained.clip.logit_scale.grad != 0
    assert trained.clip.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert trained.clip.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0


def test_reward_gradient_reaches_the_latents_inside_no_grad(model):
    reward = LatentClipReward(model, "two red circles")
    latents = torch.randn(2, 4, 16, 16)
    with torch.no_grad():  # as inside a diffusers pipeline
        scores, grad = reward.with_grad(latents)
    assert scores.shape == (2,) and grad.shape == latents.shape and grad.abs().sum() > 0
    # A small step along the gradient raises the reward: the gradient is the reward's, not noise.
    stepped = reward(latents + 1e-2 * grad / grad.norm()).detach()
    assert (stepped > scores).all()


def test_zero_shot_probabilities_rank_labels_as_the_similarities_do(model):
    latents = torch.randn(5, 4, 16, 16)
    labels = ["circles", "squares", "triangles"]
    probs = zero_shot_classify(model, latents, labels, template="two red {}")
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(5))
    with torch.no_grad():
        similarity = model.similarity(latents, [f"two red {label}" for label in labels])
    assert torch.equal(probs.argmax(dim=-1), similarity.argmax(dim=-1))
    with pytest.raises(ValueError, match="must contain"):
        zero_shot_classify(model, latents, labels, template="no slot")


def _generate(pipe, callback=None, seed: int = 0) -> torch.Tensor:
    kwargs = {"callback_on_step_end": callback} if callback is not None else {}
    return pipe(
        "a red circle",
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        **kwargs,
    ).images


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _guided(pipe, model, caption: str = "a red circle", **options) -> torch.Tensor:
    return _generate(pipe, LatentClipGuidance(model, "a watermark", **options).for_prompts(caption))


def test_guidance_changes_samples_only_when_it_is_on(pipe, model):
    plain = _generate(pipe)
    warming_up = _guided(pipe, model, scale=0.5, warmup_steps=4)
    zero_scale = _guided(pipe, model, scale=0.0)
    on = _guided(pipe, model, scale=0.5, warmup_steps=1, stop_step=None)
    torch.testing.assert_close(warming_up, plain, rtol=0, atol=0)
    torch.testing.assert_close(zero_scale, plain, rtol=0, atol=0)
    assert (on - plain).abs().max() > 1e-3
    # stopped after the first step: guided there, unguided after (so unlike guidance that never stops)
    first_only = _guided(pipe, model, scale=0.5, stop_step=1, momentum_scale=0)
    every_step = _guided(pipe, model, scale=0.5, stop_step=None, momentum_scale=0)
    assert (first_only - plain).abs().max() > 1e-3 and (first_only - every_step).abs().max() > 1e-3


def test_guidance_lowers_how_much_the_latents_show_the_concept(pipe, model):
    shows = LatentClipReward(model, ["a red circle, a watermark"], baseline=["a red circle"])
    plain = _generate(pipe)
    guided = _guided(pipe, model, scale=0.2, stop_step=None, momentum_scale=0)
    with torch.no_grad():
        assert shows(guided).item() < shows(plain).item()


def test_guidance_reads_each_images_caption(pipe, model):
    red = _guided(pipe, model, "a red circle", scale=0.5, stop_step=None)
    blue = _guided(pipe, model, "two blue squares", scale=0.5, stop_step=None)
    assert (red - blue).abs().max() > 1e-4  # the direction is the caption's, not one for every prompt


def test_guidance_needs_the_calls_prompts_and_valid_options(pipe, model):
    with pytest.raises(RuntimeError, match="for_prompts"):
        _generate(pipe, LatentClipGuidance(model, "a watermark"))
    with pytest.warns(UserWarning, match="1 of 2 images go unguided.*cut 'a watermark' off"):
        long = " ".join(["red"] * TINY["max_length"])
        guidance = LatentClipGuidance(model, "a watermark", stop_step=None).for_prompts(["a red circle", long])
    latents = torch.randn(2, 4, 16, 16)
    pushed = guidance.push(latents, step=0)
    assert (pushed[0] - latents[0]).abs().max() > 0 and torch.equal(pushed[1], latents[1])
    LatentClipGuidance(model, "a watermark").for_prompts("a {red} circle")  # braces in a prompt are text
    with pytest.raises(ValueError, match="stop_step"):
        LatentClipGuidance(model, "a watermark", warmup_steps=8, stop_step=8)
    with pytest.raises(ValueError, match="template"):
        LatentClipGuidance(model, "a watermark", template="{concept} only")


def test_reward_with_a_baseline_is_the_difference_of_similarities(model):
    latents = torch.randn(2, 4, 16, 16)
    reward = LatentClipReward(
        model,
        ["a red circle, a watermark", "two blue squares, a watermark"],
        baseline=["a red circle", "two blue squares"],
    )
    with torch.no_grad():
        to_prompts = model.similarity(latents, ["a red circle, a watermark", "two blue squares, a watermark"])
        to_baselines = model.similarity(latents, ["a red circle", "two blue squares"])
        expected = to_prompts.diagonal() - to_baselines.diagonal()
        torch.testing.assert_close(reward(latents), expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="one prompt per image"):
            reward(latents[:1])
    with pytest.raises(ValueError, match="baselines"):
        LatentClipReward(model, ["a", "b"], baseline=["c"])


def test_guidance_runs_inside_the_sld_pipeline(model):
    from erasure.pipelines import SLDPipeline

    sld = SLDPipeline(**tiny_sd_pipeline().components, requires_safety_checker=False)
    sld.set_progress_bar_config(disable=True)
    guidance = LatentClipGuidance(model, "a watermark", scale=0.5).for_prompts("a red circle")
    plain = sld(
        "a red circle",
        num_inference_steps=3,
        output_type="latent",
        sld="max",
        generator=torch.Generator().manual_seed(0),
    ).images
    guided = sld(
        "a red circle",
        num_inference_steps=3,
        output_type="latent",
        sld="max",
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=guidance,
    ).images
    assert (guided - plain).abs().max() > 1e-3


def test_noise_regulariser_is_smallest_at_the_gaussian_norm():
    dim = 4 * 8 * 8
    scales = torch.tensor([0.5, 1.0, 2.0])
    noise = torch.ones(3, 4, 8, 8) * scales.view(3, 1, 1, 1) * ((dim - 1) / dim) ** 0.5
    values = noise_norm_regulariser(noise)
    assert values[1] < values[0] and values[1] < values[2]


def test_reno_loss_decreases_on_a_tiny_model(pipe, model):
    sample = few_step_sampler(pipe, "a red circle", num_inference_steps=1)
    reward = LatentClipReward(model, "two blue squares")
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    result = optimise_noise(sample, reward, noise, iterations=8, progress=False)
    assert len(result.losses) == 8
    assert result.losses[-1] < result.losses[0]
    assert max(result.rewards) > result.rewards[0]
    with torch.no_grad():
        assert reward(result.latents).item() == pytest.approx(max(result.rewards), abs=1e-5)
