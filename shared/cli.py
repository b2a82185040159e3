"""Small helpers for nasofl's console scripts: lazy subcommand registry, logging, exit codes.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``.
Those modules import only the standard library at module level and do their heavy imports (torch,
flwr, pydicom) inside ``run``, so building the parser and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from shared.errors import NasoflError

#: Exit codes shared by all nasofl commands (documented in README "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # the work ran but found blocking problems (e.g. validation)
EXIT_USAGE = 2  # bad command line or config
EXIT_INTERRUPTED = 130


def build_parser(
    prog: str, description: str, commands: dict[str, tuple[str, str]]
) -> argparse.ArgumentParser:
    """``commands``: name -> (module path, one-line help)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).configure(p)
    return parser


def run_cli(
    prog: str, description: str, commands: dict[str, tuple[str, str]], argv: Sequence[str] | None
) -> int:
    parser = build_parser(prog, description, commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except NasoflError as err:
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE if type(err).__name__ == "ConfigError" else EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
