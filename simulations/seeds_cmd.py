"""``nasofl-sim compare-seeds``: several `nasofl-sim compare` runs (one per cohort seed) side by side."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outs", nargs="+", metavar="OUT",
                        help="--out folders of finished `nasofl-sim compare` runs, one per cohort seed; "
                             "A,B joins the parts of one seed run with different `datasets` "
                             "(refused unless the settings and the segmenter's Dice agree)")  # fmt: skip
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the summary as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from simulations.seeds import format_summary, load_compares, summary

    s = summary(load_compares([Path(o) for o in args.outs]))
    print(format_summary(s))
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2) + "\n")
    return 0
