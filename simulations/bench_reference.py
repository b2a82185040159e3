"""Screen image-only reference-tissue estimators: how much of the tumour/muscle class evidence each one recovers.

    python -m simulations.bench_reference /work/exp/cohort0 /work/exp/cohort1 /work/exp/cohort2 [--crops]

Per cohort, on the train+val patients (test never loaded; the same patients as ``nasofl-sim recipe``), per
sequence: ``log(centre-weighted tumour median) - log(reference)`` with the tumour from the true contours, for each
estimator of the reference tissue from the image alone. A 5-fold cross-validated logistic regression on the T1WI
and T2WI log-ratios gives one AUC per estimator and cohort. The ceiling ``truth-muscle`` uses the generator's
muscle mask near the tumour (re-synthesised from the cohort's seed; a hospital never has it) and is the only
use of generator truth beyond labels, split and tumour contours. ``err`` is the SD over patients of the
estimator's log reference minus the true one (per sequence): the smaller, the closer to muscle.
``pipeline-reference`` is the estimator of ``roi-intensity = "reference"`` (:mod:`shared.roi.reference_tissue`),
on the largest tumour component(s) as the ROI pipeline keeps them. Diagnostics: ``zscore-cw-median`` is the tumour in
the body z-scored volume (today's crops, no reference), ``plain-mean/near40`` the tumour's plain mean.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt

from shared.config import PipelineConfig
from shared.data.normalise import body_mask, body_zscore
from shared.data.split import patient_split
from shared.roi.crop import largest_components, roi_box, select_slices
from shared.roi.reference_tissue import log_mode, reference_log_level
from simulations.synth.calibration import cv_auc, local_muscle
from simulations.synth.cohort import CohortConfig, cohort_site_profiles, npl_counts, site_plan
from simulations.synth.latents import ClassContrast
from simulations.synth.sampling import synthesize_patient
from simulations.synth.site_profile import GridPreset

SEQUENCES = ("t1", "t2", "t1ce")
Estimator = Callable[[dict], float]


def centre_weighted_median(logs: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """The tumour's log intensity, centre-weighted as the generator's calibration features (0.3 .. 1 by depth)."""
    depth = distance_transform_edt(mask, sampling=spacing)[mask]
    weight = 0.3 + 0.7 * np.minimum(1.0, depth / 4.0)
    vals = logs[mask]
    order = np.argsort(vals)
    cum = np.cumsum(weight[order])
    return float(vals[order][np.searchsorted(cum, cum[-1] / 2)])


def ring_median(ctx: dict) -> float:
    """Today's ``peritumoral``: median of the crop box (margin ``roi-margin``) minus the tumour, chosen slices."""
    kept, cfg, logs = ctx["kept"], ctx["cfg"], ctx["logs"]
    vals = []
    for z in select_slices(kept, cfg.cls.slices_per_patient):
        y0, y1, x0, x1 = roi_box(kept[z], cfg.roi_margin)
        ring = kept[z, y0:y1, x0:x1] == 0
        vals.append(logs[z, y0:y1, x0:x1][ring])
    return float(np.median(np.concatenate(vals))) if vals else float("nan")


def shell(ctx: dict, outer_mm: float, inner_mm: float = 3.0) -> np.ndarray:
    """Body voxels between ``inner_mm`` and ``outer_mm`` from the tumour (3-D distance)."""
    dist = ctx["dist"]
    return (dist > inner_mm) & (dist <= outer_mm) & ctx["body"]


def near_mode(outer_mm: float) -> Estimator:
    return lambda ctx: log_mode(ctx["logs"][shell(ctx, outer_mm)])


def near_band(outer_mm: float, lo: float, hi: float) -> Estimator:
    def f(ctx: dict) -> float:
        v = ctx["logs"][shell(ctx, outer_mm)]
        a, b = np.percentile(v, [lo, hi])
        return float(np.median(v[(v >= a) & (v <= b)]))

    return f


def near_lower_mode(outer_mm: float) -> Estimator:
    """Mode of the shell's voxels below its median: muscle is the darker soft tissue on T2 (fat, mucosa
    brighter)."""

    def f(ctx: dict) -> float:
        v = ctx["logs"][shell(ctx, outer_mm)]
        return log_mode(v[v <= np.median(v)])

    return f


