"""The centralized baseline: the seed pipeline on all sites' patients pooled on one machine.

Stages (same loops as the federated ClientApp, so the comparison is fair):
1. segmenter trained on train-split patients with masks, epoch selected on validation Dice, Dice on test;
2. masks predicted for every patient, ROI datasets built (T1WI, T2WI, T1CE, T1WI+T2WI...);
3. one classifier per dataset trained on train, epoch selected on validation AUC, AUC [DeLong 95% CI] on test;
4. outputs in OUT: results.json, roc_test.png, curves, Grad-CAM overlays with the core/periphery share,
   models/*.pt and MODEL_CARD.md;
5. the versioned model bundle in OUT/bundle (``shared.bundle``) for ``nasofl-site predict``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.config import PipelineConfig
from shared.data.patient import PatientVolumes
from shared.errors import ModelMismatchError, SiteDataError
from shared.explain.gradcam import cam_layer, core_periphery_share, grad_cam, save_overlay
from shared.metrics.auc import auc
from shared.metrics.roc import roc_curve_points
from shared.models import build_classifier, build_segmenter, weights_origin
from shared.models.ensemble import members_of
from shared.reporting.plots import plot_curves, plot_roc
from shared.reporting.results import auc_entry, results_json, write_results
from shared.reporting.table import dataset_label
from shared.roi.datasets import UNLABELLED_SPLIT, RoiDataset, build_roi_datasets
from shared.training.classification import patient_scores, train_classifier
from shared.training.device import select_device
from shared.training.pretrain import pretrain_backbone
from shared.training.segmentation import evaluate_segmenter, predict_masks, train_segmenter
from shared.training.weight_average import WeightAverage

log = logging.getLogger(__name__)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _both_classes(labels: np.ndarray) -> bool:
    return bool(len(labels) and 0 < int(labels.sum()) < len(labels))


def epoch_of(epoch: int, total: int) -> str:
    return f"{epoch + 1}/{total}"


def timing(t0: float, epoch: int, total: int) -> str:
    """ "12 s elapsed, ~36 s left" after 0-based ``epoch`` of ``total`` (the mean epoch so far, extrapolated)."""
    elapsed = time.perf_counter() - t0
    left = elapsed / (epoch + 1) * max(0, total - epoch - 1)
    return f"{elapsed:.0f} s elapsed, ~{left:.0f} s left"


def run_segmentation_stage(
    patients: Sequence[PatientVolumes], cfg: PipelineConfig, device: torch.device, progress: bool
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train with per-epoch validation Dice; returns the selected model and a summary dict."""
    torch.manual_seed(cfg.seed)
    model = build_segmenter(cfg.seg)
    train = [p for p in patients if p.split == "train" and p.mask is not None]
    val = [p for p in patients if p.split == "val" and p.mask is not None]
    test = [p for p in patients if p.split == "test" and p.mask is not None]
    log.info("segmenter: %s train / %s val / %s test patients with masks", len(train), len(val), len(test))
    history: dict[str, list[float]] = {"train loss": [], "val Dice": []}
    best: dict[str, Any] = {"dice": -1.0, "epoch": -1, "state": None}
    t0 = time.perf_counter()
    # seg-weight-ema: validation and the kept model read the average of the epochs' weights; training goes on
    average = WeightAverage(cfg.seg.weight_ema) if cfg.seg.weight_ema else None
    evaluated = build_segmenter(cfg.seg).to(device) if average is not None else model

    def on_epoch_end(epoch: int, mean_loss: float) -> None:
        history["train loss"].append(mean_loss)
        if average is not None:
            value = average.update({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
            evaluated.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in value.items()})
        if val:
            d = evaluate_segmenter(evaluated, val, cfg, device).dice
            history["val Dice"].append(d)
            log.info(
                "segmenter epoch %s: val Dice %.3f (%s)",
                epoch_of(epoch, cfg.seg_epochs),
                d,
                timing(t0, epoch, cfg.seg_epochs),
            )
            if d > best["dice"]:
                best.update(dice=d, epoch=epoch, state=_cpu_state(evaluated))

    stats = train_segmenter(
        model, train, cfg, device, cfg.seg_epochs, progress=progress, on_epoch_end=on_epoch_end
    )
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    elif average is not None and average.value:  # no validation patients: the last epoch's average
        model.load_state_dict(evaluated.state_dict())
    sums = evaluate_segmenter(model, test, cfg, device) if test else None
    summary = {
        "history": history,
        "selected_epoch": int(best["epoch"]) + 1 if best["state"] is not None else cfg.seg_epochs,
        "test_dice": sums.dice if sums else None,
        "test_n_patients": sums.n_patients if sums else 0,
        "n_train": len(train),
        "loss_first": stats.loss_first,
        "loss_last": stats.loss_last,
        "seconds": stats.seconds,
    }
    return model, summary


