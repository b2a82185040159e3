"""``nasofl-site privacy SITE_CACHE [--budget EPS] [--delta D] [--accountant rdp|prv] [--json]``: the site's ledger.

Prints every DP-SGD round recorded in ``SITE_CACHE/privacy-ledger.json`` (study, stage, dataset, steps, sampling
rate, noise, clipping), the epsilon of each study and the site's total over all studies (unit: one patient),
and with ``--budget`` what remains. Exit status 1 when the folder has no ledger (nothing recorded there:
check the path, it is the node's cache-path).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from shared.cli import EXIT_FAILED, EXIT_OK
from shared.privacy.ledger import LEDGER_NAME, UNIT_PATIENT, PrivacyLedger


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "site_cache", type=Path, metavar="SITE_CACHE", help="the node's cache folder (cache-path)"
    )
    parser.add_argument(
        "--budget", type=float, help="the site's total budget (node config privacy-budget-epsilon)"
    )
    parser.add_argument(
        "--delta", type=float, help="delta of the totals (default: the smallest delta recorded)"
    )
    parser.add_argument(
        "--accountant", choices=("rdp", "prv"), default="rdp", help="accountant of the totals"
    )
    parser.add_argument("--json", action="store_true", help="print the entries and totals as JSON")


def run(args: argparse.Namespace) -> int:
    path = args.site_cache / LEDGER_NAME
    if not path.exists():
        print(
            f"no privacy ledger at {path}: this cache folder has recorded no DP training (check SITE_CACHE)"
        )
        return EXIT_FAILED
    ledger = PrivacyLedger(args.site_cache)
    if args.json:
        delta = args.delta if args.delta is not None else min((e.delta for e in ledger.entries), default=1e-5)
        total = ledger.epsilon(delta, args.accountant)
        print(
            json.dumps(
                {
                    "unit": UNIT_PATIENT,
                    "delta": delta,
                    "epsilon_total": total,
                    "budget": args.budget,
                    "epsilon_left": None if args.budget is None else max(0.0, args.budget - total),
                    "entries": [asdict(e) for e in ledger.entries],
                },
                indent=1,
            )
        )
        return EXIT_OK
    print("\n".join(ledger.lines(args.delta, args.accountant, args.budget)))
    return EXIT_OK
