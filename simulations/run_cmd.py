"""``nasofl-sim run``: the whole federated study on this machine, through Flower's own simulation engine.

Generates the synthetic hospitals (unless ``--data`` is given), assembles the Flower app folder from the installed
packages (:mod:`simulations.app_folder`), then runs
``flwr run <out>/app local --stream --run-config ... --federation-config num-supernodes=N ...`` with
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (else flwr would install another torch into a per-run venv),
a private ``FLWR_HOME`` under the output folder (the user's ~/.flwr is untouched) and free ports of its own for
the local SuperLink (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` / ``FLWR_LOCAL_CONTROL_API_PORT``), so it never
joins a SuperLink another job left on 127.0.0.1:39091. ``flwr run . local`` leaves that SuperLink running: it is
found by its command line (which names that FLWR_HOME) and stopped, with the simulation and Ray processes under
it, in a ``finally`` block, once the study has finished or when ``nasofl-sim run`` gets SIGTERM (a plain
``kill PID``). The run's outcome is the study's own ``STATUS`` (``server.status``) and ``results.json``, not
``flwr run``'s exit code: a ``--stream`` that lost its connection is waited out. The run config is validated
(unknown key with "did you mean", bad values) before Flower is called. Exit code 0 only when the study
COMPLETED. While the study runs, its progress is printed from its run log (:mod:`simulations.progress`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from server.status import StudyStatus, read_status
from shared.app_config import ConfigValue, app_defaults, check_known_keys, parse_sets
from shared.errors import ConfigError
from simulations.progress import StudyProgress

if TYPE_CHECKING:
    from simulations.scenarios import Scenario
    from simulations.synth.cohort import CohortConfig


def configure(parser: argparse.ArgumentParser) -> None:
    from simulations.scenarios import SCENARIOS

    parser.add_argument(
        "--preset", default="default", help=f"scenario: {', '.join(SCENARIOS)} (default: default)"
    )
    parser.add_argument("--out", default=None, help="output folder (default ./runs/sim-<preset>-<time>)")
    parser.add_argument(
        "--data", default=None, help="existing synthetic hospitals (default: generate into OUT/data)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the study (default 0)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override (TOML value; a bare word is a string), e.g. --set strategy=fedadam "
        "--set seg-rounds=2 (repeatable; every key of pyproject.toml's [tool.flwr.app.config])",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is stopped")


def toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def run_config_arg(values: dict[str, bool | int | float | str]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def scenario_cohort(scenario: Scenario, seed: int) -> CohortConfig:
    """The synthetic cohort of ``scenario`` at ``seed`` (its sizes, prevalence, scanner options)."""
    from simulations.synth.cohort import CohortConfig

    return CohortConfig(
        sites=scenario.sites,
        patients_per_site=scenario.patients,
        seed=seed,
        difficulty=scenario.difficulty,
        npl_fraction=scenario.npl_fraction,
        npl_fraction_per_site=scenario.npl_per_site,
        same_scanner=scenario.same_scanner,
    )


def scenario_line(scenario: Scenario, sets: dict[str, bool | int | float | str], data: Path) -> str:
    """What ``nasofl-sim run --data DATA`` runs: the scenario's settings on the given site folders (its cohort
    description does not describe them), naming any of those folders that its ``eval-only-sites`` keeps from
    training (the default scenario's ``hospital-d`` may be one of a user's own folders)."""
    from client.node_data import site_folders

    folders = {f.name for f in site_folders(data)}
    named = str({**scenario.run_config, **sets}.get("eval-only-sites", ""))
    external = sorted({s.strip() for s in named.split(",")} & folders)
    line = f"its settings on the {len(folders)} site folder(s) in {data}"
    if external:
        line += f"; evaluation only, never trained on: {', '.join(external)} (eval-only-sites)"
    return line


def generate_data(data: Path, scenario, seed: int) -> None:
    from simulations.synth.cohort import generate_cohort

    config = scenario_cohort(scenario, seed)
    print(f"generating {scenario.sites} synthetic hospitals in {data} ...", flush=True)
    generate_cohort(data, config, progress=False)


def superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of flower-superlink processes whose command line names this FLWR_HOME (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmd and str(flwr_home) in cmd:
            pids.append(int(entry.name))
    return pids


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children ...), read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # the command name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its parent has not collected it yet


def stop_superlink(flwr_home: Path) -> None:
    """Stop the SuperLink ``flwr run . local`` left for this FLWR_HOME and everything it started (the simulation
    process and Ray's processes under it): SIGTERM, then SIGKILL what is left after 10 s."""
    pids = superlink_pids(flwr_home)
    pids += [d for pid in pids for d in descendants(pid)]  # listed first: once the parent dies they move to init
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.time() + 10
    while any(_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.5)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_config_string(values: dict[str, ConfigValue], sets: dict[str, ConfigValue]) -> str:
    """``--run-config`` text: the scenario's values, then the ``--set`` ones replacing any key they name (Flower
    rejects a key given twice)."""
    return run_config_arg({**values, **sets})


def validate_run_config(values: dict[str, ConfigValue]) -> None:
    """Refuse an unknown key (with "did you mean") or a bad value, naming the key, before Flower is started."""
    from server.config import federation_from_run_config, pipeline_from_run_config
    from server.settings_check import check_study_settings

    check_known_keys(values)
    merged = {**app_defaults(), **values}
    check_study_settings(federation_from_run_config(merged), pipeline_from_run_config(merged))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def own_superlink_env(flwr_home: Path) -> dict[str, str]:
    """Environment for ``flwr run . local`` with a SuperLink of this run's own: a private FLWR_HOME and free
    ports for its Runtime (HTTP) and Control APIs, so it never joins a SuperLink another job left on Flower's
    default 127.0.0.1:39091 (and runs inside that job's environment)."""
    if superlink_pids(flwr_home):
        raise ConfigError(
            f"a flower-superlink with FLWR_HOME {flwr_home} is already running: another `nasofl-sim run` uses "
            "this --out folder; give this run another --out"
        )
    http_port, control_port = free_port(), free_port()
    while control_port == http_port:
        control_port = free_port()
    return {
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def flwr_command() -> str:
    """Flower's ``flwr`` command of this environment (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).with_name("flwr")
    if beside.is_file():
        return str(beside)
    found = shutil.which("flwr")
    if found is None:
        raise ConfigError(
            f"Flower's `flwr` command is neither beside {sys.executable} nor on PATH: install nasofl's dependencies "
            "in this environment (pip install nasofl) or activate its virtual environment"
        )
    return found


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM while the study runs: leave through the ``finally`` that stops its SuperLink (exit code 143)."""
    print("nasofl-sim run: terminated (SIGTERM): stopping the study's SuperLink and simulation", file=sys.stderr)
    raise SystemExit(128 + signum)


def follow(proc: subprocess.Popen, progress: StudyProgress, timeout: float) -> int:
    """Wait for ``proc`` while printing the study's progress; exit code, or 124 after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            progress.poll()
            if time.time() >= deadline:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return 124


def wait_for_study(
    status_path: Path, deadline: float, poll_s: float = 5.0, progress: StudyProgress | None = None
) -> StudyStatus:
    """The study's own outcome: its STATUS, waited for while RUNNING (``flwr run --stream`` may have lost its
    connection while the study goes on in the SuperLink), until ``deadline`` (time.time())."""
    status = read_status(status_path)
    said = False
    while status.state == "RUNNING" and time.time() < deadline:
        if not said:
            print(f"the study is still RUNNING ({status_path}): waiting for it to finish", flush=True)
            said = True
        time.sleep(poll_s)
        if progress is not None:
            progress.poll()
        status = read_status(status_path)
    return status


def failure_lines(log_text: str, limit: int = 8) -> list[str]:
    """The lines of the Flower log that say why the study failed (our ServerApp's ERROR lines, tracebacks' last
    line), so they reach the terminal, not only the log file."""
    keep = [
        line.strip()
        for line in log_text.splitlines()
        if "CONFIG ERROR" in line
        or "STUDY FAILED" in line
        or re.match(r"^\w*(Error|Exception)\b.*:", line.strip())
    ]
    return keep[-limit:]


def run(args: argparse.Namespace) -> int:
    from simulations.scenarios import get_scenario

    scenario = get_scenario(args.preset)
    sets = parse_sets(args.set)
    # before any data generation or Flower call (sim-data-root and out-dir are set below)
    validate_run_config({**scenario.run_config, "seed": args.seed, **sets})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/sim-{scenario.name}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else out / "data"
    if not args.data and not (data.exists() and any(data.iterdir())):
        generate_data(data, scenario, args.seed)
    if not data.is_dir():
        raise ConfigError(f"--data {str(data)!r} is not a folder")
    from client.node_data import site_folders

    n_sites = len(site_folders(data))
    if n_sites < 1:
        raise ConfigError(f"--data {str(data)!r} holds no site folder")
    values: dict[str, bool | int | float | str] = dict(scenario.run_config)
    values.update({"sim-data-root": str(data), "out-dir": str(out / "study"), "seed": args.seed})
    from simulations.app_folder import build_app_folder

    app_dir = build_app_folder(out / "app")
    flwr_home = out / ".flwr"
    study = out / "study"
    env = dict(os.environ)
    env.update(own_superlink_env(flwr_home))
    (study / "STATUS").unlink(missing_ok=True)  # a STATUS of an earlier run in this folder proves nothing
    flwr = flwr_command()
    cmd = [
        flwr,
        "run",
        str(app_dir),
        "local",
        "--stream",
        "--run-config",
        run_config_string(values, sets),
        "--federation-config",
        f"num-supernodes={n_sites} client-resources-num-cpus=1",
    ]
    # with --data the scenario's cohort description (its patient counts) does not describe the sites used
    what = scenario_line(scenario, sets, data) if args.data else scenario.description
    print(f"scenario {scenario.name}: {what}\n$ {' '.join(cmd)}", flush=True)
    print(f"own SuperLink on 127.0.0.1:{env['FLWR_LOCAL_SUPERLINK_HTTP_API_PORT']}", flush=True)
    t0 = time.time()
    log_path = out / "flwr-run.log"
    print(f"Flower's log: {log_path}; progress below comes from the study's run log", flush=True)
    progress = StudyProgress(study / "run-log.jsonl")
    progress.skip_earlier()  # a resumed study appends to the run log of the run it continues
    flwr_proc: subprocess.Popen | None = None
    previous = signal.signal(signal.SIGTERM, _terminated)  # `kill PID` stops the study's processes too
    try:
        with open(log_path, "w") as log_file:
            flwr_proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(out))
            rc = follow(flwr_proc, progress, args.timeout)
        status = wait_for_study(study / "STATUS", t0 + args.timeout, progress=progress)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up below is not cut short by a second one
        progress.close()
        if flwr_proc is not None and flwr_proc.poll() is None:
            flwr_proc.terminate()
        stop_superlink(flwr_home)
        signal.signal(signal.SIGTERM, previous)
    wall = time.time() - t0
    if status.state == "RUNNING":  # past --timeout: the study was stopped with its SuperLink
        status = StudyStatus("FAILED", f"still running after --timeout {args.timeout:.0f} s: stopped")
    if (study / "table.txt").exists():
        print((study / "table.txt").read_text())
    print(f"flwr run exit code {rc}, wall {wall:.0f} s; study status: {status.state}")
    external_roc = ", roc-external.png" if (study / "roc-external.png").exists() else ""
    print(f"outputs: {study}  (results.json, table.txt, roc.png{external_roc}, rounds-*.png, run-log.jsonl, models/)")
    print(f"Flower log: {log_path}")
    if status.state != "COMPLETED" or not (study / "results.json").exists():
        for line in failure_lines(log_path.read_text(errors="replace")):
            print(f"  {line}", file=sys.stderr)
        print(f"nasofl-sim run: {status.state}: {status.detail or 'see the Flower log'}", file=sys.stderr)
        return 1
    if rc != 0:
        print(f"note: flwr run ended with exit code {rc}, but the study itself COMPLETED", file=sys.stderr)
    return 0
