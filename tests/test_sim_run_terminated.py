"""``kill PID`` (SIGTERM) on a running ``nasofl-sim run`` stops what it started: Flower's background SuperLink, the
simulation process under it and Ray's processes, none left using the machine's cores; the exit code is 143."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulations.run_cmd import _alive, descendants, superlink_pids

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_sigterm_stops_the_superlink_the_simulation_and_ray(tmp_path):
    from simulations.synth.cohort import CohortConfig, generate_cohort

    data, out = tmp_path / "hospitals", tmp_path / "sim"
    generate_cohort(data, CohortConfig(sites=2, patients_per_site=(6, 6), seed=3), progress=False)
    proc = subprocess.Popen(
        [str(BIN / "nasofl-sim"), "run", "--preset", "toy", "--out", str(out), "--data", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        started: list[int] = []
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:  # until the sites are training
            links = superlink_pids(out / ".flwr")
            started = links + [d for pid in links for d in descendants(pid)]
            if any("flwr-simulation" in _cmdline(p) for p in started) and any(
                "ray::" in _cmdline(p) or "raylet" in _cmdline(p) for p in started
            ):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the study ended before it could be stopped: " + proc.stderr.read()[-2000:]
        assert any("flwr-simulation" in _cmdline(p) for p in started), [_cmdline(p)[:80] for p in started]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        stderr = proc.stderr.read()
        assert rc == 143, stderr[-2000:]
        assert "terminated (SIGTERM): stopping the study's SuperLink and simulation" in stderr
        time.sleep(1)
        left = [f"{p}: {_cmdline(p)[:100]}" for p in started if _alive(p)]
        assert left == [], "still running after nasofl-sim run was terminated"
        assert superlink_pids(out / ".flwr") == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in superlink_pids(out / ".flwr"):
            subprocess.run(["kill", "-9", str(pid)], check=False)
