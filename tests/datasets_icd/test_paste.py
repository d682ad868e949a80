"""Concepts pasted onto real-looking images: boxes where the pixels changed, rates, determinism, splits, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from datasets_icd.cli import main
from datasets_icd.paste import PasteConfig, Paster

NO_DEGRADATION = {
    "jpeg_rate": 0,
    "resize_rate": 0,
    "blur_rate": 0,
    "colour_rate": 0,
    "crop_rate": 0,
    "max_side": None,
}


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A stand-in photograph: a smooth colour gradient with grain, so every blend mode changes the pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([xx, yy, 1 - xx * yy], axis=-1) * rng.uniform(0.3, 1.0, size=3) + rng.uniform(0, 0.3, size=3)
    grain = rng.normal(0, 0.03, size=base.shape)
    return Image.fromarray((np.clip(base + grain, 0, 1) * 255).astype(np.uint8))


def test_boxes_hold_exactly_the_changed_pixels():
    paster = Paster(PasteConfig(rates={"watermark": 1, "text": 1, "qrcode": 1}, **NO_DEGRADATION))
    kinds = set()
    for seed in range(24):
        clean = photo(seed)
        pasted, records = paster.paste(clean, key=f"photo-{seed}")
        changed = np.any(np.asarray(pasted) != np.asarray(clean), axis=-1)
        kinds.update(r["name"] for r in records)
        covered = np.zeros_like(changed)
        for record in records:
            x0, y0, x1, y1 = (round(v) for v in record["box"])
            # a QR code's box is the symbol: its quiet zone (2 of about 30 modules a side) lies just outside
            margin = round(0.1 * (x1 - x0)) if record["name"] == "qrcode" else 0
            covered[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = True
            inside = changed[y0:y1, x0:x1]
            ys, xs = np.nonzero(inside)
            assert len(xs), record  # every box holds changed pixels...
            slack = max(3, round(0.1 * min(x1 - x0, y1 - y0)))  # ...reaching its edges (faint antialiased rims)
            assert xs.min() <= slack and ys.min() <= slack, record
            assert xs.max() >= x1 - x0 - 1 - slack and ys.max() >= y1 - y0 - 1 - slack, record
        assert not np.any(changed & ~covered), f"photo-{seed}: pixels changed outside every box"
    assert kinds == {"watermark", "text", "qrcode"}


def test_rates_match_and_an_image_is_a_function_of_seed_and_key():
    rates = {"watermark": 0.5, "text": 0.3, "qrcode": 0.2}
    paster = Paster(PasteConfig(rates=rates, seed=3))
    clean = photo(0, (256, 192))
    seen = {name: 0 for name in rates}
    for i in range(300):
        _, records = paster.paste(clean, key=str(i))
        for name in {r["name"] for r in records}:
            seen[name] += 1
    assert {name: abs(count / 300 - rates[name]) < 0.08 for name, count in seen.items()} == dict.fromkeys(rates, True)

    first, again = paster.paste(clean, "a.jpg"), Paster(PasteConfig(rates=rates, seed=3)).paste(clean, "a.jpg")
    assert first[0].tobytes() == again[0].tobytes() and first[1] == again[1]
    other_seed = Paster(PasteConfig(rates=rates, seed=4)).paste(clean, "a.jpg")
    other_key = paster.paste(clean, "b.jpg")
    assert first[0].tobytes() != other_seed[0].tobytes() and first[0].tobytes() != other_key[0].tobytes()


def test_degradations_move_the_boxes_with_a_resize():
    config = PasteConfig(rates={"qrcode": 1}, **{**NO_DEGRADATION, "resize_rate": 1, "resize_scale": (0.5, 0.5)})
    image, records = Paster(config).paste(photo(1, (400, 300)), "q")
    sharp, sharp_records = Paster(config.model_copy(update={"resize_rate": 0})).paste(photo(1, (400, 300)), "q")
    assert image.size == (200, 150) and sharp.size == (400, 300)
    assert records[0]["box"] == pytest.approx([v / 2 for v in sharp_records[0]["box"]])


def test_held_out_fonts_and_words_are_not_drawn_for_training():
    train, heldout, every = (Paster(PasteConfig(split=split)) for split in ("train", "heldout", "all"))
    assert train.fonts and heldout.fonts
    assert not set(train.fonts) & set(heldout.fonts) and set(train.fonts) | set(heldout.fonts) == set(every.fonts)
    assert all(Path(f).name.startswith(tuple(PasteConfig().heldout_fonts)) for f in heldout.fonts)
    for attribute in ("first", "last", "stems", "stock", "caption_words", "logo_words"):
        kept, held = set(getattr(train, attribute)), set(getattr(heldout, attribute))
        assert kept and held and not kept & held, attribute


def _folder(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        photo(i).save(root / f"{i}.jpg", quality=95)
    (root / "0.txt").write_text("a meadow at dawn")
    return root


def test_icd_build_pastes_onto_a_folder(tmp_path):
    root = _folder(tmp_path / "photos", 4)
    out = tmp_path / "icd"
    argv = ["build", "--source", f"folder:{root}", "--paste", "watermark=1", "qrcode=0.5", "--out", str(out)]
    assert main([*argv, "--paste-config", "repeats=3", "seed=5", "jpeg_quality=[40, 60]"]) == 0
    dataset = load_from_disk(str(out))
    assert dataset["source_id"] == [f"{i}.jpg#{k}" for i in range(4) for k in range(3)]
    rows = dataset.to_list()
    assert all(any(c["name"] == "watermark" for c in row["concepts"]) for row in rows)
    assert not any(c["name"] == "text" for row in rows for c in row["concepts"])
    assert rows[0]["caption"] == "a meadow at dawn" and "watermark <loc_" in rows[0]["geom_caption"]
    config = json.loads((out / "build.json").read_text())["config"]["paste"]
    assert config["rates"] == {"watermark": 1.0, "qrcode": 0.5} and config["jpeg_quality"] == [40, 60]
    expected = Paster(PasteConfig(**config)).paste(Image.open(root / "2.jpg"), "2.jpg#1")[1]
    # the stored truth is the paster's, row for row (boxes stored as float32)
    assert [c["name"] for c in rows[7]["concepts"]] == [c["name"] for c in expected]
    assert [v for c in rows[7]["concepts"] for v in c["box"]] == pytest.approx([v for c in expected for v in c["box"]])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--paste", "watermark"], "needs a rate between 0 and 1"),
        (["--paste", "watermark=lots"], "needs a rate between 0 and 1"),
        (["--paste", "logo=0.5"], "unknown concept 'logo' to paste"),
        (["--paste", "text=1.5"], "not a probability"),
        (["--paste", "text=0.5", "--paste-config", "opacity=1"], "opacity"),
        (["--paste", "text=0.5", "--paste-config", "split=test"], "split"),
        (["--paste-config", "repeats=2"], "needs --paste"),
        (["--paste", "text=0.5", "--source", "synthetic"], "use a folder:PATH or hf:NAME source"),
    ],
)
def test_bad_paste_options_are_clear_errors(tmp_path, capsys, argv, message):
    root = _folder(tmp_path / "photos", 1)
    source = [] if "--source" in argv else ["--source", f"folder:{root}"]
    assert main(["build", "--out", str(tmp_path / "out"), *source, *argv]) == 2
    assert message in capsys.readouterr().err
