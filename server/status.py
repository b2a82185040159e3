"""The study's ``STATUS`` file in its out-dir: what a reader may believe about a study, even after ``kill -9``.

Format (text, one ``key=value`` per line after the first)::

    RUNNING                COMPLETED             FAILED
    pid=12345              <nothing more>        <the error message>
    host=coordinator-1
    heartbeat=1764489600.0 (unix seconds, rewritten every HEARTBEAT_S by a thread of the ServerApp)

A study killed with ``kill -9`` (or a host that lost power) never writes its end status, so ``RUNNING`` alone
proves nothing. :func:`read_status` reports such a study as ``CRASHED``: when the file names this host and its
pid no longer runs, or when the heartbeat is older than ``STALE_S`` (the only test possible from another host).
A reused pid on the same host would pass for alive until the heartbeat goes stale. Every reader
(``nasofl-sim run`` / ``compare``, the exporter) goes through :func:`read_status`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_S = 30.0
STALE_S = 10 * HEARTBEAT_S
STATES = ("RUNNING", "COMPLETED", "FAILED", "CRASHED", "MISSING")


@dataclass(frozen=True)
class StudyStatus:
    state: str  # one of STATES
    detail: str  # the error of a FAILED study, why a study counts as CRASHED, or ""
    pid: int | None = None
    host: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("COMPLETED", "FAILED", "CRASHED")


def write_status(path: Path, state: str, detail: str = "") -> None:
    """Replace ``path`` atomically (a reader never sees half a file; no ``.tmp`` left behind on error)."""
    if state == "RUNNING":
        body = f"RUNNING\npid={os.getpid()}\nhost={socket.gethostname()}\nheartbeat={time.time():.1f}\n"
    else:
        body = f"{state}\n{detail}\n" if detail else f"{state}\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(body)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def read_status(path: Path, now: float | None = None) -> StudyStatus:
    """The study's status from its ``STATUS`` file; ``RUNNING`` of a dead process is reported ``CRASHED``."""
    if not path.exists():
        return StudyStatus(
            "MISSING", f"no STATUS file at {path}: the study did not start (see the ServerApp log)"
        )
    lines = path.read_text().splitlines()
    state = lines[0].strip() if lines else ""
    if state != "RUNNING":
        if state not in STATES:
            return StudyStatus("FAILED", f"{path} holds {state!r}, not a study status")
        return StudyStatus(state, " ".join(x.strip() for x in lines[1:] if x.strip()))
    fields = dict(x.split("=", 1) for x in lines[1:] if "=" in x)
    pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
    host = fields.get("host", "")
    try:
        beat = float(fields.get("heartbeat", "nan"))
    except ValueError:
        beat = float("nan")
    age = (time.time() if now is None else now) - beat
    if pid is not None and host == socket.gethostname() and not _alive(pid):
        why = f"CRASHED: the study's process {pid} on {host} is gone without writing an end status (killed?)"
        return StudyStatus("CRASHED", why + "; resume with run config resume=true", pid, host)
    if not age <= STALE_S:  # also NaN: a RUNNING file without a heartbeat
        why = f"CRASHED: no heartbeat for {age:.0f} s (more than {STALE_S:.0f} s) from process {pid} on {host!r}"
        return StudyStatus("CRASHED", why + "; resume with run config resume=true", pid, host)
    return StudyStatus("RUNNING", "", pid, host)


class Heartbeat:
    """While the study runs: rewrite ``RUNNING`` (with a fresh heartbeat) every ``interval`` seconds."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_S) -> None:
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="nasofl-status-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        write_status(self.path, "RUNNING")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                write_status(self.path, "RUNNING")
            except OSError:  # a full disk must not end the study here; the next checkpoint write names it
                pass
