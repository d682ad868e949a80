"""Latent-CLIP training: cached latents, saved model, exact resume, distillation from a pixel CLIP teacher."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from erasure.config import ConfigError, load_config
from erasure.latent_clip import LatentClip
from erasure.latent_clip.train import RUN_RECORD, TEACHER_FILE, LatentClipRecipe, prepare_captions, train
from erasure.testing import tiny_tokenizer

MODEL = (
    "{latent_size: 16, patch_size: 4, width: 32, layers: 2, heads: 4, text_width: 32, text_layers: 2, "
    "text_heads: 4, max_length: 16, projection_dim: 16}"
)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory, tiny_sd_dir, draw_tiny_icd):
    root = tmp_path_factory.mktemp("latent-clip")
    icd = draw_tiny_icd(root / "icd", n=6)
    path = root / "recipe.yaml"
    path.write_text(
        f"name: tiny\noutput_dir: {root}/run\nmodel: {MODEL}\n"
        f"data: {{dataset: {icd}, pipeline: {tiny_sd_dir}, resolution: 32}}\n"
        "train: {max_steps: 4, batch_size: 4, learning_rate: 0.01, lr_warmup_steps: 0, checkpoint_every: 2}\n"
    )
    return path


def load(recipe_file, *overrides: str) -> LatentClipRecipe:
    return load_config(LatentClipRecipe, recipe_file, list(overrides))


@pytest.fixture(scope="module")
def trained(recipe_file):
    return train(load(recipe_file))


def test_training_caches_latents_and_saves_a_loadable_model(trained):
    assert len(list((trained / "latents").glob("*.safetensors"))) == 6
    model = LatentClip.from_pretrained(trained)
    assert model.latent_shape == (4, 16, 16)
    assert (trained / RUN_RECORD).is_file() and (trained / "checkpoint-2").is_dir()


def test_resume_from_a_checkpoint_ends_with_the_uninterrupted_weights(trained, recipe_file, tmp_path):
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(trained, resumed_dir)
    (resumed_dir / "model.safetensors").unlink()
    train(load(recipe_file, f"output_dir={resumed_dir}", "train.resume=latest"))
    assert json.loads((resumed_dir / RUN_RECORD).read_text())["resumed_at_step"] == 2
    expected, got = load_file(trained / "model.safetensors"), load_file(resumed_dir / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny random pixel CLIP with its image processor, as a user's local teacher directory would hold."""
    path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _mean_teacher_cosine(run, teacher: torch.Tensor, scaling_factor: float) -> float:
    means = [load_file(path)["latent_dist"][:4] for path in sorted((run / "latents").glob("*.safetensors"))]
    with torch.no_grad():
        student = LatentClip.from_pretrained(run).encode_latents(torch.stack(means).float() * scaling_factor)
    return (student * teacher).sum(dim=-1).mean().item()


def test_distillation_pulls_the_image_embeddings_towards_the_teacher(recipe_file, teacher_dir, tiny_sd_dir, tmp_path):
    steps = "train.max_steps=12"
    plain = train(load(recipe_file, f"output_dir={tmp_path}/plain", steps))
    distilled = train(load(recipe_file, f"output_dir={tmp_path}/distilled", steps, f"distill.teacher={teacher_dir}"))
    teacher = load_file(distilled / TEACHER_FILE)["image_embeds"]
    assert teacher.shape == (6, 16)
    scaling = AutoencoderKL.load_config(tiny_sd_dir, subfolder="vae")["scaling_factor"]
    assert _mean_teacher_cosine(distilled, teacher, scaling) > _mean_teacher_cosine(plain, teacher, scaling) + 0.1


def test_a_teacher_of_another_width_is_refused_with_the_fix(recipe_file, teacher_dir, tmp_path):
    recipe = load(
        recipe_file, f"output_dir={tmp_path}/run", f"distill.teacher={teacher_dir}", "model.projection_dim=8"
    )
    with pytest.raises(ConfigError, match="model.projection_dim=16"):
        train(recipe)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.caption_column=text", "data.caption_column = 'text' is not a column"),
        ("model.latent_size=8", "model.latent_size=16"),
        ("train.batch_size=8", "fewer than train.batch_size=8"),
    ],
)
def test_bad_recipes_fail_with_the_field_and_fix(recipe_file, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train(load(recipe_file, f"output_dir={tmp_path}/run", "model.patch_size=4", override))


def test_the_toy_recipe_validates_and_reads_the_toy_base_models_latents():
    recipe = load_config(LatentClipRecipe, "recipes/latent_clip_toy.yaml")
    vae = AutoencoderKL.load_config(recipe.data.pipeline, subfolder="vae")
    down = 2 ** (len(vae["block_out_channels"]) - 1)
    assert (recipe.model.latent_channels, recipe.model.latent_size * down) == (vae["latent_channels"], 64)
    assert recipe.data.resolution == 64 and recipe.data.caption_column == "geom_caption"


GEOM = "one red circle on a blue background, watermark <loc_0_3> <loc_1_3>, text <loc_3_0>"


@pytest.mark.parametrize(
    ("captions", "mode", "expected", "added"),
    [
        (["one red circle"], "add", ["one red circle"], 0),
        ([GEOM], "strip", ["one red circle on a blue background, watermark, text"], 0),
        ([GEOM], "add", [GEOM], 16),  # the whole default 4x4 grid, not only the cells seen
        (["a, qrcode <loc_5_0>"], "add", ["a, qrcode <loc_5_0>"], 36),  # a 6x6 grid
    ],
    ids=["no-tokens", "strip", "add-4x4", "add-6x6"],
)
def test_location_tokens_are_added_as_single_tokens_or_stripped(captions, mode, expected, added):
    tokenizer = tiny_tokenizer()
    size = len(tokenizer)
    assert prepare_captions(captions, tokenizer, mode) == expected
    assert len(tokenizer) == size + added
    if added:
        assert tokenizer.tokenize("watermark <loc_1_3>")[1:] == ["<loc_1_3>"]
