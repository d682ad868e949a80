"""The I2P harness end to end on a tiny pipeline with the real NudeNet: the reference's sampling, interruption,
resumption and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionPipeline

from erasure.cli import main
from erasure.evaluation.i2p import load_prompts
from erasure.evaluation.i2p.harness import GenerationSettings, I2PRun, Method, generate, load_method_pipeline, run_i2p
from erasure.evaluation.i2p.judges import NudeNetJudge
from erasure.loading import load_pipeline

SETTINGS = GenerationSettings(steps=2, calls=2, images_per_call=1)  # 2 images per prompt instead of 2 x 5
CLI_SETTINGS = ["--steps", "2", "--calls", "2", "--images-per-call", "1", "--judges", "nudenet"]


@pytest.fixture
def i2p_csv(tmp_path) -> Path:
    path = tmp_path / "i2p.csv"
    rows = {
        "prompt": ["a red circle on a blue background", "two green squares", "a yellow triangle, {prompt}"],
        "categories": ["sexual", "violence, sexual", "hate"],
        "hard": [1, 0, 1],
        "sd_seed": [7, 4000000000, 7],
        "sd_guidance_scale": [3, 9, 12],
    }
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


class KilledAfter:
    """NudeNet that dies once it has seen more than ``images`` images: a run killed mid-way."""

    name = "nudenet"

    def __init__(self, judge: NudeNetJudge, images: int) -> None:
        self.judge_, self.left = judge, images

    def judge(self, images):
        self.left -= len(images)
        if self.left < 0:
            raise KeyboardInterrupt("killed")
        return self.judge_.judge(images)


def _png_files(out: Path) -> list[Path]:
    return sorted((out / "images").rglob("*.png"))


def test_killed_run_resumes_without_redoing_work_and_reports(tmp_path, tiny_sd_dir, i2p_csv):
    prompts = load_prompts(i2p_csv)
    method = Method("tiny", str(tiny_sd_dir), sld="max")
    nudenet = NudeNetJudge()
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # prompt 0 judged; prompt 1 generated, killed while judged
        run_i2p(prompts, method, [KilledAfter(nudenet, 3)], out, settings=SETTINGS)
    run = I2PRun(out)
    assert [run.judgment_path(p).is_file() for p in prompts] == [True, False, False]
    before = {path: path.stat().st_mtime_ns for path in _png_files(out)}
    assert len(before) == 4

    argv = [
        "evaluate",
        "i2p",
        "--model",
        str(tiny_sd_dir),
        "--sld",
        "max",
        "--name",
        "tiny",
        "--prompts",
        str(i2p_csv),
    ]
    assert main([*argv, *CLI_SETTINGS, "--out", str(out)]) == 0

    files = _png_files(out)
    assert len(files) == 6 and not list(out.rglob("*.tmp"))  # every image once, nothing half-written
    assert {path: path.stat().st_mtime_ns for path in before} == before  # finished images were not redone
    judgment = json.loads(run.judgment_path(prompts[1]).read_text())
    assert judgment["images"] == ["images/00001/00.png", "images/00001/01.png"]
    assert [v["flagged"] for v in judgment["judges"]["nudenet"]] == [False, False]  # no nudity in 32 px noise
    results = json.loads((out / "results.json").read_text())
    assert results["overall"]["images"] == 6 and results["overall"]["inappropriate_probability"] == 0.0
    assert list(results["categories"]) == ["hate", "violence", "sexual"]
    assert results["categories"]["sexual"]["prompts"] == 2
    table = (out / "report.md").read_text()
    assert "| Category | tiny |" in table and "| sexual | 0.00 / 0.00 ± 0.00 |" in table
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")


def test_images_follow_the_reference_sampling(tiny_sd_dir, i2p_csv):
    """Two calls from ONE generator seeded with the row's seed, at the row's guidance, the template filled."""
    prompt = load_prompts(i2p_csv)[2]  # its text holds "{prompt}" too: only the template's placeholder is filled
    settings = GenerationSettings(steps=2, calls=2, images_per_call=1, guidance=None)
    method = Method("tiny", str(tiny_sd_dir), negative_prompt="{prompt}, blurry")
    images = generate(load_method_pipeline(method, "cpu", "float32"), prompt, method, settings)

    reference = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None)
    generator = torch.Generator().manual_seed(prompt.seed)
    kwargs = {"negative_prompt": prompt.prompt + ", blurry", "guidance_scale": prompt.guidance}
    expected = [reference(prompt.prompt, num_inference_steps=2, generator=generator, **kwargs).images[0] for _ in "ab"]
    assert [np.asarray(i).tolist() for i in images] == [np.asarray(i).tolist() for i in expected]
    assert np.asarray(images[0]).tolist() != np.asarray(images[1]).tolist()  # the generator was not re-seeded


def test_a_runs_negative_prompt_is_concept_negation(tiny_sd_dir, trained_runs, i2p_csv):
    """The run's template holds the prompt: it goes to concept negation, the method's own to negative_prompt."""
    run = trained_runs("geom_erasing")
    prompt = load_prompts(i2p_csv)[0]
    settings = GenerationSettings(steps=2, calls=1, images_per_call=1, guidance=None)
    method = Method("ge", str(tiny_sd_dir), run=str(run), negative_prompt="blurry")
    images = generate(load_method_pipeline(method, "cpu", "float32"), prompt, method, settings)

    loaded = load_pipeline(str(tiny_sd_dir), run=run)
    template = (run / "negative_prompt.txt").read_text().strip()
    assert "{prompt}" in template
    expected = loaded.pipeline(
        prompt.prompt,
        negative_prompt="blurry",
        concept_negative_prompt=template.replace("{prompt}", prompt.prompt),
        num_inference_steps=2,
        guidance_scale=prompt.guidance,
        generator=torch.Generator().manual_seed(prompt.seed),
    ).images
    assert np.asarray(images[0]).tolist() == np.asarray(expected[0]).tolist()


def test_resume_with_other_settings_is_refused(tmp_path, tiny_sd_dir, i2p_csv):
    out = tmp_path / "run"
    run = I2PRun(out)
    run.check_config({"method": {"name": "tiny"}, "settings": {"steps": 2}, "judges": ["nudenet"]})
    with pytest.raises(
        ValueError, match=r"run\.json: this run was made with other settings \(settings=\{'steps': 2\}\)"
    ):
        run.check_config({"method": {"name": "tiny"}, "settings": {"steps": 50}, "judges": ["nudenet"]})


def test_cli_without_q16_weights_says_what_to_fetch(tmp_path, i2p_csv, capsys):
    argv = ["evaluate", "i2p", "--model", "unused", "--prompts", str(i2p_csv), "--out", str(tmp_path / "run")]
    assert main([*argv, "--judges", "q16", "--q16-prompts", str(tmp_path / "q16.safetensors")]) == 2
    assert "Q16 needs its learned prompt embeddings at" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing generated without a judge


@pytest.mark.slow
def test_processes_share_the_prompts_by_index(tmp_path, tiny_sd_dir, i2p_csv):
    """Two processes (torchrun on CPU, as accelerate launch starts them on GPUs): each prompt judged once."""
    out = tmp_path / "sharded"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "erasure.cli"]
    command += ["evaluate", "i2p", "--model", str(tiny_sd_dir), "--prompts", str(i2p_csv), *CLI_SETTINGS]
    subprocess.run([*command, "--out", str(out)], env=env, check=True, capture_output=True, timeout=600)
    judgments = [json.loads(path.read_text()) for path in sorted((out / "judgments").glob("*.json"))]
    assert [j["id"] for j in judgments] == [0, 1, 2]
    assert [j["process"] for j in judgments] == [0, 0, 1]  # accelerate's split: contiguous shares by index
    assert json.loads((out / "results.json").read_text())["overall"]["images"] == 6
