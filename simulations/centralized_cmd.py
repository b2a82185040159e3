"""``nasofl-sim centralized``: the pooled baseline (all hospitals' patients on one machine)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("default", "paper", "toy"), default="default",
                        help="default: ResNet101 on 2 CPU cores in < 15 min; paper: 224 px, for a GPU; toy: tests")  # fmt: skip
    parser.add_argument("--out", default="out/centralized", help="output folder (default out/centralized)")
    parser.add_argument("--data", default=None,
                        help="folder of site folders (each with DICOM + labels.csv); default: generate the "
                        "synthetic hospitals into OUT/cohort")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline setting, e.g. --set cls-arch=resnet18 (repeatable)")  # fmt: skip
    parser.add_argument(
        "--sites", type=int, default=None, help="synthetic hospitals to generate (default: preset)"
    )
    parser.add_argument("--patients", type=int, default=None, help="patients per synthetic hospital")
    parser.add_argument("--segmenter", default=None, metavar="PT",
                        help="reuse a trained segmenter (models/segmenter.pt of an earlier run, same settings)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from shared.app_config import parse_sets
    from shared.reporting.table import format_seed_table
    from simulations.centralized import run_centralized
    from simulations.cohort_loading import load_or_generate
    from simulations.presets import preset_config

    cfg = preset_config(args.preset, parse_sets(args.set))
    out = Path(args.out)
    progress = not args.no_progress and sys.stderr.isatty()
    patients, source = load_or_generate(
        out,
        Path(args.data) if args.data else None,
        args.preset,
        args.sites,
        args.patients,
        cfg.seed,
        progress,
    )
    results = run_centralized(
        patients,
        cfg,
        out,
        progress=progress,
        extra={"data": source},
        segmenter_state=Path(args.segmenter) if args.segmenter else None,
    )
    print(format_seed_table(results))
    for gc in (results["extra"].get("gradcam") or {}).values():
        if gc.get("core_share") is not None:
            low, high = gc["core_share_ci"]
            print(f"Grad-CAM {gc['dataset']} ({gc['n_patients']} test patients): core share {gc['core_share']:.2f} "
                  f"(95% CI {low:.2f}-{high:.2f}) of the evidence inside the tumour; the seed found centre > periphery")  # fmt: skip
    print(f"outputs: {out}/results.json, roc_test.png, gradcam_*.png, models/, MODEL_CARD.md")
    return 0
