"""``nasofl-sim readers --cohort DIR --predictions SUMMARY.csv --out DIR``: a reader study on the synthetic cohort.

Simulated readers (``simulations.readers``: junior and senior radiologists on a 5-point scale, noise over the
generator's truth) rate every patient; the model scores come from ``nasofl-site predict``'s summary.csv on the
same cohort. Writes OUT/readers.csv, then the comparison of ``nasofl-site readers`` (AUC with DeLong CI, paired
DeLong test model vs each reader, readers' operating points, ROC figure).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cohort", type=Path, required=True, help="synthetic cohort folder (nasofl-sim synth)"
    )
    parser.add_argument("--predictions", type=Path, required=True, metavar="CSV",
                        help="summary.csv of `nasofl-site predict BUNDLE COHORT --out DIR`")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--reader", action="append", default=[], metavar="NAME=AUC",
                        help="simulated reader and its skill (default: junior=0.77 senior=0.84, the seed study)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the readers' noise")


def run(args: argparse.Namespace) -> int:
    import csv

    from shared.errors import ConfigError, SiteDataError
    from shared.readers import run_comparison
    from simulations.readers import DEFAULT_READERS, cohort_truth, simulate_readers

    readers = dict(DEFAULT_READERS)
    if args.reader:
        readers = {}
        for item in args.reader:
            name, _, value = item.partition("=")
            try:
                readers[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(f"--reader {item!r}: expected NAME=AUC, e.g. junior=0.77") from None
    truth = cohort_truth(args.cohort)
    with open(args.predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    model_cols = [c for c in (rows[0] if rows else {}) if c.startswith("p_npl_") and c != "p_npl_recommended"]
    usable = [c for c in model_cols if any(r[c] for r in rows)]
    if not usable:
        raise SiteDataError(
            f"{args.predictions}: no p_npl_<model> column with values; expected predict's summary.csv"
        )
    scored = [r for r in rows if r["patient"] in truth and all(r[c] for c in usable)]
    left = len(rows) - len(scored)
    ratings = simulate_readers({r["patient"]: truth[r["patient"]] for r in scored}, readers, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "readers.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["patient", "truth"] + [f"reader_{n}" for n in readers] + [f"model_{c[6:]}" for c in usable]
        )
        for r in scored:
            p = r["patient"]
            w.writerow(
                [p, "NPL" if truth[p] else "NPC"] + [ratings[n][p] for n in readers] + [r[c] for c in usable]
            )
    if left:
        print(f"{left} patient(s) of {args.predictions} left out: no model score (no tumour found or a sequence "
              "missing) or not in the cohort's truth")  # fmt: skip
    _, text = run_comparison(table, args.out)
    print(text)
    print(f"outputs: {table}, {args.out}/readers.json, readers_table.txt, readers_roc.png")
    return 0
