"""Train a Geom-Erasing, naive or tokens-only model from a recipe: the launch file of ``erasure train``.

    accelerate launch train.py --config recipes/toy_geom_erasing.yaml train.max_steps=200
    accelerate launch train.py --config recipes/toy_geom_erasing.yaml checkpoint.resume=latest
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py --config ...  # 2 CPU processes

The arguments and the run are :mod:`erasure.cli.train`'s (``erasure train --help`` lists them).
"""

from __future__ import annotations

import argparse
import sys

from erasure.cli import train as command
from erasure.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="train.py", description=command.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command.run(args)
    except ConfigError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
