"""The GPU dry run of the real-model recipes (benchmarks/real_model_dryrun.py), run through on tiny models: a lent
GPU's minutes must not go to a script that breaks after its first stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "real_model_dryrun.py"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_dryrun_trains_exports_loads_and_samples_the_recipe(tmp_path, family):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--family", family, "--tiny", "--steps", "2", "--out", str(tmp_path)], check=True
    )
    report = json.loads((tmp_path / f"dryrun_{family}.json").read_text())
    assert report["recipe"] == f"{family}_geom_erasing_watermark.yaml" and report["seconds_per_step"] > 0
    assert f"{family}_geom_erasing_watermark.safetensors" in report["files"]  # the recipe's kohya export
    assert report["negative_prompt_template"].startswith("{prompt}, watermark <loc_")
    assert (tmp_path / family / "sample.png").is_file() and report["sample_s"] > 0
