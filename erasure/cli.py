"""erasure: generate with erasure methods, evaluate them, export training runs.

examples:
  erasure generate "a photo of a cat" --model DIR --sld medium
  erasure evaluate icr --help
  erasure export outputs/RUN
"""

from __future__ import annotations

import sys

from detectors.clikit import Commands, run_cli

# Each command is a module with add_arguments(parser) and run(args); add a line here to register one.
COMMANDS: Commands = {}


def main(argv: list[str] | None = None) -> int:
    return run_cli("erasure", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
