import json
from pathlib import Path

import numpy as np
import pytest

from detectors import Detection
from erasure.config import load_config
from erasure.evaluation.icr import IcrConfig, check_prompts, evaluate, heldout_prompts, markdown_table, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 10, 0.0179, 0.4042)],
)
def test_wilson_interval_matches_published_values(k, n, lo, hi):
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-4)


class FlakyDetector:
    """Flags every image whose index in the call is even; can fail once on a chosen call."""

    concepts = ("watermark",)

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.images_seen, self.fail_on_call = 0, 0, fail_on_call

    def detect(self, images):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("killed")
        self.images_seen += len(images)
        return [[Detection("watermark", 0.9, (0, 0, 4, 4))] if i % 2 == 0 else [] for i in range(len(images))]


def _config(tmp_path, tiny_sd_dir, **extra):
    cells = [{"name": "plain"}, {"name": "negative", "negative_prompt": "{prompt}, watermark"}]
    overrides = [
        "concept=watermark",
        "detector=unused",
        f"model={tiny_sd_dir}",
        f"cells={json.dumps(cells)}",
        f"out_dir={tmp_path}",
        "num_images=4",
        "batch_size=2",
        "num_inference_steps=2",
        "allow_toy_prompts=true",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(IcrConfig, None, overrides)


def test_icr_evaluation_resumes_without_regenerating(tmp_path, tiny_sd_dir, monkeypatch):
    config = _config(tmp_path, tiny_sd_dir)
    flaky = FlakyDetector(fail_on_call=2)
    monkeypatch.setattr("detectors.load", lambda spec: flaky)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(config)
    assert len(list((tmp_path / "plain" / "images").glob("*.png"))) == 2  # the first batch survived

    resumed = FlakyDetector()
    monkeypatch.setattr("detectors.load", lambda spec: resumed)
    results = evaluate(config)
    assert resumed.images_seen == 2 + 4  # the rest of "plain", then all of "negative"
    for cell in ("plain", "negative"):
        lines = (tmp_path / cell / "detections.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["index"] for line in lines) == [0, 1, 2, 3]
        assert results[cell]["n"] == 4 and results[cell]["icr"] == 0.5
    saved = json.loads((tmp_path / "icr.json").read_text())
    assert saved["results"]["plain"]["ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    assert "| plain | 50.0% |" in (tmp_path / "icr.md").read_text()

    again = FlakyDetector()
    monkeypatch.setattr("detectors.load", lambda spec: again)
    evaluate(config)
    assert again.images_seen == 0  # finished cells are never generated again


class NoneFound(FlakyDetector):
    def detect(self, images):
        super().detect(images)
        return [[] for _ in images]


def test_another_detector_rescores_stored_images_without_generating(tmp_path, tiny_sd_dir, monkeypatch):
    monkeypatch.setattr("detectors.load", lambda spec: FlakyDetector())
    assert evaluate(_config(tmp_path, tiny_sd_dir))["plain"]["icr"] == 0.5
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "plain" / "images").iterdir()}

    def no_generation(*args, **kwargs):
        raise AssertionError("stored images were generated again")

    monkeypatch.setattr("erasure.loading.load_pipeline", no_generation)
    other = NoneFound()
    monkeypatch.setattr("detectors.load", lambda spec: other)
    results = evaluate(_config(tmp_path, tiny_sd_dir, detector="other"))
    assert other.images_seen == 8 and results["plain"]["icr"] == results["negative"]["icr"] == 0.0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "plain" / "images").iterdir()} == stamps
    records = [json.loads(line) for line in (tmp_path / "plain" / "detections.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3] and {r["detector"] for r in records} == {"other"}

    again = NoneFound()
    monkeypatch.setattr("detectors.load", lambda spec: again)
    evaluate(_config(tmp_path, tiny_sd_dir, detector="other"))
    assert again.images_seen == 0  # scored by this detector already

    weights = tmp_path / "weights.bin"
    for content, seen in ((b"v1", 8), (b"v1", 0), (b"v2", 8)):  # new weights at the same path: detect again
        weights.write_bytes(content)
        counted = NoneFound()
        monkeypatch.setattr("detectors.load", lambda spec, counted=counted: counted)
        evaluate(_config(tmp_path, tiny_sd_dir, detector=f"yolo:{weights}?device=cpu"))
        assert counted.images_seen == seen


def test_an_extra_cell_adds_a_row_to_the_stored_table(tmp_path, tiny_sd_dir, monkeypatch):
    monkeypatch.setattr("detectors.load", lambda spec: FlakyDetector())
    evaluate(_config(tmp_path, tiny_sd_dir))
    extra = json.dumps([{"name": "extra", "negative_prompt": "dark"}])
    assert list(evaluate(_config(tmp_path, tiny_sd_dir, cells=extra))) == ["extra"]
    assert list(json.loads((tmp_path / "icr.json").read_text())["results"]) == ["plain", "negative", "extra"]
    assert "| plain |" in (tmp_path / "icr.md").read_text()
    evaluate(_config(tmp_path, tiny_sd_dir, cells=extra, detector="another"))  # another table: starts afresh
    assert list(json.loads((tmp_path / "icr.json").read_text())["results"]) == ["extra"]


class WatermarkAndText(FlakyDetector):
    """The watermark on every even image, as FlakyDetector; text on every image."""

    concepts = ("watermark", "text")

    def detect(self, images):
        found = super().detect(images)
        return [hits + [Detection("text", 0.8, (4, 4, 8, 8))] for hits in found]


def test_cells_that_do_not_name_the_concept_reuse_another_concepts_images(tmp_path, tiny_sd_dir, monkeypatch):
    import erasure.loading

    loaded = []
    real_load = erasure.loading.load_pipeline
    monkeypatch.setattr("erasure.loading.load_pipeline", lambda *a, **k: loaded.append(1) or real_load(*a, **k))
    monkeypatch.setattr("detectors.load", lambda spec: WatermarkAndText())
    cells = json.dumps(
        [{"name": "plain"}, {"name": "negative", "negative_prompt": "watermark"}, {"name": "sld", "sld": "medium"}]
    )
    first = evaluate(_config(tmp_path / "watermark", tiny_sd_dir, cells=cells, num_images=2))
    assert first["plain"]["icr"] == 0.5 and len(loaded) == 3

    source = str(tmp_path / "watermark")
    other = json.dumps(
        [{"name": "plain"}, {"name": "negative", "negative_prompt": "text"}, {"name": "sld", "sld": "medium"}]
    )
    loaded.clear()
    text = evaluate(
        _config(tmp_path / "text", tiny_sd_dir, cells=other, num_images=2, concept="text", images_from=source)
    )
    assert len(loaded) == 2  # "plain" is copied; "negative" names another word, "sld" steers away from text
    assert all(r["icr"] == 1.0 for r in text.values())  # the copied images were detected again, for text
    for name in ("00000.png", "00001.png"):
        assert (tmp_path / "text/plain/images" / name).read_bytes() == (
            tmp_path / "watermark/plain/images" / name
        ).read_bytes()
    records = [json.loads(line) for line in (tmp_path / "text/plain/detections.jsonl").read_text().splitlines()]
    assert {d["name"] for r in records for d in r["detections"]} == {"text"}


def test_heldout_prompts_are_toy_captions_cycled_to_the_image_count(tmp_path, tiny_sd_dir):
    prompts = heldout_prompts(_config(tmp_path, tiny_sd_dir))
    assert len(prompts) == 4 and all(" background" in p for p in prompts)
    assert heldout_prompts(_config(tmp_path, tiny_sd_dir, prompts="[a, b, c]")) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("field", ["negative_prompt", "concept_negative_prompt"])
def test_run_negative_prompt_needs_a_run(tmp_path, tiny_sd_dir, monkeypatch, field):
    config = _config(tmp_path, tiny_sd_dir, cells=json.dumps([{"name": "x", field: "run"}]))
    monkeypatch.setattr("detectors.load", lambda spec: FlakyDetector())
    with pytest.raises(ValueError, match=f"{field} 'run' needs a run"):
        evaluate(config)


def test_concept_negative_prompt_cells_make_other_images(tmp_path, tiny_sd_dir, monkeypatch):
    from PIL import Image

    monkeypatch.setattr("detectors.load", lambda spec: FlakyDetector())
    cells = [{"name": "plain"}, {"name": "negated", "concept_negative_prompt": "{prompt}, watermark"}]
    evaluate(_config(tmp_path, tiny_sd_dir, cells=json.dumps(cells), num_images=2, guidance_scale=3.0))
    plain, negated = (np.asarray(Image.open(tmp_path / c / "images" / "00000.png")) for c in ("plain", "negated"))
    assert np.abs(plain.astype(int) - negated.astype(int)).max() > 0


def test_stored_images_are_not_reused_for_a_cell_with_other_settings(tmp_path, tiny_sd_dir, monkeypatch):
    monkeypatch.setattr("detectors.load", lambda spec: FlakyDetector())
    cells = [{"name": "negative", "concept_negative_prompt": "{prompt}, watermark", "concept_negative_scale": 2.0}]
    first = evaluate(_config(tmp_path, tiny_sd_dir, cells=json.dumps(cells), num_images=2))
    assert first["negative"]["n"] == 2
    cells[0]["latent_guidance_scale"] = 0.3  # no Latent-CLIP in this cell: its schedule changes nothing
    assert evaluate(_config(tmp_path, tiny_sd_dir, cells=json.dumps(cells), num_images=2)) == first
    cells[0]["concept_negative_scale"] = 3.0
    with pytest.raises(ValueError, match="made with other concept_negative_scale"):
        evaluate(_config(tmp_path, tiny_sd_dir, cells=json.dumps(cells), num_images=2))


def test_stored_images_are_not_reused_at_another_guidance_scale(tmp_path, tiny_sd_dir, monkeypatch):
    monkeypatch.setattr("detectors.load", lambda spec: FlakyDetector())
    cells = json.dumps([{"name": "base"}])
    evaluate(_config(tmp_path, tiny_sd_dir, cells=cells, num_images=2, guidance_scale=2.0))
    evaluate(_config(tmp_path, tiny_sd_dir, cells=cells, num_images=3, guidance_scale=2.0))  # more images: fine
    with pytest.raises(ValueError, match=r"made with other sampling\.guidance_scale \("):
        evaluate(_config(tmp_path, tiny_sd_dir, cells=cells, num_images=3, guidance_scale=1.5))


def test_a_latent_clip_cell_with_another_schedule_is_refused(tmp_path, tiny_sd_dir, tiny_latent_clip_dir, monkeypatch):
    monkeypatch.setattr("detectors.load", lambda spec: FlakyDetector())
    cells = [{"name": "guided", "latent_clip": str(tiny_latent_clip_dir)}]
    evaluate(_config(tmp_path, tiny_sd_dir, cells=json.dumps(cells), num_images=2))
    cells[0]["latent_guidance_stop"] = 1
    with pytest.raises(ValueError, match="made with other latent_guidance_stop"):
        evaluate(_config(tmp_path, tiny_sd_dir, cells=json.dumps(cells), num_images=2))


def test_a_real_model_on_toy_captions_is_refused_unless_allowed(tmp_path, tiny_sd_dir):
    with pytest.raises(ValueError, match="not a toy-world model"):
        evaluate(_config(tmp_path, tiny_sd_dir, allow_toy_prompts="false"))
    check_prompts(_config(tmp_path, tiny_sd_dir, prompts='["a photo"]', allow_toy_prompts="false"))
    check_prompts(_config(tmp_path, Path("assets/toy-sd"), allow_toy_prompts="false"))


def test_markdown_table_shows_quality_when_measured():
    results = {"a": {"icr": 0.25, "ci95": [0.1, 0.4], "n": 8, "fidelity": 0.9, "fid": 1.5}}
    assert "| a | 25.0% | [10.0, 40.0] | 90.0% | 1.50 | 8 |" in markdown_table("qrcode", results)


def test_markdown_table_shows_each_training_seed_beside_the_mean():
    pooled = {"icr": 0.1, "ci95": [0.05, 0.2], "n": 200, "seeds": [0.05, 0.15]}
    table = markdown_table("text", {"naive": pooled, "base": {"icr": 0.0, "ci95": [0.0, 0.02], "n": 200}})
    assert "| naive | 10.0% | [5.0, 20.0] | 5.0 / 15.0 | – | – | 200 |" in table
    assert "| base | 0.0% | [0.0, 2.0] | – | – | – | 200 |" in table
    assert table.splitlines()[0].count("|") == table.splitlines()[2].count("|")


def test_a_latent_clip_cell_guides_sampling_away_from_the_concept(
    tmp_path, tiny_sd_dir, tiny_latent_clip_dir, monkeypatch, guidance_rewards
):
    import numpy as np
    from PIL import Image

    guided = {
        "name": "guided",
        "latent_clip": str(tiny_latent_clip_dir),
        "latent_guidance_warmup": 0,
        "latent_guidance_scale": 0.5,
    }
    config = _config(tmp_path, tiny_sd_dir, cells=json.dumps([{"name": "plain"}, guided]), num_images=2)
    monkeypatch.setattr("detectors.load", lambda spec: FlakyDetector())
    evaluate(config)
    plain, steered = (
        np.asarray(Image.open(tmp_path / c / "images" / "00000.png"), dtype=float) for c in ("plain", "guided")
    )
    assert np.abs(plain - steered).max() > 0
    assert guidance_rewards and all(after < before for before, after in guidance_rewards)
