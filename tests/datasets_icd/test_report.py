"""The build report on real-data builds: the sample sheet with boxes, uncaptioned images, and --captioner."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from PIL import Image

from datasets_icd.build import Captioner
from datasets_icd.cli import main
from datasets_icd.report import SHEET_COLOURS

WORDS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "a", "photo", "of", "meadow", "sky", "dog"]


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory) -> Path:
    """A random ViT encoder + GPT-2 decoder captioning model with a word-level tokenizer, saved offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    folder = tmp_path_factory.mktemp("captioner")
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]", "unk_token": "[UNK]"}
    PreTrainedTokenizerFast(tokenizer_object=words, **special).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    torch.manual_seed(0)
    vit = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    gpt2 = GPT2Config(vocab_size=len(WORDS), n_positions=64, n_embd=32, n_layer=1, n_head=2, add_cross_attention=True)
    model = VisionEncoderDecoderModel(encoder=ViTModel(vit), decoder=GPT2LMHeadModel(gpt2))
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    model.save_pretrained(folder)
    return folder


def _photos(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((320, 240), Image.BILINEAR).save(root / f"{i}.png")
    (root / "0.txt").write_text("a field under a grey sky")
    return root


def test_report_has_a_sample_sheet_and_warns_about_uncaptioned_images(tmp_path, capsys):
    out = tmp_path / "icd"
    argv = ["build", "--source", f"folder:{_photos(tmp_path / 'photos')}", "--paste", "watermark=1", "qrcode=1"]
    assert main([*argv, "--paste-config", "jpeg_rate=0", "--out", str(out)]) == 0
    assert "warning: 2 images have no caption" in capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "**Warning: 2 of 3 images have no caption**" in report and "(samples.png)" in report
    assert json.loads((out / "build.json").read_text())["uncaptioned"] == 2
    sheet = np.asarray(Image.open(out / "samples.png").convert("RGB"))
    for name in ("watermark", "qrcode"):  # every box is drawn in its concept's colour
        assert np.all(sheet == SHEET_COLOURS[name], axis=-1).sum() > 50, name


def test_captioner_writes_the_missing_captions_offline(tmp_path, tiny_captioner, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    out = tmp_path / "icd"
    argv = ["build", "--source", f"folder:{_photos(tmp_path / 'photos')}", "--paste", "watermark=1"]
    assert main([*argv, "--captioner", str(tiny_captioner), "--out", str(out)]) == 0
    dataset = load_from_disk(str(out))
    assert dataset[0]["caption"] == "a field under a grey sky"  # a caption it had is kept
    expected = Captioner(str(tiny_captioner))([dataset[i]["image"] for i in (1, 2)])
    assert dataset["caption"][1:] == expected and any(expected)
    assert all(set(caption.split()) <= set(WORDS[4:]) for caption in expected)
    assert json.loads((out / "build.json").read_text())["config"]["captioner"] == str(tiny_captioner)


def test_a_missing_captioner_folder_is_a_clear_error(tmp_path, capsys):
    argv = ["build", "--source", f"folder:{_photos(tmp_path / 'photos')}", "--paste", "watermark=1"]
    assert main([*argv, "--captioner", str(tmp_path / "nope"), "--out", str(tmp_path / "icd")]) == 2
    assert "captioner" in capsys.readouterr().err
