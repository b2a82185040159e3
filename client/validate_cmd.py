"""``nasofl-site validate SITE_DIR [--json FILE] [--cache DIR] [--show-ids]``: the hospital's first command.

Reads the site folder (never writes into it), prints the validation table and optionally writes the
JSON report. The JSON and log lines carry pseudonyms only; ``--show-ids`` adds raw patient ids to the
printed table, which stays in the hospital (default off).

Exit status: 0 when training can start (warnings allowed), 1 on blocking problems (no labels.csv, no
usable patient, a class without patients, bad site_mapping.json), 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.cli import EXIT_FAILED, EXIT_OK
from shared.data.report import ValidationReport
from shared.data.site import IngestSettings, load_site
from shared.pseudonym import site_salt


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "site_dir", type=Path, metavar="SITE_DIR", help="site folder: labels.csv + DICOM tree"
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the report as JSON (pseudonyms only)"
    )
    parser.add_argument(
        "--cache", type=Path, metavar="DIR", help="ingestion cache folder (makes reruns fast)"
    )
    parser.add_argument(
        "--show-ids",
        action="store_true",
        help="show raw patient ids next to pseudonyms in the printed table (site-local use only; never in JSON)",
    )
    parser.add_argument(
        "--salt",
        help="site pseudonym salt (default: the site's own random salt in <cache>/pseudonym-salt, made on first "
        "use; the cache defaults to <SITE_DIR>/../.nasofl-cache/<site>, as for nasofl-site join)",
    )
    parser.add_argument(
        "--max-problems", type=int, default=200, help="problems listed in the table (all in JSON)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def site_report(site_dir: Path, cache: Path | None, salt: str, progress: bool) -> ValidationReport:
    """Ingest ``site_dir`` for validation only (one patient in memory at a time) and return its report."""
    cohort = load_site(
        site_dir, cache_dir=cache, settings=IngestSettings(), salt=salt, progress=progress, keep_volumes=False
    )
    return cohort.report


def run(args: argparse.Namespace) -> int:
    from client.node_data import default_cache_dir

    salt = args.salt
    if salt is None:
        salt = site_salt(args.cache or default_cache_dir(args.site_dir, args.site_dir.resolve().name))
    report = site_report(args.site_dir, args.cache, salt, not args.no_progress and sys.stderr.isatty())
    print(report.format_table(show_ids=args.show_ids, max_problems=args.max_problems))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json(), encoding="utf-8")
        print(f"JSON report written to {args.json}")
    return EXIT_OK if report.ok else EXIT_FAILED
