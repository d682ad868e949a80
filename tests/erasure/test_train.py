"""Training on the tiny SD 1.x / SDXL pipelines: every mode, resume, two processes, and the pre-flight errors."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from datasets_icd.geometry import location_vocabulary
from erasure.config import ConfigError
from erasure.runs import LORA_FILE

EXPECTED_FILES = {
    "geom_erasing": {LORA_FILE, "learned_embeds.safetensors"},
    "naive": {LORA_FILE},
    "tokens_only": {"learned_embeds.safetensors"},
    "full_unet": {"unet", "learned_embeds.safetensors"},
}
COMMON_FILES = {"negative_prompt.txt", "erasure.json", "recipe.yaml", "checkpoint-4"}
WEIGHT_FILES = {LORA_FILE, "learned_embeds.safetensors", "unet"}


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", list(EXPECTED_FILES))
def test_each_mode_trains_and_exports_its_weights(trained_runs, mode):
    run = trained_runs(mode)
    present = {p.name for p in run.iterdir()}
    assert COMMON_FILES <= present
    assert present & WEIGHT_FILES == EXPECTED_FILES[mode]
    assert not (run / "checkpoint-2").exists()  # total_limit: 1
    if LORA_FILE in present:
        lora_up = [v for k, v in load_file(run / LORA_FILE).items() if "lora_B" in k]
        assert lora_up and all(v.abs().sum() > 0 for v in lora_up)  # B starts at zero: it has learned
    if "learned_embeds.safetensors" in present:
        embeds = load_file(run / "learned_embeds.safetensors")
        assert list(embeds) == location_vocabulary(4)
        rows = torch.stack(list(embeds.values()))
        assert not torch.allclose(rows[0], rows[-1])  # all rows start at the same mean embedding
    negative = (run / "negative_prompt.txt").read_text().strip()
    expected = "{prompt}, watermark" if mode == "naive" else "{prompt}, watermark <loc_2_2> <loc_2_3>"
    assert negative == expected


def test_tokens_only_keeps_the_unet_and_the_old_vocabulary(tmp_path, tiny_sd_dir, icd_dir, train_tiny, monkeypatch):
    from diffusers import StableDiffusionPipeline

    import erasure.training.loop as loop
    from erasure.runs import load_learned_embeds

    loaded = []  # the very modules the loop trains, to look at the UNet after training
    load_components = loop.load_components

    def load_and_keep(*args, **kwargs):
        loaded.append(load_components(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(loop, "load_components", load_and_keep)
    run = train_tiny(tmp_path, tiny_sd_dir, icd_dir, "train.mode=tokens_only").run_dir

    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    trained_unet, base_unet = loaded[0].unet.state_dict(), base.unet.state_dict()
    assert trained_unet.keys() == base_unet.keys()  # no LoRA adapter was attached
    assert all(torch.equal(trained_unet[key], base_unet[key]) for key in base_unet)
    old_rows = base.text_encoder.get_input_embeddings().weight.detach().clone()
    load_learned_embeds(base, run)
    assert torch.equal(base.text_encoder.get_input_embeddings().weight[: len(old_rows)], old_rows)


def test_sdxl_trains_tokens_in_both_encoders(tmp_path, tiny_sdxl_dir, icd_dir, train_tiny):
    result = train_tiny(tmp_path, tiny_sdxl_dir, icd_dir, "train.max_steps=2", kind="sdxl")
    for name, width in [("learned_embeds.safetensors", 32), ("learned_embeds_2.safetensors", 32)]:
        embeds = load_file(result.run_dir / name)
        assert list(embeds) == location_vocabulary(4) and embeds["<loc_0_0>"].shape == (width,)
    assert (result.run_dir / LORA_FILE).is_file()


def test_validation_grid_and_disk_cache(tmp_path, tiny_sd_dir, icd_dir, train_tiny):
    result = train_tiny(
        tmp_path,
        tiny_sd_dir,
        icd_dir,
        "train.max_steps=2",
        "data.cache_latents=disk",
        "validation.prompts=[a red circle, a blue square]",
        "validation.every=2",
        "validation.num_inference_steps=2",
        "report_to=tensorboard",
    )
    grid = Image.open(result.run_dir / "validation" / "step-000002.png")
    assert grid.size == (2 * 32, 2 * 32)  # columns: plain | with negative prompt; one row per prompt
    assert len(list(result.run_dir.glob("latents/*/*.safetensors"))) == 6
    assert list((result.run_dir / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_stopped_and_resumed_run_matches_the_uninterrupted_one(tmp_path, tiny_sd_dir, icd_dir, train_tiny):
    # with caption dropout, whose draws must continue where they stopped too
    common = ["train.batch_size=4", "train.caption_dropout=0.5"]
    whole = train_tiny(tmp_path / "whole", tiny_sd_dir, icd_dir, "train.max_steps=4", *common)
    first = train_tiny(tmp_path / "split", tiny_sd_dir, icd_dir, "train.stop_at_step=3", *common)
    assert (first.global_step, first.finished) == (3, False)
    assert not (first.run_dir / LORA_FILE).exists()
    resumed = train_tiny(tmp_path / "split", tiny_sd_dir, icd_dir, "checkpoint.resume=latest", *common)
    assert (resumed.global_step, resumed.finished) == (4, True)
    expected, got = load_file(whole.run_dir / LORA_FILE), load_file(resumed.run_dir / LORA_FILE)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    embeds = load_file(whole.run_dir / "learned_embeds.safetensors")
    resumed_embeds = load_file(resumed.run_dir / "learned_embeds.safetensors")
    for key in embeds:
        torch.testing.assert_close(resumed_embeds[key], embeds[key], rtol=1e-4, atol=1e-5)


def test_dropped_captions_keep_the_concept_phrase_of_geom_captions(tmp_path, tiny_sd_dir, icd_dir, tiny_recipe):
    from erasure.recipe import load_recipe
    from erasure.training.data import crop_windows, dropped_captions, load_icd, square_concepts, training_captions

    recipe_file = tiny_recipe(tmp_path / "recipe.yaml", tiny_sd_dir, icd_dir)
    geom = load_recipe(recipe_file, ["train.mode=geom_erasing"])
    dataset = load_icd(geom)
    concepts = square_concepts(dataset, geom, crop_windows(dataset, geom))
    (captioned, shortened), dropped = (
        training_captions(dataset, geom, concepts, []),
        dropped_captions(dataset, geom, concepts),
    )
    # "a red circle, watermark <loc_2_2> <loc_2_3>" -> "watermark <loc_2_2> <loc_2_3>"
    assert dropped[0].startswith("watermark <loc_") and shortened == 0
    assert all(c == f"{raw}, {d}" for c, raw, d in zip(captioned, dataset["caption"], dropped, strict=True))
    naive = load_recipe(recipe_file, ["train.mode=naive"])
    assert dropped_captions(dataset, naive, concepts) == [""] * len(dataset)


def test_caption_dropout_replaces_whole_captions_in_every_tokenizer():
    from erasure.training.data import drop_captions

    ids = [torch.arange(64).reshape(16, 4), torch.arange(64).reshape(16, 4) + 100]
    empty = [torch.full((16, 4), -1), torch.full((16, 4), -2)]
    out = drop_captions(ids, empty, 0.5, torch.Generator().manual_seed(0))
    dropped = (out[0] == -1).all(dim=1)
    assert torch.equal(dropped, (out[1] == -2).all(dim=1))  # the same captions in both tokenizers
    assert 0 < dropped.sum() < 16
    assert torch.equal(out[0][~dropped], ids[0][~dropped]) and torch.equal(out[1][~dropped], ids[1][~dropped])
    kept = drop_captions(ids, empty, 0.0, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(kept, ids, strict=True))


TRAIN_PY, ERASURE_TRAIN = [str(ROOT / "train.py")], ["-m", "erasure.cli", "train"]  # the two ways to launch


def _launch_two_processes(recipe: Path, *overrides: str, entry: list[str] = TRAIN_PY) -> str:
    # accelerate's multi-CPU (gloo) run: torchrun-style launch of 2 processes, told to use the CPU.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += [*entry, "--config", str(recipe), *overrides]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_two_processes_stopped_and_resumed_match_the_uninterrupted_run(tmp_path, tiny_sd_dir, icd_dir, tiny_recipe):
    common = ["train.caption_dropout=0.5"]  # its draws come from each process's generator too
    for name in ("whole", "split"):
        (tmp_path / name).mkdir()
    whole = tiny_recipe(tmp_path / "whole" / "recipe.yaml", tiny_sd_dir, icd_dir)
    assert "finished at step 4 on 2 process(es)" in _launch_two_processes(whole, *common)
    split = tiny_recipe(tmp_path / "split" / "recipe.yaml", tiny_sd_dir, icd_dir)
    assert "stopped" in _launch_two_processes(split, "train.stop_at_step=2", *common)
    states = [
        load_file(tmp_path / "split" / "run" / "checkpoint-2" / f"noise_generator_{i}.safetensors") for i in (0, 1)
    ]
    assert not torch.equal(states[0]["state"], states[1]["state"])  # each rank draws its own noise
    resumed = _launch_two_processes(split, "checkpoint.resume=latest", *common, entry=ERASURE_TRAIN)
    assert "finished at step 4 on 2 process(es)" in resumed
    for name in (LORA_FILE, "learned_embeds.safetensors"):
        expected, got = load_file(tmp_path / "whole" / "run" / name), load_file(tmp_path / "split" / "run" / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


def run_train_py(*argv: str) -> int:
    return runpy.run_path(str(ROOT / "train.py"))["main"](list(argv))


def test_erasure_train_is_the_same_command(tmp_path, tiny_sd_dir, icd_dir, tiny_recipe, capsys):
    from erasure.cli import main

    recipe = str(tiny_recipe(tmp_path / "recipe.yaml", tiny_sd_dir, icd_dir))
    assert main(["train", "--config", recipe, "train.max_steps=1"]) == 0
    assert "finished at step 1 on 1 process(es)" in capsys.readouterr().out
    assert main(["train", "--config", recipe, "train.max_stesp=1"]) == 2
    err = capsys.readouterr().err
    assert "erasure train: error: " in err and "unknown key 'train.max_stesp'" in err


@pytest.mark.parametrize(
    ("boxes", "overrides", "needles"),
    [
        (True, ["train.max_stesp=3"], ["unknown key 'train.max_stesp'", "max_steps"]),
        (False, [], ["no boxes", "train.mode=geom_erasing", "train.mode=naive"]),
        (True, ["train.use_8bit_adam=true"], ["CUDA", "train.use_8bit_adam=false"]),
        (True, ["train.mode=tokens_only", "lora.full_unet=true"], ["lora.full_unet", "tokens_only"]),
        (True, ["data.dataset=/nonexistent"], ["data.dataset", "icd build"]),
    ],
)
def test_bad_setups_fail_before_training(
    tmp_path, tiny_sd_dir, draw_tiny_icd, tiny_recipe, capsys, boxes, overrides, needles
):
    if torch.cuda.is_available() and "train.use_8bit_adam=true" in overrides:
        pytest.skip("8-bit Adam is valid on a GPU machine")
    icd = draw_tiny_icd(tmp_path / "icd", n=2, boxes=boxes)
    recipe = tiny_recipe(tmp_path / "recipe.yaml", tiny_sd_dir, icd)
    assert run_train_py("--config", str(recipe), *overrides) == 2
    message = capsys.readouterr().err
    for needle in needles:
        assert needle in message
    assert not (tmp_path / "run" / "recipe.yaml").exists()  # stopped before the run directory was written


def test_naive_mode_needs_no_boxes(tmp_path, tiny_sd_dir, draw_tiny_icd, train_tiny):
    icd = draw_tiny_icd(tmp_path / "icd", n=2, boxes=False)
    with pytest.raises(ConfigError):
        train_tiny(tmp_path, tiny_sd_dir, icd, "train.mode=geom_erasing")
    assert train_tiny(tmp_path, tiny_sd_dir, icd, "train.mode=naive", "train.max_steps=1").finished