def volume_mode(ctx: dict) -> float:
    return log_mode(ctx["logs"][ctx["body"]])


def slice_mode(ctx: dict) -> float:
    zs = np.nonzero(ctx["kept"].reshape(len(ctx["kept"]), -1).any(axis=1))[0]
    return log_mode(ctx["logs"][zs][ctx["body"][zs]])


def body_median(ctx: dict) -> float:
    return float(np.median(ctx["logs"][ctx["body"]]))


ESTIMATORS: dict[str, Estimator] = {
    "body-median": body_median,
    "ring-median": ring_median,
    "volume-mode": volume_mode,
    "slice-mode": slice_mode,
    "near20-mode": near_mode(20.0),
    "near30-mode": near_mode(30.0),
    "near40-mode": near_mode(40.0),
    "near30-band25-60": near_band(30.0, 25, 60),
    "near40-band25-60": near_band(40.0, 25, 60),
    "near30-lowmode": near_lower_mode(30.0),
    "pipeline-reference": lambda ctx: reference_log_level(ctx["image"], ctx["kept"], ctx["spacing"]),
}


#: not a reference estimator: the body z-scored tumour (what the crops hold today, no log ratio), and the plain
#: tumour mean (no centre weighting) over the near40-mode reference
DIAGNOSTICS = ("zscore-cw-median", "plain-mean/near40")


def cohort_profiles(cohort: Path) -> tuple[CohortConfig, list]:
    raw = json.loads((cohort / "_truth" / "cohort.json").read_text())["config"]
    raw["grid"] = GridPreset(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["grid"].items()})
    raw["patients_per_site"] = tuple(raw["patients_per_site"])
    if raw.get("npl_fraction_per_site") is not None:
        raw["npl_fraction_per_site"] = tuple(raw["npl_fraction_per_site"])
    config = CohortConfig(**raw)
    return config, cohort_site_profiles(config)


