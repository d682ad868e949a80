"""The I2P loader: the real CSV copy, both column namings, CSV and parquet, filters and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from erasure.evaluation.i2p import CATEGORIES, load_prompts

# The repository sits beside shared/, here and in CI.
I2P_CSV = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "i2p.csv"


@pytest.mark.skipif(not I2P_CSV.is_file(), reason=f"the real I2P copy is not at {I2P_CSV}")
def test_real_i2p_csv_loads_every_row_with_its_seed():
    prompts = load_prompts(I2P_CSV)
    with I2P_CSV.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(prompts) == len(rows) == 4703
    assert {c for p in prompts for c in p.categories} == set(CATEGORIES)
    assert len(CATEGORIES) == 7
    assert [p.seed for p in prompts] == [int(r["evaluation_seed"]) for r in rows]
    assert [p.guidance for p in prompts] == [float(r["evaluation_guidance"]) for r in rows]
    assert [p.prompt for p in prompts] == [r["prompt"] for r in rows]  # the one empty prompt stays ""
    assert [p.id for p in prompts] == list(range(4703))
    assert sum(p.hard for p in prompts) == sum(r["hard"] == "1" for r in rows)


ROWS = [
    {"prompt": "a", "categories": "violence, self-harm", "hard": 1, "seed": 11, "guidance": 7},
    {"prompt": "b", "categories": "sexual", "hard": 0, "seed": 4290000000, "guidance": 12.5},
    {"prompt": "", "categories": "hate,sexual", "hard": 1, "seed": 13, "guidance": 9},
]
NAMINGS = {"hub": ("sd_seed", "sd_guidance_scale"), "csv copy": ("evaluation_seed", "evaluation_guidance")}


def _write(tmp_path: Path, naming: str, suffix: str) -> Path:
    seed_col, guidance_col = NAMINGS[naming]
    table = pd.DataFrame(ROWS).rename(columns={"seed": seed_col, "guidance": guidance_col})
    path = tmp_path / f"i2p{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("naming", list(NAMINGS))
def test_both_column_namings_and_file_types_load_alike(tmp_path, naming, suffix):
    prompts = load_prompts(_write(tmp_path, naming, suffix))
    assert [p.prompt for p in prompts] == ["a", "b", ""]
    assert [p.categories for p in prompts] == [["violence", "self-harm"], ["sexual"], ["hate", "sexual"]]
    assert [p.hard for p in prompts] == [True, False, True]
    assert [p.seed for p in prompts] == [11, 4290000000, 13]
    assert [p.guidance for p in prompts] == [7.0, 12.5, 9.0]


@pytest.mark.parametrize(
    ("filters", "ids"),
    [
        ({}, [0, 1, 2]),
        ({"categories": ["sexual"]}, [1, 2]),
        ({"categories": ["hate", "violence"]}, [0, 2]),
        ({"hard": True}, [0, 2]),
        ({"hard": False}, [1]),
        ({"categories": ["sexual"], "hard": True}, [2]),
        ({"limit": 2}, [0, 1]),
    ],
)
def test_filters_keep_source_ids(tmp_path, filters, ids):
    assert [p.id for p in load_prompts(_write(tmp_path, "hub", ".csv"), **filters)] == ids


def test_unknown_category_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown I2P categories.*choose from hate"):
        load_prompts(_write(tmp_path, "hub", ".csv"), categories=["nsfw"])


def test_missing_column_names_file_and_alternatives(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame(ROWS).drop(columns=["seed"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: no column for 'seed' \(looked for sd_seed, evaluation_seed\)"):
        load_prompts(path)


def test_non_numeric_seed_names_the_row(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame(ROWS).assign(seed=["1", "x", "3"]).rename(
        columns={"seed": "sd_seed", "guidance": "sd_guidance_scale"}
    ).to_csv(path, index=False)
    with pytest.raises(ValueError, match="row 1 has seed='x'"):
        load_prompts(path)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "i2p.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match=r"unsupported I2P file type '\.json'"):
        load_prompts(path)
