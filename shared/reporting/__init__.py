"""Results schema (results.json), ROC / curve plots and the seed-study comparison table."""

from shared.reporting.results import (
    SEED_AUC,
    SEED_CLINICIANS,
    SEED_DICE,
    auc_entry,
    auc_entry_from_histograms,
    results_json,
    write_results,
)
from shared.reporting.table import dataset_label, format_seed_table

__all__ = [
    "SEED_AUC",
    "SEED_CLINICIANS",
    "SEED_DICE",
    "auc_entry",
    "auc_entry_from_histograms",
    "dataset_label",
    "format_seed_table",
    "results_json",
    "write_results",
]
