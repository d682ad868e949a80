"""The exported run loads in the tools users have: diffusers LoRA, textual inversion, kohya, hashes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from erasure.cli import main as erasure_cli
from erasure.runs import LORA_FILE, load_learned_embeds
from erasure.training.export import kohya_state_dict, sha256

TO_Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def geom_run(trained_runs):
    return trained_runs("geom_erasing")  # rank 4, alpha 8


def sample(pipe: StableDiffusionPipeline, prompt: str = "a red circle") -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np").images


def fused_to_q(pipe: StableDiffusionPipeline) -> torch.Tensor:
    pipe.fuse_lora()
    return pipe.unet.get_submodule(TO_Q).weight.detach().clone()


def test_lora_loads_changes_output_and_keeps_alpha(geom_run, tiny_sd_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    before = sample(pipe)
    base_weight = pipe.unet.get_submodule(TO_Q).weight.detach().clone()
    pipe.load_lora_weights(geom_run)
    assert not np.allclose(sample(pipe), before, atol=1e-4)
    lora = load_file(geom_run / LORA_FILE)
    down, up = lora[f"unet.{TO_Q}.lora_A.weight"], lora[f"unet.{TO_Q}.lora_B.weight"]
    # alpha 8 on rank 4: the update is scaled by 2, as peft trained it
    torch.testing.assert_close(fused_to_q(pipe), base_weight + 2.0 * up @ down)


def test_kohya_file_loads_back_through_diffusers(geom_run, tiny_sd_dir):
    assert erasure_cli(["export", str(geom_run), "--format", "kohya"]) == 0
    kohya_file = geom_run / "tiny.safetensors"
    keys = load_file(kohya_file)
    assert all(k.startswith("lora_unet_") for k in keys)
    assert keys[f"lora_unet_{TO_Q.replace('.', '_')}.alpha"].item() == 8.0
    from_diffusers = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    from_diffusers.load_lora_weights(geom_run)
    from_kohya = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    from_kohya.load_lora_weights(kohya_file)
    torch.testing.assert_close(fused_to_q(from_kohya), fused_to_q(from_diffusers))
    assert "tiny.safetensors" in json.loads((geom_run / "erasure.json").read_text())["files"]


def test_learned_embeds_load_with_textual_inversion(geom_run, tiny_sd_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    plain = sample(pipe)
    tokens = load_learned_embeds(pipe, geom_run)
    saved = load_file(geom_run / "learned_embeds.safetensors")
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    torch.testing.assert_close(
        pipe.text_encoder.get_input_embeddings().weight[ids].detach(), torch.stack(list(saved.values()))
    )
    template = (geom_run / "negative_prompt.txt").read_text().strip()
    negative = template.replace("{prompt}", "a red circle")
    assert pipe.tokenizer.tokenize(negative)[-2:] == ["<loc_2_2>", "<loc_2_3>"]  # each token is one entry
    generator = torch.Generator().manual_seed(0)
    guided = pipe(
        "a red circle", negative_prompt=negative, num_inference_steps=2, generator=generator, output_type="np"
    )
    assert not np.allclose(guided.images, plain, atol=1e-4)


def test_erasure_json_records_the_run_and_hashes_every_file(geom_run):
    metadata = json.loads((geom_run / "erasure.json").read_text())  # after the kohya test's re-export
    assert metadata["global_step"] == 4
    assert metadata["training"]["captions"] == 6 and metadata["training"]["shortened_captions"] == 0
    assert metadata["recipe"]["lora"]["alpha"] == 8 and metadata["base_model"]["kind"] == "sd"
    assert metadata["dataset"]["num_rows"] == 6 and metadata["dataset"]["fingerprint"]
    assert metadata["negative_prompt"]["frequent_cells"]["watermark"][0] == [2, 2, 6]
    assert {"diffusers", "peft", "torch"} <= set(metadata["versions"])
    assert {LORA_FILE, "learned_embeds.safetensors", "negative_prompt.txt"} <= set(metadata["files"])
    for name, digest in metadata["files"].items():
        assert sha256(geom_run / name) == digest


def test_kohya_alpha_follows_the_recipe(geom_run):
    alphas = {k: v for k, v in kohya_state_dict(geom_run / LORA_FILE, alpha=3.0).items() if k.endswith(".alpha")}
    assert alphas and all(v.item() == 3.0 for v in alphas.values())


def test_export_of_a_stopped_run_from_its_checkpoint(tmp_path, tiny_sd_dir, draw_tiny_icd, train_tiny):
    icd = draw_tiny_icd(tmp_path / "icd", n=2)
    stopped = train_tiny(tmp_path, tiny_sd_dir, icd, "train.stop_at_step=1")
    assert not (stopped.run_dir / LORA_FILE).exists()
    assert erasure_cli(["export", str(stopped.run_dir)]) == 2  # nothing to export yet: a clear error, no crash
    assert erasure_cli(["export", str(stopped.run_dir), "--checkpoint", "latest"]) == 0
    metadata = json.loads((stopped.run_dir / "erasure.json").read_text())
    assert metadata["global_step"] == 1 and LORA_FILE in metadata["files"]
