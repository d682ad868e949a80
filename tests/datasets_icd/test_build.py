import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset, load_dataset, load_from_disk
from PIL import Image

import detectors
from datasets_icd.build import BuildConfig, build
from datasets_icd.cli import main
from datasets_icd.features import ICD_FEATURES
from datasets_icd.geometry import box_cells, geom_caption, parse_location_tokens
from datasets_icd.sources import SyntheticSource
from datasets_icd.toyworld import CONCEPTS, ToyWorldConfig
from detectors.base import Detection

RATES = {"watermark": 0.4, "qrcode": 0.25, "text": 0.3}
ROOT = Path(__file__).resolve().parents[2]


def _ids(out: Path) -> list[str]:
    return load_from_disk(str(out))["source_id"]


def test_synthetic_build_of_2000_images(tmp_path):
    out = tmp_path / "icd"
    concepts = [f"{name}={rate}" for name, rate in RATES.items()]
    argv = ["build", "--source", "synthetic", "--num-images", "2000", "--out", str(out), "--num-proc", "2"]
    assert main(argv + ["--concepts", *concepts, "--chunk-size", "250"]) == 0

    dataset = load_from_disk(str(out))
    assert dataset.features == ICD_FEATURES
    assert sorted(dataset["source_id"]) == sorted(f"toyworld/{i}" for i in range(2000))
    rows = dataset.select_columns(["caption", "geom_caption", "concepts", "width", "height"]).to_list()
    for name, rate in RATES.items():
        seen = sum(any(c["name"] == name for c in row["concepts"]) for row in rows) / len(rows)
        assert abs(seen - rate) <= 0.03, (name, seen)
    for row in rows:
        assert not any(name in row["caption"] for name in CONCEPTS)
        assert row["geom_caption"] == geom_caption(row["caption"], row["concepts"], row["width"], row["height"])
        for concept in row["concepts"]:
            x0, y0, x1, y1 = concept["box"]
            assert 0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]
        cells = {cell for c in row["concepts"] for cell in box_cells(c["box"], row["width"], row["height"])}
        assert set(parse_location_tokens(row["geom_caption"])) == cells
    assert dataset[5]["image"].size == (64, 64)

    shards = sorted(str(p) for p in (out / "parquet").glob("*.parquet"))
    assert load_dataset("parquet", data_files=shards, split="train", cache_dir=str(tmp_path / "c")).num_rows == 2000
    summary = json.loads((out / "build.json").read_text())
    assert summary["rows"] == 2000 and summary["skipped"] == []
    assert abs(summary["concepts"]["qrcode"]["rate"] - RATES["qrcode"]) <= 0.03
    report = (out / "report.md").read_text()
    assert "| watermark |" in report and (out / "report.png").stat().st_size > 0
    assert not (out / "work").exists()


def test_resume_after_an_error_mid_build(tmp_path, monkeypatch):
    config = BuildConfig(num_images=300, chunk_size=40, toy=ToyWorldConfig(size=32, concept_rates=RATES))
    real_load = SyntheticSource.load

    def failing_load(self, index):
        if index == 170:
            raise RuntimeError("power cut")
        return real_load(self, index)

    monkeypatch.setattr(SyntheticSource, "load", failing_load)
    with pytest.raises(RuntimeError, match="power cut"):
        build(config, tmp_path)
    assert len(list((tmp_path / "work").glob("chunk-*.json"))) == 4  # the chunks before index 160 are kept
    with pytest.raises(ValueError, match="--resume"):
        build(config, tmp_path)
    with pytest.raises(ValueError, match="grid"):
        build(config.model_copy(update={"grid": 8}), tmp_path, resume=True)

    monkeypatch.setattr(SyntheticSource, "load", real_load)
    build(config, tmp_path, resume=True)
    assert sorted(_ids(tmp_path)) == sorted(f"toyworld/{i}" for i in range(300))
    with pytest.raises(ValueError, match="finished build"):
        build(config, tmp_path, resume=True)


def test_resume_after_the_process_is_killed(tmp_path):
    """SIGKILL a two-worker build mid-way; the resumed build has every image once."""
    out = tmp_path / "icd"
    argv = ["build", "--num-images", "1500", "--chunk-size", "20", "--num-proc", "2", "--size", "32"]
    argv += ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "datasets_icd.cli", *argv],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "work").glob("chunk-*.json"))) < 5:
            assert process.poll() is None and time.monotonic() < deadline, "the build ended before it was killed"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (out / "build.json").exists()
    assert main(argv + ["--resume"]) == 0
    ids = _ids(out)
    assert len(ids) == 1500 and set(ids) == {f"toyworld/{i}" for i in range(1500)}


