"""Writing model weights (``.pt`` state dicts) so that a full disk or an unwritable folder is a clear error.

torch reports a full disk as ``RuntimeError: ... unexpected pos 96073024 vs 96072920`` (seen when a session's runs
filled this machine's disk): nothing there says "disk" or names the file. :func:`save_state_file` writes to
``<file>.tmp`` and renames it over the file, so a half-written model never sits under the real name, and turns any
failure into an :class:`~shared.errors.OutputWriteError` naming the file, the space left and the remedy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from shared.errors import OutputWriteError


def free_space_text(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e9:.2f} GB free there"
    except OSError:
        return "its free space unknown"


def save_state_file(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(dict(state), tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise OutputWriteError(
            f"cannot write model file {path}: {err}; {free_space_text(path.parent)}. Free disk space on that "
            "file system or choose another output folder (run config out-dir, or --out), then run again"
        ) from err
