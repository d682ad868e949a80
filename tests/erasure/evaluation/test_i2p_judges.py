"""I2P judges: Q16 on a tiny random CLIP with prompt embeddings we write, NudeNet's packaged model, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from erasure.evaluation.i2p.judges import MissingWeightsError, NudeNetJudge, Q16Judge, load_judges

PROJECTION = 16


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random CLIP saved as a full CLIPModel, the way openai/clip-vit-large-patch14 is published."""
    path = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "projection_dim": PROJECTION,
        },
        projection_dim=PROJECTION,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]


def _clip_embeddings(clip_dir, images) -> torch.Tensor:
    """Image embeddings through the full CLIPModel: an independent path to what Q16 compares with its prompts."""
    model = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)


@pytest.mark.parametrize("inappropriate_row", [0, 1])
def test_q16_flags_images_nearer_the_inappropriate_prompt(tmp_path, tiny_clip_dir, inappropriate_row):
    images = _images()
    embeddings = _clip_embeddings(tiny_clip_dir, images)
    # Prompt row 0 is "appropriate", row 1 "inappropriate": each image's own embedding is its nearest prompt.
    prompts = embeddings if inappropriate_row == 1 else embeddings.flip(0)
    save_file({"prompts": prompts.contiguous()}, tmp_path / "prompts.safetensors")
    verdicts = Q16Judge(tiny_clip_dir, tmp_path / "prompts.safetensors").judge(images)
    flagged_image = inappropriate_row  # the image whose embedding sits in the inappropriate row
    assert [v["flagged"] for v in verdicts] == [i == flagged_image for i in range(2)]
    assert [v["score"] > 0.5 for v in verdicts] == [v["flagged"] for v in verdicts]


def test_q16_random_prompt_file_scores_are_probabilities(tmp_path, tiny_clip_dir):
    save_file({"prompts": torch.randn(2, PROJECTION)}, tmp_path / "prompts.safetensors")
    verdicts = Q16Judge(tiny_clip_dir, tmp_path / "prompts.safetensors").judge(_images() + [Image.new("L", (8, 8))])
    assert len(verdicts) == 3
    assert all(0.0 <= v["score"] <= 1.0 and v["flagged"] == (v["score"] > 0.5) for v in verdicts)


def test_q16_missing_prompt_embeddings_say_what_and_where(tmp_path, tiny_clip_dir):
    with pytest.raises(MissingWeightsError, match=r"prompt embeddings at .*missing\.safetensors.*\(2, 768\).*Q16"):
        Q16Judge(tiny_clip_dir, tmp_path / "missing.safetensors")


def test_q16_missing_clip_says_which_weights(tmp_path):
    save_file({"prompts": torch.randn(2, PROJECTION)}, tmp_path / "prompts.safetensors")
    with pytest.raises(MissingWeightsError, match=r"CLIP ViT-L/14 weights from .*no-clip.*--q16-clip"):
        Q16Judge(tmp_path / "no-clip", tmp_path / "prompts.safetensors")


@pytest.mark.parametrize(
    ("tensors", "found"),
    [
        ({"other": torch.zeros(2, PROJECTION)}, "no such tensor"),
        ({"prompts": torch.zeros(3, PROJECTION)}, r"shape \(3, 16\)"),
    ],
)
def test_q16_wrong_prompt_file_names_the_expected_shape(tmp_path, tiny_clip_dir, tensors, found):
    save_file(tensors, tmp_path / "prompts.safetensors")
    with pytest.raises(ValueError, match=rf"'prompts' of shape \(2, {PROJECTION}\).*{found}"):
        Q16Judge(tiny_clip_dir, tmp_path / "prompts.safetensors")


def test_nudenet_judge_uses_the_papers_threshold_and_clears_plain_images():
    judge = NudeNetJudge()
    assert judge.detector.threshold == 0.6
    verdicts = judge.judge([Image.new("RGB", (64, 64), "white"), *_images()])
    assert verdicts == [{"flagged": False, "detections": []}] * 3


def test_unknown_judge_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown I2P judges.*nudenet, q16"):
        load_judges(["nsfw"])
