"""``nasofl-sim run``: the whole federated study on this machine, through Flower's own simulation engine.

Generates the synthetic hospitals (unless ``--data`` is given), then runs
``flwr run <repo> local --stream --run-config ... --federation-config num-supernodes=N ...`` with
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (else flwr would install another torch into a per-run venv)
and a private ``FLWR_HOME`` under the output folder (the user's ~/.flwr is untouched). ``flwr run . local``
leaves a background SuperLink running: it is found by its command line (which names that FLWR_HOME) and
stopped in a ``finally`` block. Prints the table and the paths; exit code 0 only when the study COMPLETED.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

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


def stop_superlink(flwr_home: Path) -> None:
    for pid in superlink_pids(flwr_home):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.time() + 10
    while superlink_pids(flwr_home) and time.time() < deadline:
        time.sleep(0.5)
    for pid in superlink_pids(flwr_home):
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
    from server.privacy import check_privacy_settings

    check_known_keys(values)
    merged = {**app_defaults(), **values}
    check_privacy_settings(federation_from_run_config(merged), pipeline_from_run_config(merged))


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


def run(args: argparse.Namespace) -> int:
    from simulations.scenarios import get_scenario

    scenario = get_scenario(args.preset)
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
    sets = parse_sets(args.set)
    validate_run_config({**values, **sets})
    from simulations.app_folder import build_app_folder

    app_dir = build_app_folder(out / "app")
    flwr_home = out / ".flwr"
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
    )
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
    print(f"scenario {scenario.name}: {scenario.description}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    log_path = out / "flwr-run.log"
    print(f"Flower's log: {log_path}; progress below comes from the study's run log", flush=True)
    progress = StudyProgress(out / "study" / "run-log.jsonl")
    try:
        with open(log_path, "w") as log_file:
            rc = follow(
                subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(out)),
                progress,
                args.timeout,
            )
    finally:
        progress.close()
        stop_superlink(flwr_home)
    wall = time.time() - t0
    study = out / "study"
    status = (
        (study / "STATUS").read_text().strip() if (study / "STATUS").exists() else "FAILED\nno STATUS file"
    )
    if (study / "table.txt").exists():
        print((study / "table.txt").read_text())
    print(f"flwr run exit code {rc}, wall {wall:.0f} s; status: {status.splitlines()[0]}")
    print(f"outputs: {study}  (results.json, table.txt, roc.png, rounds-*.png, run-log.jsonl, models/)")
    print(f"Flower log: {log_path}")
    if not status.startswith("COMPLETED"):
        print(
            f"nasofl-sim run: FAILED: {' '.join(status.splitlines()[1:]) or 'see the Flower log'}",
            file=sys.stderr,
        )
        return 1
    return 0
