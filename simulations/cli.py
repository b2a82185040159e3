"""``nasofl-sim``: everything one machine can do without hospitals."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shared.cli import run_cli

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("simulations.synth_cmd", "write synthetic DICOM hospitals (one folder per hospital)"),
    "calibrate": (
        "simulations.calibrate_cmd",
        "print the synthetic cohort's class-contrast calibration table",
    ),
    "run": (
        "simulations.run_cmd",
        "federated study on this machine (Flower simulation over synthetic hospitals)",
    ),
    "compare": (
        "simulations.compare_cmd",
        "federated vs centralized (pooled) vs each site alone, side by side",
    ),
    "compare-seeds": (
        "simulations.seeds_cmd",
        "several compare runs (one per cohort seed): per-seed figures, mean and SD, ordering, goals",
    ),
    "privacy-table": (
        "simulations.privacy_table_cmd",
        "utility vs privacy: no DP, local DP at epsilon 8/3/1, central DP on one cohort, side by side",
    ),
    "recipe": (
        "simulations.recipe_cmd",
        "screen classifier settings: cross-validated AUC on synthetic cohorts' train+val patients",
    ),
    "centralized": ("simulations.centralized_cmd", "pooled baseline: seed pipeline on all sites' patients"),
    "readers": (
        "simulations.readers_cmd",
        "reader study on the synthetic cohort: simulated readers vs the models",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "nasofl-sim", "nasofl on one machine: synthetic hospitals, simulations, baselines.", COMMANDS, argv
    )


if __name__ == "__main__":
    sys.exit(main())
