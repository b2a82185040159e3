"""One patient through a bundle's models: tumour mask, ROI crops, NPC/NPL probability per runnable classifier,
Grad-CAM of the recommended model with the tumour centre vs periphery share. The same code paths as training (``shared.training``,
``shared.roi``), so a patient is preprocessed exactly as the validation patients were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.bundle import ModelBundle
from shared.data.patient import PatientVolumes
from shared.explain.gradcam import cam_layer, core_periphery_share, grad_cam, save_overlay
from shared.reporting.table import dataset_label
from shared.roi.crop import largest_components
from shared.roi.datasets import build_roi_datasets
from shared.training.classification import patient_scores
from shared.training.segmentation import predict_volume

log = logging.getLogger(__name__)


@dataclass
class ModelOutput:
    """One classifier's answer. ``probability``: P(NPL) in [0, 1]; ``call``: "NPL" / "NPC" at ``threshold``."""

    dataset: str
    probability: float
    threshold: float | None
    call: str | None
    sensitivity: float | None
    specificity: float | None
    validated_auc: float | None
    validated_ci: tuple[float, float] | None
    core_share: float | None = None
    periphery_share: float | None = None
    overlay: str | None = None


@dataclass
class PatientPrediction:
    pseudonym: str
    mask: np.ndarray | None  # uint8 (Z, H, W) on the patient's grid, largest component(s); None: not run
    tumour_voxels: int
    tumour_ml: float
    outputs: dict[str, ModelOutput] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)  # dataset or "segmenter" -> reason
    recommended: str | None = None
    recommended_reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def tumour_found(self) -> bool:
        return self.tumour_voxels > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "patient": self.pseudonym,
            "tumour_found": self.tumour_found,
            "tumour_voxels": self.tumour_voxels,
            "tumour_ml": self.tumour_ml,
            "recommended": self.recommended,
            "recommended_reason": self.recommended_reason,
            "models": {k: vars(v) for k, v in self.outputs.items()},
            "not_run": dict(self.not_run),
            "notes": list(self.notes),
        }


def _gradcam(
    model: torch.nn.Module, ds: Any, call: str | None, out_dir: Path, dataset: str
) -> tuple[float | None, float | None, str | None]:
    """Mean core / periphery share over the patient's ROI slices; overlay of the largest-tumour slice."""
    sign = -1.0 if call == "NPC" else 1.0  # evidence for the class the model calls
    cores, peris, best = [], [], (-1, None, None)
    layer = cam_layer(model, tuple(ds.images.shape[1:]))[1] if len(ds) else None
    for k in range(len(ds)):
        x, _, _ = ds[k]
        cam = grad_cam(model, x, target_layer=layer, class_sign=sign)
        c, p = core_periphery_share(cam, ds.roi_masks[k])
        if np.isfinite(c):
            cores.append(c)
            peris.append(p)
        area = int(ds.roi_masks[k].sum())
        if area > best[0]:
            best = (area, x[0].numpy(), cam, k)
    if best[1] is None:
        return None, None, None
    core = float(np.mean(cores)) if cores else None
    peri = float(np.mean(peris)) if peris else None
    name = f"gradcam_{dataset.replace('+', '_')}.png"
    title = f"{dataset_label(dataset)}: evidence for {call or 'NPL'}"
    if core is not None:
        title += f"\ncore {core:.2f} / periphery {peri:.2f}"
    save_overlay(best[1], best[2], out_dir / name, mask=ds.roi_masks[best[3]], title=title)
    return core, peri, name


def no_roi_reason(dataset: str, no_reference: bool, roi_intensity: str) -> str:
    """Why ``dataset``'s classifier could not score a patient whose segmenter found a tumour."""
    if no_reference:
        return (
            f"no tissue around the predicted tumour to reference the {dataset_label(dataset)} intensities to "
            f"(roi-intensity={roi_intensity!r}): check the tumour mask in the overlay; the segmentation may have "
            "covered the whole region"
        )
    return f"no ROI slice could be cut from the predicted tumour mask for {dataset_label(dataset)}"


