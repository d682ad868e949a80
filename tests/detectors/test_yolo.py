"""YOLO weights round-trip through safetensors, inference is batched, and the committed toy weights work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from PIL import Image

from datasets_icd.toyworld import ToyWorld, ToyWorldConfig
from detectors import load
from detectors.cli import main
from detectors.evaluate import evaluate_dataset
from detectors.yolo import load_yolo_model

TOY_WEIGHTS = Path(__file__).parents[2] / "assets" / "detectors" / "toy_yolo.safetensors"
TOY_RATES = {"watermark": 0.5, "qrcode": 0.3, "text": 0.3}


def test_weights_round_trip_without_pickle(random_yolo_weights):
    model, imgsz = load_yolo_model(random_yolo_weights)
    assert imgsz == 64
    assert model.names == {0: "watermark", 1: "qrcode", 2: "text"}
    torch.manual_seed(0)
    from ultralytics.nn.tasks import DetectionModel

    fresh = DetectionModel(cfg="yolov8n.yaml", nc=3, verbose=False)
    pairs = zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    assert all(torch.equal(a, b.half().to(a.dtype) if b.is_floating_point() else b) for a, b in pairs)  # stored fp16


def test_batched_inference_equals_one_at_a_time(random_yolo_weights):
    world = ToyWorld(ToyWorldConfig(size=64, concept_rates=TOY_RATES, seed=9))
    images = [world.sample(i).image for i in range(5)] + [Image.new("L", (1, 1)), Image.new("RGBA", (80, 40))]
    detector = load(f"yolo:{random_yolo_weights}?conf=0.001&device=cpu&batch_size=3")
    batched = detector.detect(images)
    single = [detector.detect([image])[0] for image in images]
    assert len(batched) == len(images)
    assert sum(map(len, batched)) > 0  # an untrained head at conf 0.001 still proposes boxes
    for a, b in zip(batched, single, strict=True):
        assert [d.concept for d in a] == [d.concept for d in b]
        assert [v for d in a for v in d.box] == pytest.approx([v for d in b for v in d.box], abs=1e-3)


@pytest.mark.skipif(not TOY_WEIGHTS.is_file(), reason="toy YOLO weights not committed")
def test_committed_toy_weights_reach_ap50_on_held_out_toy_images(tmp_path, no_network, save_toy_icd):
    held_out = save_toy_icd(tmp_path / "icd", num_images=300, size=64, seed=777, concept_rates=TOY_RATES)
    report = evaluate_dataset(load(f"yolo:{TOY_WEIGHTS}?device=cpu"), held_out)
    assert {name: m["ap50"] >= 0.9 for name, m in report["concepts"].items()} == dict.fromkeys(TOY_RATES, True)
    assert no_network == []


@pytest.mark.slow
def test_train_yolo_runs_offline_and_writes_loadable_weights(tmp_path, no_network, save_toy_icd):
    save_toy_icd(tmp_path / "icd", num_images=40, size=64, seed=1, concept_rates=TOY_RATES)
    argv = ["train-yolo", "--dataset", str(tmp_path / "icd"), "--out", str(tmp_path / "yolo"), "--epochs", "1"]
    assert main([*argv, "--batch", "16", "--workers", "0", "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "yolo" / "metrics.json").read_text())
    assert sorted(metrics["concepts"]) == ["qrcode", "text", "watermark"]
    assert metrics["num_images"] == 4  # the last 10% of rows are held out
    assert "| watermark |" in (tmp_path / "yolo" / "metrics.md").read_text()
    assert load(f"yolo:{tmp_path / 'yolo' / 'yolo.safetensors'}").concepts == ("qrcode", "text", "watermark")
    assert sorted(p.name for p in (tmp_path / "yolo" / "data" / "labels" / "val").iterdir()) == [
        f"{i:07d}.txt" for i in range(36, 40)
    ]
    assert no_network == []


@pytest.mark.slow
def test_train_yolo_fine_tunes_init_weights_with_negative_images(tmp_path, no_network, save_toy_icd):
    from ultralytics.nn.tasks import DetectionModel

    from detectors.yolo import save_yolo

    torch.manual_seed(7)  # not the trainer's seed: a run that ignored --init would start elsewhere
    init = DetectionModel(cfg="yolov8n.yaml", nc=3, verbose=False)
    init.names = {0: "watermark", 1: "qrcode", 2: "text"}
    save_yolo(init, tmp_path / "init.safetensors", imgsz=64)
    save_toy_icd(tmp_path / "icd", num_images=20, size=64, seed=1, concept_rates=TOY_RATES)
    (tmp_path / "negs").mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(tmp_path / "negs" / f"{i}.png")
    argv = ["train-yolo", "--dataset", str(tmp_path / "icd"), "--out", str(tmp_path / "yolo"), "--epochs", "1"]
    argv += ["--init", str(tmp_path / "init.safetensors"), "--negatives", str(tmp_path / "negs")]
    assert main([*argv, "--batch", "8", "--workers", "0", "--device", "cpu"]) == 0
    labels = tmp_path / "yolo" / "data" / "labels" / "train"
    assert sorted(p.name for p in labels.glob("neg*")) == [f"neg0-{i}.txt" for i in range(3)]
    assert all(p.read_text() == "" for p in labels.glob("neg*"))
    tuned, _ = load_yolo_model(tmp_path / "yolo" / "yolo.safetensors")
    loaded, _ = load_yolo_model(tmp_path / "init.safetensors")
    torch.manual_seed(0)
    fresh = DetectionModel(cfg="yolov8n.yaml", nc=3, verbose=False)
    first = "model.0.conv.weight"
    to_init = (tuned.state_dict()[first].float() - loaded.state_dict()[first].float()).abs().mean()
    to_fresh = (tuned.state_dict()[first].float() - fresh.state_dict()[first].float()).abs().mean()
    assert to_init < 0.1 * to_fresh
    assert no_network == []


def test_vae_views_twin_each_training_image_with_its_labels(tmp_path, tiny_sd_dir, save_toy_icd):
    from detectors.train_yolo import add_negatives, add_vae_views, export_yolo_layout

    icd = save_toy_icd(tmp_path / "icd", num_images=6, size=32, seed=1, concept_rates=TOY_RATES)
    out = tmp_path / "data"
    export_yolo_layout(icd, out, ["watermark", "qrcode", "text"], val_fraction=0.2)
    (tmp_path / "negs").mkdir()
    Image.new("RGB", (32, 32), (10, 90, 200)).save(tmp_path / "negs" / "a.png")
    add_negatives([tmp_path / "negs"], out)
    assert add_vae_views(str(tiny_sd_dir), out) == 5  # train rows only: no val row, no negative
    labels, images = out / "labels" / "train", out / "images" / "train"
    for i in range(5):
        assert (labels / f"vae-{i:07d}.txt").read_text() == (labels / f"{i:07d}.txt").read_text()
        original, view = Image.open(images / f"{i:07d}.png"), Image.open(images / f"vae-{i:07d}.png")
        assert view.size == original.size and view.tobytes() != original.tobytes()
    first = (images / "vae-0000000.png").stat().st_mtime_ns
    assert add_vae_views("no/such/model", out) == 5  # resumed: nothing left to do, so no VAE is even loaded
    assert (images / "vae-0000000.png").stat().st_mtime_ns == first


def _error(argv: list[str], capsys) -> str:
    """The message a refused command gives, whether the CLI exits with it or prints it and returns 2."""
    try:
        code = main(argv)
    except SystemExit as refusal:
        return str(refusal.code)
    assert code == 2
    return capsys.readouterr().err


def test_train_yolo_refuses_init_weights_of_the_same_classes_in_another_order(
    tmp_path, capsys, random_yolo_weights, save_toy_icd
):
    save_toy_icd(tmp_path / "icd", num_images=4, size=64, seed=1, concept_rates=TOY_RATES)
    argv = ["train-yolo", "--dataset", str(tmp_path / "icd"), "--out", str(tmp_path / "yolo")]
    argv += ["--init", str(random_yolo_weights), "--classes", "text", "watermark", "qrcode"]
    assert "differ from --classes" in _error(argv, capsys)


def test_evaluate_cli_writes_json_and_markdown(tmp_path, save_toy_icd):
    save_toy_icd(tmp_path / "icd", num_images=12, size=256, seed=4, concept_rates={"qrcode": 0.5})
    truth = sum(len(row) for row in load_from_disk(str(tmp_path / "icd"))["concepts"])
    argv = ["evaluate", "--detector", "qr", "--dataset", str(tmp_path / "icd"), "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["detector"] == "qr" and report["num_images"] == 12 and report["images_per_second"] > 0
    assert report["concepts"]["qrcode"]["ground_truth"] == truth > 0
    assert report["concepts"]["qrcode"]["recall"] == 1.0
    assert "| qrcode |" in (tmp_path / "r.md").read_text()


def _ultralytics_checkpoint(path: Path, seed: int) -> Path:
    """A .pt as ultralytics writes it (pickled model, 80 COCO-style classes), built from the yaml, offline."""
    from ultralytics import YOLO

    torch.manual_seed(seed)
    YOLO("yolov8n.yaml").save(path)
    return path


def test_convert_yolo_writes_the_checkpoints_tensors_as_safetensors(tmp_path, capsys, no_network):
    checkpoint = _ultralytics_checkpoint(tmp_path / "model.pt", seed=3)
    out = tmp_path / "model.safetensors"
    assert main(["convert-yolo", str(checkpoint), "--out", str(out)]) == 0
    assert "only on .pt files you trust" in capsys.readouterr().out
    model, imgsz = load_yolo_model(out)
    original = torch.load(checkpoint, weights_only=False)["model"]  # our own file, made just above
    assert imgsz == 640 and len(model.names) == 80
    pairs = zip(model.state_dict().values(), original.state_dict().values(), strict=True)
    assert all(torch.equal(a, b.half().to(a.dtype) if b.is_floating_point() else b) for a, b in pairs)
    assert load(f"yolo:{out}:0=watermark?device=cpu").concepts[-1] == "watermark"
    with pytest.raises(ValueError, match="convert-yolo"):  # the spec itself still refuses the pickle
        load(f"yolo:{checkpoint}")
    assert no_network == []


def test_convert_yolo_help_and_bad_input_say_what_is_wrong(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["convert-yolo", "--help"])
    assert "ONLY CONVERT FILES YOU TRUST" in capsys.readouterr().out
    out = str(tmp_path / "m.safetensors")
    assert "no such checkpoint" in _error(["convert-yolo", str(tmp_path / "missing.pt"), "--out", out], capsys)
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "linear.pt")
    message = _error(["convert-yolo", str(tmp_path / "linear.pt"), "--out", out], capsys)
    assert "not an ultralytics detection model" in message


@pytest.mark.slow
def test_train_yolo_fine_tunes_converted_weights_of_other_classes(tmp_path, no_network, save_toy_icd):
    checkpoint = _ultralytics_checkpoint(tmp_path / "coco.pt", seed=11)
    assert main(["convert-yolo", str(checkpoint), "--out", str(tmp_path / "coco.safetensors")]) == 0
    save_toy_icd(tmp_path / "icd", num_images=20, size=64, seed=1, concept_rates=TOY_RATES)
    argv = ["train-yolo", "--dataset", str(tmp_path / "icd"), "--out", str(tmp_path / "yolo"), "--epochs", "1"]
    argv += ["--init", str(tmp_path / "coco.safetensors"), "--model", "yolov8s.yaml"]  # --init's architecture wins
    assert main([*argv, "--batch", "8", "--workers", "0", "--device", "cpu"]) == 0
    tuned, _ = load_yolo_model(tmp_path / "yolo" / "yolo.safetensors")
    converted, _ = load_yolo_model(tmp_path / "coco.safetensors")
    assert list(tuned.names.values()) == ["watermark", "qrcode", "text"]
    first = "model.0.conv.weight"
    assert tuned.state_dict()[first].shape == converted.state_dict()[first].shape  # still a yolov8n
    assert (tuned.state_dict()[first].float() - converted.state_dict()[first].float()).abs().mean() < 0.01
    assert no_network == []


def test_loading_yolo_leaves_unreadable_images_unreadable(random_yolo_weights, tmp_path, no_network):
    """Ultralytics' import swaps PIL.Image.open for one that pip-installs a plugin on unknown files; not ours."""
    from detectors.images import UnreadableImageError, open_image

    load(f"yolo:{random_yolo_weights}?device=cpu")
    (tmp_path / "letter.jpg").write_text("not an image")
    with pytest.raises(UnreadableImageError, match="letter.jpg"):
        open_image(tmp_path / "letter.jpg")
    assert no_network == []
