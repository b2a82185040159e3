"""What the data holds on a cohort's test (or validation) split: a logistic regression on two hand features per sequence.

    python -m simulations.feature_ceiling /work/exp/big0 /work/exp/big1 ...
    python -m simulations.feature_ceiling --split val /work/exp/big0 ...   # the test split is not even read

Per synthetic cohort (a folder written by ``nasofl-sim synth``, with ``_truth``), per dataset (T1WI, T2WI, T1CE,
T1WI+T2WI): a standardised logistic regression on each patient's tumour log-ratio to a reference tissue (the
tumour's centre-weighted median, from the TRUE contours), fitted on the train+val patients and scored on the test
patients, the same split every classifier of the pipeline is tested on. Two references: ``reference`` is the
estimator behind ``roi-intensity = "reference"`` (from the image alone, as a site has it); ``truth-muscle`` is
the generator's own muscle near the tumour (a ceiling no site has). The deep classifiers' test AUC on the same
patients can be read against these rows: a gap is what the network leaves on the table, and where the hand
features themselves score low on a cohort's test split, that split is hard for any model.

This reads the test split: it is a diagnostic of the cohort, not a way to choose settings (``nasofl-sim recipe``
and ``bench_reference`` keep to train+val). ``--split val`` is the one to read a classifier's validation AUC
against when choosing settings: the regression is then fitted on the train patients only and scored on the
validation patients, and the test patients are never loaded.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from shared.config import PipelineConfig
from shared.metrics.delong import delong_ci
from simulations.bench_reference import cohort_features

#: dataset -> columns of the per-sequence features (t1, t2, t1ce)
DATASET_COLUMNS: dict[str, list[int]] = {"t1": [0], "t2": [1], "t1ce": [2], "t1+t2": [0, 1]}
#: printed name -> estimator name in :func:`simulations.bench_reference.cohort_features`
REFERENCES: dict[str, str] = {"reference": "pipeline-reference", "truth-muscle": "truth-muscle"}


#: scored split -> the splits the regression is fitted on
FITTED_ON: dict[str, tuple[str, ...]] = {"test": ("train", "val"), "val": ("train",)}


def held_out_auc(x_fit: np.ndarray, y_fit: np.ndarray, x_held: np.ndarray, y_held: np.ndarray) -> tuple[float, float, float]:
    """(AUC, CI low, CI high) on the scored (held-out) patients of a logistic regression fitted on the others."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x_fit, y_fit)
    return delong_ci(model.decision_function(x_held), y_held)


def cohort_ceiling(cohort: Path, split: str = "test") -> dict[str, dict[str, tuple[float, float, float]]]:
    """{reference: {dataset: (AUC, low, high)}} on ``cohort``'s ``split`` ("test": fitted on train+val; "val":
    fitted on train, and the test patients are not loaded)."""
    if split not in FITTED_ON:
        raise ValueError(f"split {split!r} is not scored here: expected one of {', '.join(FITTED_ON)}")
    y, feats, splits = cohort_features(
        cohort, PipelineConfig.defaults({}), splits=(*FITTED_ON[split], split), names=tuple(REFERENCES.values())
    )
    held_out = splits == split
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for printed, name in REFERENCES.items():
        log_ratio = feats[name][..., 0] - feats[name][..., 1]
        out[printed] = {
            dataset: held_out_auc(
                log_ratio[~held_out][:, cols], y[~held_out], log_ratio[held_out][:, cols], y[held_out]
            )
            for dataset, cols in DATASET_COLUMNS.items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohorts", nargs="+", type=Path)
    parser.add_argument(
        "--split", choices=tuple(FITTED_ON), default="test",
        help="test (fitted on train+val; a diagnostic only) or val (fitted on train; the test split is not read)",
    )
    args = parser.parse_args()
    table: dict[str, dict[str, list[float]]] = {r: {d: [] for d in DATASET_COLUMNS} for r in REFERENCES}
    for cohort in args.cohorts:
        result = cohort_ceiling(cohort, args.split)
        for ref, per in result.items():
            cells = ", ".join(f"{d} {a:.3f} [{lo:.2f}, {hi:.2f}]" for d, (a, lo, hi) in per.items())
            print(f"{cohort}: {ref:<12} {cells}", flush=True)
            for d, (a, _, _) in per.items():
                table[ref][d].append(a)
    print(f"mean over {len(args.cohorts)} cohort(s), {args.split} split:")
    for ref, per in table.items():
        print(f"  {ref:<12} " + "  ".join(f"{d} {statistics.mean(v):.3f}" for d, v in per.items()))


if __name__ == "__main__":
    main()
