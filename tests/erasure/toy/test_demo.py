"""The whole chain at small sizes, offline: icd build -> train (naive, Geom-Erasing) -> generate -> ICR."""

import json
import os

import pytest
import yaml
from datasets import load_from_disk

from erasure.toy.demo import (
    FULL_UNET_CAPTION_DROPOUT,
    FULL_UNET_LR,
    FULL_UNET_SCHEDULER,
    FULL_UNET_STEPS,
    FULL_UNET_STEPS_ALL,
    METHODS,
    RECIPES,
    TOY_DETECTOR,
    _train_command,
    main,
)


@pytest.mark.slow
def test_demo_runs_the_whole_chain(tmp_path, tiny_sd_dir, tiny_latent_clip_dir):
    detector = f"yolo:{TOY_DETECTOR}" if TOY_DETECTOR.exists() else "qr"
    argv = [
        "--concept",
        "watermark",
        "--out",
        str(tmp_path),
        "--base",
        str(tiny_sd_dir),
        "--num-images",
        "24",
        "--train-steps",
        "2",
        "--eval-images",
        "4",
        "--steps",
        "2",
        "--detector",
        detector,
        "--toy",
        "watermark_logo_rate=1",
    ]
    assert main([*argv, "--methods", "base", "geom_erasing_plain"]) == 0
    assert [run.name for run in (tmp_path / "runs").iterdir()] == ["toy_geom_erasing_watermark"]  # no naive run
    assert main(argv) == 0  # the demo's rows: adds the naive run, reuses the Geom-Erasing one
    toy = json.loads((tmp_path / "icd" / "build.json").read_text())["config"]["toy"]
    assert toy["watermark_logo_rate"] == 1 and toy["position_priors"]["watermark"] == {"bottom_right": 1.0}  # one kind
    naive_run = tmp_path / "runs" / "toy_naive_watermark"
    recipe = yaml.safe_load((naive_run / "recipe.yaml").read_text())
    assert recipe["lora"]["full_unet"] and recipe["train"]["learning_rate"] == FULL_UNET_LR
    assert recipe["train"]["lr_scheduler"] == FULL_UNET_SCHEDULER
    assert (naive_run / "unet" / "diffusion_pytorch_model.safetensors").is_file()  # the whole UNet, not a LoRA
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["concepts"] == ["watermark"]
    assert set(summary["results"]["watermark"]) == {"naive", "geom_erasing_plain"}  # experiments 1 and 4
    for cell in summary["results"]["watermark"].values():
        assert cell["n"] == 4 and 0 <= cell["icr"] <= 1 and 0 <= cell["fidelity"] <= 1
    geom_run = tmp_path / "runs" / "toy_geom_erasing_watermark"
    assert "{prompt}, watermark <loc_" in (geom_run / "negative_prompt.txt").read_text()
    geom_recipe = yaml.safe_load((geom_run / "recipe.yaml").read_text())
    toy_recipe = yaml.safe_load((RECIPES / "toy_geom_erasing.yaml").read_text())  # the tokens' settings: the recipe's
    assert geom_recipe["train"]["token_learning_rate"] == toy_recipe["train"]["token_learning_rate"]
    assert geom_recipe["loss"]["region_alpha"] == toy_recipe["loss"]["region_alpha"]
    assert geom_recipe["train"]["lr_warmup_steps"] == 0 and geom_recipe["lora"]["full_unet"]  # not the LoRA's warm-up
    assert (tmp_path / "demo.png").stat().st_size > 0
    record = tmp_path / "toy_icr.json"
    with pytest.raises(SystemExit):  # naive_latent_clip without a Latent-CLIP
        main([*argv, "--methods", "naive_latent_clip", "--latent-clip", str(tmp_path / "none")])
    everything = ["--methods", *METHODS, "--record", str(record), "--latent-clip", str(tiny_latent_clip_dir)]
    assert main([*argv, *everything]) == 0  # reuses runs, adds the other cells
    table = json.loads(record.read_text())["watermark"]
    assert list(table) == list(METHODS)
    assert len(list((tmp_path / "icr" / "geom_erasing" / "images").glob("*.png"))) == 4
    assert set(table["naive_sld_strong"]) == {"icr", "ci95", "fidelity", "fid", "n"}
    assert len(list((tmp_path / "runs").iterdir())) == 2
    with pytest.raises(SystemExit, match="other settings"):
        main([*argv[:-4], "--detector", "qr", *argv[-2:]])


