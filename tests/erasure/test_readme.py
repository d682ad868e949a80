"""Every code block of README.md runs as written, with hub ids and user paths mapped to tiny local stand-ins.

A documented call that no test executes is a bug waiting for a user (the README once showed a
``load_textual_inversion`` call that failed). The stand-ins: hub ids name tiny random pipelines, ``outputs/RUN`` a
short training run, ``photos/`` and ``clean-photos/`` a few toy-world scenes with and without a watermark; commands
that train get the sizes of a test (:data:`TEST_SIZES`, :data:`YOLO_TEST_SIZES`). ``make`` targets are what CI runs
(``.ci/run``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# Recipe overrides that make a real-model recipe a few-second run on the tiny pipeline.
TEST_SIZES = [
    "train.max_steps=2",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.mixed_precision=no",
    "data.resolution=32",
    "checkpoint.every=1",
    "validation.prompts=[]",
    "model.variant=null",
    "report_to=null",
]
# ... and the YOLO training of a few epochs on the stand-in photos.
YOLO_TEST_SIZES = ["--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0", "--device", "cpu"]
CI_TARGETS = {"demo", "test"}


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The block's commands: continuation lines joined, comments dropped, split as a shell would."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.split("#")[0].strip()]


@pytest.fixture
def stand_ins(tmp_path, monkeypatch, tiny_sd_dir, tiny_sdxl_dir, trained_runs):
    """A working directory laid out as the README's user has it, and the text replacements that point there."""
    from datasets_icd.toyworld import ToyWorld, ToyWorldConfig

    for name in ("recipes", "assets", "train.py"):
        (tmp_path / name).symlink_to(REPO / name)
    for folder, rates in (("photos", {"watermark": 1.0}), ("clean-photos", {})):
        (tmp_path / folder).mkdir()
        world = ToyWorld(ToyWorldConfig(seed=3, concept_rates=rates, watermark_logo_rate=1.0))
        for i in range(6):
            world.sample(i).image.save(tmp_path / folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    return {
        "stable-diffusion-v1-5/stable-diffusion-v1-5": str(tiny_sd_dir),
        "stabilityai/stable-diffusion-xl-base-1.0": str(tiny_sdxl_dir),
        "outputs/RUN": str(trained_runs("geom_erasing")),
    }


def _mapped(text: str, stand_ins: dict[str, str]) -> str:
    for name, local in stand_ins.items():
        text = text.replace(name, local)
    return text


def test_the_readme_has_code_to_run():
    assert code_blocks("python") and code_blocks("bash")


def test_every_picture_and_local_link_exists():
    targets = re.findall(r"\]\(([^)#]+)\)", README.read_text(encoding="utf-8"))
    local = [target for target in targets if "://" not in target]
    assert "assets/demo.png" in local  # the demo's picture
    assert [target for target in local if not (REPO / target).exists()] == []


def test_every_python_block_runs(stand_ins):
    for block in code_blocks("python"):
        exec(compile(_mapped(block, stand_ins), str(README), "exec"), {})


def test_every_command_runs(stand_ins, tiny_sd_dir):
    from datasets_icd.cli import main as icd
    from detectors.cli import main as detectors
    from erasure.cli import main as erasure

    entry_points = {"icd": icd, "detectors": detectors, "erasure": erasure}
    for block in code_blocks("bash"):
        for argv in commands(_mapped(block, stand_ins)):
            program, *args = argv
            if program == "make":
                assert set(args) <= CI_TARGETS, f"README: make {args} is not run by CI"
                continue
            assert program in entry_points, f"README: no test runs {shlex.join(argv)}"
            if args[:1] == ["train"]:
                args += [f"model.pretrained={tiny_sd_dir}", "model.kind=null", *TEST_SIZES]
            if args[:1] == ["train-yolo"]:
                args += YOLO_TEST_SIZES
            if args[:1] == ["generate"]:
                args += ["--steps", "2", "--size", "32"]
            assert entry_points[program](args) == 0, shlex.join(argv)
