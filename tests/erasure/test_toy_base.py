import json

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from erasure.config import load_config
from erasure.toy_base import ToyBaseConfig, train


def test_toy_base_recipe_trains_and_saves_a_loadable_pipeline(tmp_path):
    overrides = [
        f"out_dir={tmp_path / 'toy-sd'}",
        f"work_dir={tmp_path / 'work'}",
        "resolution=32",
        "num_images=16",
        "vae_channels=[32, 32]",
        "vae_steps=2",
        "vae_batch_size=4",
        "unet_channels=[32, 32]",
        "text_width=32",
        "text_layers=1",
        "unet_steps=2",
        "unet_batch_size=4",
        "mixed_precision=no",
    ]
    config = load_config(ToyBaseConfig, "recipes/toy_base.yaml", overrides)
    out = train(config)
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.vae.config.scaling_factor != 1.0  # fitted to the latents' spread
    assert pipe.tokenizer.tokenize("two red circles") == ["two</w>", "red</w>", "circles</w>"]
    image = pipe(
        "one blue square", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    run = json.loads((out / "toy_base.json").read_text())["run"]
    assert run["unet_steps_done"] == 2


def test_time_limit_stops_the_unet_stage_early_and_says_so(tmp_path):
    overrides = [
        f"out_dir={tmp_path / 'toy-sd'}",
        f"work_dir={tmp_path / 'work'}",
        "resolution=32",
        "num_images=16",
        "vae_channels=[32, 32]",
        "vae_steps=1",
        "vae_batch_size=2",
        "unet_channels=[32, 32]",
        "text_width=32",
        "text_layers=1",
        "unet_steps=1000",
        "unet_batch_size=2",
        "mixed_precision=no",
        "time_limit_minutes=0.0001",
    ]
    out = train(load_config(ToyBaseConfig, "recipes/toy_base.yaml", overrides))
    run = json.loads((out / "toy_base.json").read_text())["run"]
    assert run["unet_steps_done"] < 1000
    assert StableDiffusionPipeline.from_pretrained(out).unet is not None