def predict_patient(
    bundle: ModelBundle, patient: PatientVolumes, device: torch.device, out_dir: Path
) -> PatientPrediction:
    """Run the bundle on ``patient`` (label unused); Grad-CAM overlays go to ``out_dir``."""
    cfg = bundle.cfg
    voxel_ml = float(np.prod(patient.spacing_mm)) / 1000.0
    result = PatientPrediction(patient.pseudonym, None, 0, 0.0)
    missing_seg = [s for s in cfg.seg.in_sequences if s not in patient.images]
    if missing_seg:
        reason = f"the segmenter needs {'+'.join(cfg.seg.in_sequences)}; missing {', '.join(missing_seg)}"
        result.not_run["segmenter"] = reason
        for ds in bundle.classifiers:
            result.not_run[ds] = "no tumour mask (" + reason + ")"
        return result
    raw = predict_volume(bundle.segmenter, patient, cfg, device)
    mask = largest_components(raw)
    result.mask = mask
    result.tumour_voxels = int(mask.sum())
    result.tumour_ml = round(result.tumour_voxels * voxel_ml, 3)
    if not result.tumour_found:
        result.notes.append("the segmenter found no tumour: no classifier was run (no ROI to classify)")
        for ds in bundle.classifiers:
            result.not_run[ds] = "no tumour found by the segmenter"
        return result
    runnable = []
    for ds in bundle.classifiers:
        missing = [s for s in cfg.dataset_sequences(ds) if s not in patient.images]
        if missing:
            result.not_run[ds] = f"sequence {', '.join(missing)} missing in this study"
        else:
            runnable.append(ds)
    # labels are not used for scoring: build_roi_datasets keeps labelled patients only
    scored = replace(patient, label=0, split="test")
    roi, roi_report = build_roi_datasets({patient.pseudonym: mask}, [scored], tuple(runnable), cfg)
    for ds in runnable:
        if len(roi[ds]) == 0:  # the crops could not be cut: say why instead of scoring nothing
            result.not_run[ds] = no_roi_reason(ds, roi_report.no_reference.get(ds, 0) > 0, cfg.roi_intensity)
            continue
        model = bundle.classifiers[ds].to(device)
        scores, _ = patient_scores(model, roi[ds], cfg, device)
        prob = float(scores[0])
        val = bundle.validation(ds) or {}
        thr = val.get("threshold")
        call = None if thr is None else ("NPL" if prob >= thr else "NPC")
        out = ModelOutput(
            ds,
            prob,
            thr,
            call,
            val.get("sensitivity"),
            val.get("specificity"),
            val.get("value"),
            tuple(val["ci"]) if val.get("ci") else None,
        )
        result.outputs[ds] = out
    rec = bundle.recommended
    reason = bundle.card.get("recommended_reason", "")
    if rec in result.outputs:
        result.recommended, result.recommended_reason = rec, reason
    else:
        rated = [(d, o.validated_auc) for d, o in result.outputs.items() if o.validated_auc is not None]
        if rated:
            result.recommended = max(rated, key=lambda r: r[1])[0]
            why = (
                f"{dataset_label(rec)} cannot run ({result.not_run.get(rec, 'no validated AUC')})"
                if rec
                else reason
            )
            result.recommended_reason = f"best validated AUC among the models that can run ({why})"
    # Grad-CAM for the model the report leads with (for every model it doubled the CPU time per patient)
    shown = result.recommended or next((d for d in runnable if d in result.outputs), None)
    if shown is not None:
        out = result.outputs[shown]
        model = bundle.classifiers[shown]
        out.core_share, out.periphery_share, out.overlay = _gradcam(
            model, roi[shown], out.call, out_dir, shown
        )
    return result
