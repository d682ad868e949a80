"""The shape of every console script of the toolkit (``detectors``, ``icd``, ``erasure``).

A command is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``; its docstring becomes
the command's ``--help`` text. ``main(argv)`` takes a list so tests call a CLI in-process. It lives with the
``erasure`` command line and imports nothing heavy, so ``detectors --help`` and ``icd --help`` stay fast.

Every command answers a user error the way argparse answers a bad option: one line on stderr,
``PROG COMMAND: error: MESSAGE``, and exit status 2; ``--debug`` (before or after the command) shows the traceback
instead. User errors are what a user can fix by changing the command line or the files it names:

- ``ValueError``: a bad value, and what the project derives from it: ``erasure.config.ConfigError`` (a config or
  override that does not validate), pydantic's ``ValidationError``, ``detectors.images.UnreadableImageError``,
  ``json.JSONDecodeError``, and the refusals of the loaders (a pickle ``.pt`` given as YOLO weights, a resumed run
  with other settings);
- the ``OSError``s that name a path: ``FileNotFoundError`` (a missing model folder, config, dataset or run, and
  ``MissingWeightsError`` of the I2P judges), ``NotADirectoryError``, ``IsADirectoryError``, ``FileExistsError``,
  ``PermissionError``;
- ``SystemExit`` with a message (the refusal some commands raise themselves).

Anything else (``RuntimeError``, ``KeyError``, ``TypeError``, other ``OSError``s...) is a bug or a failure of the
machine, and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping

# A command table: name -> (module, one-line help), or name -> (one-line help, nested table) for a group.
Commands = Mapping[str, "tuple[str, str] | tuple[str, Commands]"]

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def _add_debug_flag(parser: argparse.ArgumentParser, default: bool | str) -> None:
    # The commands' own copy defaults to SUPPRESS, so that it does not overwrite a --debug given before the command.
    parser.add_argument("--debug", action="store_true", default=default, help="on an error, show its traceback")


def _add_commands(subparsers: argparse._SubParsersAction, commands: Commands) -> None:
    for name, (first, second) in commands.items():
        if isinstance(second, Mapping):
            group = subparsers.add_parser(name, help=first, description=first)
            _add_debug_flag(group, argparse.SUPPRESS)
            _add_commands(group.add_subparsers(title="commands", metavar="COMMAND", required=True), second)
            continue
        module = importlib.import_module(first)
        parser = subparsers.add_parser(
            name, help=second, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        _add_debug_flag(parser, argparse.SUPPRESS)
        module.add_arguments(parser)
        parser.set_defaults(_run=module.run, _prog=parser.prog)


def build_parser(prog: str, description: str, commands: Commands) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_debug_flag(parser, False)
    _add_commands(parser.add_subparsers(title="commands", metavar="COMMAND", required=True), commands)
    return parser


def _user_error(error: BaseException) -> str | None:
    """The one-line message of a user error (see the module docstring), or None for anything else."""
    if isinstance(error, SystemExit):
        text = error.code if isinstance(error.code, str) else None
    elif isinstance(error, USER_ERRORS):
        text = str(error) or type(error).__name__
    else:
        return None
    return None if text is None else "; ".join(line.strip() for line in text.splitlines() if line.strip())


def run_cli(prog: str, description: str, commands: Commands, argv: list[str] | None = None) -> int:
    args = build_parser(prog, description, commands).parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args._run(args) or 0)
    except (Exception, SystemExit) as error:
        message = None if args.debug else _user_error(error)
        if message is None:
            raise
        print(f"{args._prog}: error: {message}", file=sys.stderr)
        return 2
