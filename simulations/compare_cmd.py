"""``nasofl-sim compare``: federated vs centralized (pooled) vs each site alone, side by side.

Writes ``OUT/compare.json`` (``federated``, ``centralized``, one entry per site, each in the results.json
schema, plus ``ratios`` and ``settings``) and prints Dice and AUC per dataset with federated/centralized.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="scenario of `nasofl-sim run` (default: default)")
    parser.add_argument("--out", default="out/compare", help="output folder (default out/compare)")
    parser.add_argument(
        "--data", default=None, help="existing site folders (default: generate into OUT/data)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of every run (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override (TOML value) applied to every run, e.g. --set cls-rounds=3")  # fmt: skip
    parser.add_argument("--skip-sites", action="store_true", help="leave out the single-site runs")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for the federated run")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    from client.node_data import site_folders
    from server.status import read_status
    from shared.app_config import app_defaults, parse_sets
    from shared.data.site import load_site
    from shared.errors import ConfigError
    from shared.reporting.results import write_results
    from shared.training.device import select_device
    from simulations import run_cmd
    from simulations.centralized import run_centralized
    from simulations.compare import (
        GOAL_FIGURES,
        centralized_config,
        format_compare_table,
        ratios,
        target_verdict,
    )
    from simulations.scenarios import get_scenario
    from simulations.score_models import exact_scores_refusal, score_study_bundle

    t0 = time.perf_counter()
    scenario = get_scenario(args.preset)
    sets = parse_sets(args.set)
    run_cmd.validate_run_config({**scenario.run_config, "seed": args.seed, **sets})  # before anything runs
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else out / "data"
    if not args.data and not (data.exists() and any(data.iterdir())):
        run_cmd.generate_data(data, scenario, args.seed)
    run_config = {**app_defaults(), **scenario.run_config, "seed": args.seed, **sets}
    cfg, fed = centralized_config(run_config)
    eval_only = fed.eval_only_names
    progress = not args.no_progress and sys.stderr.isatty()

    # 1. federated: the real Flower simulation (`nasofl-sim run` on the same data and overrides)
    print(f"[1/3] federated run ({scenario.name}) ...", flush=True)
    fed_args = argparse.Namespace(
        preset=args.preset, out=str(out / "federated"), data=str(data), seed=args.seed, set=args.set,
        timeout=args.timeout,
    )  # fmt: skip
    fed_rc = run_cmd.run(fed_args)  # judged by the study's own STATUS and results, waited for
    fed_status = read_status(out / "federated" / "study" / "STATUS")
    fed_path = out / "federated" / "study" / "results.json"
    federated = json.loads(fed_path.read_text()) if fed_path.exists() else None
    if fed_rc != 0:
        print(
            f"federated run FAILED (exit {fed_rc}); see {out / 'federated' / 'flwr-run.log'}", file=sys.stderr
        )

    # 2. centralized: training sites pooled on this machine, same settings and passes over the data
    print("[2/3] centralized run (training sites pooled) ...", flush=True)
    sites = [s for s in site_folders(data) if s.name not in eval_only]
    if not sites:
        raise ConfigError("every site is evaluation-only: nothing to pool for the centralized run")
    per_site_patients: dict[str, list] = {}
    for site in sites:  # the simulated ClientApps' cache layout, so each site is ingested once
        cohort = load_site(site, cache_dir=data / "_cache" / site.name / "ingest", progress=progress)
        per_site_patients[site.name] = cohort.patients
    pooled = [p for ps in per_site_patients.values() for p in ps]
    centralized = run_centralized(pooled, cfg, out / "centralized", progress=progress)

    # the federated models through the centralized run's instrument (exact AUC), so the ratio compares models
    refusal = exact_scores_refusal(fed.fedbn, fed_status.state)
    federated_exact = None
    if refusal is None:
        print("scoring the federated models exactly on the pooled test patients ...", flush=True)
        federated_exact = score_study_bundle(
            out / "federated" / "study" / "bundle", pooled, select_device(cfg.device), progress=progress
        )
    else:
        print(f"federated models not scored exactly: {refusal}", file=sys.stderr)

    entries: dict[str, object] = {"federated": federated, "centralized": centralized}
    if federated_exact is not None:
        entries["federated_exact"] = federated_exact
    # 3. each training site alone
    if not args.skip_sites:
        for i, (name, patients) in enumerate(per_site_patients.items(), start=1):
            print(f"[3/3] site alone {i}/{len(per_site_patients)}: {name} ...", flush=True)
            try:
                entries[name] = run_centralized(patients, cfg, out / f"site-{name}", progress=progress)
            except Exception as err:  # one site too small to train must not hide the others
                print(f"site {name} alone: not trainable ({err})", file=sys.stderr)
                entries[name] = None

    ratio = ratios(federated, centralized)
    ratio_exact = ratios(federated_exact, centralized) if federated_exact is not None else None
    table = format_compare_table(entries, ratio, ratio_exact)
    compare = {
        **entries,
        "ratios": ratio,
        "ratios_exact": ratio_exact,
        "federated_exact_refused": refusal,
        "settings": {"run_config": run_config, "centralized": cfg.to_mapping(), "scenario": scenario.name},
        "wall_seconds": time.perf_counter() - t0,
        "federated_status": fed_status.state,
    }
    write_results(compare, out / "compare.json")
    (out / "compare.txt").write_text(table + "\n")
    print()
    print(table)
    for line in target_verdict(ratio):
        print(line)
    if ratio_exact is not None:
        for line in target_verdict(ratio_exact, figures=GOAL_FIGURES[1:]):
            print(f"{line} (federated models scored exactly, as the centralized run is)")
    print(
        f"outputs: {out / 'compare.json'}, {out / 'compare.txt'}; per-run folders federated/, centralized/, site-*/"
    )
    return 0 if fed_rc == 0 else 1
