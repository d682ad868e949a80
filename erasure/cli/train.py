"""Train a Geom-Erasing, naive or tokens-only model from a recipe, on one or many devices.

examples:
  erasure train --config recipes/toy_geom_erasing.yaml train.max_steps=200
  erasure train --config recipes/toy_geom_erasing.yaml checkpoint.resume=latest
  accelerate launch -m erasure.cli train --config recipes/sd15_geom_erasing_watermark.yaml
  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m erasure.cli train --config ...

Any recipe field can be overridden with a dotted key=value; ``python -m erasure.recipe`` prints them all.
A bad recipe or dataset stops here, before any model is loaded. ``accelerate launch train.py`` runs the same code.
"""

from __future__ import annotations

import argparse

from erasure.recipe import load_recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/toy_geom_erasing.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=50")


def run(args: argparse.Namespace) -> int:
    from erasure.training import train  # heavy imports after argument parsing, so --help is instant

    result = train(load_recipe(args.config, args.overrides))
    state = "finished" if result.finished else "stopped (resume with checkpoint.resume=latest)"
    print(f"{state} at step {result.global_step} on {result.num_processes} process(es): {result.run_dir}")
    if result.shortened_captions:
        print(f"{result.shortened_captions} caption(s) lost words at the end to keep their location tokens")
    return 0
