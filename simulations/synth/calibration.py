"""Calibration of the class contrast (domain reference, section 5.6): in-memory patients, simple features inside
the TRUE tumour mask, 5-fold cross-validated logistic regression per dataset.

Expected at the default difficulty (k = 1): AUC(t1+t2) > AUC(t1ce) > AUC(t1) > AUC(t2), as in the seed study;
a classifier on site-only statistics stays at chance (sites drawn with equal NPL prevalence), and no single cue
comes close to the combined evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import distance_transform_edt

from simulations.synth.latents import ClassContrast
from simulations.synth.sampling import PatientPhantom, synthesize_patient
from simulations.synth.site_profile import VENDOR_ORDER, GridPreset, SiteProfile, draw_site_profiles
from simulations.synth.tumour import FLAG_RATES

SEQUENCES = ("t1", "t2", "t1ce")
DATASETS: dict[str, tuple[str, ...]] = {
    "t1": ("t1",),
    "t2": ("t2",),
    "t1ce": ("t1ce",),
    "t1+t2": ("t1", "t2"),
}
MORPHOLOGY = ("laterality", "log_volume", *(f"flag_{name}" for name in FLAG_RATES))
SITE_ONLY = (
    "log_muscle",
    "noise_rel",
    "bias_z",
    "bias_x",
    "slice_thickness",
    "field_t",
    *(f"vendor_{v}" for v in VENDOR_ORDER),
)
CALIBRATION_GRID = GridPreset(
    matrix=80, pixel_mm=(2.3, 2.6), n_slices=(13, 14), thickness_mm=(4.5, 5.0), gap_mm=(0.0,)
)


def local_muscle(ph: PatientPhantom, radius_mm: float = 40.0) -> np.ndarray:
    """Reference-muscle voxels near the tumour (bool (Z, H, W)): the bias field cancels in the ratio to it."""
    muscle = ph.muscle_mask.astype(bool)
    idx = np.argwhere(ph.mask)
    if len(idx) == 0:
        return muscle
    g = ph.geometry
    scale = np.array([g.slice_spacing, *g.pixel_spacing])
    centre = idx.mean(axis=0)
    grid = np.indices(muscle.shape).reshape(3, -1).T
    near = (np.linalg.norm((grid - centre) * scale, axis=1) < radius_mm).reshape(muscle.shape)
    return muscle & near if (muscle & near).sum() >= 20 else muscle


def tumour_features(ph: PatientPhantom) -> dict[str, float]:
    """Features inside the true mask: per sequence the centre-weighted median log-ratio to muscle (``lr_<seq>``) and
    the interior log-intensity SD (``sd_<seq>``); laterality, log volume (mm^3) and the invasion flags."""
    g = ph.geometry
    spacing = (g.slice_spacing, *g.pixel_spacing)
    mask = ph.mask.astype(bool)
    depth = distance_transform_edt(mask, sampling=spacing)[mask]
    weight = 0.3 + 0.7 * np.minimum(1.0, depth / 4.0)
    muscle = local_muscle(ph)
    out: dict[str, float] = {}
    for seq in SEQUENCES:
        logs = np.log(np.maximum(ph.images[seq], 1e-3))
        ref = float(np.median(logs[muscle]))
        vals = logs[mask]
        order = np.argsort(vals)  # centre-weighted median: robust to necrosis and boundary partial volume
        cum = np.cumsum(weight[order])
        out[f"lr_{seq}"] = float(vals[order][np.searchsorted(cum, cum[-1] / 2)]) - ref
        interior = vals[depth >= 2.0] if (depth >= 2.0).sum() >= 10 else vals
        out[f"sd_{seq}"] = float(interior.std())
    idx = np.argwhere(mask)
    lps = np.c_[idx, np.ones(len(idx))] @ g.affine().T
    anat_x = ph.anatomical(lps[:, :3].astype(np.float32))[:, 0]
    left, right = float((anat_x > 0).sum()), float((anat_x <= 0).sum())
    out["laterality"] = abs(left - right) / max(left + right, 1.0)
    out["log_volume"] = float(np.log(max(mask.sum(), 1) * np.prod(spacing)))
    for name in FLAG_RATES:
        out[f"flag_{name}"] = float(ph.tumour.flags[name])
    return out


def site_features(ph: PatientPhantom, profile: SiteProfile) -> dict[str, float]:
    """Site-only statistics a shortcut learner could use: muscle level, background noise, bias, protocol."""
    img = ph.images["t1"]
    muscle = ph.muscle_mask.astype(bool)
    level = float(np.median(img[muscle]))
    z_half = img.shape[0] // 2
    upper, lower = muscle.copy(), muscle.copy()
    upper[:z_half], lower[z_half:] = False, False
    x_half = img.shape[2] // 2
    left, right = muscle.copy(), muscle.copy()
    left[..., :x_half], right[..., x_half:] = False, False

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.log(np.median(img[a]) / np.median(img[b]))) if a.any() and b.any() else 0.0

    out = {
        "log_muscle": float(np.log(level)),
        "noise_rel": float(img[ph.background_mask.astype(bool)].std() / level),
        "bias_z": ratio(upper, lower),
        "bias_x": ratio(left, right),
        "slice_thickness": profile.slice_thickness_mm,
        "field_t": profile.field_t,
    }
    out.update({f"vendor_{v}": float(profile.vendor == v) for v in VENDOR_ORDER})
    return out


@dataclass
class CalibrationResult:
    """Cross-validated AUCs (NPL positive) per dataset, for site-only statistics, and each single cue's AUC
    (direction-free: max(AUC, 1 - AUC)); ``latent_auc``: the same patients' latent scores (sampling reference)."""

    n_patients: int
    difficulty: float
    dataset_auc: dict[str, float] = field(default_factory=dict)
    site_only_auc: float = 0.5
    cue_auc: dict[str, float] = field(default_factory=dict)
    latent_auc: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            f"calibration: {self.n_patients} patients, difficulty k={self.difficulty:g}",
            "dataset   CV AUC",
        ]
        lines += [f"{name:<9} {auc:.3f}" for name, auc in self.dataset_auc.items()]
        lines.append(f"{'site-only':<9} {self.site_only_auc:.3f}")
        lines.append("latent scores of the same patients (what perfect measurement would give):")
        lines += [f"  {name:<7} {auc:.3f}" for name, auc in self.latent_auc.items()]
        lines.append("single cue AUC (max(AUC, 1-AUC)):")
        lines += [
            f"  {name:<28} {auc:.3f}" for name, auc in sorted(self.cue_auc.items(), key=lambda kv: -kv[1])
        ]
        return "\n".join(lines)


