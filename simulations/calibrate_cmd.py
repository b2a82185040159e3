"""``nasofl-sim calibrate``: print the synthetic cohort's class-contrast calibration table (no files written)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--patients", type=int, default=360, help="patients generated in memory (default 360)"
    )
    parser.add_argument(
        "--sites", type=int, default=3, help="virtual hospitals, equal NPL prevalence (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument(
        "--difficulty",
        type=float,
        nargs="+",
        default=[1.0],
        help="one or more class-contrast values k to tabulate (default 1.0)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from shared.data.synth.calibration import calibrate
    from shared.errors import ConfigError

    if args.patients < 30 * args.sites:
        raise ConfigError(
            f"--patients {args.patients} is too few for 5-fold CV over {args.sites} sites; use >= {30 * args.sites}"
        )
    failed = False
    for k in args.difficulty:
        result = calibrate(args.patients, args.sites, args.seed, k, progress=sys.stderr.isatty())
        print(result.table())
        auc = result.dataset_auc
        if k == 1.0:
            ranked = auc["t1+t2"] > auc["t1ce"] > auc["t1"] > auc["t2"]
            print(
                f"seed ranking t1+t2 > t1ce > t1 > t2: {'yes' if ranked else 'NO'}; "
                f"site-only at chance (|AUC-0.5| <= 0.08): {'yes' if abs(result.site_only_auc - 0.5) <= 0.08 else 'NO'}"
            )
            failed |= not ranked or abs(result.site_only_auc - 0.5) > 0.08
        print()
    return 1 if failed else 0
