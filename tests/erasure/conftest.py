"""Shared by the erasure tests: tiny drawn Implicit Concept Datasets, short training runs, a tiny Latent-CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image, ImageDraw

from datasets_icd.features import ICD_FEATURES
from erasure.recipe import load_recipe
from erasure.training import train

WATERMARK_BOX = [40.0, 44.0, 62.0, 60.0]  # bottom-right of a 64 px image: cells (2, 2), (2, 3), (3, 2), (3, 3)


def draw_icd(path: Path, n: int = 6, boxes: bool = True) -> Path:
    """Coloured 64 px scenes with a white 'watermark' patch at a known box (or no annotation at all)."""
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {name: [] for name in ICD_FEATURES}
    for i in range(n):
        image = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 200, 3)))
        ImageDraw.Draw(image).rectangle(WATERMARK_BOX, fill="white")
        rows["image"].append(image)
        rows["caption"].append(["a red circle", "a blue square"][i % 2])
        rows["geom_caption"].append("")
        rows["concepts"].append([{"name": "watermark", "score": 1.0, "box": WATERMARK_BOX}] if boxes else [])
        rows["width"].append(64)
        rows["height"].append(64)
        rows["source_id"].append(str(i))
    Dataset.from_dict(rows, features=ICD_FEATURES).save_to_disk(str(path))
    return path


def write_recipe(path: Path, model_dir: Path, icd_dir: Path, kind: str = "sd", extra: str = "") -> Path:
    path.write_text(
        f"""
name: tiny
output_dir: {path.parent}/run
model: {{pretrained: {model_dir}, kind: {kind}}}
data: {{dataset: {icd_dir}, concepts: [watermark], resolution: 32}}
train: {{max_steps: 4, batch_size: 2, learning_rate: 0.01, token_learning_rate: 0.05}}
checkpoint: {{every: 2, total_limit: 1}}
report_to: null
{extra}
"""
    )
    return path


def _train_tiny(workdir: Path, model_dir: Path, icd_dir: Path, *overrides: str, kind: str = "sd"):
    workdir.mkdir(parents=True, exist_ok=True)
    return train(load_recipe(write_recipe(workdir / "recipe.yaml", model_dir, icd_dir, kind), list(overrides)))


@pytest.fixture(scope="session")
def icd_dir(tmp_path_factory):
    return draw_icd(tmp_path_factory.mktemp("icd") / "toy_watermark")


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, tiny_sd_dir, icd_dir):
    """``trained_runs(mode)``: the run directory of one short run per entry of :data:`MODES`, trained on first use."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = _train_tiny(tmp_path_factory.mktemp(name), tiny_sd_dir, icd_dir, *MODES[name]).run_dir
        return cache[name]

    return get


MODES = {
    "geom_erasing": ("train.mode=geom_erasing", "loss.region_alpha=0.5", "lora.alpha=8"),
    "naive": ("train.mode=naive",),
    "tokens_only": ("train.mode=tokens_only",),
    "wide_lora": ("train.mode=naive", "lora.target_modules=[to_q,to_k,to_v,to_out.0,conv1,conv2,conv_in]"),
    "full_unet": ("train.mode=geom_erasing", "lora.full_unet=true", "train.learning_rate=0.001"),
}


@pytest.fixture(scope="session")
def tiny_recipe():
    """``tiny_recipe(path, model_dir, icd_dir, kind="sd")`` writes a 4-step recipe whose run goes next to it."""
    return write_recipe


@pytest.fixture(scope="session")
def draw_tiny_icd():
    return draw_icd


@pytest.fixture
def fresh_accelerator():
    """accelerate keeps one state per process, fixed by the first Accelerator: a test that trains in another
    precision than the others starts its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def train_tiny():
    """``train_tiny(workdir, model_dir, icd_dir, *overrides, kind="sd")`` → TrainResult of a 4-step run."""
    return _train_tiny


@pytest.fixture
def guidance_rewards(monkeypatch):
    """Every guided Latent-CLIP step of the test as (concept reward before, after): a push the wrong way shows."""
    from erasure.latent_clip import LatentClipGuidance

    steps: list[tuple[float, float]] = []
    push = LatentClipGuidance.push

    def recording(self, latents, step):
        pushed = push(self, latents, step)
        if not (pushed == latents).all():
            before, after = self.reward(latents), self.reward(pushed)
            steps.extend(zip(before.tolist(), after.tolist(), strict=True))
        return pushed

    monkeypatch.setattr(LatentClipGuidance, "push", recording)
    return steps
