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


#: nasofl's top-level packages (pyproject.toml [tool.hatch.build.targets.wheel])
TOP_LEVEL_PACKAGES: tuple[str, ...] = ("server", "client", "shared", "simulations")


def top_level_clashes(distribution: str = "nasofl") -> dict[str, list[str]]:
    """{package: [other distributions]} for each of nasofl's top-level names another installed distribution
    also provides (one would shadow the other's files in site-packages)."""
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    out = {}
    for name in TOP_LEVEL_PACKAGES:
        others = sorted({d for d in owners.get(name, []) if d.lower().replace("_", "-") != distribution})
        if others:
            out[name] = others
    return out


def check_top_level_packages() -> None:
    """ConfigError when another installed distribution provides ``server``, ``client``, ``shared`` or
    ``simulations``: nasofl's code could be silently replaced by that distribution's."""
    from shared.errors import ConfigError

    clashes = top_level_clashes()
    if clashes:
        listed = "; ".join(f"{pkg!r} also from {', '.join(dists)}" for pkg, dists in clashes.items())
        raise ConfigError(
            f"another installed distribution provides a top-level package nasofl needs ({listed}): install nasofl "
            "in its own virtual environment (python3.11 -m venv .venv) or uninstall the other distribution"
        )


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
        check_top_level_packages()
        return int(importlib.import_module(args._module).run(args) or 0)
    except NasoflError as err:
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE if type(err).__name__ == "ConfigError" else EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