def test_fine_tunes_go_side_by_side_on_a_cpu_and_a_failed_one_stops_the_demo(
    tmp_path, tiny_sd_dir, monkeypatch, capsys
):
    """Two fine-tunes on 2 cores: two processes of one thread each; a recipe error in one ends the demo in one line."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the side-by-side path is the CPU's
    argv = ["--out", str(tmp_path), "--base", str(tiny_sd_dir), "--num-images", "8", "--detector", "qr"]
    with pytest.raises(SystemExit, match="a fine-tune failed"):
        main([*argv, "--set", "train.no_such_field=1"])
    assert "[demo] 2 fine-tunes side by side, 1 thread(s) each" in capsys.readouterr().out
    assert not list((tmp_path / "runs").glob("*/erasure.json"))


def _train_arguments(tmp_path, mode: str, key: str, **given) -> list[str]:
    """The demo's recipe overrides for one fine-tune that start with ``key``, from its defaults and ``given``."""
    from argparse import Namespace
    from pathlib import Path

    args = dict(project=Path("."), out=tmp_path, seeds=[0], full_unet=True, learning_rate=None, lr_scheduler=None)
    args |= dict(concept="text", train_steps=None, caption_dropout=None, token_learning_rate=None, region_alpha=None)
    command = _train_command(Namespace(**{"recipe_overrides": []} | args | given), mode, 0, "m", tmp_path, 64)
    return [arg for arg in command if arg.startswith(key)]


def test_the_three_concept_world_fine_tunes_longer_unless_told(tmp_path):
    def steps(concept: str, train_steps: int | None = None) -> str:
        (found,) = _train_arguments(tmp_path, "naive", "train.max_steps=", concept=concept, train_steps=train_steps)
        return found

    assert steps("text") == f"train.max_steps={FULL_UNET_STEPS}"
    assert steps("all") == f"train.max_steps={FULL_UNET_STEPS_ALL}" and FULL_UNET_STEPS_ALL != FULL_UNET_STEPS
    assert steps("all", 7) == "train.max_steps=7"


def test_a_stopped_fine_tune_goes_on_from_its_checkpoint_unless_told(tmp_path):
    """The demo's rerun continues a killed fine-tune; ``--set checkpoint.resume=null`` comes after and wins."""
    assert _train_arguments(tmp_path, "naive", "checkpoint.resume=") == ["checkpoint.resume=latest"]
    told = _train_arguments(tmp_path, "naive", "checkpoint.resume=", recipe_overrides=["checkpoint.resume=null"])
    assert told == ["checkpoint.resume=latest", "checkpoint.resume=null"]


def test_the_lora_takes_the_recipes_caption_dropout_unless_told(tmp_path):
    def dropout(**given) -> list[str]:
        return _train_arguments(tmp_path, "naive", "train.caption_dropout=", **given)

    assert dropout() == [f"train.caption_dropout={FULL_UNET_CAPTION_DROPOUT}"]
    assert dropout(full_unet=False) == []  # the toy recipe's own
    assert dropout(full_unet=False, caption_dropout=0.0) == ["train.caption_dropout=0.0"]


def test_a_token_rate_of_zero_reaches_the_recipe_check_instead_of_falling_back_to_the_default(tmp_path):
    def token_rates(rate: float | None) -> list[str]:
        return _train_arguments(tmp_path, "geom_erasing", "train.token_learning_rate=", token_learning_rate=rate)

    assert token_rates(0.0) == ["train.token_learning_rate=0.0"]
    assert token_rates(None) == []


def test_the_committed_latent_clip_reads_the_toy_models_latents():
    from erasure.latent_clip import LatentClip
    from erasure.toy.demo import TOY_BASE, TOY_LATENT_CLIP

    model = LatentClip.from_pretrained(TOY_LATENT_CLIP)
    vae = json.loads((TOY_BASE / "vae" / "config.json").read_text())
    unet = json.loads((TOY_BASE / "unet" / "config.json").read_text())
    assert model.latent_shape == (vae["latent_channels"], unet["sample_size"], unet["sample_size"])


