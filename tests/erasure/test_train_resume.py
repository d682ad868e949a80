"""Resuming: only whole checkpoints are picked, and only with the recipe that saved them."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from erasure.config import ConfigError
from erasure.runs import LORA_FILE, checkpoints, latest_checkpoint


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_sd_dir, icd_dir, train_tiny):
    """A 4-step run stopped after step 2 (its checkpoint-2 holds the recipe it trained with); treat as read-only."""
    workdir = tmp_path_factory.mktemp("stopped")
    assert not train_tiny(workdir, tiny_sd_dir, icd_dir, "train.stop_at_step=2").finished
    return workdir


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("train.batch_size=3", "train.batch_size"),
        ("train.gradient_accumulation_steps=2", "train.gradient_accumulation_steps"),
        ("data.max_images=4", "data.max_images"),
        ("train.seed=1", "train.seed"),
        ("train.learning_rate=0.02", "train.learning_rate"),
        ("train.token_learning_rate=0.1", "train.token_learning_rate"),
        ("train.lr_scheduler=cosine", "train.lr_scheduler"),
        ("train.mode=naive", "train.mode"),
        ("lora.rank=8", "lora.rank"),
        ("lora.target_modules=[to_q]", "lora.target_modules"),
        ("data.grid=2", "data.grid"),
        ("loss.region_alpha=0.5", "loss.region_alpha"),
    ],
)
def test_resume_refuses_a_recipe_that_changed_the_data_order_or_optimisation(
    stopped_run, tiny_sd_dir, icd_dir, train_tiny, change, field
):
    with pytest.raises(ConfigError, match="checkpoint-2 was trained with another recipe") as refused:
        train_tiny(stopped_run, tiny_sd_dir, icd_dir, "checkpoint.resume=latest", change)
    assert field in str(refused.value) and "train.max_steps" not in str(refused.value)
    assert [p.name for p in checkpoints(stopped_run / "run")] == ["checkpoint-2"]  # refused before any training


def test_resume_may_change_how_it_saves_and_extend_a_constant_schedule(
    tmp_path, stopped_run, tiny_sd_dir, icd_dir, train_tiny
):
    shutil.copytree(stopped_run, tmp_path, dirs_exist_ok=True)
    changes = [
        "checkpoint.every=3",
        "validation.every=7",
        "train.num_workers=0",
        "train.max_steps=5",
        "export.kohya=true",
    ]
    result = train_tiny(tmp_path, tiny_sd_dir, icd_dir, "checkpoint.resume=latest", *changes)
    assert (result.global_step, result.finished) == (5, True)


def test_resume_refuses_other_max_steps_when_the_schedule_depends_on_them(tmp_path, tiny_sd_dir, icd_dir, train_tiny):
    cosine = "train.lr_scheduler=cosine"
    train_tiny(tmp_path, tiny_sd_dir, icd_dir, cosine, "train.stop_at_step=2")
    with pytest.raises(ConfigError, match=r"train\.max_steps \(4 -> 6\)"):
        train_tiny(tmp_path, tiny_sd_dir, icd_dir, cosine, "checkpoint.resume=latest", "train.max_steps=6")


def _cut_short(checkpoint, keep: str) -> None:
    """What a save killed halfway leaves: ``keep`` = "nothing" (an empty folder) or "half" (a truncated file)."""
    if keep == "nothing":
        shutil.rmtree(checkpoint)
        checkpoint.mkdir()
    else:
        data = (checkpoint / LORA_FILE).read_bytes()
        (checkpoint / LORA_FILE).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("keep", ["nothing", "half"])
def test_latest_skips_a_checkpoint_whose_save_did_not_finish(
    tmp_path, stopped_run, tiny_sd_dir, icd_dir, train_tiny, caplog, keep
):
    shutil.copytree(stopped_run, tmp_path, dirs_exist_ok=True)
    run = tmp_path / "run"
    broken = run / "checkpoint-3"
    shutil.copytree(run / "checkpoint-2", broken)
    _cut_short(broken, keep)
    (run / ".checkpoint-4.tmp").mkdir()  # a save killed before its rename
    assert latest_checkpoint(run) == run / "checkpoint-2" and checkpoints(run) == [run / "checkpoint-2"]
    with caplog.at_level(logging.WARNING, logger="erasure.runs"):
        result = train_tiny(tmp_path, tiny_sd_dir, icd_dir, "checkpoint.resume=latest")
    assert "skipping" in caplog.text and "checkpoint-3" in caplog.text
    assert (result.global_step, result.finished) == (4, True)
    # total_limit 1: pruning removed checkpoint-2 from the same listing, the incomplete one stays for a human to see
    assert sorted(p.name for p in run.glob("*checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


@pytest.mark.parametrize("max_shard_size", ["10GB", "200KB"])
def test_a_full_unet_checkpoint_loads_whole_or_sharded(tmp_path, tiny_sd_dir, icd_dir, tiny_recipe, max_shard_size):
    from diffusers import UNet2DConditionModel

    from erasure.recipe import load_recipe
    from erasure.training.export import load_weights

    saved = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    saved.save_pretrained(tmp_path / "checkpoint-1" / "unet", max_shard_size=max_shard_size)
    shards = list((tmp_path / "checkpoint-1" / "unet").glob("*.safetensors"))
    assert (len(shards) > 1) == (max_shard_size == "200KB")
    recipe = load_recipe(tiny_recipe(tmp_path / "recipe.yaml", tiny_sd_dir, icd_dir), ["lora.full_unet=true"])
    unet = UNet2DConditionModel.from_config(saved.config)  # other (random) weights
    load_weights(tmp_path / "checkpoint-1", recipe, unet, [], [], [])
    assert all(torch.equal(value, saved.state_dict()[key]) for key, value in unet.state_dict().items())
