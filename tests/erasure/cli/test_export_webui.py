"""Files for WebUI and ComfyUI users (``erasure export RUN --format webui / kohya / single-file``), read back by
loaders we did not write.

What the UIs expect, as read in their source:
- WebUI ``modules/textual_inversion/textual_inversion.py``, ``EmbeddingDatabase.load_from_file`` and
  ``create_embedding_from_data``: the embedding's name is the file name without extension; a ``.safetensors`` file
  holds exactly one tensor ``[vectors, width]``, or ``clip_l`` and ``clip_g`` (SDXL); ``modules/sd_hijack_clip.py``
  finds the name's CLIP tokens anywhere in the prompt.
- ComfyUI ``comfy/sd1_clip.py``, ``load_embed``: NAME + ``.safetensors`` under the embeddings folder, the encoder's
  key (``clip_l`` / ``clip_g``) or else the first tensor; ``SDTokenizer.tokenize_with_weights``: only space-separated
  words starting with ``embedding:`` name embeddings, trailing commas stripped.
- kohya-ss sd-scripts ``networks/lora.py`` (``LoRANetwork.create_modules``): ``lora_unet_`` + module path with ``_``,
  ``.lora_down`` / ``.lora_up`` / ``.alpha``, scale alpha / rank; SDXL's kohya UNet has the original block names
  (``library/sdxl_original_unet.py``): WebUI's ``extensions-builtin/Lora/networks.py`` (``load_network``) takes SDXL
  keys as original names, and ComfyUI's ``comfy/lora.py`` (``model_lora_keys_unet``) maps both namings.

The independent readers run here: diffusers' ``load_textual_inversion`` (the A1111 single-tensor format),
``load_lora_weights`` on a kohya file (``diffusers/loaders/lora_conversion_utils.py``:
``_convert_non_diffusers_lora_to_diffusers``, ``_maybe_map_sgm_blocks_to_diffusers``) and ``from_single_file``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

from erasure.cli import main as erasure_cli
from erasure.runs import load_learned_embeds, load_run, read_run
from erasure.webui import COMFYUI_PREFIX, COMFYUI_PROMPT_FILE, EMBEDDINGS_DIR, WEBUI_PROMPT_FILE, embedding_name

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def geom_run(trained_runs):
    return trained_runs("geom_erasing")  # SD 1.x, rank 4, alpha 8


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory, tiny_sdxl_dir, icd_dir, train_tiny):
    return train_tiny(tmp_path_factory.mktemp("sdxl"), tiny_sdxl_dir, icd_dir, "lora.alpha=8", kind="sdxl").run_dir


def sample(pipe, negative_prompt: str | None = None) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    images = pipe(
        PROMPT, negative_prompt=negative_prompt, num_inference_steps=2, generator=generator, output_type="np"
    )
    return images.images


def embedding_path(run_dir, token: str):
    return run_dir / EMBEDDINGS_DIR / f"{embedding_name('tiny', token)}.safetensors"  # tiny: the recipe name


def embedding_files(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    """Per token, the tensors of its file; the run's tokens are all there is in the folder."""
    tokens = read_run(run_dir).tokens
    assert sorted((run_dir / EMBEDDINGS_DIR).glob("*.safetensors")) == sorted(
        embedding_path(run_dir, t) for t in tokens
    )
    return {token: load_file(embedding_path(run_dir, token)) for token in tokens}


def rows(pipe, tokens: list[str], encoder: str = "text_encoder", tokenizer: str = "tokenizer") -> torch.Tensor:
    ids = getattr(pipe, tokenizer).convert_tokens_to_ids(tokens)
    return getattr(pipe, encoder).get_input_embeddings().weight[ids].detach()


def test_sd_embeddings_load_with_diffusers_as_the_run_does(geom_run, tiny_sd_dir):
    assert erasure_cli(["export", str(geom_run), "--format", "webui"]) == 0
    per_token = embedding_files(geom_run)
    for tensors in per_token.values():
        assert list(tensors) == ["emb_params"] and tensors["emb_params"].shape == (1, 32)  # one tensor, one vector
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", p.stem) for p in (geom_run / EMBEDDINGS_DIR).iterdir())
    assert (geom_run / "tiny.safetensors").is_file()  # the kohya LoRA comes with them

    ours = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    load_learned_embeds(ours, geom_run)
    theirs = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    for token in per_token:
        theirs.load_textual_inversion(str(embedding_path(geom_run, token)), token=token)
    tokens = list(per_token)
    torch.testing.assert_close(rows(theirs, tokens), rows(ours, tokens), rtol=0, atol=0)
    negative = read_run(geom_run).negative_prompt(PROMPT)
    np.testing.assert_allclose(sample(theirs, negative), sample(ours, negative), atol=1e-6)


