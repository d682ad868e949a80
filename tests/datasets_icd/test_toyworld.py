import numpy as np
import pytest
from pydantic import ValidationError
from pyzbar.pyzbar import decode

from datasets_icd.toyworld import CONCEPTS, ToyWorld, ToyWorldConfig

ALL_ON = {"watermark": 1.0, "qrcode": 1.0, "text": 1.0}


def test_same_index_same_sample_and_seed_changes_it():
    config = ToyWorldConfig(size=64, concept_rates=ALL_ON, seed=3)
    a, b = ToyWorld(config).sample(11), ToyWorld(config.model_copy()).sample(11)
    assert a.caption == b.caption and a.concepts == b.concepts and a.contents == b.contents
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    other = ToyWorld(ToyWorldConfig(size=64, concept_rates=ALL_ON, seed=4)).sample(11)
    assert not np.array_equal(np.asarray(a.image), np.asarray(other.image))


@pytest.mark.parametrize("size", [32, 64, 256])
def test_boxes_inside_image_and_captions_never_name_a_concept(size):
    world = ToyWorld(ToyWorldConfig(size=size, concept_rates=ALL_ON))
    vocabulary = set(world.vocabulary())
    for i in range(40):
        sample = world.sample(i)
        assert sample.image.size == (size, size) and sample.image.mode == "RGB"
        assert set(sample.caption.split()) <= vocabulary
        assert not any(name in sample.caption for name in ("watermark", "qr", "text", "code"))
        assert {c["name"] for c in sample.concepts} == set(CONCEPTS)
        assert len(sample.contents) == len(sample.concepts)
        for concept in sample.concepts:
            x0, y0, x1, y1 = concept["box"]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, concept
            assert concept["score"] == 1.0
        attrs = sample.attributes
        assert sample.caption.startswith(f"{attrs['count']} {attrs['colour']} {attrs['shape']}")
        assert sample.caption.endswith(f"{attrs['position']} on a {attrs['background']} background")


def test_concepts_are_drawn_inside_their_boxes():
    """The pasted concept changes the pixels in its box: the box is not a label without a picture."""
    world = ToyWorld(ToyWorldConfig(size=64, concept_rates=ALL_ON))
    plain = ToyWorld(ToyWorldConfig(size=64, concept_rates={}))
    for i in range(20):
        with_concepts, scene = np.asarray(world.sample(i).image), np.asarray(plain.sample(i).image)
        for concept in world.sample(i).concepts:
            x0, y0, x1, y1 = (int(v) for v in concept["box"])
            changed = (with_concepts[y0:y1, x0:x1] != scene[y0:y1, x0:x1]).any(axis=-1)
            assert changed.mean() > 0.05, concept


@pytest.mark.parametrize("rates", [{"watermark": 0.5}, {"watermark": 0.2, "qrcode": 0.7, "text": 0.0}])
def test_rates_follow_the_config(rates):
    world = ToyWorld(ToyWorldConfig(size=32, concept_rates=rates))
    n = 600
    seen = {name: 0 for name in CONCEPTS}
    for i in range(n):
        for name in {c["name"] for c in world.sample(i).concepts}:
            seen[name] += 1
    for name in CONCEPTS:
        assert abs(seen[name] / n - rates.get(name, 0.0)) < 0.07, (name, seen[name] / n)


def test_position_prior_is_followed():
    config = ToyWorldConfig(
        size=64,
        concept_rates={"watermark": 1.0},
        position_priors={"watermark": {"bottom_right": 1.0}},
        watermark_tiled_rate=0.0,
    )
    world = ToyWorld(config)
    for i in range(50):
        (concept,) = world.sample(i).concepts
        x0, y0, x1, y1 = concept["box"]
        assert x1 >= 0.8 * 64 and y1 >= 0.8 * 64, concept


def test_tiled_watermarks_record_every_tile():
    world = ToyWorld(ToyWorldConfig(size=128, concept_rates={"watermark": 1.0}, watermark_tiled_rate=1.0))
    counts = [len(world.sample(i).concepts) for i in range(20)]
    assert min(counts) >= 2


def test_qr_codes_decode_at_256_px_with_sizes_for_detector_tests():
    config = ToyWorldConfig(
        size=256,
        concept_rates=ALL_ON,
        size_ranges={"qrcode": (0.2, 0.4), "text": (0.07, 0.12), "watermark": (0.07, 0.12)},
    )
    world = ToyWorld(config)
    for i in range(15):
        sample = world.sample(i)
        k = [c["name"] for c in sample.concepts].index("qrcode")
        x0, y0, x1, y1 = sample.concepts[k]["box"]
        assert x1 - x0 >= 48 * 21 / 25  # the code with its quiet zone is >= 0.2 * 256 px
        assert sample.contents[k] in [r.data.decode() for r in decode(sample.image)]
        text = sample.concepts[[c["name"] for c in sample.concepts].index("text")]
        assert text["box"][3] - text["box"][1] >= 16


def test_text_words_and_qr_payloads_narrow_the_concepts_to_one_kind():
    config = ToyWorldConfig(size=256, concept_rates={"qrcode": 1.0, "text": 1.0}, seed=2)
    narrow = ToyWorld(config.model_copy(update={"text_words": ["sale"], "qr_payloads": ["TOY1"]}))
    wide = ToyWorld(config)
    samples = [narrow.sample(i) for i in range(8)]
    assert {dict(zip([c["name"] for c in s.concepts], s.contents, strict=True))["qrcode"] for s in samples} == {"TOY1"}
    assert {w.lower() for s in samples for w in s.contents[[c["name"] for c in s.concepts].index("text")].split()} == {
        "sale"
    }
    assert all("TOY1" in [r.data.decode() for r in decode(s.image)] for s in samples)
    assert len({w.contents[0] for w in (wide.sample(i) for i in range(8))}) > 1  # the default stays varied


def test_default_font_fallback_without_truetype_files():
    world = ToyWorld(ToyWorldConfig(size=64, concept_rates={"text": 1.0}, fonts=[]))
    sample = world.sample(0)
    assert sample.concepts[0]["name"] == "text" and sample.contents[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concept_rates": {"logo": 0.5}}, "unknown concept 'logo'"),
        ({"concept_rates": {"text": 1.5}}, "not a probability"),
        ({"size_ranges": {"text": (0.3, 0.1)}}, "min <= max"),
        ({"position_priors": {"text": {"top": 0.0}}}, "positive sum"),
        ({"position_priors": {"text": {"upstairs": 1.0}}}, "upstairs"),
        ({"size_ranges": {}}, "no position_priors or size_ranges"),
        ({"sizes": 64}, "sizes"),
        ({"text_words": []}, "text_words"),
        ({"qr_payloads": []}, "qr_payloads"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ToyWorldConfig(**kwargs)
