"""Shared fixtures: offline tiny models, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny SD 1.x pipeline saved with ``save_pretrained``; treat as read-only."""
    from erasure.testing import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    from erasure.testing import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_latent_clip_dir(tmp_path_factory) -> Path:
    """A random Latent-CLIP for the tiny pipelines' 16 x 16 x 4 latents, saved as `erasure.latent_clip` does."""

    from erasure.latent_clip import LatentClip, LatentClipSpec
    from erasure.testing import tiny_tokenizer

    torch.manual_seed(0)
    spec = LatentClipSpec(
        latent_size=16,
        patch_size=4,
        width=32,
        layers=1,
        heads=4,
        text_width=32,
        text_layers=1,
        text_heads=4,
        max_length=40,  # the toy captions with a concept: up to 36 tiny-tokenizer tokens
        projection_dim=16,
    )
    return LatentClip.build(spec, tiny_tokenizer()).save_pretrained(tmp_path_factory.mktemp("latent-clip"))