def cv_auc(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """5-fold stratified cross-validated AUC of a standardised logistic regression (NPL = 1 positive)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Mean of per-fold AUCs: pooling the folds' scores biases a no-signal classifier below 0.5 (each fold's
    # model has its own offset), which would hide or fake leakage in the site-only check.
    aucs = []
    for train, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=seed).split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(
            x[train], y[train]
        )
        aucs.append(roc_auc_score(y[test], model.decision_function(x[test])))
    return float(np.mean(aucs))


def sample_calibration_cohort(
    n_patients: int,
    n_sites: int = 3,
    seed: int = 0,
    difficulty: float = 1.0,
    grid: GridPreset = CALIBRATION_GRID,
    npl_fraction: float = 142 / 434,
    progress: bool = False,
) -> tuple[np.ndarray, list[dict[str, float]], list[dict[str, float]]]:
    """Generate patients in memory at sites of equal NPL prevalence; returns (labels, tumour features, site features)."""
    from tqdm import tqdm

    profiles = draw_site_profiles(seed, n_sites, grid, npl_fraction, equal_prevalence=True)
    contrast = ClassContrast(k=difficulty)
    per_site = n_patients // n_sites
    labels, tumour_rows, site_rows = [], [], []
    for profile in tqdm(profiles, desc="calibration sites", disable=not progress):
        # iid labels, not exact per-site counts: with fixed counts a CV training fold's site prevalence is
        # anti-correlated with its test fold's, and a site-only classifier scores below chance.
        site_labels = (
            np.random.default_rng([seed, profile.index, 4242]).random(per_site) < npl_fraction
        ).astype(int)
        for i, label in enumerate(site_labels):
            ph = synthesize_patient(
                profile, int(label), np.random.default_rng([seed, profile.index, i, 17]), contrast
            )
            labels.append(int(label))
            tumour_rows.append(tumour_features(ph))
            site_rows.append(site_features(ph, profile))
            site_rows[-1].update(
                {f"latent_{k}": getattr(ph.latents, k) for k in ("z_t1", "z_t2", "z_t1ce", "m")}
            )
    return np.array(labels), tumour_rows, site_rows


def calibrate(
    n_patients: int = 360,
    n_sites: int = 3,
    seed: int = 0,
    difficulty: float = 1.0,
    grid: GridPreset = CALIBRATION_GRID,
    progress: bool = False,
) -> CalibrationResult:
    """Run the calibration loop and return the AUC table."""
    from sklearn.metrics import roc_auc_score

    y, tumour_rows, site_rows = sample_calibration_cohort(
        n_patients, n_sites, seed, difficulty, grid, progress=progress
    )
    result = CalibrationResult(n_patients=len(y), difficulty=difficulty)
    for name, seqs in DATASETS.items():
        cols = [f"{kind}_{s}" for s in seqs for kind in ("lr", "sd")] + list(MORPHOLOGY)
        x = np.array([[row[c] for c in cols] for row in tumour_rows])
        result.dataset_auc[name] = cv_auc(x, y, seed)
    result.site_only_auc = cv_auc(np.array([[row[c] for c in SITE_ONLY] for row in site_rows]), y, seed)
    latent = {k: np.array([row[f"latent_{k}"] for row in site_rows]) for k in ("z_t1", "z_t2", "z_t1ce", "m")}
    for seq in SEQUENCES:
        result.latent_auc[seq] = cv_auc(np.c_[latent[f"z_{seq}"], latent["m"]], y, seed)
    result.latent_auc["t1+t2"] = cv_auc(np.c_[latent["z_t1"], latent["z_t2"], latent["m"]], y, seed)
    for cue in tumour_rows[0]:
        values = np.array([row[cue] for row in tumour_rows])
        auc = float(roc_auc_score(y, values)) if values.std() > 0 else 0.5
        result.cue_auc[cue] = max(auc, 1.0 - auc)
    return result
