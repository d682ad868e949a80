"""The toy world's results files (``{concept: {method: {icr, ci95, fidelity, fid, n}}}``): record one concept's table,
and pool the tables of several training seeds into one.

Pooling is its own step so that the seeds of a table can run apart (on two machines, or on two days) and still make
one table: each run records its seed's table, and ``python -m erasure.toy.tables SEED_TABLE ... --record OUT`` pools
them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

# The rows measured on every training seed (the others on the first): the runs' own effect.
SEEDED_METHODS = ("naive", "geom_erasing_plain", "geom_erasing")
KEYS = ("icr", "ci95", "fidelity", "fid", "n", "seeds")


def pool_seeds(tables: list[dict[str, dict]]) -> dict[str, dict]:
    """One concept's table over every training seed, the first seed's table first: each seeded row's ``seeds`` the
    per-seed ICRs, ``icr`` their mean with the Wilson interval of the pooled images, fidelity and FID their means (so
    that a table is not one lucky draw); the other rows as the first seed measured them."""
    if len(tables) == 1:
        return tables[0]
    from erasure.evaluation.icr import wilson_interval  # torch: not for the demo's --help

    pooled = dict(tables[0])
    for name in [name for name in SEEDED_METHODS if name in pooled]:
        per_seed = [table[name] for table in tables]
        flagged = sum(r.get("flagged", round(r["icr"] * r["n"])) for r in per_seed)
        n = sum(r["n"] for r in per_seed)
        pooled[name] = {
            "icr": mean(r["icr"] for r in per_seed),
            "ci95": list(wilson_interval(flagged, n)),
            "n": per_seed[0]["n"],
            "seeds": [r["icr"] for r in per_seed],
            **{key: mean(r[key] for r in per_seed) for key in ("fidelity", "fid") if key in per_seed[0]},
        }
    return pooled


def record_table(path: Path, concept: str, results: dict[str, dict]) -> None:
    """Write one concept's table into the results file at ``path``.

    The concept's table is replaced whole, so that it never mixes rows of two protocols; other concepts stay. Rows of
    the old table that this run did not measure are named on stderr, so that none goes without a word.
    """
    table = json.loads(path.read_text()) if path.is_file() else {}
    dropped = sorted(set(table.get(concept, {})) - set(results))
    if dropped:
        print(
            f"{path}: {concept}'s table is replaced by this run's rows, without {', '.join(dropped)} (not rerun); "
            f"add them to --methods to keep them",
            file=sys.stderr,
        )
    table[concept] = {m: {k: r[k] for k in KEYS if k in r} for m, r in results.items()}
    path.write_text(json.dumps(table, indent=2) + "\n")


def pool_files(paths: list[Path]) -> dict[str, dict[str, dict]]:
    """Every concept's table pooled over the seed tables at ``paths``; a ``ValueError`` names what does not fit."""
    tables = [json.loads(path.read_text()) for path in paths]
    for path, table in zip(paths, tables, strict=True):
        if table.keys() != tables[0].keys():
            raise ValueError(f"{path} holds {sorted(table)}, {paths[0]} {sorted(tables[0])}: one world per table")
        for concept, rows in table.items():
            if any("seeds" in row for row in rows.values()):
                raise ValueError(f"{path}: {concept}'s table is already pooled; give each seed's own table")
            missing = [m for m in SEEDED_METHODS if m in tables[0][concept] and m not in rows]
            if missing:
                raise ValueError(f"{path}: {concept}'s table has no {', '.join(missing)} row (the first seed's has)")
    return {concept: pool_seeds([table[concept] for table in tables]) for concept in tables[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m erasure.toy.tables",
        description="Pool toy-world ICR tables of several training seeds (each a demo's --record of one --seeds) "
        f"into one: the rows {', '.join(SEEDED_METHODS)} over every seed, the others from the first table.",
    )
    parser.add_argument("tables", nargs="+", type=Path, help="one results file per training seed, the first first")
    parser.add_argument("--record", type=Path, required=True, help="the results file the pooled tables go into")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.tables if not path.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    try:
        pooled = pool_files(args.tables)
    except ValueError as error:  # a JSONDecodeError too
        parser.error(str(error))
    from erasure.evaluation.icr import markdown_table

    for concept, table in pooled.items():
        record_table(args.record, concept, table)
        print(markdown_table(concept, table))
    seeds = len(args.tables)
    print(f"{args.record}: {', '.join(pooled)} pooled over {seeds} training seed{'s' if seeds > 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
