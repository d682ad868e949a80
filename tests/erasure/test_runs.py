"""`erasure.load_run` and the run directory: one call gives what loading each file by hand gives, on SD and SDXL."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers.utils import convert_state_dict_to_diffusers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from erasure import SLDPipeline, SLDXLPipeline, load_run
from erasure.runs import LORA_FILE, NEGATIVE_PROMPT_FILE, read_run, rename_lora_keys


def _sample(pipe, prompt: str = "a red circle", **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    options = {"num_inference_steps": 2, "output_type": "pt", "generator": generator} | kwargs
    return pipe(prompt, **options).images


def _pipe(model_dir, cls=SLDPipeline):
    extra = {"safety_checker": None, "requires_safety_checker": False} if cls is SLDPipeline else {}
    pipe = cls.from_pretrained(str(model_dir), **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_load_run_equals_loading_each_file_by_hand(trained_runs, tiny_sd_dir):
    run_dir = trained_runs("geom_erasing")
    by_hand = _pipe(tiny_sd_dir)
    by_hand.load_lora_weights(run_dir, weight_name=LORA_FILE)
    rows = load_file(run_dir / "learned_embeds.safetensors")
    by_hand.load_textual_inversion(list(rows.values()), token=list(rows))

    pipe = _pipe(tiny_sd_dir)
    run = load_run(pipe, run_dir)
    assert run.weights == "lora" and run.concepts == ["watermark"] and set(run.tokens) == set(rows)
    assert run.negative_prompt_template == (run_dir / NEGATIVE_PROMPT_FILE).read_text().strip()
    assert set(run.cells) == {"watermark"}
    prompt = f"a red circle, watermark {run.tokens[0]}"
    assert pipe.tokenizer.tokenize(prompt)[-1] == run.tokens[0]  # one learned token, not sub-word pieces
    torch.testing.assert_close(_sample(pipe, prompt), _sample(by_hand, prompt), rtol=0, atol=1e-6)
    assert (_sample(pipe, prompt) - _sample(_pipe(tiny_sd_dir), prompt)).abs().max() > 1e-3


def test_lora_scale_weights_the_run(trained_runs, tiny_sd_dir):
    run_dir = trained_runs("naive")
    base, half, full = _pipe(tiny_sd_dir), _pipe(tiny_sd_dir), _pipe(tiny_sd_dir)
    load_run(half, run_dir, lora_scale=0.5)
    load_run(full, run_dir)
    images = [_sample(pipe) for pipe in (base, half, full)]
    torch.testing.assert_close(images[1], _sample(full, cross_attention_kwargs={"scale": 0.5}), rtol=0, atol=1e-6)
    assert (images[1] - images[0]).abs().max() > 0 and (images[1] - images[2]).abs().max() > 0


def test_a_full_unet_run_replaces_the_unet(trained_runs, tiny_sd_dir):
    pipe = _pipe(tiny_sd_dir)
    run = load_run(pipe, trained_runs("full_unet"))
    assert run.weights == "unet"
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())
    with pytest.raises(ValueError, match="full fine-tune"):
        load_run(_pipe(tiny_sd_dir), trained_runs("full_unet"), lora_scale=0.5)


def _loaded_lora(pipe) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights as they sit in the pipeline, under the file's names."""
    return {
        f"unet.{name.replace(f'.{adapter}', '')}": value
        for name, value in pipe.unet.state_dict().items()
        for adapter in pipe.get_active_adapters()
        if f".{adapter}." in name
    }


def test_a_lora_beyond_attention_loads_every_layer(trained_runs, tiny_sd_dir, tmp_path):
    """The run's LoRA on attention and convs reaches the pipeline whole; a file of the old mixed names (attention in
    diffusers' lora.down, convs in peft's lora_A), whose attention diffusers drops, is refused until renamed."""
    run_dir = trained_runs("wide_lora")
    saved = load_file(run_dir / LORA_FILE)
    assert any(".attn2.to_k." in k for k in saved) and any(".conv_in." in k for k in saved)
    pipe = _pipe(tiny_sd_dir)
    load_run(pipe, run_dir)
    loaded = _loaded_lora(pipe)
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    with safe_open(old / LORA_FILE, "pt") as handle:
        metadata = handle.metadata()
    save_file(convert_state_dict_to_diffusers(saved), old / LORA_FILE, metadata=metadata)
    with pytest.raises(ValueError, match="mixes diffusers' old LoRA names"):
        load_run(_pipe(tiny_sd_dir), old)
    rename_lora_keys(old / LORA_FILE)
    assert load_file(old / LORA_FILE).keys() == saved.keys()
    load_run(_pipe(tiny_sd_dir), old)


def test_the_pipeline_fills_the_template_itself(trained_runs, tiny_sd_dir):
    pipe = _pipe(tiny_sd_dir)
    run = load_run(pipe, trained_runs("geom_erasing"))
    filled = run.negative_prompt("a red circle")
    assert "{prompt}" not in filled and filled.startswith("a red circle, watermark")
    by_template = _sample(pipe, concept_negative_prompt=run.negative_prompt_template)
    torch.testing.assert_close(by_template, _sample(pipe, concept_negative_prompt=filled), rtol=0, atol=0)


def test_an_sdxl_run_trains_exports_loads_and_samples_with_sld_and_concept_negation(
    tmp_path, tiny_sdxl_dir, icd_dir, train_tiny
):
    result = train_tiny(tmp_path / "sdxl", tiny_sdxl_dir, icd_dir, kind="sdxl")
    pipe = _pipe(tiny_sdxl_dir, SLDXLPipeline)
    plain = _sample(pipe, guidance_scale=3.0)
    run = load_run(pipe, result.run_dir)
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):  # the tokens reach both text encoders
        assert set(run.tokens) <= set(tokenizer.get_vocab())
    guided = _sample(pipe, guidance_scale=3.0, sld="medium", concept_negative_prompt=run.negative_prompt_template)
    assert guided.shape == plain.shape and (guided - plain).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "none of"),
        ({"erasure.json": "{not json"}, "not valid JSON"),
        ({NEGATIVE_PROMPT_FILE: "watermark <loc_0_0>"}, "must contain '{prompt}'"),
    ],
)
def test_a_directory_that_is_not_a_run_gets_a_clear_error(tmp_path, trained_runs, files, message):
    run_dir = tmp_path / "run"
    if files:
        shutil.copytree(trained_runs("naive"), run_dir)
    else:
        run_dir.mkdir()
    for name, text in files.items():
        (run_dir / name).write_text(text)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        read_run(run_dir)
