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


def test_guidance_changes_samples_only_when_it_is_on(pipe, model):
    plain = _generate(pipe)
    warming_up = _generate(pipe, LatentClipGuidance(model, "a watermark", scale=0.5, warmup_steps=4))
    zero_scale = _generate(pipe, LatentClipGuidance(model, "a watermark", scale=0.0, warmup_steps=0))
    on = _generate(pipe, LatentClipGuidance(model, "a watermark", scale=0.5, warmup_steps=1))
    torch.testing.assert_close(warming_up, plain, rtol=0, atol=0)
    torch.testing.assert_close(zero_scale, plain, rtol=0, atol=0)
    assert (on - plain).abs().max() > 1e-3


def test_guidance_lowers_the_concept_similarity(pipe, model):
    concept = LatentClipReward(model, "a watermark")
    plain = _generate(pipe)
    guided = _generate(pipe, LatentClipGuidance(model, "a watermark", scale=0.2, warmup_steps=0, momentum_scale=0))
    with torch.no_grad():
        assert concept(guided).item() < concept(plain).item()


def test_guidance_runs_inside_the_sld_pipeline(model):
    from erasure.pipelines import SLDPipeline

    sld = SLDPipeline(**tiny_sd_pipeline().components, requires_safety_checker=False)
    sld.set_progress_bar_config(disable=True)
    guidance = LatentClipGuidance(model, "a watermark", scale=0.5, warmup_steps=0)
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
