"""Which base model a recipe trains: the family read from the model itself, and single-file checkpoints."""

from __future__ import annotations

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
