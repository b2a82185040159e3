"""``nasofl-sim recipe``: screen classifier settings by cross-validation on synthetic cohorts (test untouched)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cohorts", nargs="+", metavar="COHORT",
                        help="synthetic cohort folders (`nasofl-sim synth DIR --seed S`), one per cohort seed")  # fmt: skip
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                        help="a named set of pipeline-key changes, e.g. 'aug:cls-augment=flip,shift;roi-margin=8' (repeatable; "
                        "'base:' = no change)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a change for every variant, e.g. --set cls-arch=resnet18 (repeatable)")  # fmt: skip
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    parser.add_argument("--datasets", default="t1+t2", help="classifier datasets (default t1+t2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def parse_variant(text: str) -> tuple[str, dict]:
    from shared.app_config import parse_sets
    from shared.errors import ConfigError

    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise ConfigError(
            f"--variant {text!r}: expected NAME:KEY=VALUE[;KEY=VALUE...] (or NAME: for no change)"
        )
    return name, parse_sets([kv for kv in rest.split(";") if kv]) if rest else {}


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from shared.app_config import parse_sets
    from shared.errors import ConfigError
    from simulations.recipe import cross_validate, format_table

    if args.folds < 2:
        raise ConfigError(f"--folds {args.folds}: expected at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = {"datasets": args.datasets, **parse_sets(args.set)}
    variants = [parse_variant(v) for v in args.variant] or [("base", {})]
    results = []
    for name, changes in variants:
        for cohort in args.cohorts:
            results += cross_validate(Path(cohort), name, changes, base, args.folds)
            print(format_table(results), flush=True)
    return 0
