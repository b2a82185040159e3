"""Round time in the shipped deployment on loopback (benchmark, not collected by pytest).

    python -m tests.bench_deploy_rounds [--state memory|sqlite] [--study-rounds 2] [--echo-rounds 3]
        [--study-dtypes float32,float16] [--skip-study] [--skip-echo] [--echo-empty-only] [--direct]
        [--cold-clientapp] [--keep DIR]

Starts the coordinator with deploy/superlink.sh (SuperLink on 127.0.0.1, nginx proxy, SuperExec) and two
hospitals with ``nasofl-site join`` through the proxy, then measures, side by side:
- a round with no training that moves a ResNet101-sized model (its float32 state_dict bytes, cut into arrays of
  ResNet101's largest tensor) to both sites and back (tests/apps/echoapp), in float32 and in float16, each with
  Flower's ``send_and_receive`` (polls every 3 s) and with the study's (server.polling_grid);
- the nasofl study's ResNet101 classifier rounds (toy hospitals, 32 px: local training is short, so the round is
  mostly what crosses the SuperLink and the per-message ClientApp start), with ``transport-dtype`` float32 and
  float16; figures from the study's run log (seconds_round, slowest local training, bytes).
- an echo round with no payload (what a round costs besides moving the model: ClientApp process start, polling).
``--state`` is deploy/superlink.sh's NASOFL_SUPERLINK_STATE (memory, the default, or sqlite: the state file then
also holds every model array in transit). ``--direct`` connects the hospitals to the SuperLink's port instead of
the nginx proxy (not shipped: it shows what the proxy costs). ``--cold-clientapp`` joins the hospitals without
the warm ClientApp start (one fresh import of Flower, torch and the app per message, as before the zygote).
Prints one table. Each run takes minutes on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

from client.node_cmd import check_superlink
from server.run_log import read_run_log
from simulations.run_cmd import run_config_arg
from simulations.scenarios import _TOY
from tests.test_deploy_superlink import (
    BIN,
    REPO,
    flwr_env,
    free_port,
    join_command,
    make_hospitals,
    stop_groups,
    tail,
)

ECHO_APP = REPO / "tests" / "apps" / "echoapp"
SITES = ("hospital-a", "hospital-b")


def resnet101_float32_mb() -> float:
    import torchvision

    state = torchvision.models.resnet101(num_classes=2).state_dict()
    return sum(t.numel() * 4 for t in state.values()) / 1e6


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root, self.logs = root, root / "logs"
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "w") as fh:
            self.procs[name] = subprocess.Popen(
                cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root
            )

    def alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{tail(self.logs / f'{name}.log')}")

    def flwr(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"flwr {args}: {done.stdout}{done.stderr}")
        return done.stdout

    def run(self, app: Path, config: str) -> str:
        return str(
            json.loads(self.flwr("run", str(app), "fed", "--run-config", config, "--format", "json"))[
                "run-id"
            ]
        )

    def wait(self, run_id: str, timeout: float = 3600) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.alive()
            listing = json.loads(self.flwr("ls", "fed", "--run-id", run_id, "--format", "json"))
            status = listing["runs"][0]["status"]
            if status.startswith("finished"):
                return status
            time.sleep(5)
        raise RuntimeError(f"run {run_id} not finished within {timeout:.0f} s")


@contextlib.contextmanager
def deployment(root: Path, state: str, direct: bool, cold: bool) -> Iterator[Deployment]:
    dep = Deployment(root)
    dep.logs.mkdir()
    certs, keys, data = root / "certs", root / "keys", root / "data"
    subprocess.run(
        ["bash", str(REPO / "deploy/certs.sh"), str(certs), "localhost"], check=True, capture_output=True
    )
    for site in SITES:
        subprocess.run(
            ["bash", str(REPO / "deploy/node-keys.sh"), str(keys), site], check=True, capture_output=True
        )
    make_hospitals(data, len(SITES))
    public, internal = free_port(), free_port()
    home = root / "coordinator-flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "127.0.0.1:{internal}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n'
    )
    dep.env = flwr_env(home)
    approved = root / "approved-apps.txt"
    for app in (ECHO_APP, REPO):
        subprocess.run([str(BIN / "nasofl-site"), "approve", str(app), "--approved-apps", str(approved)], check=True, capture_output=True)  # fmt: skip
    try:
        env = flwr_env(root / "superlink-home")
        env.update(
            NASOFL_PUBLIC_HOST="127.0.0.1",
            NASOFL_PUBLIC_PORT=str(public),
            NASOFL_SUPERLINK_PORT=str(internal),
            NASOFL_SUPERLINK_STATE=state,
        )
        script = ["bash", str(REPO / "deploy/superlink.sh"), str(certs), str(root / "state")]
        dep.start("coordinator", script, env)
        while not check_superlink(f"127.0.0.1:{public}", certs / "ca.crt", timeout=2)[0]:
            dep.alive()
            time.sleep(0.5)
        for site in SITES:
            dep.flwr("supernode", "register", str(keys / f"{site}.pub"), "fed", "--name", site)
            dep.start(
                site,
                join_command(
                    data / site,
                    f"127.0.0.1:{internal if direct else public}",
                    certs / "ca.crt",
                    keys / site,
                    approved,
                    root / "cache" / site,
                )
                + (["--cold-clientapp"] if cold else []),
                flwr_env(root / f"{site}-home"),
            )
        yield dep
    finally:
        stop_groups(list(dep.procs.values()))


def echo_rounds(dep: Deployment, megabytes: float, dtype: str, rounds: int, grid: str) -> list[float]:
    out = dep.root / f"echo-{dtype}-{megabytes:.0f}-{grid}.json"
    config = f'out="{out}" nodes=2 rounds={rounds} payload-mb={megabytes} dtype="{dtype}" grid="{grid}"'
    run_id = dep.run(ECHO_APP, config)
    status = dep.wait(run_id, timeout=1800)
    if status != "finished:completed" or not out.exists():
        raise RuntimeError(f"echo run {run_id}: {status}")
    result = json.loads(out.read_text())
    if set(result["replies"].values()) != {"ok"}:
        raise RuntimeError(f"echo run {run_id}: {result['replies']}")
    return result["round_s"]


def study_rounds(dep: Deployment, dtype: str, rounds: int) -> list[dict]:
    out = dep.root / f"study-{dtype}"
    values = dict(_TOY)
    values.update({
        "out-dir": str(out), "min-sites": 2, "wait-for-sites-s": 180.0, "datasets": "t2", "cls-rounds": rounds,
        "cls-arch": "resnet101", "transport-dtype": dtype,
    })  # fmt: skip
    run_id = dep.run(REPO, run_config_arg(values))
    status = dep.wait(run_id)
    if status != "finished:completed" or not (out / "STATUS").read_text().startswith("COMPLETED"):
        raise RuntimeError(f"study {run_id}: {status}: {tail(out / 'STATUS', 300)}")
    lines = [x for x in read_run_log(out / "run-log.jsonl") if x["event"] == "round" and x["stage"] == "cls"]
    results = json.loads((out / "results.json").read_text())
    for line in lines:
        line["test_auc"] = results["auc"]["t2"]["value"]
    return lines


def keep_or(keep: Path | None, tmp: Path) -> Path:
    if keep is None:
        return tmp
    keep.mkdir(parents=True)
    return keep.resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--echo-rounds", type=int, default=3)
    parser.add_argument("--study-rounds", type=int, default=2)
    parser.add_argument("--skip-study", action="store_true")
    parser.add_argument("--skip-echo", action="store_true")
    parser.add_argument(
        "--echo-empty-only",
        action="store_true",
        help="only the no-payload echo round (not the model-sized ones)",
    )
    parser.add_argument(
        "--cold-clientapp",
        action="store_true",
        help="hospitals without the warm ClientApp start (join's flag)",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="run in DIR (new) and keep it: logs, caches, run logs"
    )
    parser.add_argument("--study-dtypes", default="float32,float16", help="transport-dtype of the study runs")
    parser.add_argument(
        "--state", choices=("memory", "sqlite"), default="memory", help="NASOFL_SUPERLINK_STATE"
    )
    parser.add_argument(
        "--direct", action="store_true", help="hospitals bypass the nginx proxy (not shipped)"
    )
    args = parser.parse_args()
    megabytes = resnet101_float32_mb()
    rows: list[str] = []
    with (
        TemporaryDirectory(prefix="nasofl-bench-") as tmp,
        deployment(keep_or(args.keep, Path(tmp)), args.state, args.direct, args.cold_clientapp) as dep,
    ):
        echoes = (
            () if args.skip_echo else (("float32", 0.0), ("float32", megabytes), ("float16", megabytes / 2))
        )
        if args.echo_empty_only:
            echoes = echoes[:1]
        for dtype, mb in echoes:
            for grid in ("flower", "nasofl"):
                seconds = echo_rounds(dep, mb, dtype, args.echo_rounds, grid)
                rows.append(
                    f"{args.state} state, no training, echo {mb:6.1f} MB x 2 sites ({dtype}, {grid} grid) | median "
                    f"{statistics.median(seconds):6.1f} s/round | rounds {', '.join(f'{s:.1f}' for s in seconds)}"
                )
                print(rows[-1], flush=True)
        if not args.skip_study:
            for dtype in args.study_dtypes.split(","):
                try:
                    lines = study_rounds(dep, dtype, args.study_rounds)
                except RuntimeError as err:
                    rows.append(f"study ResNet101 ({dtype}) | FAILED | {str(err)[:300]}")
                    print(rows[-1], flush=True)
                    continue
                for x in lines:
                    rows.append(
                        f"{args.state} state, study ResNet101 cls round {x['round']} ({dtype}) | "
                        f"{x['seconds_round']:6.1f} s/round"
                        f" | train phase {x['seconds_train_phase']:.1f} s, slowest local training "
                        f"{x['seconds_slowest_local_training']:.1f} s, sent {x['bytes_sent_train'] / 1e6:.0f} MB, "
                        f"received {x['bytes_received_train'] / 1e6:.0f} MB, test AUC {x['test_auc']}"
                    )
                    print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
