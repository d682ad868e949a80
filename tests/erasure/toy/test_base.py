import json

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from erasure.config import load_config
from erasure.toy.base import ToyBaseConfig, train


def tiny_config(tmp_path, *overrides: str) -> ToyBaseConfig:
    """The recipe at test size: 32 px, two-block models, two steps per stage, no decoder stage unless asked."""
    sizes = [
        f"out_dir={tmp_path / 'toy-sd'}",
        f"work_dir={tmp_path / 'work'}",
        "resolution=32",
        "num_images=16",
        "vae_channels=[32, 32]",
        "vae_steps=2",
        "vae_batch_size=2",
        "unet_channels=[32, 32]",
        "text_width=32",
        "text_layers=1",
        "unet_steps=2",
        "unet_batch_size=2",
        "mixed_precision=no",
        "decoder_steps=0",
        "decoder_num_images=16",
        "decoder_batch_size=2",
    ]
    return load_config(ToyBaseConfig, "recipes/toy_base.yaml", [*sizes, *overrides])


def test_toy_base_recipe_trains_and_saves_a_loadable_pipeline(tmp_path):
    config = tiny_config(tmp_path, "decoder_steps=2")
    out = train(config)
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.vae.config.scaling_factor != 1.0  # fitted to the latents' spread
    assert pipe.tokenizer.tokenize("two red circles") == ["two</w>", "red</w>", "circles</w>"]
    image = pipe(
        "one blue square", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    run = json.loads((out / "toy_base.json").read_text())["run"]
    assert run["unet_steps_done"] == 2 and run["decoder_final_loss"] > 0


def test_time_limit_stops_the_unet_stage_early_and_says_so(tmp_path):
    out = train(tiny_config(tmp_path, "unet_steps=1000", "time_limit_minutes=0.0001"))
    run = json.loads((out / "toy_base.json").read_text())["run"]
    assert run["unet_steps_done"] < 1000
    assert StableDiffusionPipeline.from_pretrained(out).unet is not None


def test_decoder_stage_changes_the_decoder_only(tmp_path):
    """The UNet learned the encoder's latents, so teaching the decoder to draw the concepts must not move them."""
    from diffusers import AutoencoderKL

    from erasure.toy.base import finetune_decoder

    config = tiny_config(tmp_path, "decoder_steps=3", "decoder_concept_rates={watermark: 1.0}")
    out = train(config.model_copy(update={"decoder_steps": 0}))
    before = AutoencoderKL.from_pretrained(out / "vae").state_dict()
    finetune_decoder(config, out)
    after = AutoencoderKL.from_pretrained(out / "vae").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert json.loads((out / "toy_base.json").read_text())["run"]["decoder_final_loss"] > 0
