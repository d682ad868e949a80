"""Train a Geom-Erasing, naive or tokens-only model from a recipe, on one or many devices:

    accelerate launch train.py --config recipes/toy_geom_erasing_watermark.yaml train.max_steps=200
    accelerate launch train.py --config recipes/toy_geom_erasing_watermark.yaml checkpoint.resume=latest
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py --config ...  # 2 CPU processes

Any recipe field can be overridden with a dotted key=value; ``python -m erasure.recipe`` prints them all.
A bad recipe or dataset stops here, before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys

from erasure.config import ConfigError
from erasure.recipe import load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/toy_geom_erasing_watermark.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=50")
    args = parser.parse_args(argv)
    from erasure.training import train  # heavy imports after argument parsing, so --help is instant

    try:
        result = train(load_recipe(args.config, args.overrides))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = "finished" if result.finished else "stopped (resume with checkpoint.resume=latest)"
    print(f"{state} at step {result.global_step} on {result.num_processes} process(es): {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
