"""``nasofl-coord check-config [--app DIR] [--run-config 'k=v ...' | FILE.toml]``: validate before ``flwr run``.

Reads the app's defaults (``[tool.flwr.app.config]`` of ``DIR/pyproject.toml``), lays the ``--run-config``
overrides over them exactly as ``flwr run`` does (Flower's own parser), and validates the result with the
ServerApp's own config code: an unknown key is named with "did you mean", a bad value with its allowed range.
Flower itself answers an unknown key only with "Invalid run configuration". Exit 0 when the run config is valid,
2 (usage) when not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app", type=Path, default=REPO, metavar="DIR", help="the app folder (default: this nasofl checkout)"
    )
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="what you will pass to `flwr run --run-config`: 'key=value key2=\"text\"' or a .toml file",
    )


def run(args: argparse.Namespace) -> int:
    import tomllib

    from flwr.common.config import flatten_dict, parse_config_args

    from server.config import federation_from_run_config, pipeline_from_run_config, split_run_config
    from shared.errors import ConfigError

    pyproject = args.app / "pyproject.toml"
    if not pyproject.is_file():
        raise ConfigError(f"--app {str(args.app)!r} holds no pyproject.toml: give the nasofl app folder")
    with open(pyproject, "rb") as fh:
        defaults = flatten_dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    try:
        overrides = parse_config_args(args.run_config or None)
    except Exception as err:  # Flower's parser raises click/ValueError/TOML errors
        raise ConfigError(f"--run-config {' '.join(args.run_config)!r} cannot be parsed: {err}") from err
    merged = {**defaults, **overrides}
    split_run_config(merged)
    fed = federation_from_run_config(merged)
    pipeline_from_run_config(merged)
    changed = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "none"
    print(f"run config OK ({len(merged)} keys; strategy {fed.strategy}; overrides: {changed})")
    return 0
