"""``nasofl-sim privacy-table``: utility against privacy on one synthetic cohort, side by side.

Runs the federated simulation (``nasofl-sim run``) on the same data once per privacy setting: no DP
(epsilon = infinity), local DP-SGD at epsilon 8, 3 and 1 per stage (unit: one patient), central DP
(unit: one site) and secure aggregation (SecAgg+, no DP); then prints Dice and the AUC of each dataset with the epsilon spent and its unit, and the
federated Dice of each DP run relative to the run without DP. Every run gets its own site caches, so the
sites' ledgers do not mix the variants. ``amp=false``, no contrastive pretraining (``cls-pretrain-rounds=0``)
and one classifier per dataset (``cls-ensemble=1``, ``cls-linear-member=false``) in every run (DP-SGD needs each; the same for all), and
``strategy = "fedavg"`` unless ``--set`` names another (central DP refuses the default ``fedavgm``).
Writes ``OUT/privacy-table.json`` and ``OUT/privacy-table.txt``. DP step-time and memory ratios:
``python -m simulations.bench_privacy``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def row_settings(changes: dict[str, Any], sets: dict[str, Any], cache: Path) -> list[str]:
    """``--set`` values of one row after the user's: the row's privacy changes, then what every row shares."""
    extra = [f"{k}={json.dumps(v)}" for k, v in changes.items()]
    # local DP needs float32 and no contrastive pretraining: the same for every row, so rows differ by privacy alone
    extra += ["amp=false", "cls-pretrain-rounds=0", "cls-pretrain-epochs=0"]
    # DP refuses an ensemble of classifiers and the regression member (the seed-size scenario sets both): one
    # ResNet in every row
    extra += ["cls-ensemble=1", "cls-linear-member=false"]
    extra.append(f"sim-cache-root={json.dumps(str(cache))}")
    if "strategy" not in sets:  # one strategy for every row, one central DP can run: rows differ by privacy alone
        extra.append('strategy="fedavg"')
    return extra


#: (row name, run-config changes)
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("no DP (eps inf)", {"dp": "off"}),
    ("local eps 8", {"dp": "local", "dp-epsilon": 8.0}),
    ("local eps 3", {"dp": "local", "dp-epsilon": 3.0}),
    ("local eps 1", {"dp": "local", "dp-epsilon": 1.0}),
    ("central", {"dp": "central"}),
    # SecAgg+ is not DP (epsilon stays infinite): the row shows what masking the updates costs in utility
    ("secure aggregation", {"dp": "off", "secure-aggregation": True, "update-norm-factor": 0.0}),
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="scenario of `nasofl-sim run` (default: default)")
    parser.add_argument(
        "--out", default="out/privacy-table", help="output folder (default out/privacy-table)"
    )
    parser.add_argument(
        "--data", default=None, help="existing site folders (default: generate into OUT/data)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of every run (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override applied to every run, e.g. --set dp-noise-multiplier=0.5")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for each run")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the runs already COMPLETED in OUT (rerun only the others)"
    )


def epsilon_cell(privacy: dict[str, Any] | None) -> str:
    """The epsilon of one run with its unit (local: the largest of the sites' study epsilons)."""
    if not privacy or privacy.get("mode") in (None, "off"):
        return "inf"
    if privacy["mode"] == "central":
        return f"{privacy['epsilon']:.2f} ({privacy['unit']})"
    spent = [
        e["epsilon_study"] for e in privacy.get("sites", {}).values() if e.get("epsilon_study") is not None
    ]
    return f"<= {max(spent):.2f} ({privacy['unit']})" if spent else "n/a"


def format_table(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    width = max([len("setting")] + [len(r["name"]) for r in rows]) + 2
    head = f"{'setting':<{width}}{'epsilon (unit)':<26}{'Dice':>7}{'vs no DP':>9}" + "".join(
        f"{d:>9}" for d in datasets
    )
    lines = [head, "-" * len(head)]
    base = rows[0]["dice"] if rows and rows[0]["dice"] else None
    for r in rows:
        ratio = (r["dice"] / base) if (base and r["dice"] is not None) else None
        lines.append(
            f"{r['name']:<{width}}{r['epsilon']:<26}{fmt(r['dice']):>7}{fmt(ratio):>9}"
            + "".join(f"{fmt(r['auc'].get(d)):>9}" for d in datasets)
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from shared.app_config import app_defaults, check_known_keys, parse_sets
    from shared.reporting.results import write_results
    from simulations import run_cmd
    from simulations.scenarios import get_scenario

    scenario = get_scenario(args.preset)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else out / "data"
    if not args.data and not (data.exists() and any(data.iterdir())):
        run_cmd.generate_data(data, scenario, args.seed)
    sets = parse_sets(args.set)
    check_known_keys(sets)
    datasets = str({**app_defaults(), **scenario.run_config, **sets}["datasets"]).split(",")
    rows: list[dict[str, Any]] = []
    failed = 0
    for i, (name, changes) in enumerate(VARIANTS, start=1):
        folder = out / name.split(" (")[0].replace(" ", "-")
        extra = row_settings(changes, sets, folder / "cache")
        path = folder / "study" / "results.json"
        done = (folder / "study" / "STATUS").exists() and (
            folder / "study" / "STATUS"
        ).read_text().startswith("COMPLETED")
        print(f"[{i}/{len(VARIANTS)}] {name} ...", flush=True)
        rc = 0 if (args.reuse and done and path.exists()) else run_cmd.run(
            argparse.Namespace(
                preset=args.preset, out=str(folder), data=str(data), seed=args.seed,
                set=[*args.set, *extra], timeout=args.timeout,
            )
        )  # fmt: skip
        results = json.loads(path.read_text()) if rc == 0 and path.exists() else None
        failed += results is None
        auc = (results or {}).get("auc") or {}
        rows.append(
            {
                "name": name,
                "run_config": changes,
                "status": "COMPLETED" if results else "FAILED",
                "dice": (results or {}).get("dice"),
                "auc": {d: (auc.get(d) or {}).get("value") for d in datasets},
                "epsilon": epsilon_cell((results or {}).get("privacy")) if results else "FAILED",
                "privacy": (results or {}).get("privacy"),
            }
        )
    table = format_table(rows, datasets)
    write_results({"rows": rows, "scenario": scenario.name, "seed": args.seed}, out / "privacy-table.json")
    (out / "privacy-table.txt").write_text(table + "\n")
    print()
    print(table)
    return 0 if failed == 0 else 1
