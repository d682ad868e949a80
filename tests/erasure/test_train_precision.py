"""Mixed precision on the CPU: every mode trains under bf16 and fp16, and the launcher's choice is honoured.

On a CPU accelerate autocasts bf16 only; under fp16 it keeps the frozen weights in fp16 with no autocast, so both
paths (autocast, and dtypes reconciled by hand) run here.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from erasure.runs import EMBEDS_FILE, LORA_FILE

MODES = {
    "geom_erasing": ["train.mode=geom_erasing"],
    "naive": ["train.mode=naive"],
    "tokens_only": ["train.mode=tokens_only"],
    "full_unet": ["train.mode=geom_erasing", "lora.full_unet=true", "train.learning_rate=0.001"],
}


def _weights(run_dir) -> dict[str, torch.Tensor]:
    files = [run_dir / LORA_FILE, run_dir / EMBEDS_FILE, run_dir / "unet" / "diffusion_pytorch_model.safetensors"]
    return {f"{path.name}:{key}": value for path in files if path.is_file() for key, value in load_file(path).items()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_trains_in_half_precision(
    tmp_path, tiny_sd_dir, icd_dir, train_tiny, fresh_accelerator, mode, precision
):
    overrides = [*MODES[mode], f"train.mixed_precision={precision}", "train.max_steps=1"]  # half precision is slow
    overrides += ["validation.prompts=[a red circle]", "validation.every=1", "validation.num_inference_steps=1"]
    result = train_tiny(tmp_path, tiny_sd_dir, icd_dir, *overrides)
    assert result.finished and result.mixed_precision == precision
    weights = _weights(result.run_dir)
    assert weights and all(torch.isfinite(value).all() for value in weights.values())
    assert (result.run_dir / "validation" / "step-000001.png").is_file()  # sampling with the mixed-dtype modules


@pytest.mark.parametrize(
    ("launcher", "recipe", "expected"),
    [
        ("bf16", [], "bf16"),  # train.mixed_precision unset: the launcher decides
        ("bf16", ["train.mixed_precision=no"], "no"),  # set: the recipe wins
        ("no", ["train.mixed_precision=bf16"], "bf16"),
    ],
)
def test_the_launchers_mixed_precision_unless_the_recipe_sets_one(
    tmp_path, tiny_sd_dir, icd_dir, train_tiny, fresh_accelerator, monkeypatch, launcher, recipe, expected
):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)  # what `accelerate launch --mixed_precision` sets
    result = train_tiny(tmp_path, tiny_sd_dir, icd_dir, "train.max_steps=1", *recipe)
    assert result.mixed_precision == expected
