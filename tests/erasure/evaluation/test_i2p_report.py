"""The I2P report: the paper's categories x methods table, the chart, and `erasure evaluate i2p-compare`."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from erasure.cli import main
from erasure.evaluation.i2p.metrics import PromptOutcome, summarize
from erasure.evaluation.i2p.report import markdown_table, write_report


def _results(name: str, flags: list[list[bool]], categories: list[list[str]], q16: bool = True) -> dict:
    outcomes = [
        PromptOutcome(i, f"p{i}", cats, {"nudenet": f} | ({"q16": [False] * len(f)} if q16 else {}))
        for i, (f, cats) in enumerate(zip(flags, categories, strict=True))
    ]
    return {"method": {"name": name}, **summarize(outcomes)}


CATS = [["sexual"], ["hate", "sexual"], ["shocking"]]
SD = _results("SD", [[True, True], [True, False], [False, False]], CATS)
SLD = _results("SLD max", [[True, False], [False, False], [False, False]], CATS)


def test_table_has_the_papers_rows_and_one_column_per_method():
    lines = markdown_table({"SD": SD, "SLD max": SLD}).splitlines()
    assert lines[2] == "| Category | SD | SLD max |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[4:]}
    assert list(rows) == ["hate", "sexual", "shocking", "Overall"]
    # sexual: SD flags 3 of 4 images, SLD 1 of 4; hate's only prompt is flagged on half its images by SD
    assert rows["sexual"].startswith("| sexual | 0.75 / ")
    assert rows["sexual"].split(" | ")[2].startswith("0.25 / ")
    assert rows["hate"] == "| hate | 0.50 / 0.50 ± 0.00 | 0.00 / 0.00 ± 0.00 |"
    assert rows["Overall"].startswith("| Overall | 0.50 / ")


@pytest.mark.parametrize(
    ("q16", "says"),
    [
        ((True, True), "an image is inappropriate if NudeNet or Q16 flags it."),
        ((False, False), "an image is inappropriate if NudeNet flags it."),
        ((True, False), "an image is inappropriate if its method's judges flag it: SD: NudeNet or Q16; SLD: NudeNet."),
    ],
)
def test_the_table_names_the_judges_that_were_run(q16, says):
    runs = {
        name: _results(name, [[True, False]], [["sexual"]], q16=judged)
        for name, judged in zip(("SD", "SLD"), q16, strict=True)
    }
    assert markdown_table(runs).splitlines()[0].endswith(f"(25 prompts, 10,000 bootstraps); {says}")


def test_a_category_one_method_lacks_shows_a_dash():
    only_hate = _results("hate only", [[True, True]], [["hate"]])
    table = markdown_table({"SD": SD, "hate only": only_hate})
    assert "| sexual | 0.75 / " in table and table.split("| sexual |")[1].splitlines()[0].endswith("| – |")


def test_write_report_makes_a_table_and_a_chart(tmp_path):
    table, chart = write_report({"SD": SD, "SLD max": SLD}, tmp_path / "report")
    assert table.read_text().startswith("# I2P inappropriateness")
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 300


def _save_run(tmp_path, name: str, results: dict):
    run = tmp_path / name
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_compare_joins_runs_into_one_table(tmp_path, capsys):
    runs = [_save_run(tmp_path, "sd", SD), _save_run(tmp_path, "sld", SLD)]
    assert main(["evaluate", "i2p-compare", *map(str, runs), "--out", str(tmp_path / "all")]) == 0
    joined = json.loads((tmp_path / "all" / "compare.json").read_text())
    assert list(joined["methods"]) == ["SD", "SLD max"]
    assert joined["methods"]["SLD max"]["overall"] == SLD["overall"]
    assert "| Category | SD | SLD max |" in (tmp_path / "all" / "report.md").read_text()
    assert (tmp_path / "all" / "report.png").is_file()
    assert "| Overall |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("runs", "extra", "error"),
    [
        (["sd", "sd-again"], [], "two runs share a name"),
        (["sd", "fewer"], [], "judged other prompts"),
        (["sd", "missing"], [], r"missing/results\.json is missing"),
        (["sd", "sd-again"], ["--names", "one"], "1 names for 2 runs"),
    ],
)
def test_compare_refuses_runs_that_do_not_line_up(tmp_path, capsys, runs, extra, error):
    _save_run(tmp_path, "sd", SD)
    _save_run(tmp_path, "sd-again", SD)
    _save_run(tmp_path, "fewer", _results("fewer", [[True, True]], [["sexual"]]))
    argv = ["evaluate", "i2p-compare", *(str(tmp_path / r) for r in runs), *extra, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert re.fullmatch(f"erasure evaluate i2p-compare: error: .*{error}.*\n", capsys.readouterr().err)
