"""The shape of every console script of the toolkit (``detectors``, ``icd``, ``erasure``).

A command is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``; its docstring becomes
the command's ``--help`` text. ``main(argv)`` takes a list so tests call a CLI in-process. This lives in
``detectors`` because it is the lowest package and the other two may import from it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping

# A command table: name -> (module, one-line help), or name -> (one-line help, nested table) for a group.
Commands = Mapping[str, "tuple[str, str] | tuple[str, Commands]"]


def _add_commands(subparsers: argparse._SubParsersAction, commands: Commands) -> None:
    for name, (first, second) in commands.items():
        if isinstance(second, Mapping):
            group = subparsers.add_parser(name, help=first, description=first)
            _add_commands(group.add_subparsers(title="commands", metavar="COMMAND", required=True), second)
            continue
        module = importlib.import_module(first)
        parser = subparsers.add_parser(
            name, help=second, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(parser)
        parser.set_defaults(_run=module.run)


def build_parser(prog: str, description: str, commands: Commands) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_commands(parser.add_subparsers(title="commands", metavar="COMMAND", required=True), commands)
    return parser


def run_cli(prog: str, description: str, commands: Commands, argv: list[str] | None = None) -> int:
    args = build_parser(prog, description, commands).parse_args(sys.argv[1:] if argv is None else argv)
    return int(args._run(args) or 0)
