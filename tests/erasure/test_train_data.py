"""Training data on real-world shapes: non-square images, long captions, custom concept phrases, cache keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image, ImageDraw

from datasets_icd.features import ICD_FEATURES
from datasets_icd.geometry import location_vocabulary
from erasure.training.data import crop_window, fit_caption, pixel_tensor, vae_fingerprint

STRIPES = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # red | green | blue, one third of the width each


def striped(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    for i, colour in enumerate(STRIPES):
        ImageDraw.Draw(image).rectangle([i * width // 3, 0, (i + 1) * width // 3 - 1, height], fill=colour)
    return image


def write_icd(path: Path, images: list[Image.Image], captions: list[str], phrases: dict | None = None) -> Path:
    """A dataset with a watermark box at the bottom-right of every image, and build.json's phrases if given."""
    rows: dict[str, list] = {name: [] for name in ICD_FEATURES}
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        w, h = image.size
        rows["image"].append(image)
        rows["caption"].append(caption)
        rows["geom_caption"].append("")
        rows["concepts"].append([{"name": "watermark", "score": 1.0, "box": [w * 0.6, h * 0.7, w * 0.95, h * 0.95]}])
        rows["width"].append(w)
        rows["height"].append(h)
        rows["source_id"].append(str(i))
    Dataset.from_dict(rows, features=ICD_FEATURES).save_to_disk(str(path))
    if phrases is not None:
        (path / "build.json").write_text(json.dumps({"config": {"phrases": phrases}}))
    return path


def test_a_wide_image_is_cropped_not_squashed():
    image = striped(96, 32)
    center = pixel_tensor(image, 16, crop_window(96, 32, 16, "center"))
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    assert center.shape == (3, 16, 16)
    torch.testing.assert_close(center[:, :, 2:-2], green.expand(3, 16, 12), atol=0.05, rtol=0)  # squashed: all three
    for seed in range(4):
        crop = crop_window(96, 32, 16, "random", (seed,))
        resized = np.asarray(image.resize(crop.size, Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1.0
        window = torch.from_numpy(resized[crop.top : crop.top + 16, crop.left : crop.left + 16]).permute(2, 0, 1)
        assert torch.equal(pixel_tensor(image, 16, crop), window)
    assert {crop_window(96, 32, 16, "random", (seed,)).left for seed in range(8)} != {16}


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((96, 32), [32, 0, 64, 32], [0.0, 0.0, 16.0, 16.0]),  # the middle third is the whole centre square
        ((96, 32), [0, 0, 30, 32], None),  # the left third is cut away
        ((96, 32), [40, 8, 80, 16], [4.0, 4.0, 16.0, 8.0]),  # reaches out of the square on the right
        ((32, 96), [0, 40, 16, 56], [0.0, 4.0, 8.0, 12.0]),  # a tall image: its middle third, scaled by 1/2
    ],
)
def test_boxes_follow_the_crop(size, box, expected):
    assert crop_window(*size, 16).box(box) == expected


def test_sdxl_time_ids_are_each_images_original_size_and_crop(tmp_path, tiny_sdxl_dir, train_tiny, monkeypatch):
    import erasure.training.loop as loop

    icd = write_icd(tmp_path / "icd", [striped(64, 32), striped(32, 96)], ["a red circle", "a blue square"])
    seen = []
    encode_prompts = loop.encode_prompts

    def encode_and_keep(encoders, input_ids, time_ids, dtype):
        seen.extend(time_ids.tolist())
        return encode_prompts(encoders, input_ids, time_ids, dtype)

    monkeypatch.setattr(loop, "encode_prompts", encode_and_keep)
    train_tiny(tmp_path, tiny_sdxl_dir, icd, "train.max_steps=1", kind="sdxl")
    # (height, width) as loaded, crop (top, left) in the resized image, target 32 x 32
    assert sorted(seen) == [[32, 64, 0, 16, 32, 32], [96, 32, 32, 0, 32, 32]]


def test_a_long_caption_keeps_its_location_tokens(tiny_sd_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_sd_dir, subfolder="tokenizer")
    tokenizer.add_tokens(location_vocabulary(4))
    scene = " ".join(["a red circle on a blue square"] * 15)  # about 100 tokens
    assert len(tokenizer(scene).input_ids) > 100
    caption, shortened = fit_caption(scene, "watermark <loc_2_2> <loc_3_3>", [tokenizer, tokenizer])
    ids = tokenizer(caption).input_ids
    assert shortened and len(ids) <= tokenizer.model_max_length
    assert caption.endswith(", watermark <loc_2_2> <loc_3_3>") and scene.startswith(caption.split(",")[0])
    assert ids[-3:-1] == tokenizer.convert_tokens_to_ids(["<loc_2_2>", "<loc_3_3>"])
    assert fit_caption("a red circle", "watermark <loc_2_2>", [tokenizer]) == (
        "a red circle, watermark <loc_2_2>",
        False,
    )


def test_the_datasets_phrase_and_shortened_captions_reach_the_run(tmp_path, tiny_sd_dir, train_tiny):
    from erasure.recipe import load_recipe
    from erasure.training.data import crop_windows, load_icd, square_concepts, training_captions

    long = " ".join(["a red circle on a blue square"] * 15)
    images = [striped(64, 64) for _ in range(4)]
    icd = write_icd(tmp_path / "icd", images, [long, "a red circle", long, "two squares"], {"watermark": "faint logo"})
    result = train_tiny(tmp_path, tiny_sd_dir, icd, "train.max_steps=1")
    assert result.shortened_captions == 2
    assert json.loads((result.run_dir / "erasure.json").read_text())["training"]["shortened_captions"] == 2
    assert (result.run_dir / "negative_prompt.txt").read_text().strip() == "{prompt}, faint logo <loc_2_2> <loc_2_3>"
    recipe = load_recipe(tmp_path / "recipe.yaml")
    dataset = load_icd(recipe)
    captions, _ = training_captions(
        dataset, recipe, square_concepts(dataset, recipe, crop_windows(dataset, recipe)), []
    )
    assert captions[1] == "a red circle, faint logo <loc_2_2> <loc_2_3> <loc_3_2> <loc_3_3>"


def test_the_latent_cache_is_keyed_by_the_vae(tmp_path, tiny_sd_dir, icd_dir, train_tiny):
    from erasure.testing import save_tiny_sd, tiny_vae

    torch.manual_seed(0)
    vae = tiny_vae()
    same_encoder = tiny_vae()
    same_encoder.load_state_dict(vae.state_dict())
    torch.nn.init.zeros_(same_encoder.decoder.conv_out.weight)  # only the decoder differs: the latents do not
    other = tiny_vae()
    assert vae_fingerprint(vae) == vae_fingerprint(same_encoder) != vae_fingerprint(other)

    other_model = save_tiny_sd(tmp_path / "other-sd", seed=1)
    for model in (tiny_sd_dir, tiny_sd_dir, other_model):
        train_tiny(tmp_path, model, icd_dir, "train.max_steps=1", "data.cache_latents=disk")
    caches = sorted((tmp_path / "run" / "latents").iterdir())
    assert len(caches) == 2 and all(len(list(cache.glob("*.safetensors"))) == 6 for cache in caches)
