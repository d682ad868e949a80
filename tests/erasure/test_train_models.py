"""Which base model a recipe trains: the family read from the model itself, and single-file checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from erasure.config import ConfigError
from erasure.recipe import ModelSection
from erasure.runs import LORA_FILE
from erasure.training.models import model_kind


@pytest.mark.parametrize(("model", "kind"), [("tiny_sd_dir", "sd"), ("tiny_sdxl_dir", "sdxl")])
def test_model_kind_is_read_from_model_index(request, model, kind):
    assert model_kind(ModelSection(pretrained=str(request.getfixturevalue(model)))) == kind
    assert model_kind(ModelSection(pretrained="anything", kind="sdxl")) == "sdxl"  # set by hand: no detection


def test_a_missing_model_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="model.pretrained.*model.kind"):
        model_kind(ModelSection(pretrained=str(tmp_path / "nowhere")))


def test_sdxl_trains_without_model_kind(tmp_path, tiny_sdxl_dir, icd_dir, train_tiny):
    result = train_tiny(tmp_path, tiny_sdxl_dir, icd_dir, "train.max_steps=1", "model.kind=null")
    assert (result.run_dir / "learned_embeds_2.safetensors").is_file()
    assert yaml.safe_load((result.run_dir / "recipe.yaml").read_text())["model"]["kind"] == "sdxl"


def test_a_single_file_checkpoint_trains_like_its_folder(tmp_path, tiny_sd_dir, icd_dir, train_tiny):
    from diffusers import StableDiffusionPipeline

    from erasure.checkpoint_file import save_single_file

    checkpoint = save_single_file(StableDiffusionPipeline.from_pretrained(tiny_sd_dir), tmp_path / "tiny.safetensors")
    folder = train_tiny(tmp_path / "folder", tiny_sd_dir, icd_dir, "train.max_steps=2")
    single = train_tiny(
        tmp_path / "file", checkpoint, icd_dir, "train.max_steps=2", "model.kind=null", f"model.config={tiny_sd_dir}"
    )
    expected, got = load_file(folder.run_dir / LORA_FILE), load_file(single.run_dir / LORA_FILE)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "base_fixture", "pipeline_name"),
    [
        ("sd15_geom_erasing_watermark", "tiny_sd_dir", "StableDiffusionPipeline"),
        ("sdxl_geom_erasing_watermark", "tiny_sdxl_dir", "StableDiffusionXLPipeline"),
    ],
    ids=["sd15", "sdxl"],
)
def test_the_sd_recipes_train_on_a_tiny_model_of_their_family_as_written(
    request, tmp_path, icd_dir, fresh_accelerator, recipe, base_fixture, pipeline_name
):
    """The committed SD 1.5 / SDXL recipes with only the model, the data and the sizes swapped: their LoRA reaches
    every layer kind the layout names, and the kohya file they export samples as the diffusers LoRA does (a LoRA
    beyond attention whose kohya names a loader skipped would sample differently)."""
    import diffusers
    import numpy as np

    from erasure.recipe import load_recipe
    from erasure.training import train

    base = request.getfixturevalue(base_fixture)
    path = Path(__file__).parents[2] / "recipes" / f"{recipe}.yaml"
    sizes = ["train.max_steps=2", "train.batch_size=2", "train.gradient_accumulation_steps=1", "train.num_workers=0"]
    sizes += ["data.resolution=32", "report_to=null", "train.mixed_precision=no", "model.variant=null"]
    sizes += ["train.learning_rate=5e-2", "train.lr_warmup_steps=0", "validation.prompts=[]"]  # a LoRA that shows
    overrides = [f"model.pretrained={base}", f"data.dataset={icd_dir}", f"output_dir={tmp_path / 'run'}", *sizes]
    result = train(load_recipe(path, overrides))
    lora = load_file(result.run_dir / LORA_FILE)
    for module in ("attn1.to_q", "attn2.to_k", "proj_in", "ff.net.2", "resnets.0.conv1", "time_emb_proj"):
        assert any(f".{module}.lora_A" in key for key in lora), module

    pipeline = getattr(diffusers, pipeline_name)

    def sample(pipe) -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        return pipe("a red circle", num_inference_steps=2, generator=generator, output_type="np").images

    from_diffusers = pipeline.from_pretrained(base)
    plain = sample(from_diffusers)
    from_diffusers.load_lora_weights(result.run_dir)
    expected = sample(from_diffusers)
    assert not np.allclose(expected, plain, atol=1e-4)
    from_kohya = pipeline.from_pretrained(base)
    from_kohya.load_lora_weights(str(result.run_dir / f"{recipe}.safetensors"))
    np.testing.assert_allclose(sample(from_kohya), expected, atol=1e-5)
