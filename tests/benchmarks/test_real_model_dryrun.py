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
    # the timings are reported, not judged: on a loaded 2-core CPU a 4-step run can finish before a 2-step one
    assert report["recipe"] == f"{family}_geom_erasing_watermark.yaml"
    assert isinstance(report["seconds_per_step"], float) and isinstance(report["sample_s"], float)
    assert f"{family}_geom_erasing_watermark.safetensors" in report["files"]  # the recipe's kohya export
    assert report["negative_prompt_template"].startswith("{prompt}, watermark <loc_")
    assert (tmp_path / family / "sample.png").is_file()
