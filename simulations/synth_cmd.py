"""``nasofl-sim synth OUT_DIR``: write synthetic DICOM hospitals (one folder per hospital) plus ``_truth``."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", help="output folder (one sub-folder per hospital + _truth)"
    )
    parser.add_argument("--sites", type=int, default=None, help="number of hospitals (default 3)")
    parser.add_argument("--patients", type=int, default=None, help="patients per hospital (default: preset)")
    parser.add_argument(
        "--seed", type=int, default=0, help="global seed; same seed -> identical files (default 0)"
    )
    parser.add_argument(
        "--difficulty",
        type=float,
        default=1.0,
        help="class contrast k: 0 = no class signal, 1 = seed-like AUCs (default), 2 = easy",
    )
    parser.add_argument(
        "--preset",
        choices=("default", "paper"),
        default="default",
        help="default: 3 x 70 patients, 96 px; paper: 434 patients, 256 px",
    )
    parser.add_argument(
        "--undiagnosed-share",
        type=float,
        default=0.0,
        help="share of each hospital's patients left out of labels.csv (images and contours kept: what "
        "cls-pretrain-rounds learns from; default 0)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from shared.errors import ConfigError
    from simulations.synth.cohort import CohortConfig, generate_cohort

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"OUT_DIR {out} is not empty; choose a new folder or remove it first")
    config = CohortConfig.preset(
        args.preset,
        sites=args.sites,
        patients=args.patients,
        seed=args.seed,
        difficulty=args.difficulty,
        undiagnosed=args.undiagnosed_share,
    )
    summary = generate_cohort(out, config, progress=not args.no_progress and sys.stderr.isatty())
    print(f"{'site':<14}{'patients':>9}{'NPC':>6}{'NPL':>6}{'contoured':>10}{'files':>8}{'MB':>9}")
    for name, row in summary.per_site.items():
        print(
            f"{name:<14}{row['patients']:>9}{row['NPC']:>6}{row['NPL']:>6}{row['contoured']:>10}"
            f"{row['files']:>8}{row['bytes'] / 1e6:>9.1f}"
        )
    total = sum(r["patients"] for r in summary.per_site.values())
    undiagnosed = sum(r["undiagnosed"] for r in summary.per_site.values())
    if undiagnosed:
        print(f"{undiagnosed} patients without a labels.csv row (undiagnosed; _truth/cohort.json keeps their class)")
    print(
        f"total: {total} patients, {summary.files} files, {summary.bytes / 1e6:.1f} MB, "
        f"{summary.seconds:.1f} s -> {out}"
    )
    return 0
