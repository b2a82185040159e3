"""Reader study: models against clinicians on the same patients.

Input CSV, one row per patient: ``patient``, ``truth`` (NPC / NPL, or 0 / 1 with NPL = 1), then any number of
``reader_<name>`` columns (ordinal confidence that the tumour is NPL, e.g. a 5-point scale, higher = more NPL)
and ``model_<name>`` columns (P(NPL) from ``nasofl-site predict``'s summary or a study's test split).

Outputs: AUC with DeLong 95% CI per reader and per model; a paired DeLong test of each model against each reader
(``pROC::roc.test(..., method = "delong", paired = TRUE)``); each reader's sensitivity and specificity at every cut
of their scale (score >= cut means NPL); a ROC figure with the readers' operating points.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import SiteDataError
from shared.metrics.delong import delong_ci, paired_delong_test
from shared.metrics.roc import roc_curve_points

TRUTH = {"NPC": 0, "NPL": 1, "0": 0, "1": 1}


@dataclass
class ReaderTable:
    patients: list[str]
    truth: np.ndarray  # (N,) int 0 NPC / 1 NPL
    readers: dict[str, np.ndarray]  # name -> (N,) float
    models: dict[str, np.ndarray]


def load_reader_csv(path: Path) -> ReaderTable:
    """Read and check the CSV; every error names the file, the row or column and what is expected."""
    path = Path(path)
    if not path.is_file():
        raise SiteDataError(f"reader CSV {path} not found")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SiteDataError(f"{path}: no patient row; expected a header line and one row per patient")
    cols = list(rows[0])
    for need in ("patient", "truth"):
        if need not in cols:
            raise SiteDataError(f"{path}: column {need!r} missing; found {cols}")
    readers = [c for c in cols if c.startswith("reader_")]
    models = [c for c in cols if c.startswith("model_")]
    if not readers or not models:
        raise SiteDataError(
            f"{path}: expected at least one reader_<name> and one model_<name> column; found {cols}"
        )
    truth, values = [], {c: [] for c in readers + models}
    for i, row in enumerate(rows, start=2):
        t = TRUTH.get(row["truth"].strip().upper())
        if t is None:
            raise SiteDataError(f"{path} line {i}: truth {row['truth']!r}; expected NPC, NPL, 0 or 1")
        truth.append(t)
        for c in values:
            try:
                v = float(row[c])
            except (TypeError, ValueError):
                raise SiteDataError(f"{path} line {i}, column {c}: {row[c]!r} is not a number") from None
            if not np.isfinite(v):
                raise SiteDataError(f"{path} line {i}, column {c}: {row[c]!r} is not finite")
            values[c].append(v)
    y = np.asarray(truth, dtype=np.int64)
    if y.sum() < 2 or (len(y) - y.sum()) < 2:
        raise SiteDataError(
            f"{path}: {int(y.sum())} NPL and {int(len(y) - y.sum())} NPC; need at least 2 of each"
        )
    return ReaderTable(
        [r["patient"] for r in rows],
        y,
        {c[len("reader_") :]: np.asarray(values[c]) for c in readers},
        {c[len("model_") :]: np.asarray(values[c]) for c in models},
    )


def operating_points(scores: np.ndarray, truth: np.ndarray) -> list[dict[str, float]]:
    """Sensitivity / specificity at every cut of an ordinal scale (NPL when score >= cut), lowest cut excluded."""
    out = []
    for cut in np.unique(scores)[1:]:
        call = scores >= cut
        out.append(
            {
                "cut": float(cut),
                "sensitivity": float(call[truth == 1].mean()),
                "specificity": float((~call[truth == 0]).mean()),
            }
        )
    return out


def compare(table: ReaderTable) -> dict[str, Any]:
    y = table.truth
    entries: dict[str, Any] = {}
    for kind, group in (("reader", table.readers), ("model", table.models)):
        for name, s in group.items():
            value, lo, hi = delong_ci(s, y)
            entries[name] = {"kind": kind, "auc": value, "ci": [lo, hi]}
            if kind == "reader":
                entries[name]["operating_points"] = operating_points(s, y)
    tests = []
    for m, sm in table.models.items():
        for r, sr in table.readers.items():
            z, p, auc_m, auc_r = paired_delong_test(sm, sr, y)
            tests.append({"model": m, "reader": r, "auc_model": auc_m, "auc_reader": auc_r, "z": z, "p": p})
    return {
        "n_patients": len(y),
        "n_npl": int(y.sum()),
        "n_npc": int(len(y) - y.sum()),
        "auc": entries,
        "paired_delong": tests,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['n_patients']} patients ({result['n_npc']} NPC, {result['n_npl']} NPL)",
        f"{'who':<18} {'kind':<7} {'AUC [DeLong 95% CI]':<24} operating points (cut: sens/spec)",
    ]
    for name, e in result["auc"].items():
        ops = " ".join(
            f">={o['cut']:g}: {o['sensitivity']:.2f}/{o['specificity']:.2f}"
            for o in e.get("operating_points", [])
        )
        auc = f"{e['auc']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]"
        lines.append(f"{name:<18} {e['kind']:<7} {auc:<24} {ops}")
    lines.append("")
    lines.append("paired DeLong test (as pROC roc.test, method='delong', paired=TRUE)")
    lines.append(f"{'model':<18} {'reader':<12} {'dAUC':>7} {'z':>8} {'p':>8}")
    for t in result["paired_delong"]:
        lines.append(
            f"{t['model']:<18} {t['reader']:<12} {t['auc_model'] - t['auc_reader']:>+7.3f} {t['z']:>8.3f} {t['p']:>8.4f}"
        )
    return "\n".join(lines)


def plot_readers(table: ReaderTable, result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=110)
    for name, s in table.models.items():
        fpr, tpr, _ = roc_curve_points(s, table.truth)
        ax.plot(fpr, tpr, lw=1.8, label=f"model {name}: AUC {result['auc'][name]['auc']:.3f}")
    markers = "osD^v<>"
    for i, (name, s) in enumerate(table.readers.items()):
        fpr, tpr, _ = roc_curve_points(s, table.truth)
        line = ax.plot(fpr, tpr, lw=1, ls="--", label=f"reader {name}: AUC {result['auc'][name]['auc']:.3f}")[
            0
        ]
        ops = result["auc"][name]["operating_points"]
        ax.scatter(
            [1 - o["specificity"] for o in ops],
            [o["sensitivity"] for o in ops],
            marker=markers[i % len(markers)],
            color=line.get_color(),
            zorder=3,
        )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity (NPL)")
    ax.set_title("Models vs readers (markers: readers' cuts)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_comparison(csv_path: Path, out: Path) -> tuple[dict[str, Any], str]:
    """Read ``csv_path``, write readers.json, readers_table.txt and readers_roc.png into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = load_reader_csv(csv_path)
    result = compare(table)
    text = format_table(result)
    (out / "readers.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "readers_table.txt").write_text(text + "\n")
    plot_readers(table, result, out / "readers_roc.png")
    return result, text
