"""Recording a concept's table and pooling the tables of several training seeds into one."""

import json

import pytest

from erasure.evaluation.icr import wilson_interval
from erasure.toy.tables import main, pool_files, pool_seeds, record_table


def _row(icr: float, n: int = 200, fidelity: float = 0.9, fid: float = 3.0) -> dict:
    return {"icr": icr, "ci95": list(wilson_interval(round(icr * n), n)), "fidelity": fidelity, "fid": fid, "n": n}


def test_record_replaces_the_concepts_table_keeps_the_others_and_names_dropped_rows(tmp_path, capsys):
    record = tmp_path / "toy_icr.json"
    row = {"icr": 0.5, "ci95": [0.4, 0.6], "fidelity": 0.9, "fid": 3.0, "n": 200}
    record.write_text(json.dumps({"watermark": {"naive": row, "naive_latent_clip": row}, "text": {"naive": row}}))
    new = {"naive": {**row, "icr": 0.42, "images": "not recorded"}, "geom_erasing_plain": {**row, "icr": 0.01}}
    record_table(record, "watermark", new)
    table = json.loads(record.read_text())
    assert table["watermark"] == {"naive": {**row, "icr": 0.42}, "geom_erasing_plain": {**row, "icr": 0.01}}
    assert table["text"] == {"naive": row}
    assert "without naive_latent_clip (not rerun)" in capsys.readouterr().err


def test_pooling_takes_the_runs_rows_over_every_seed_and_the_baselines_from_the_first():
    first = {"naive": _row(0.5, fidelity=0.8), "naive_sld_medium": _row(0.45), "geom_erasing_plain": _row(0.01)}
    second = {"naive": _row(0.4, fidelity=0.9), "naive_sld_medium": _row(0.2), "geom_erasing_plain": _row(0.02)}
    pooled = pool_seeds([first, second])
    assert list(pooled) == list(first)  # the first table's order
    assert pooled["naive_sld_medium"] == first["naive_sld_medium"]  # a baseline: one seed, not averaged
    naive = pooled["naive"]
    assert naive["icr"] == pytest.approx(0.45) and naive["seeds"] == [0.5, 0.4] and naive["n"] == 200
    assert naive["ci95"] == list(wilson_interval(180, 400))  # the interval of the pooled images, narrower
    assert naive["fidelity"] == pytest.approx(0.85)
    assert pooled["geom_erasing_plain"]["seeds"] == [0.01, 0.02]
    assert pool_seeds([first]) == first  # one seed: the table as measured, without 'seeds'


def test_seed_tables_recorded_apart_pool_into_one_file(tmp_path, capsys):
    paths = []
    for seed, icr in enumerate([0.5, 0.3]):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps({c: {"naive": _row(icr), "geom_erasing": _row(0.0)} for c in ("text", "qrcode")}))
        paths.append(path)
    record = tmp_path / "toy_icr_multi.json"
    record.write_text(json.dumps({"watermark": {"naive": _row(0.6)}}))
    assert main([*map(str, paths), "--record", str(record)]) == 0
    table = json.loads(record.read_text())
    assert list(table) == ["watermark", "text", "qrcode"]  # the other worlds' tables stay
    assert table["qrcode"]["naive"]["seeds"] == [0.5, 0.3] and table["qrcode"]["naive"]["icr"] == pytest.approx(0.4)
    printed = capsys.readouterr().out
    assert "pooled over 2 training seeds" in printed
    assert "| naive | 40.0% |" in printed and "| 50.0 / 30.0 |" in printed  # the pooled table, as markdown


def test_pooling_refuses_tables_that_do_not_fit(tmp_path, capsys):
    def write(name: str, table: dict) -> str:
        (tmp_path / name).write_text(json.dumps(table))
        return str(tmp_path / name)

    first = write("seed0.json", {"text": {"naive": _row(0.5), "geom_erasing": _row(0.0)}})
    other_world = write("other.json", {"watermark": {"naive": _row(0.5), "geom_erasing": _row(0.0)}})
    no_run_row = write("norow.json", {"text": {"naive": _row(0.5)}})
    pooled = write("pooled.json", pool_files([tmp_path / "seed0.json", tmp_path / "seed0.json"]))
    for second, why in [
        (other_world, "one world per table"),
        (no_run_row, "has no geom_erasing row"),
        (pooled, "already pooled"),
        (str(tmp_path / "absent.json"), "no such file"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([first, second, "--record", str(tmp_path / "out.json")])
        assert exit_.value.code == 2 and why in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_the_committed_three_concept_table_is_its_seed_tables_pooled():
    """benchmarks/toy_icr_multi.json is remade from benchmarks/toy_icr_multi/seed*.json: a seed table added without
    pooling again, or a pooled table edited by hand, fails here."""
    from pathlib import Path

    benchmarks = Path(__file__).parents[3] / "benchmarks"
    seeds = sorted((benchmarks / "toy_icr_multi").glob("seed*.json"))
    assert seeds and seeds[0].name == "seed0.json"  # the baselines' seed first
    committed = json.loads((benchmarks / "toy_icr_multi.json").read_text())
    assert committed == json.loads(json.dumps(pool_files(seeds)))