@pytest.mark.slow
def test_sharded_across_two_distributed_processes(tmp_path):
    """Under torchrun (what accelerate launch runs), each rank builds every other chunk; rank 0 joins them."""
    out = tmp_path / "icd"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "datasets_icd.cli"]
    command += ["build", "--num-images", "300", "--chunk-size", "50", "--size", "32", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "icd build [1]" in result.stderr  # the second rank did its share
    ids = _ids(out)
    assert len(ids) == 300 and set(ids) == {f"toyworld/{i}" for i in range(300)}


class FakeTextDetector:
    """Finds 'text' in the top-left quarter, plus a box past the image edge and a concept the build does not keep."""

    concepts = ("text", "nudity")

    def detect(self, images):
        found = []
        for image in images:
            w, h = image.size
            found.append(
                [
                    Detection("text", 0.9, (0, 0, w / 2, h / 2)),
                    Detection("text", 0.8, (w - 4, h - 4, w + 10, h + 10)),
                    Detection("nudity", 0.7, (0, 0, w, h)),
                ]
            )
        return found


UNICODE_CAPTION = "café ☕ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 مرحبا e\u0301 👩\u200d👩\u200d👧 \u202eright-to-left"


def _png(path: Path, colour=(200, 30, 30), size=(40, 30)) -> bytes:
    Image.new("RGB", size, colour).save(path)
    return path.read_bytes()


def _folder_with_bad_files(tmp_path: Path) -> tuple[Path, set[str], set[str]]:
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    good_bytes = _png(root / "a.png")
    Image.new("RGB", (50, 20), (0, 90, 200)).save(root / "b.jpg")
    _png(root / "nested" / "c.png")
    (root / "nested" / "c.txt").write_text("a sidecar caption\n", encoding="utf-8")
    _png(root / "ünï côdé.png")
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": UNICODE_CAPTION}, ensure_ascii=False)
        + "\n"
        + json.dumps({"file_name": "ünï côdé.png", "text": "plain"})
        + "\n",
        encoding="utf-8",
    )
    (root / "notes.md").write_text("not an image and not claiming to be one")
    good = {"a.png", "b.jpg", "nested/c.png", "ünï côdé.png"}

    (root / "zero.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(good_bytes[: len(good_bytes) // 2])
    (root / "letter.jpg").write_text("Dear reader, this is text with an image extension.")
    Image.new("1", (12_000, 12_000)).save(root / "bomb.png")  # 144 Mpx: over Pillow's limit, a few kB on disk
    outside = tmp_path / "outside.png"
    _png(outside)
    (root / "escape.png").symlink_to(outside)
    (root / "dangling.png").symlink_to(root / "missing.png")
    os.mkfifo(root / "pipe.png")  # reading it would block the build forever
    bad = {"zero.png", "truncated.png", "letter.jpg", "bomb.png", "escape.png", "dangling.png", "pipe.png"}
    return root, good, bad


def test_bad_files_are_skipped_and_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(detectors, "load", lambda spec: FakeTextDetector(), raising=False)
    root, good, bad = _folder_with_bad_files(tmp_path)
    out = tmp_path / "icd"
    argv = ["build", "--source", f"folder:{root}", "--detectors", "fake", "--concepts", "text", "--out", str(out)]
    assert main(argv) == 0

    dataset = load_from_disk(str(out))
    rows = {row["source_id"]: row for row in dataset.to_list()}
    assert set(rows) == good
    assert rows["a.png"]["caption"] == UNICODE_CAPTION
    tokens = "<loc_0_0> <loc_0_1> <loc_1_0> <loc_1_1> <loc_3_3>"  # the top-left quarter and the clipped corner box
    assert rows["a.png"]["geom_caption"] == f"{UNICODE_CAPTION}, text {tokens}"
    assert rows["nested/c.png"]["caption"] == "a sidecar caption"
    assert rows["b.jpg"]["caption"] == "" and rows["b.jpg"]["width"] == 50
    for row in rows.values():
        assert [c["name"] for c in row["concepts"]] == ["text", "text"]
        assert row["concepts"][1]["box"] == [row["width"] - 4, row["height"] - 4, row["width"], row["height"]]

    skipped = json.loads((out / "build.json").read_text())["skipped"]
    reasons = {entry["item"]: entry["reason"] for entry in skipped}
    assert set(reasons) == bad
    assert "0 bytes" in reasons["zero.png"] and "decompression bomb" in reasons["bomb.png"]
    assert "leaves the folder" in reasons["escape.png"] and "regular file" in reasons["pipe.png"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in report for name in bad)


def test_hf_dataset_source_with_chosen_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(detectors, "load", lambda spec: FakeTextDetector(), raising=False)
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(5)]
    captions = [f"photo {i} ✓" for i in range(5)]
    Dataset.from_dict({"picture": images, "alt": captions}).save_to_disk(str(tmp_path / "hub"))
    out = tmp_path / "icd"
    base = ["build", "--source", f"hf:{tmp_path / 'hub'}", "--detectors", "fake", "--out", str(out)]
    assert main(base + ["--image-column", "picture", "--caption-column", "alt", "--num-images", "4"]) == 0
    dataset = load_from_disk(str(out))
    assert dataset["caption"] == captions[:4] and dataset["source_id"] == [f"train/{i}" for i in range(4)]
    assert Counter(c["name"] for row in dataset["concepts"] for c in row) == {"text": 8, "nudity": 4}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "folder:/nonexistent", "--detectors", "fake"], "does not exist"),
        (["--source", "ftp:x"], "unknown source"),
        (["--source", "hf:HUB", "--detectors", "fake", "--caption-column", "nope"], "no caption column 'nope'"),
        (["--source", "folder:HUB"], "no ground truth"),
        (["--concepts", "logo=0.5"], "unknown concept 'logo'"),
        (["--toy", "watermark_colour=red"], "watermark_colour"),
        (["--toy", "watermark_logo_rate"], "needs a value"),
        (["--toy", "watermark_opacity=[0.6"], "not YAML"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(detectors, "load", lambda spec: FakeTextDetector(), raising=False)
    Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "text": ["x"]}).save_to_disk(str(tmp_path / "hub"))
    argv = [arg.replace("HUB", str(tmp_path / "hub")) for arg in argv]
    assert main(["build", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_toy_world_settings_from_the_command_line(tmp_path):
    argv = ["build", "--out", str(tmp_path / "out"), "--num-images", "40", "--size", "64", "--concepts", "watermark=1"]
    argv += ["--toy", "watermark_logo_rate=1", "watermark_tiled_rate=0"]
    argv += ["position_priors={watermark: {bottom_right: 1}}"]
    assert main(argv) == 0
    rows = load_from_disk(str(tmp_path / "out"))["concepts"]
    boxes = [c["box"] for row in rows for c in row]
    assert len(boxes) == 40 and all(x0 >= 32 and y0 >= 32 for x0, y0, _, _ in boxes)  # the bottom-right corner
    toy = json.loads((tmp_path / "out" / "build.json").read_text())["config"]["toy"]
    assert toy["watermark_logo_rate"] == 1 and toy["position_priors"] == {"watermark": {"bottom_right": 1}}


def test_one_kind_narrows_only_the_built_concepts_and_toy_settings_win(tmp_path):
    argv = ["build", "--out", str(tmp_path / "out"), "--num-images", "30", "--size", "64", "--one-kind"]
    assert main([*argv, "--concepts", "text=1", "qrcode=1", "--toy", "text_words=[open]"]) == 0
    dataset = load_from_disk(str(tmp_path / "out"))
    boxes = {c["name"]: [] for c in dataset[0]["concepts"]}
    for row in dataset["concepts"]:
        for c in row:
            boxes[c["name"]].append(c["box"])
    assert all(y1 <= 32 for _, _, _, y1 in boxes["text"])  # one banner at the top
    assert all(x0 >= 32 and y0 >= 32 for x0, y0, _, _ in boxes["qrcode"])  # one code in the bottom-right corner
    toy = json.loads((tmp_path / "out" / "build.json").read_text())["config"]["toy"]
    assert toy["text_words"] == ["open"] and toy["qr_payloads"] == ["TOY"]  # --toy overrides the one-kind word
    assert toy["watermark_logo_rate"] == ToyWorldConfig().watermark_logo_rate  # watermark not built: not narrowed


def test_one_kind_concepts_of_one_world_each_keep_their_own_place(tmp_path):
    """The three-concept world: the logo keeps the bottom-right corner, the QR code moves to the bottom left."""
    argv = ["build", "--out", str(tmp_path / "out"), "--num-images", "40", "--size", "64", "--one-kind"]
    assert main([*argv, "--concepts", "watermark=0.5", "text=0.5", "qrcode=0.5"]) == 0
    boxes: dict[str, list] = {"watermark": [], "text": [], "qrcode": []}
    for row in load_from_disk(str(tmp_path / "out"))["concepts"]:
        for c in row:
            boxes[c["name"]].append(c["box"])
    assert all(len(found) >= 10 for found in boxes.values())  # each concept in about half of the 40 images
    assert all(x0 >= 32 and y0 >= 32 for x0, y0, _, _ in boxes["watermark"])
    assert all(x1 <= 32 and y0 >= 32 for _, y0, x1, _ in boxes["qrcode"])
    assert all(y1 <= 32 for _, _, _, y1 in boxes["text"])