def test_a_missing_toy_model_is_an_error_not_random_weights(tmp_path):
    with pytest.raises(SystemExit, match="no diffusers model at .*--base tiny-random"):
        main(["--project", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "tiny-random-base").exists()


@pytest.mark.slow
def test_demo_chain_runs_on_a_flow_matching_base(tmp_path):
    """icd build -> LoRA training -> ICR on an SD3 base saved without T5, as the toy flow model (assets/toy-sd3) is."""
    from safetensors.torch import load_file

    from erasure.runs import LORA_FILE
    from erasure.testing import save_tiny_sd3

    base = save_tiny_sd3(tmp_path / "tiny-sd3", t5=False)
    detector = f"yolo:{TOY_DETECTOR}" if TOY_DETECTOR.exists() else "qr"
    methods = ["naive", "geom_erasing_plain", "geom_erasing", "naive_sld_medium"]
    argv = ["--concept", "watermark", "--out", str(tmp_path / "demo"), "--base", str(base), "--num-images", "16"]
    argv += ["--train-steps", "2", "--eval-images", "2", "--steps", "2", "--detector", detector, "--methods", *methods]
    assert main([*argv, "--no-full-unet", "--lr-scheduler", "linear", "--set", "lora.rank=3"]) == 0
    runs = tmp_path / "demo" / "runs"
    for run in ("toy_naive_watermark", "toy_geom_erasing_watermark"):  # LoRAs on the transformer's attention
        assert any("add_q_proj" in key for key in load_file(runs / run / LORA_FILE))
        recipe = yaml.safe_load((runs / run / "recipe.yaml").read_text())
        assert (recipe["lora"]["rank"], recipe["train"]["lr_scheduler"]) == (3, "linear")  # both reach both runs
    assert (runs / "toy_geom_erasing_watermark" / "learned_embeds_2.safetensors").is_file()  # both CLIP slots
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert list(summary["results"]["watermark"]) == methods
    assert all(cell["n"] == 2 for cell in summary["results"]["watermark"].values())


@pytest.mark.slow
def test_the_three_concept_world_trains_lora_runs_over_all_concepts_and_measures_each(tmp_path, tiny_sd_dir):
    """icd build of the three concepts at once -> one naive and one Geom-Erasing LoRA run per training seed -> an ICR
    per concept, the runs' own rows on both seeds, each image of a cell that does not name the concept made once."""
    from erasure.runs import LORA_FILE

    detector = f"yolo:{TOY_DETECTOR}" if TOY_DETECTOR.exists() else "qr"
    methods = ["naive", "naive_negative_prompt", "geom_erasing_plain", "geom_erasing"]
    argv = ["--concept", "all", "--out", str(tmp_path), "--base", str(tiny_sd_dir), "--num-images", "24"]
    argv += ["--train-steps", "2", "--eval-images", "2", "--steps", "2", "--detector", detector, "--no-full-unet"]
    record = tmp_path / "toy_icr_multi.json"
    argv += ["--concept-rate", "0.5", "--seeds", "0", "1", "--methods", *methods, "--record", str(record)]
    assert main(argv) == 0
    rows = load_from_disk(str(tmp_path / "icd"))["concepts"]
    assert {c["name"] for row in rows for c in row} == {"watermark", "text", "qrcode"}
    runs = sorted(run.name for run in (tmp_path / "runs").iterdir())
    # one pair of runs for the three concepts per seed
    assert runs == ["toy_geom_erasing_all", "toy_geom_erasing_all_seed1", "toy_naive_all", "toy_naive_all_seed1"]
    assert all((tmp_path / "runs" / run / LORA_FILE).is_file() for run in runs)
    assert yaml.safe_load((tmp_path / "runs" / runs[1] / "recipe.yaml").read_text())["train"]["seed"] == 1
    template = (tmp_path / "runs" / "toy_geom_erasing_all" / "negative_prompt.txt").read_text()
    assert [part.split()[0] for part in template.split(", ")[1:]] == ["watermark", "text", "qrcode"]
    table = json.loads(record.read_text())
    assert list(table) == ["watermark", "text", "qrcode"] and all(list(t) == methods for t in table.values())
    for concept in table:
        cell = json.loads((tmp_path / "icr" / concept / "naive_negative_prompt" / "cell.json").read_text())
        assert cell["negative_prompt"] == concept  # each concept's ICR names its own word
        naive = tmp_path / "icr" / concept / "naive" / "images" / "00000.png"
        assert naive.read_bytes() == (tmp_path / "icr" / "watermark" / "naive" / "images" / "00000.png").read_bytes()
        assert (tmp_path / f"demo_{concept}.png").is_file()
        for method, row in table[concept].items():  # the runs' rows on both seeds, baselines on the first
            if method == "naive_negative_prompt":
                assert "seeds" not in row
            else:
                assert len(row["seeds"]) == 2 and row["icr"] == pytest.approx(sum(row["seeds"]) / 2)