def test_negative_prompts_name_the_files_as_each_ui_reads_them(geom_run, tiny_sd_dir):
    assert erasure_cli(["export", str(geom_run), "--format", "webui"]) == 0
    run = read_run(geom_run)
    names = [embedding_name("tiny", token) for token in run.tokens if token in run.negative_prompt_template]
    assert names

    webui = (geom_run / WEBUI_PROMPT_FILE).read_text().strip()
    assert "<loc_" not in webui and webui.startswith("{prompt}, watermark ")
    tokenizer = StableDiffusionPipeline.from_pretrained(tiny_sd_dir).tokenizer  # a CLIP BPE, as WebUI's
    prompt_ids = tokenizer(webui.replace("{prompt}", PROMPT), add_special_tokens=False)["input_ids"]
    for name in names:  # WebUI matches the name's token ids inside the prompt's
        name_ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        assert any(prompt_ids[i : i + len(name_ids)] == name_ids for i in range(len(prompt_ids)))

    comfyui = (geom_run / COMFYUI_PROMPT_FILE).read_text().strip()
    words = [w.removeprefix(COMFYUI_PREFIX).strip(",") for w in comfyui.split(" ") if w.startswith(COMFYUI_PREFIX)]
    assert words == names
    assert all((geom_run / EMBEDDINGS_DIR / f"{word}.safetensors").is_file() for word in words)


def test_sdxl_embeddings_hold_clip_l_and_clip_g_rows(sdxl_run, tiny_sdxl_dir):
    assert erasure_cli(["export", str(sdxl_run), "--format", "webui"]) == 0
    per_token = embedding_files(sdxl_run)
    assert all(sorted(t) == ["clip_g", "clip_l"] and t["clip_g"].shape == (1, 32) for t in per_token.values())

    ours = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    load_learned_embeds(ours, sdxl_run)
    theirs = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    for token, tensors in per_token.items():
        theirs.load_textual_inversion(tensors["clip_l"], token=token)
        theirs.load_textual_inversion(
            tensors["clip_g"], token=token, text_encoder=theirs.text_encoder_2, tokenizer=theirs.tokenizer_2
        )
    tokens = list(per_token)
    torch.testing.assert_close(rows(theirs, tokens), rows(ours, tokens), rtol=0, atol=0)
    second = ("text_encoder_2", "tokenizer_2")
    torch.testing.assert_close(rows(theirs, tokens, *second), rows(ours, tokens, *second), rtol=0, atol=0)


KOHYA_CASES = [
    ("geom_run", "tiny_sd_dir", StableDiffusionPipeline, "lora_unet_down_blocks_"),  # SD 1.x: diffusers' names
    ("sdxl_run", "tiny_sdxl_dir", StableDiffusionXLPipeline, "lora_unet_input_blocks_"),  # SDXL: the original's
]


@pytest.mark.parametrize(("run_fixture", "base_fixture", "pipeline", "unet_prefix"), KOHYA_CASES, ids=["sd", "sdxl"])
def test_kohya_lora_samples_as_the_diffusers_lora(request, run_fixture, base_fixture, pipeline, unet_prefix):
    """Alpha 8 on rank 4: a kohya file whose alpha read as the rank (scale 1, not 2) would sample other images."""
    run_dir, base_dir = request.getfixturevalue(run_fixture), request.getfixturevalue(base_fixture)
    assert erasure_cli(["export", str(run_dir), "--format", "kohya"]) == 0
    kohya_file = run_dir / "tiny.safetensors"
    kohya = load_file(kohya_file)
    assert all(k.startswith("lora_unet_") for k in kohya) and any(k.startswith(unet_prefix) for k in kohya)
    assert {v.item() for k, v in kohya.items() if k.endswith(".alpha")} == {8.0}

    base = sample(pipeline.from_pretrained(base_dir))
    from_diffusers = pipeline.from_pretrained(base_dir)
    from_diffusers.load_lora_weights(run_dir)
    expected = sample(from_diffusers)
    assert not np.allclose(expected, base, atol=1e-4)  # the LoRA matters
    from_kohya = pipeline.from_pretrained(base_dir)
    from_kohya.load_lora_weights(str(kohya_file))
    np.testing.assert_allclose(sample(from_kohya), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["geom_erasing", "full_unet"])
def test_single_file_and_embeddings_sample_as_the_run(mode, trained_runs, tiny_sd_dir, tmp_path, capsys):
    """The merged checkpoint (LoRA fused, or the full UNet) plus the embedding files = the base model + load_run."""
    run_dir = trained_runs(mode)
    out = tmp_path / "merged.safetensors"
    assert erasure_cli(["export", str(run_dir), "--out", str(out)]) == 2  # --out is for --format single-file only
    assert erasure_cli(["export", str(run_dir), "--format", "single-file", "--out", str(out)]) == 0
    assert "cannot live in it" in capsys.readouterr().out

    single = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_sd_dir), local_files_only=True)
    base_vocab = (
        StableDiffusionPipeline.from_pretrained(tiny_sd_dir).text_encoder.get_input_embeddings().num_embeddings
    )
    assert single.text_encoder.get_input_embeddings().num_embeddings == base_vocab  # no learned rows inside
    for token in embedding_files(run_dir):
        single.load_textual_inversion(str(embedding_path(run_dir, token)), token=token)
    reference = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    run = load_run(reference, run_dir)
    negative = run.negative_prompt(PROMPT)
    np.testing.assert_allclose(sample(single, negative), sample(reference, negative), atol=1e-5)
