import pytest

from erasure.config import ConfigError, parse_overrides
from erasure.recipe import load_recipe

RECIPE = """
name: demo
model: {pretrained: some/dir}
data: {dataset: outputs/icd, concepts: [watermark]}
train: {mode: naive, max_steps: 5}
"""


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_recipe_loads_with_defaults_and_overrides(recipe_file):
    recipe = load_recipe(
        recipe_file, ["train.max_steps=7", "lora.target_modules=[to_q, to_v]", "loss.region_alpha=0.5"]
    )
    assert recipe.train.max_steps == 7 and recipe.train.mode == "naive"
    assert recipe.lora.target_modules == ["to_q", "to_v"] and recipe.loss.region_alpha == 0.5
    assert str(recipe.run_dir) == "outputs/demo"


@pytest.mark.parametrize(("value", "expected"), [("no", "no"), ("bf16", "bf16")])
def test_mixed_precision_no_survives_yaml_reading_it_as_false(recipe_file, value, expected):
    recipe = load_recipe(recipe_file, [f"train.mixed_precision={value}"])
    assert recipe.train.mixed_precision == expected


@pytest.mark.parametrize(
    ("text", "overrides", "needles"),
    [
        (RECIPE.replace("max_steps", "max_stpes"), [], ["train.max_stpes", "max_steps", "recipe.yaml"]),
        (RECIPE, ["train.max_steps=abc"], ["train.max_steps", "'abc'", "integer"]),
        (RECIPE, ["train.mode=erase_everything"], ["train.mode", "geom_erasing"]),
        (RECIPE, ["train.lr_scheduler=cosin"], ["train.lr_scheduler", "'cosine'"]),  # caught before any loading
        (RECIPE, ["lora.rankk=8"], ["lora.rankk", "rank"]),
        (RECIPE.replace("name: demo", ""), [], ["name", "Field required"]),
        ("- a list", [], ["mapping"]),
    ],
)
def test_bad_recipes_name_the_key_value_and_file(tmp_path, text, overrides, needles):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_recipe(path, overrides)
    for needle in needles:
        assert needle in str(err.value)


def test_override_syntax_errors():
    assert parse_overrides(["a.b=[1, 2]", "c=none"]) == [("a.b", [1, 2]), ("c", "none")]
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.max_steps"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_recipe(tmp_path / "nope.yaml")
