"""The run-config defaults and the one value coercer every setting goes through.

Defaults live once, in ``[tool.flwr.app.config]`` of the project's ``pyproject.toml``: Flower reads them from
there for ``flwr run``, and :func:`app_defaults` reads the same table for everything else (presets, the
centralized baseline, tests). A wheel carries a copy of that file as ``shared/pyproject.toml`` (hatch
``force-include``), so a regular install finds it too. Every key of every mode is one of these keys;
:func:`check_known_keys` is the one unknown-key rule (a "did you mean" hint names the closest key).
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

ConfigValue = bool | int | float | str

_HERE = Path(__file__).resolve().parent
#: where the table is looked for: the wheel's copy, then the source tree's pyproject.toml
PYPROJECT_CANDIDATES: tuple[Path, ...] = (_HERE / "pyproject.toml", _HERE.parent / "pyproject.toml")


def app_pyproject() -> Path:
    """The pyproject.toml that holds ``[tool.flwr.app.config]`` (the installed copy first)."""
    for path in PYPROJECT_CANDIDATES:
        if path.is_file():
            return path
    raise ConfigError(
        "nasofl's pyproject.toml was not found (looked at "
        + ", ".join(str(p) for p in PYPROJECT_CANDIDATES)
        + "): reinstall nasofl (`pip install nasofl` or `pip install -e .` in a checkout)"
    )


@functools.cache
def _load_defaults(path: Path) -> dict[str, ConfigValue]:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    try:
        return dict(data["tool"]["flwr"]["app"]["config"])
    except KeyError:
        raise ConfigError(
            f"{path} has no [tool.flwr.app.config] table: it is not nasofl's pyproject.toml"
        ) from None


def app_defaults() -> dict[str, ConfigValue]:
    """``[tool.flwr.app.config]``: every run-config key with its default (a fresh dict each call)."""
    return dict(_load_defaults(app_pyproject()))


def unknown_key_error(key: str, known: Iterable[str], what: str = "run-config key") -> ConfigError:
    known = sorted(known)
    hint = difflib.get_close_matches(key, known, n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(
        f"unknown {what} {key!r}{extra} (every key is listed with its default in [tool.flwr.app.config] of "
        "pyproject.toml)"
    )


def check_known_keys(mapping: Mapping[str, Any], known: Iterable[str] | None = None) -> None:
    """Raise ConfigError naming the first key of ``mapping`` that is not a known key (default: pyproject's)."""
    known_set = set(app_defaults() if known is None else known)
    for key in mapping:
        if key not in known_set:
            raise unknown_key_error(key, known_set)


def coerce(key: str, raw: Any, typ: type) -> Any:
    """The one coercion rule for settings of every mode (Flower run config, presets, ``--set``, node config).

    bool: a bool, or the strings "true"/"false" (any case); int: an int or an integral float; float: an int or
    a float; str: a string; tuple: a comma-separated string or a list of strings. A bool is never a number.
    Anything else raises ConfigError naming the key, the value and the expected type.
    """
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
    elif typ is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
    elif typ is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
    elif typ is str:
        if isinstance(raw, str):
            return raw
    elif typ is tuple:
        if isinstance(raw, str):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if isinstance(raw, list | tuple) and all(isinstance(p, str) for p in raw):
            return tuple(raw)
    name = "comma-separated str" if typ is tuple else typ.__name__
    hint = " (write true or false)" if typ is bool else ""
    raise ConfigError(f"{key}={raw!r} has the wrong type: expected {name}{hint}")


def parse_cli_value(raw: str) -> ConfigValue:
    """``--set key=value`` in TOML syntax (``3``, ``true``, ``"fedprox"``); a bare word is a string."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    return value if isinstance(value, bool | int | float | str) else raw


def parse_sets(items: Iterable[str], flag: str = "--set") -> dict[str, ConfigValue]:
    """``["cls-arch=resnet18", "seg-rounds=3"]`` -> typed mapping; a later key replaces an earlier one."""
    out: dict[str, ConfigValue] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. cls-arch=resnet18")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_cli_value(value.strip())
    return out
