"""``readers CSV --out DIR``: compare readers' scores with model scores on the same patients.

CSV columns: patient, truth (NPC/NPL or 0/1), reader_<name>... (e.g. 1-5 confidence of NPL), model_<name>...
(P(NPL)). Writes readers.json, readers_table.txt and readers_roc.png; prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "csv", type=Path, metavar="CSV", help="patient,truth,reader_<name>...,model_<name>..."
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    from shared.readers import run_comparison

    _, text = run_comparison(args.csv, args.out)
    print(text)
    print(f"outputs: {args.out}/readers.json, readers_table.txt, readers_roc.png")
    return 0
