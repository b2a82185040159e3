"""``nasofl-site``: what a hospital's IT / imaging team runs."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shared.cli import run_cli

COMMANDS: dict[str, tuple[str, str]] = {
    "validate": (
        "client.validate_cmd",
        "check a site folder (DICOM + labels.csv) before joining a federation",
    ),
    "approve": (
        "client.approve_cmd",
        "print (and record) the SHA-256 of a reviewed app: only approved apps run at this site",
    ),
    "join": (
        "client.node_cmd",
        "validate the site folder, then run this site's Flower SuperNode (TLS + node key)",
    ),
    "clientapp-exec": (
        "client.clientapp_exec_cmd",
        "run the site's ClientApp executor beside a SuperNode joined with --isolation process",
    ),
    "privacy": (
        "client.privacy_cmd",
        "print the site's privacy ledger: epsilon spent on its patients by every study (unit: one patient)",
    ),
    "predict": ("client.predict_cmd", "run a trained model bundle on new patients (SEG, RTSTRUCT, report)"),
    "readers": ("shared.readers.cmd", "compare readers' scores with model scores (AUC, paired DeLong, ROC)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("nasofl-site", "nasofl for a hospital: validate data, run a node.", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
