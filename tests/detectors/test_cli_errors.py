"""Every console script answers a user error with one line, ``PROG COMMAND: error: MESSAGE``, and exit 2; the
traceback shows only with ``--debug``."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from datasets_icd.cli import main as icd
from detectors.cli import main as detectors
from erasure.cli import main as erasure

SCRIPTS = {"icd": icd, "detectors": detectors, "erasure": erasure}


@pytest.fixture
def files(tmp_path, save_toy_icd) -> dict[str, str]:
    """What the cases name: a pickle posing as YOLO weights, a toy ICD, an ICR config using those weights."""
    weights = tmp_path / "yolo.pt"
    weights.write_bytes(pickle.dumps({"model": "anything"}))
    save_toy_icd(tmp_path / "icd", 2, 32, 0, {"watermark": 0.5})
    config = tmp_path / "icr.yaml"
    fields = {"concept": "watermark", "detector": f"yolo:{weights}", "model": str(tmp_path), "prompts": ["a cat"]}
    config.write_text(json.dumps(fields | {"cells": [{"name": "plain"}]}))  # JSON is YAML
    (tmp_path / "a-file").write_text("not a folder")
    return {"tmp": str(tmp_path), "weights": str(weights), "icd": str(tmp_path / "icd"), "config": str(config)}


# script, argv (formatted with the paths of `files`), the text the error line must name, its exception type
CASES = [
    (
        "icd",
        "build --source folder:{tmp}/no-photos --detectors qr --out {tmp}/o",
        "{tmp}/no-photos",
        FileNotFoundError,
    ),
    ("icd", "build --num-images 2 --detectors yolo:{weights} --out {tmp}/o", "{weights}", ValueError),
    ("icd", "build --num-images 2 --out {tmp}/a-file/o", "a-file/o", NotADirectoryError),
    ("detectors", "evaluate --detector qr --dataset {tmp}/no-icd --out {tmp}/r", "{tmp}/no-icd", FileNotFoundError),
    ("detectors", "evaluate --detector yolo:{weights} --dataset {icd} --out {tmp}/r", "{weights}", ValueError),
    ("detectors", "train-yolo --dataset {tmp}/no-icd --out {tmp}/y", "{tmp}/no-icd", FileNotFoundError),
    ("erasure", "generate a-cat --model {tmp}/no-model --out {tmp}/g", "{tmp}/no-model", FileNotFoundError),
    ("erasure", "evaluate icr --config {tmp}/no-config.yaml", "{tmp}/no-config.yaml", ValueError),
    ("erasure", "evaluate icr --config {config} out_dir={tmp}/icr", "{weights}", ValueError),
    ("erasure", "report {tmp}/no-results", "{tmp}/no-results", FileNotFoundError),
]
IDS = [f"{script} {argv.split(' --')[0]} {error.__name__}" for script, argv, _, error in CASES]


def _argv(template: str, files: dict[str, str]) -> list[str]:
    return [part.format(**files) for part in template.split()]


@pytest.mark.parametrize(("script", "argv", "named", "error"), CASES, ids=IDS)
def test_a_user_error_is_one_line_and_exit_2(files, capsys, script, argv, named, error):
    assert SCRIPTS[script](_argv(argv, files)) == 2
    err = capsys.readouterr().err
    command = " ".join(argv.split()[: 2 if argv.startswith("evaluate icr") else 1])
    errors = [line for line in err.splitlines() if ": error: " in line]  # progress bars may come before it
    assert errors == [err.splitlines()[-1]] and errors[0].startswith(f"{script} {command}: error: ")
    assert named.format(**files) in errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("script", "argv", "named", "error"), CASES, ids=IDS)
def test_debug_lets_the_error_through(files, script, argv, named, error):
    with pytest.raises(error):
        SCRIPTS[script](["--debug", *_argv(argv, files)])


@pytest.mark.parametrize("module", ["datasets_icd.cli", "detectors.cli", "erasure.cli"])
def test_debug_prints_the_traceback_and_a_plain_run_does_not(tmp_path, module):
    """Before or after the command, as a console script runs: --debug shows where the error came from."""
    command = ["build", "--num-images", "1", "--out"] if module == "datasets_icd.cli" else ["report"]
    if module == "detectors.cli":
        command = ["train-yolo", "--out", str(tmp_path / "y"), "--dataset"]
    argv = [sys.executable, "-m", module, *command, str(tmp_path / "a-file" / "x")]
    (tmp_path / "a-file").write_text("not a folder")
    plain = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1].startswith(("NotADirectoryError", "FileNotFoundError"))
