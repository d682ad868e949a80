"""The I2P prompt list (Schramowski et al., Safe Latent Diffusion), from the hub or a local CSV / parquet copy.

    prompts = load_prompts("AIML-TUDA/i2p", categories=["sexual"], hard=True)

The hub copy names the generation settings ``sd_seed`` / ``sd_guidance_scale``, other copies
``evaluation_seed`` / ``evaluation_guidance``; both load into the same :class:`I2PPrompt`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

HUB_ID = "AIML-TUDA/i2p"
# The paper's order of categories in its tables.
CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal activity")
# Each field of I2PPrompt and the column names it may have in a copy of I2P, preferred first.
COLUMNS = {
    "prompt": ("prompt",),
    "categories": ("categories",),
    "hard": ("hard",),
    "seed": ("sd_seed", "evaluation_seed"),
    "guidance": ("sd_guidance_scale", "evaluation_guidance"),
}


@dataclass(frozen=True)
class I2PPrompt:
    """One I2P row. ``id`` is its position in the full source, so file names stay stable under filters."""

    id: int
    prompt: str
    categories: list[str]
    hard: bool
    seed: int
    guidance: float


def _read_table(source: str | Path) -> pd.DataFrame:
    path = Path(source)
    if path.suffix == ".csv":
        # keep_default_na=False: one real I2P prompt is the empty string, which must not become NaN.
        return pd.read_csv(path, keep_default_na=False)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.exists():
        raise ValueError(f"{path}: unsupported I2P file type '{path.suffix}'; give a .csv or .parquet file")
    from datasets import load_dataset

    return load_dataset(str(source), split="train").to_pandas()


def _column(table: pd.DataFrame, field: str, source: str | Path) -> pd.Series:
    for name in COLUMNS[field]:
        if name in table.columns:
            return table[name]
    raise ValueError(
        f"{source}: no column for '{field}' (looked for {', '.join(COLUMNS[field])}); "
        f"the columns are {', '.join(map(str, table.columns))}"
    )


def _text(value: object) -> str:
    """A prompt; a missing one (None or NaN in a parquet copy) is the empty prompt, as in the CSV."""
    return "" if value is None or pd.isna(value) else str(value)


def _split_categories(value: object) -> list[str]:
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _as_int(value: object, field: str, row: int, source: str | Path) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: row {row} has {field}={value!r}, which is not a number") from None


def load_prompts(
    source: str | Path = HUB_ID,
    *,
    categories: Iterable[str] | None = None,
    hard: bool | None = None,
    limit: int | None = None,
) -> list[I2PPrompt]:
    """Rows of ``source`` (a hub id, or a .csv / .parquet file) in their order.

    ``categories`` keeps the prompts in any of them; ``hard`` keeps only hard (True) or only
    non-hard (False) prompts; ``limit`` keeps the first N that pass the filters.
    """
    table = _read_table(source)
    columns = {field: _column(table, field, source).tolist() for field in COLUMNS}
    prompts = [
        I2PPrompt(
            id=row,
            prompt=_text(columns["prompt"][row]),
            categories=_split_categories(columns["categories"][row]),
            hard=bool(_as_int(columns["hard"][row], "hard", row, source)),
            seed=_as_int(columns["seed"][row], "seed", row, source),
            guidance=float(columns["guidance"][row]),
        )
        for row in range(len(table))
    ]
    if categories is not None:
        wanted = set(categories)
        unknown = wanted - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown I2P categories {sorted(unknown)}; choose from {', '.join(CATEGORIES)}")
        prompts = [p for p in prompts if wanted.intersection(p.categories)]
    if hard is not None:
        prompts = [p for p in prompts if p.hard == hard]
    return prompts[:limit]
