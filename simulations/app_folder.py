"""The Flower app folder that ``nasofl-sim run`` hands to ``flwr run``, built from the installed packages.

``flwr run DIR`` needs a folder with ``pyproject.toml`` (``[tool.flwr.app]``) and the app's packages. A source
checkout has one, a regular ``pip install`` does not (only the packages land in site-packages). So the folder
is always assembled the same way: the installed ``server``, ``client`` and ``shared`` packages (the ServerApp and
ClientApp import nothing else of ours) plus the pyproject.toml that :mod:`shared.app_config` reads, copied into
the run's output folder. The run then executes exactly the code that is installed, editable or not.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from shared.app_config import app_pyproject

APP_PACKAGES: tuple[str, ...] = ("server", "client", "shared")


def build_app_folder(dest: Path) -> Path:
    """Copy the installed app packages and pyproject.toml into ``dest`` (replaced if present); returns ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in APP_PACKAGES:
        package_dir = Path(importlib.import_module(name).__file__).resolve().parent
        shutil.copytree(
            package_dir, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "pyproject.toml")
        )
    shutil.copyfile(app_pyproject(), dest / "pyproject.toml")
    return dest
