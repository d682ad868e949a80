"""Typed YAML configs with ``key=value`` overrides, shared by ``train.py`` and the CLIs.

    recipe = load_config(Recipe, "recipes/toy_naive.yaml", ["train.max_steps=50", "lora.rank=8"])

Configs are pydantic models that forbid unknown keys, so a misspelled key or a value of the wrong type fails
at load time with the file, the dotted key, the value and what was expected — never deep inside a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)

# accelerate's mixed-precision modes. YAML reads a bare `no` (file or `key=no` override) as false: accept it.
MixedPrecision = Annotated[Literal["no", "fp16", "bf16"], BeforeValidator(lambda v: "no" if v is False else v)]
# diffusers.optimization.SchedulerType's names (get_scheduler), so a misspelt schedule fails when the recipe is read,
# not after the model and data are loaded.
LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "piecewise_constant"
]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the key and the fix."""


def _lookup(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"{source}: cannot set '{dotted}': '{part}' holds a {type(child).__name__}, not a section"
            )
        node = child
    node[parts[-1]] = value


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section at ``loc``, to suggest the right spelling of an unknown key."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["train.max_steps=10", "lora.target_modules=[to_q, to_v]"]`` → dotted keys and YAML-parsed values."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (for example train.max_steps=100)")
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return parsed


def load_config(model: type[T], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read ``path`` (YAML), apply dotted ``key=value`` overrides, validate into ``model``."""
    source = str(path) if path is not None else "<defaults>"
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value, source + " (command-line override)")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            value = _lookup(data, e["loc"])
            if e["type"] == "extra_forbidden":
                valid = ", ".join(_valid_keys(model, e["loc"][:-1])) or "none"
                problems.append(f"unknown key '{key}' (value {value!r}); valid keys here: {valid}")
            else:
                problems.append(f"'{key}' = {value!r}: {e['msg']}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def dump_config(config: BaseModel) -> dict:
    """A plain, YAML/JSON-safe dict of a config (what runs record in their metadata)."""
    return config.model_dump(mode="json")