def load_segmentation_stage(
    path: Path, patients: Sequence[PatientVolumes], cfg: PipelineConfig, device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Stage 1 from a saved state dict (no training): the model and a summary with its test Dice."""
    model = build_segmenter(cfg.seg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError) as err:
        raise ModelMismatchError(
            f"--segmenter {path}: cannot load it into a U-Net with encoder {cfg.seg.encoder!r} and inputs "
            f"{cfg.seg.in_sequences} ({err}); use the settings of the run that saved it"
        ) from None
    test = [p for p in patients if p.split == "test" and p.mask is not None]
    sums = evaluate_segmenter(model, test, cfg, device) if test else None
    summary = {
        "history": {"train loss": [], "val Dice": []},
        "loaded_from": str(path),
        "test_dice": sums.dice if sums else None,
        "test_n_patients": sums.n_patients if sums else 0,
    }
    return model, summary


def run_classifier(
    ds: RoiDataset, cfg: PipelineConfig, device: torch.device, progress: bool
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one classifier on ``ds``'s train patients (after ``cls-pretrain-epochs`` of contrastive pretraining
    on the crops of the train and the unlabelled patients, labels unread), select the epoch on val AUC, score the
    test patients."""
    torch.manual_seed(cfg.seed)
    train, val, test = ds.subset("train"), ds.subset("val"), ds.subset("test")
    model = build_classifier(cfg.cls, ds.in_channels)
    members = members_of(model)
    pretraining = None
    if cfg.cls.pretrain_epochs > 0:
        unlabelled_too = ds.subset("train", UNLABELLED_SPLIT)
        pre = pretrain_backbone(model, unlabelled_too, cfg, device, cfg.cls.pretrain_epochs, progress=progress)
        pretraining = {"epochs": cfg.cls.pretrain_epochs, "loss_first": pre.loss_first, "loss_last": pre.loss_last,
                       "seconds": pre.seconds}  # fmt: skip
    history: dict[str, list[float]] = {"train loss": [], "val AUC": []}
    best: dict[str, Any] = {"auc": -1.0, "epoch": -1, "state": None}
    val_ok = _both_classes(val.labels)
    t0 = time.perf_counter()

    def on_epoch_end(epoch: int, mean_loss: float) -> None:
        history["train loss"].append(mean_loss)
        if val_ok:
            scores, labels = patient_scores(model, val, cfg, device)
            a = auc(scores, labels)
            history["val AUC"].append(a)
            for i, member in enumerate(members if len(members) > 1 else []):  # cls-ensemble: each member alone
                member_auc = auc(*patient_scores(member, val, cfg, device))
                history.setdefault(f"val AUC member {i + 1}", []).append(member_auc)
            log.info(
                "classifier %s epoch %s: val AUC %.3f (%s patients; %s)",
                ds.name,
                epoch_of(epoch, cfg.cls_epochs),
                a,
                len(labels),
                timing(t0, epoch, cfg.cls_epochs),
            )
            if a > best["auc"]:
                best.update(auc=a, epoch=epoch, state=_cpu_state(model))

    stats = train_classifier(
        model, train, cfg, device, cfg.cls_epochs, progress=progress, on_epoch_end=on_epoch_end
    )
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    summary: dict[str, Any] = {
        # the kept model's operating point on validation: the bundle's decision threshold
        "validation": auc_entry(*patient_scores(model, val, cfg, device)) if val_ok else None,
        "history": history,
        "selected_epoch": int(best["epoch"]) + 1 if best["state"] is not None else cfg.cls_epochs,
        "n_train": len(train.patients),
        "n_val": len(val.patients),
        "loss_first": stats.loss_first,
        "loss_last": stats.loss_last,
        "seconds": stats.seconds,
        "pretraining": pretraining,
    }
    if _both_classes(test.labels):
        scores, labels = patient_scores(model, test, cfg, device)
        summary["entry"] = auc_entry(scores, labels)
        fpr, tpr, _ = roc_curve_points(scores, labels)
        summary["roc"] = (fpr, tpr, summary["entry"]["value"])
    else:
        log.warning(
            "dataset %s: test split lacks one class (%s patients): no AUC", ds.name, len(test.patients)
        )
    return model, summary


def gradcam_stage(
    model: torch.nn.Module, ds: RoiDataset, out_dir: Path, device: torch.device, n_examples: int = 4
) -> dict[str, Any]:
    """Grad-CAM on every test slice (up to 64): core/periphery share of the evidence inside the tumour, as the
    mean over test patients with a 95% bootstrap CI (patients resampled); overlays for a few examples of each
    class (CAM of the true class's evidence)."""
    test = ds.subset("test")
    model.to(device).eval()
    per_patient: dict[int, list[float]] = {}
    written: list[str] = []
    layer_name, layer = cam_layer(model, tuple(test.images.shape[1:])) if len(test) else ("", None)
    for k in range(min(len(test), 64)):
        x, y, i = test[k]
        label = int(y)
        cam = grad_cam(model, x, target_layer=layer, class_sign=1.0 if label == 1 else -1.0)
        c, p = core_periphery_share(cam, test.roi_masks[k])
        if np.isfinite(c):
            per_patient.setdefault(int(i), []).append(c)
        per_class = sum(1 for w in written if w.endswith("NPL.png" if label else "NPC.png"))
        if per_class < (n_examples + 1) // 2:
            name = f"gradcam_{ds.name.replace('+', '_')}_{len(written)}_{'NPL' if label else 'NPC'}.png"
            title = f"{dataset_label(ds.name)} {'NPL' if label else 'NPC'}: core {c:.2f} / periphery {p:.2f}"
            save_overlay(x[0].numpy(), cam, out_dir / name, mask=test.roi_masks[k], title=title)
            written.append(name)
    shares = np.array([np.mean(v) for v in per_patient.values()])
    low, high = bootstrap_mean_ci(shares, seed=0)
    return {
        "dataset": ds.name,
        "layer": layer_name,  # the deepest stage with a feature map of at least MIN_CAM_SIDE pixels a side
        "n_slices": int(sum(len(v) for v in per_patient.values())),
        "n_patients": len(shares),
        "core_share": float(shares.mean()) if len(shares) else None,
        "core_share_ci": [low, high] if len(shares) else None,
        "periphery_share": float(1.0 - shares.mean()) if len(shares) else None,
        "files": written,
    }


def bootstrap_mean_ci(values: np.ndarray, seed: int, n_boot: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` (nan, nan for no values)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def write_model_card(out_dir: Path, results: dict[str, Any], cfg: PipelineConfig) -> Path:
    lines = [
        "# nasofl centralized models",
        "",
        "Two-stage pipeline after Tang et al. 2025: U-Net tumour segmenter, then one ResNet classifier per MRI",
        "dataset on automatic tumour ROIs, telling NPC (0) from NPL (1, positive class).",
        "",
        f"- segmenter: smp U-Net, encoder {cfg.seg.encoder} (random init), inputs {'+'.join(cfg.seg.in_sequences)}, "
        f"{cfg.seg.image_size} px, file models/segmenter.pt",
        f"- classifiers: {results['classifier_arch']}, weights {results['weights_origin']}, "
        f"{cfg.cls.image_size} px ROI crops, {cfg.cls.slices_per_patient} slices per patient, mean of slice "
        "probabilities per patient; files models/classifier_<dataset>.pt",
        f"- test Dice {results['dice']}; test AUC per dataset in results.json (DeLong 95% CI)",
        "- training data: pooled hospitals (synthetic unless --data named real sites); intended use: research",
        "  comparison with the federated run, not clinical use.",
        "- inputs: segmenter slices per-volume z-scored within the body (site scale invariant); classifier crops "
        f"roi-intensity={cfg.roi_intensity}, roi-context={cfg.roi_context}; load with",
        "  shared.models.build_segmenter / build_classifier and the settings in results.json.",
        "",
    ]
    path = out_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def run_centralized(
    patients: Sequence[PatientVolumes],
    cfg: PipelineConfig,
    out_dir: Path,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    segmenter_state: Path | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline on pooled ``patients`` (splits already set); writes outputs; returns results.

    ``segmenter_state``: a saved ``models/segmenter.pt`` of an earlier run with the same segmenter settings:
    stage 1 is then not trained again (its test Dice is re-measured).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    device = select_device(cfg.device)
    labelled = [p for p in patients if p.label is not None]
    log.info("centralized run: %s patients (%s labelled) on %s", len(patients), len(labelled), device)

    if not any(p.split == "train" and p.mask is not None for p in patients):
        raise SiteDataError(
            f"none of {len(patients)} patients is in the train split with a tumour mask: the segmenter needs "
            "contoured training patients (RTSTRUCT or SEG); check the site reports"
        )
    if segmenter_state is None:
        seg_model, seg_summary = run_segmentation_stage(patients, cfg, device, progress)
    else:
        seg_model, seg_summary = load_segmentation_stage(segmenter_state, patients, cfg, device)
    torch.save(_cpu_state(seg_model), out_dir / "models" / "segmenter.pt")
    # with contrastive pretraining the patients without a diagnosis take part in it (their crops only)
    roi_patients = patients if cfg.cls.pretrain_epochs > 0 else labelled
    masks = predict_masks(seg_model, roi_patients, cfg, device, progress=progress)
    datasets, roi_report = build_roi_datasets(
        masks, roi_patients, cfg.datasets, cfg, include_unlabelled=cfg.cls.pretrain_epochs > 0
    )
    for line in roi_report.lines():
        log.info("ROI: %s", line)

    auc_entries: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    cls_summaries: dict[str, Any] = {}
    gradcam: dict[str, Any] = {}
    kept_models: dict[str, torch.nn.Module] = {}
    for name in cfg.datasets:
        ds = datasets[name]
        if len(ds.subset("train")) == 0:
            log.warning("dataset %s: no training ROI; skipped", name)
            continue
        model, summary = run_classifier(ds, cfg, device, progress)
        kept_models[name] = model
        torch.save(_cpu_state(model), out_dir / "models" / f"classifier_{name.replace('+', '_')}.pt")
        if "entry" in summary:
            auc_entries[name] = summary.pop("entry")
            curves[name] = summary.pop("roc")
        cls_summaries[name] = summary
        plot_curves(summary["history"], out_dir / f"curves_{name.replace('+', '_')}.png",
                    title=f"classifier {dataset_label(name)}")  # fmt: skip
        if len(ds.subset("test")):
            gradcam[name] = gradcam_stage(model, ds, out_dir, device)
    if curves:
        plot_roc(curves, out_dir / "roc_test.png", title=f"Test ROC, centralized ({cfg.cls.architecture})")
    if seg_summary["history"]["train loss"]:
        plot_curves(seg_summary["history"], out_dir / "curves_segmenter.png", title="segmenter")

    results = results_json(
        dice=seg_summary["test_dice"],
        auc=auc_entries,
        settings=cfg.to_mapping(),
        weights_origin=weights_origin(cfg.cls),
        classifier_arch=cfg.cls.architecture,
        wall_seconds=time.perf_counter() - t0,
        mode="centralized",
        dice_n_patients=seg_summary["test_n_patients"],
        extra={
            "device": str(device),
            "segmenter": seg_summary,
            "classifiers": cls_summaries,
            "roi_report": roi_report.as_dict(),
            "gradcam": gradcam,
            **(extra or {}),
        },
    )
    write_results(results, out_dir / "results.json")
    write_model_card(out_dir, results, cfg)
    _write_bundle(out_dir / "bundle", cfg, seg_model, kept_models, results, patients)
    return results


def _write_bundle(
    out: Path,
    cfg: PipelineConfig,
    seg_model: torch.nn.Module,
    classifiers: dict[str, torch.nn.Module],
    results: dict[str, Any],
    patients: Sequence[PatientVolumes],
) -> Path:
    """The versioned model bundle for ``nasofl-site predict`` (ingestion settings: the defaults used here)."""
    from shared.bundle import ClassifierExport, TrainingSummary, write_bundle
    from shared.data.settings import IngestSettings

    extra = results["extra"]
    per_site = (extra.get("data") or {}).get("sites") or {
        "pooled (in-process)": {
            "patients": len(patients),
            "npc": sum(1 for p in patients if p.label == 0),
            "npl": sum(1 for p in patients if p.label == 1),
        }
    }
    sites = [{"name": name, "role": "train", **counts} for name, counts in per_site.items()]
    exports = [
        ClassifierExport(
            name,
            _cpu_state(model),
            extra["classifiers"][name].get("validation"),
            results["auc"].get(name),
        )
        for name, model in classifiers.items()
    ]
    training = TrainingSummary(
        mode="centralized",
        sites=sites,
        weights_origin=results["weights_origin"],
        segmenter_test_dice=results["dice"],
        details={"seg-epochs": cfg.seg_epochs, "cls-epochs": cfg.cls_epochs, "seed": cfg.seed},
    )
    return write_bundle(out, cfg, IngestSettings(), _cpu_state(seg_model), exports, training)
