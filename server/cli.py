"""``nasofl-coord``: what a coordinator runs besides ``flwr run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shared.cli import run_cli

COMMANDS: dict[str, tuple[str, str]] = {
    "exporter": ("server.exporter_cmd", "Prometheus metrics (/metrics) from a study's run log"),
    "check-config": ("server.check_config_cmd", "validate a run config (keys, values) before `flwr run`"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("nasofl-coord", "nasofl for a coordinator: reports of finished runs.", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
