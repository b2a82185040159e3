"""``nasofl-site approve APP [--approved-apps FILE] [--note TEXT]``: record that this site approved an app.

APP is the app folder the site reviewed (built into a FAB exactly as the coordinator's ``flwr run`` builds it) or
a ``.fab`` file. Prints the FAB's SHA-256; with ``--approved-apps`` also appends it to that file, which
``nasofl-site join --approved-apps FILE`` hands to the site's ClientApp launcher (``client.clientapp_gate``).
Only FABs listed there run at this site. Approving a new version means reviewing it and running this again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.cli import EXIT_OK


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "app", type=Path, metavar="APP", help="reviewed app folder (pyproject.toml) or .fab file"
    )
    parser.add_argument(
        "--approved-apps", type=Path, metavar="FILE", help="append the digest to this approved-apps file"
    )
    parser.add_argument("--note", default="", help="what was approved, by whom (kept next to the digest)")


def run(args: argparse.Namespace) -> int:
    from client.approval import app_fab, fab_sha256, record_approval

    digest = fab_sha256(app_fab(args.app))
    print(f"{digest}  {args.app}")
    if args.approved_apps is not None:
        note = args.note or f"{args.app.resolve()}"
        added = record_approval(args.approved_apps, digest, note)
        print(f"{'approved' if added else 'already approved'}: {args.approved_apps}")
    return EXIT_OK
