"""Single-file checkpoints in the original Stable Diffusion layout read back by a loader we did not write.

The reader is diffusers' ``from_single_file`` (``diffusers/loaders/single_file_utils.py``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``), which implements the layout WebUI and ComfyUI load: ``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.*`` (SD 1.x) and ``conditioner.embedders.0/1.*`` (SDXL).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    CHECKPOINT_KEY_NAMES,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from erasure.checkpoint_file import (
    SD1_TEXT_PREFIX,
    SDXL_TEXT_PREFIXES,
    UNET_PREFIX,
    VAE_PREFIX,
    save_single_file,
    unet_original_name,
    vae_original_name,
)
from erasure.cli import main
from erasure.loading import load_pipeline
from erasure.testing import tiny_sdxl_components

TOY_SD = Path(__file__).parents[2] / "assets" / "toy-sd"
PROMPT = "two red circles"
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def sample(pipe, prompt: str = PROMPT) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np").images


def assert_same_weights(pipe, other) -> None:
    for name in COMPONENTS:
        if getattr(pipe, name, None) is None:
            continue
        mine, theirs = getattr(pipe, name).state_dict(), getattr(other, name).state_dict()
        assert mine.keys() == theirs.keys(), name
        for key, value in mine.items():
            assert not theirs[key].is_meta, f"{name}.{key} was not in the file"
            torch.testing.assert_close(theirs[key], value, rtol=0, atol=0, msg=f"{name}.{key}")


@pytest.fixture(scope="module")
def toy_pipe():
    return StableDiffusionPipeline.from_pretrained(TOY_SD, safety_checker=None)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory, toy_pipe):
    return save_single_file(toy_pipe, tmp_path_factory.mktemp("single") / "toy-sd.safetensors")


def test_toy_sd_single_file_loads_in_diffusers_as_its_folder(toy_pipe, toy_file):
    """The toy model (3 blocks of 1 layer, not SD 1.5's 4 of 2) round-trips exactly and samples the same images."""
    keys = load_file(toy_file).keys()
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert f"{UNET_PREFIX}input_blocks.2.0.op.weight" in keys  # block 0's downsampler after its one layer
    assert f"{UNET_PREFIX}output_blocks.3.2.conv.weight" in keys  # up block 1's upsampler, behind its attention
    assert f"{SD1_TEXT_PREFIX}text_model.embeddings.token_embedding.weight" in keys
    assert load_file(toy_file)[f"{VAE_PREFIX}encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as the original

    single = StableDiffusionPipeline.from_single_file(
        str(toy_file), config=str(TOY_SD), local_files_only=True, safety_checker=None
    )
    assert_same_weights(toy_pipe, single)
    expected = sample(toy_pipe)
    np.testing.assert_allclose(sample(single), expected, atol=1e-5)
    ours = load_pipeline(toy_file, model_config=TOY_SD, device="cpu").pipeline
    np.testing.assert_allclose(sample(ours), expected, atol=1e-5)


def test_tiny_sdxl_single_file_loads_in_diffusers_as_its_folder(tmp_path):
    """SDXL's two encoders: CLIP ViT-L under embedders.0, OpenCLIP (fused q/k/v, transposed projection) under 1.

    diffusers tells the two encoders apart by width, so the second one is made wider than the first, as in SDXL.
    """
    components = tiny_sdxl_components()
    wider = {**components["text_encoder_2"].config.to_dict(), "hidden_size": 48}
    torch.manual_seed(0)
    components["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(wider))
    components["unet"] = UNet2DConditionModel.from_config({**components["unet"].config, "cross_attention_dim": 80})
    pipe = StableDiffusionXLPipeline(**components)
    pipe.save_pretrained(tmp_path / "folder")
    path = save_single_file(pipe, tmp_path / "tiny-sdxl.safetensors")
    keys = load_file(path).keys()
    assert f"{SDXL_TEXT_PREFIXES[1]}transformer.resblocks.0.attn.in_proj_weight" in keys
    assert f"{UNET_PREFIX}label_emb.0.0.weight" in keys  # the micro-conditioning embedding

    folder = str(tmp_path / "folder")
    single = StableDiffusionXLPipeline.from_single_file(str(path), config=folder, local_files_only=True)
    assert_same_weights(pipe, single)
    np.testing.assert_allclose(sample(single), sample(pipe), atol=1e-5)


SD15_UNET = {"block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8}
SDXL_UNET = {
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "cross_attention_dim": 2048,
}


@pytest.mark.parametrize("config", [SD15_UNET, SDXL_UNET], ids=["sd15", "sdxl"])
def test_full_size_unet_names_are_the_ones_diffusers_reads(config):
    """SD 1.5 and SDXL's real UNet shapes (on the meta device): every name maps back to its diffusers name."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**config)
    original = {UNET_PREFIX + unet_original_name(k, unet.config): v for k, v in unet.state_dict().items()}
    assert convert_ldm_unet_checkpoint(original, unet.config).keys() == unet.state_dict().keys()
    if config is SD15_UNET:
        assert CHECKPOINT_KEY_NAMES["v1"] in original  # the key diffusers and WebUI recognise SD 1.x by


def test_full_size_vae_names_are_the_ones_diffusers_reads():
    with init_empty_weights():
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
    original = {VAE_PREFIX + vae_original_name(k, vae.config): v for k, v in vae.state_dict().items()}
    assert convert_ldm_vae_checkpoint(original, vae.config).keys() == vae.state_dict().keys()


def test_generate_takes_a_single_file_with_its_config(toy_file, tmp_path, monkeypatch, capsys):
    """``--model FILE --model-config DIR`` works offline; without the config the error says to pass it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["generate", PROMPT, "--model", str(toy_file), "--steps", "2", "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "with"), "--model-config", str(TOY_SD)]) == 0
    assert len(list((tmp_path / "with").glob("*.png"))) == 1
    capsys.readouterr()
    assert main([*args, str(tmp_path / "without")]) == 2
    assert "--model-config" in capsys.readouterr().err
