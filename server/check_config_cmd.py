"""``nasofl-coord check-config [--app DIR] [--run-config 'k=v ...' | FILE.toml]``: validate before ``flwr run``.

Reads the app's defaults (``[tool.flwr.app.config]`` of ``DIR/pyproject.toml``, or the installed nasofl's), lays the ``--run-config``
overrides over them exactly as ``flwr run`` does (Flower's own parser), and validates the result with the
ServerApp's own config code: an unknown key is named with "did you mean", a bad value with its allowed range.
Flower itself answers an unknown key only with "Invalid run configuration". Exit 0 when the run config is valid,
2 (usage) when not.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app",
        type=Path,
        default=None,
        metavar="DIR",
        help="the app folder you will `flwr run` (default: the installed nasofl's pyproject.toml)",
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
    from server.settings_check import check_study_settings
    from shared.app_config import app_pyproject
    from shared.errors import ConfigError

    pyproject = app_pyproject() if args.app is None else args.app / "pyproject.toml"
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
    check_study_settings(fed, pipeline_from_run_config(merged))  # the combinations the ServerApp refuses
    changed = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "none"
    print(f"run config OK ({len(merged)} keys; strategy {fed.strategy}; overrides: {changed})")
    return 0