def cohort_features(
    cohort: Path,
    cfg: PipelineConfig,
    splits: tuple[str, ...] = ("train", "val"),
    names: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Labels, per estimator name ``(N, 3, 2)`` (per sequence: tumour log, reference log), and each patient's split,
    for the patients whose split is in ``splits`` (default train+val: the test split is not loaded). ``names``:
    the estimators to compute (default all, with ``truth-muscle`` and the diagnostics)."""
    config, profiles = cohort_profiles(cohort)
    contrast = ClassContrast(k=config.difficulty)
    labels: list[int] = []
    kept_splits: list[str] = []
    wanted = names or (*ESTIMATORS, "truth-muscle", *DIAGNOSTICS)
    rows: dict[str, list] = {name: [] for name in wanted}
    for profile, n, n_npl in zip(
        profiles, config.patients_per_site, npl_counts(profiles, config), strict=True
    ):
        plan = site_plan(profile, n, n_npl, config)
        split = patient_split({e["patient_id"]: e["label"] for e in plan})
        for entry in plan:
            if split[entry["patient_id"]] not in splits:
                continue
            a = np.load(cohort / "_truth" / profile.name / f"{entry['patient_id']}.npz")
            mask = a["truth_mask"].astype(bool)
            kept = largest_components(mask)
            spacing = tuple(float(v) for v in a["t1_spacing"])
            dist = distance_transform_edt(~mask, sampling=spacing)
            rng = np.random.default_rng([config.seed, profile.index, entry["index"]])
            phantom = synthesize_patient(profile, entry["label"], rng, contrast)
            if not np.array_equal(phantom.mask, a["truth_mask"]):
                raise RuntimeError(f"{cohort} {entry['patient_id']}: re-synthesis differs from _truth")
            muscle = local_muscle(phantom)
            labels.append(int(a["label"]))
            kept_splits.append(split[entry["patient_id"]])
            per = {name: [] for name in rows}
            for seq in SEQUENCES:
                image = a[f"{seq}_image"]
                logs = np.log(np.maximum(image, 1e-3))
                tumour = centre_weighted_median(logs, mask, spacing)
                ctx = {
                    "image": image,
                    "spacing": spacing,
                    "logs": logs,
                    "kept": kept,
                    "cfg": cfg,
                    "dist": dist,
                    "body": body_mask(image),
                }
                for name, estimate in ESTIMATORS.items():
                    if name in per:
                        per[name].append((tumour, estimate(ctx)))
                if "truth-muscle" in per:
                    per["truth-muscle"].append((tumour, float(np.median(logs[muscle]))))
                if "zscore-cw-median" in per:
                    per["zscore-cw-median"].append(
                        (centre_weighted_median(body_zscore(image), mask, spacing), 0.0)
                    )
                if "plain-mean/near40" in per:
                    per["plain-mean/near40"].append((float(logs[mask].mean()), near_mode(40.0)(ctx)))
            for name in rows:
                rows[name].append(per[name])
    return np.array(labels), {name: np.array(v) for name, v in rows.items()}, np.array(kept_splits)


def crop_medians(cohorts: list[Path]) -> None:
    """What the classifier is given: per ``roi-intensity``, a logistic regression on each patient's median T1WI and
    T2WI crop value inside the tumour (the recipe's crops: true contours, train+val patients)."""
    from shared.roi.datasets import build_roi_datasets
    from simulations.recipe import truth_patients

    for cohort in cohorts:
        patients = truth_patients(cohort)
        masks = {p.pseudonym: p.mask for p in patients}
        for mode in ("body", "peritumoral", "reference"):
            cfg = PipelineConfig.defaults({"datasets": "t1+t2", "roi-intensity": mode})
            ds = build_roi_datasets(masks, patients, cfg.datasets, cfg)[0]["t1+t2"]
            x, inside = ds.images.numpy(), ds.roi_masks.astype(bool)
            feats = []
            for i in range(len(ds.patients)):
                rows = ds.slice_patient == i
                feats.append([np.median(x[rows][:, ch][inside[rows]]) for ch in range(2)])
            value = cv_auc(np.array(feats), ds.labels)
            print(f"{cohort.name} crops roi-intensity={mode:<12} T1WI+T2WI AUC {value:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohorts", nargs="+", type=Path)
    parser.add_argument("--crops", action="store_true", help="instead: the crop-median check (crop_medians)")
    args = parser.parse_args()
    if args.crops:
        crop_medians(args.cohorts)
        return
    cfg = PipelineConfig.defaults({})
    names = (*ESTIMATORS, "truth-muscle", *DIAGNOSTICS)
    aucs: dict[str, dict[str, list[float]]] = {
        n: {d: [] for d in ("t1+t2", "t1ce", "t1", "t2")} for n in names
    }
    errs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for cohort in args.cohorts:
        y, feats, _ = cohort_features(cohort, cfg)
        truth_ref = feats["truth-muscle"][..., 1]
        for name in names:
            lr = feats[name][..., 0] - feats[name][..., 1]
            aucs[name]["t1+t2"].append(cv_auc(lr[:, :2], y))
            aucs[name]["t1"].append(cv_auc(lr[:, :1], y))
            aucs[name]["t2"].append(cv_auc(lr[:, 1:2], y))
            aucs[name]["t1ce"].append(cv_auc(lr[:, 2:3], y))
            errs[name].append(feats[name][..., 1] - truth_ref)
        print(f"{cohort}: {len(y)} patients, {int(y.sum())} NPL", flush=True)
    cohorts = " ".join(f"{c.name[-8:]:>8}" for c in args.cohorts)
    print(f"{'estimator':<18} T1WI+T2WI {cohorts}   mean | mean T1CE   T1WI   T2WI | err t1   t2 t1ce")
    for name in names:
        v = aucs[name]
        err = np.concatenate(errs[name]).std(axis=0)
        cells = " ".join(f"{x:>8.3f}" for x in v["t1+t2"])
        print(
            f"{name:<18}           {cells} {np.mean(v['t1+t2']):>6.3f} |     "
            f"{np.mean(v['t1ce']):>6.3f} {np.mean(v['t1']):>6.3f} {np.mean(v['t2']):>6.3f} | "
            + " ".join(f"{e:.3f}" for e in err)
        )


if __name__ == "__main__":
    main()
