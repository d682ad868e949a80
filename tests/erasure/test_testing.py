import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from erasure.testing import build_clip_tokenizer, read_words, tiny_tokenizer


def test_tokenizer_makes_listed_words_single_tokens_and_spells_the_rest(tmp_path):
    tokenizer = build_clip_tokenizer(["watermark", "circle"], tmp_path)
    assert tokenizer.tokenize("watermark circle") == ["watermark</w>", "circle</w>"]
    assert len(tokenizer.tokenize("zebra")) == 5  # not in the list: one token per character
    ids = tokenizer("watermark", padding="max_length", max_length=77).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[2] == tokenizer.eos_token_id and len(ids) == 77


def test_tokenizer_vocabulary_file_is_read():
    words = read_words()
    assert "watermark" in words and all(not w.startswith("#") for w in words)
    assert tiny_tokenizer().tokenize("qrcode") == ["qrcode</w>"]


def _generate(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe("two red circles", num_inference_steps=2, generator=generator, output_type="np").images


def test_tiny_sd_loads_with_from_pretrained_and_generates(tiny_sd_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    images = _generate(pipe)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    np.testing.assert_array_equal(images, _generate(pipe))  # seeded: same image twice
    assert not np.array_equal(images, _generate(pipe, seed=1))


def test_tiny_sdxl_loads_with_from_pretrained_and_generates(tiny_sdxl_dir):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    images = _generate(pipe)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_builder_records_prediction_type(tmp_path, prediction_type):
    from erasure.testing import save_tiny_sd

    pipe = StableDiffusionPipeline.from_pretrained(save_tiny_sd(tmp_path, prediction_type=prediction_type))
    assert pipe.scheduler.config.prediction_type == prediction_type
