"""``nasofl-site predict BUNDLE STUDY_DIR --out DIR``: the trained models on new patients.

Reads STUDY_DIR (one or more patients' DICOM; never writes there), verifies the bundle (hashes, settings,
architectures), and writes per patient DICOM SEG + RTSTRUCT of the predicted tumour, NPC/NPL probabilities of
every model that can run, Grad-CAM overlays and a one-page report (HTML + PNG); OUT/summary.csv for all.
Exit status: 0 done, 1 refused bundle or unreadable study, 2 bad command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="model bundle folder (OUT/bundle of a study)"
    )
    parser.add_argument(
        "study_dir", type=Path, metavar="STUDY_DIR", help="DICOM of one or more patients (read only)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="result folder (outside STUDY_DIR)"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present"
    )
    parser.add_argument(
        "--salt", default=None, help="pseudonym salt for folder names (default: nasofl's local salt)"
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from client.predict.study import predict_study, summary_rows
    from shared.bundle import load_bundle
    from shared.pseudonym import DEFAULT_SALT
    from shared.training.device import select_device

    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one INFO line per copied module and patient
    bundle = load_bundle(args.bundle)
    device = select_device(args.device)
    runs = predict_study(bundle, args.study_dir, args.out, device, args.salt or DEFAULT_SALT)
    fields, rows = summary_rows(runs, bundle)
    shown = [f for f in fields if f != "not_run"]
    widths = {f: max(len(f), *(len(str(r[f])) for r in rows)) for f in shown}
    print("  ".join(f"{f:<{widths[f]}}" for f in shown))
    for r in rows:
        print("  ".join(f"{str(r[f]):<{widths[f]}}" for f in shown))
        if r["not_run"]:
            print(f"    not run: {r['not_run']}")
    print(f"results: {args.out}/<patient>/report.html, seg.dcm, rtstruct.dcm; table: {args.out}/summary.csv")
    print("decision support, not a diagnosis")
    return 0
