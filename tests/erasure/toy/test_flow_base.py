import json

import numpy as np
import torch
from diffusers import StableDiffusion3Pipeline
from transformers import CLIPTextModel

from erasure.config import load_config
from erasure.loading import load_pipeline
from erasure.testing import save_tiny_sd
from erasure.toy.flow_base import ToyFlowConfig, train


def test_toy_flow_recipe_trains_an_sd3_pipeline_that_loads_and_samples(tmp_path):
    base = save_tiny_sd(tmp_path / "toy-sd")  # stands in for assets/toy-sd: a VAE, a tokenizer, a CLIP encoder
    sizes = [f"base={base}", f"out_dir={tmp_path / 'toy-sd3'}", "num_images=16", "steps=2", "batch_size=2"]
    sizes += ["num_layers=1", "num_heads=2", "head_dim=8", "warmup_steps=1"]
    out = train(load_config(ToyFlowConfig, "recipes/toy_flow_base.yaml", sizes))

    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)
    assert pipe.vae.config.shift_factor is not None and pipe.vae.config.scaling_factor != 1.0
    ids = pipe.tokenizer(["two red circles"], return_tensors="pt").input_ids
    toy = CLIPTextModel.from_pretrained(base / "text_encoder")
    with torch.no_grad():
        torch.testing.assert_close(pipe.text_encoder(ids).text_embeds, toy(ids).pooler_output)  # identity projection
    run = json.loads((out / "toy_base.json").read_text())["run"]
    assert run["steps_done"] == 2 and run["parameters"] == sum(p.numel() for p in pipe.transformer.parameters())

    ours = load_pipeline(str(out)).pipeline  # no text_encoder_3=None needed
    assert type(ours).__name__ == "SLDSD3Pipeline"
    image = ours(
        "one blue square",
        num_inference_steps=2,
        sld="medium",
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
