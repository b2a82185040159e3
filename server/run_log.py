"""Append-only run log: one JSON object per line (one line per round per stage, plus start/end events).

Lines hold site names, counts, timings, hashes and settings only: never patient data. The file is opened in
append mode for every line and fsync'ed, so a crash loses at most the line being written and a resumed run
continues the same file.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [_clean(v) for v in items]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one line ``{"time": ..., "event": event, **fields}`` and return it."""
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "unix": time.time(),
            "event": event,
        }
        record.update(_clean(fields))
        line = json.dumps(record, sort_keys=False, allow_nan=False)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot append to the run log {self.path}: {err.strerror or err}; free disk space or make out-dir "
                "writable, then run again with resume=true",
            ) from err
        return record

    def read(self) -> list[dict[str, Any]]:
        return read_run_log(self.path)


def read_run_log(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a run log (a torn last line from a crash is skipped)."""
    out: list[dict[str, Any]] = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
