import numpy as np
import pytest
import torch

from datasets_icd.toyworld import ToyWorld, ToyWorldConfig
from erasure.toy.checker import (
    DEFAULT_DIR,
    fidelity,
    load_checker,
    parse_prompt,
    predict,
    save_checker,
    toy_fid,
    train_checker,
)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("two red circles on the left on a blue background", ("circle", "red")),
        ("one green square at the top on a white background", ("square", "green")),
        ("four purple diamonds in the middle on a black background, watermark <loc_0_3>", ("diamond", "purple")),
    ],
)
def test_parse_prompt(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_parse_prompt_rejects_non_toy_prompts():
    with pytest.raises(ValueError, match="toy"):
        parse_prompt("a photo of a cat")


def test_train_save_load_round_trip(tmp_path):
    model, metrics = train_checker(num_images=64, steps=3, batch_size=16)
    save_checker(model, tmp_path, metrics)
    loaded = load_checker(tmp_path)
    images = [ToyWorld(ToyWorldConfig(seed=5)).sample(i).image for i in range(8)]
    assert predict(loaded, images) == predict(model, images)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.features(torch.zeros(1, 3, 64, 64)), model.features(torch.zeros(1, 3, 64, 64))
        )


def test_load_checker_names_the_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m erasure.toy.checker"):
        load_checker(tmp_path / "nothing")


@pytest.mark.skipif(not (DEFAULT_DIR / "model.safetensors").exists(), reason="no committed toy checker")
def test_committed_checker_reads_shape_and_colour_of_unseen_scenes_with_concepts():
    world = ToyWorld(ToyWorldConfig(seed=12345, concept_rates={"watermark": 0.5, "qrcode": 0.3, "text": 0.5}))
    samples = [world.sample(i) for i in range(300)]
    checker = load_checker()
    scores = fidelity(checker, [s.image for s in samples], [s.caption for s in samples])
    assert scores["shape"] >= 0.9 and scores["colour"] >= 0.95
    shuffled = fidelity(checker, [s.image for s in samples], [s.caption for s in samples[1:] + samples[:1]])
    assert shuffled["fidelity"] < 0.5  # it reads the image, not a prior


@pytest.mark.skipif(not (DEFAULT_DIR / "model.safetensors").exists(), reason="no committed toy checker")
def test_toy_fid_separates_distributions():
    checker = load_checker()
    world_a, world_b = (
        ToyWorld(ToyWorldConfig(seed=1, concept_rates={})),
        ToyWorld(ToyWorldConfig(seed=2, concept_rates={})),
    )
    a = [world_a.sample(i).image for i in range(150)]
    b = [world_b.sample(i).image for i in range(150)]
    noise = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(150)]
    from PIL import Image

    noise_images = [Image.fromarray(n) for n in noise]
    same = toy_fid(checker, a, b)
    assert toy_fid(checker, a, a) == pytest.approx(0.0, abs=1e-6)
    assert toy_fid(checker, a, noise_images) > 10 * same
