"""`erasure generate` and `load_pipeline` on tiny model directories and a hand-made training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file

from erasure.cli import main
from erasure.loading import load_pipeline
from erasure.pipelines import SLDPipeline, SLDXLPipeline
from erasure.sld import SafetyConfig

TOKEN = "<loc_0_0>"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_sd_dir):
    """A training run as the trainer exports it: random LoRA, one learned token, a negative prompt template."""
    run = tmp_path_factory.mktemp("run")
    unet = StableDiffusionPipeline.from_pretrained(tiny_sd_dir).unet
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(run, unet_lora_layers=lora, safe_serialization=True)
    save_file({TOKEN: torch.randn(32)}, run / "learned_embeds.safetensors")
    (run / "negative_prompt.txt").write_text("{prompt}, watermark " + TOKEN + "\n")
    return run


def _generate(out, model, *extra: str) -> int:
    return main(["generate", "--model", str(model), "--out", str(out), "--steps", "2", "--device", "cpu", *extra])


def test_generate_writes_images_and_parameters_and_resumes(tmp_path, tiny_sd_dir):
    out = tmp_path / "out"
    prompts = ["a red car", "a cat"]
    assert _generate(out, tiny_sd_dir, *prompts, "--seeds", "3", "4", "--sld", "max", "--negative-prompt", "dark") == 0

    record = json.loads((out / "generate.json").read_text())
    assert record["parameters"]["sld_config"] == dict(SafetyConfig.MAX)
    assert record["parameters"]["seeds"] == [3, 4] and record["parameters"]["steps"] == 2
    files = [image["file"] for image in record["images"]]
    assert files == ["00000_seed3.png", "00000_seed4.png", "00001_seed3.png", "00001_seed4.png"]
    assert sorted(p.name for p in out.glob("*.png")) == files

    # each image is the one its seed gives alone, with the same settings
    pipe = load_pipeline(str(tiny_sd_dir)).pipeline
    alone = pipe(
        "a cat", negative_prompt="dark", num_inference_steps=2, generator=torch.Generator().manual_seed(4), sld="max"
    ).images[0]
    saved = np.asarray(Image.open(out / "00001_seed4.png"), dtype=int)
    assert np.abs(saved - np.asarray(alone, dtype=int)).max() <= 1

    stamps = {path: path.stat().st_mtime_ns for path in out.glob("*.png")}
    assert _generate(out, tiny_sd_dir, *prompts, "--seeds", "3", "4", "--sld", "max", "--negative-prompt", "dark") == 0
    assert {path: path.stat().st_mtime_ns for path in out.glob("*.png")} == stamps
    with pytest.raises(ValueError, match="other parameters"):
        _generate(out, tiny_sd_dir, *prompts, "--seeds", "3", "4", "--debug")


def test_load_pipeline_with_a_training_run(run_dir, tiny_sd_dir):
    plain = load_pipeline(str(tiny_sd_dir))
    loaded = load_pipeline(str(tiny_sd_dir), run=run_dir)
    assert isinstance(loaded.pipeline, SLDPipeline)
    assert plain.negative_prompt_template is None
    assert loaded.negative_prompt("a cat") == f"a cat, watermark {TOKEN}"
    assert TOKEN in loaded.pipeline.tokenizer.get_vocab()
    run = dict(num_inference_steps=2, output_type="np", sld="medium")
    with_lora = loaded.pipeline("a cat", generator=torch.Generator().manual_seed(0), **run).images
    without = plain.pipeline("a cat", generator=torch.Generator().manual_seed(0), **run).images
    assert np.abs(with_lora - without).max() > 1e-3


def test_load_pipeline_with_a_full_unet_run(tmp_path, tiny_sd_dir):
    unet = StableDiffusionPipeline.from_pretrained(tiny_sd_dir).unet
    torch.manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    unet.save_pretrained(tmp_path / "run" / "unet")  # what lora.full_unet runs export
    loaded = load_pipeline(str(tiny_sd_dir), run=tmp_path / "run").pipeline
    assert all(torch.equal(a, b) for a, b in zip(loaded.unet.parameters(), unet.parameters(), strict=True))
    with pytest.raises(FileNotFoundError, match="is it a training run"):
        load_pipeline(str(tiny_sd_dir), run=tmp_path)


def test_generate_uses_the_run_negative_prompt(tmp_path, run_dir, tiny_sd_dir):
    out = tmp_path / "out"
    assert _generate(out, tiny_sd_dir, "a cat", "--run", str(run_dir), "--use-run-negative-prompt") == 0
    record = json.loads((out / "generate.json").read_text())
    filled = f"a cat, watermark {TOKEN}"
    image = {"file": "00000_seed0.png", "prompt": "a cat", "seed": 0}
    assert record["images"] == [image | {"negative_prompt": None, "concept_negative_prompt": filled}]
    as_negative = tmp_path / "as-negative"
    argv = ["a cat", "--run", str(run_dir), "--use-run-negative-prompt", "--run-negative-as", "negative-prompt"]
    assert _generate(as_negative, tiny_sd_dir, *argv) == 0
    record = json.loads((as_negative / "generate.json").read_text())
    assert record["images"] == [image | {"negative_prompt": filled, "concept_negative_prompt": None}]
    # the two ways of applying the template make different images
    assert (out / image["file"]).read_bytes() != (as_negative / image["file"]).read_bytes()


def test_load_pipeline_detects_sdxl(tiny_sdxl_dir):
    assert isinstance(load_pipeline(str(tiny_sdxl_dir)).pipeline, SLDXLPipeline)


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (["--use-run-negative-prompt", "a cat"], ValueError, "needs --run"),
        ([], ValueError, "no prompts"),
        (["--prompts-file", "missing.txt"], FileNotFoundError, "missing.txt"),
        (["--run", ".", "a cat"], FileNotFoundError, "training run"),
        (["--latent-guidance", "watermark", "a cat"], ValueError, "go together"),
        (["--concept-negative-scale", "2", "a cat"], ValueError, "needs --use-run-negative-prompt"),
    ],
)
def test_generate_bad_input(tmp_path, tiny_sd_dir, extra, error, message):
    with pytest.raises(error, match=message):
        _generate(tmp_path / "out", tiny_sd_dir, *extra, "--debug")


def test_unknown_preset_lists_the_valid_ones(tmp_path, tiny_sd_dir, capsys):
    with pytest.raises(SystemExit):
        _generate(tmp_path / "out", tiny_sd_dir, "a cat", "--sld", "extreme")
    assert "weak" in capsys.readouterr().err


def test_generate_with_latent_clip_guidance_steers_away_from_the_concept(
    tmp_path, tiny_sd_dir, tiny_latent_clip_dir, guidance_rewards
):
    assert _generate(tmp_path / "plain", tiny_sd_dir, "a cat") == 0
    guided = [
        "--latent-clip",
        str(tiny_latent_clip_dir),
        "--latent-guidance",
        "watermark",
        "--latent-guidance-warmup",
        "0",
        "--latent-guidance-scale",
        "0.5",
    ]
    assert _generate(tmp_path / "guided", tiny_sd_dir, "a cat", *guided) == 0
    plain = np.asarray(Image.open(tmp_path / "plain" / "00000_seed0.png"), dtype=np.float32)
    steered = np.asarray(Image.open(tmp_path / "guided" / "00000_seed0.png"), dtype=np.float32)
    assert np.abs(plain - steered).max() > 0
    assert guidance_rewards and all(after < before for before, after in guidance_rewards)
    record = json.loads((tmp_path / "guided" / "generate.json").read_text())["parameters"]
    assert record["latent_guidance"] == "watermark" and record["latent_guidance_warmup"] == 0
