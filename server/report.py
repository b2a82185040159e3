"""The study's outputs in ``out-dir``: results.json, the seed-style table with per-site rows, ROC and per-round
PNGs, the final models (state dicts) with a short model card. Reuses ``shared.reporting``. No Flower here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.pooled_eval import cls_roc, summed_histograms
from shared.config import PipelineConfig
from shared.models import weights_origin
from shared.reporting import (
    auc_entry_from_histograms,
    dataset_label,
    format_seed_table,
    results_json,
    write_results,
)
from shared.reporting.plots import plot_curves, plot_roc

log = logging.getLogger(__name__)


def _auc_entry(stats: list[Mapping[str, object]]) -> dict[str, Any]:
    pos, neg = summed_histograms(stats)
    if pos.sum() == 0 or neg.sum() == 0:
        n = int(pos.sum() + neg.sum())
        return {
            "value": None,
            "ci": [None, None],
            "n_patients": n,
            "n_npl": int(pos.sum()),
            "n_npc": int(neg.sum()),
            "source": "histogram",
            "note": "one class absent: AUC undefined" if n else "no patient (sequence missing or no ROI)",
        }
    return auc_entry_from_histograms(pos.tolist(), neg.tolist())


def build_results(
    study: Mapping[str, Any], cfg: PipelineConfig, federation: Mapping[str, Any], wall_seconds: float
) -> dict[str, Any]:
    tests = study["tests"]
    seg = tests["seg"]
    train_sites = seg["train_sites"]
    auc = {}
    for ds in cfg.datasets:
        if ds in tests:
            auc[ds] = _auc_entry([tests[ds]["sums"][s] for s in train_sites if s in tests[ds]["sums"]])
        else:
            auc[ds] = {"value": None, "ci": [None, None], "n_patients": 0, "note": "dataset not trained"}
    sites: dict[str, Any] = {}
    for info in sorted(study["sites"].values(), key=lambda s: s.name):
        entry: dict[str, Any] = {
            "role": info.role,
            "patients": int(info.counts.get("patients", 0)),
            "dice": seg["per_site"].get(info.name, {}).get("dice"),
            "auc": {},
            "sat_out": dict(study.get("skipped", {}).get(info.name, {})),
        }
        for ds in cfg.datasets:
            if ds in tests and info.name in tests[ds]["sums"]:
                entry["auc"][ds] = _auc_entry([tests[ds]["sums"][info.name]])
        sites[info.name] = entry
    extra = {
        "federation": dict(federation),
        "eval_only_pooled": {
            "dice": seg["external"].get("dice"),
            "auc": {ds: tests[ds]["external"].get("auc") for ds in cfg.datasets if ds in tests},
        },
        "kept_rounds": dict(study.get("kept_rounds", {})),
    }
    results = results_json(
        dice=seg["pooled"].get("dice"),
        auc=auc,
        settings=cfg.to_mapping(),
        weights_origin=weights_origin(cfg.cls),
        classifier_arch=cfg.cls.arch,
        wall_seconds=wall_seconds,
        mode="federated",
        dice_n_patients=int(seg["pooled"].get("num-patients", 0) or 0),
        extra=extra,
    )
    results["sites"] = json.loads(json.dumps(sites, default=lambda o: None).replace("NaN", "null"))
    return results


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{float(v):.3f}"


def site_table(results: Mapping[str, Any], datasets: tuple[str, ...]) -> str:
    head = f"{'site':<16} {'role':<9} {'pat':>4} {'Dice':>6} " + " ".join(
        f"{dataset_label(d):>22}" for d in datasets
    )
    lines = [head, "-" * len(head)]
    for name, e in results.get("sites", {}).items():
        cells = []
        for d in datasets:
            a = e["auc"].get(d)
            if a and a.get("n_patients") == 0:
                cells.append(f"{'no patient':>22}")
            elif not a or a.get("value") is None:
                cells.append(f"{'n/a':>22}")
            else:
                cells.append(
                    f"{_fmt(a['value']) + ' [' + _fmt(a['ci'][0]) + ', ' + _fmt(a['ci'][1]) + ']':>22}"
                )
        lines.append(f"{name:<16} {e['role']:<9} {e['patients']:>4} {_fmt(e['dice']):>6} " + " ".join(cells))
    for name, e in results.get("sites", {}).items():
        for what, reason in e.get("sat_out", {}).items():
            label = "segmenter" if what == "seg" else dataset_label(what)
            lines.append(f"{name} sat out the {label} training rounds: {reason}")
    return "\n".join(lines)


def _num(value: Any) -> float:
    """A run-log value as a float for plotting: None (JSON for NaN) -> NaN, but 0.0 stays 0.0."""
    return float("nan") if value is None else float(value)


def _curves(history: list[dict[str, Any]], out: Path, datasets: tuple[str, ...]) -> list[Path]:
    paths = []
    seg = [h for h in history if h.get("stage") == "seg"]
    if seg:
        series = {
            "val Dice (pooled)": [_num(h["eval_pooled"].get("dice")) for h in seg],
            "train loss": [h["train_metrics"].get("train-loss", np.nan) for h in seg],
        }
        paths.append(plot_curves(series, out / "rounds-seg.png", xlabel="round", title="stage 1: segmenter"))
    series = {}
    for ds in datasets:
        rows = [h for h in history if h.get("stage") == "cls" and h.get("dataset") == ds]
        if rows:
            series[f"val AUC {dataset_label(ds)}"] = [_num(h["eval_pooled"].get("auc")) for h in rows]
    if series:
        paths.append(
            plot_curves(
                series,
                out / "rounds-cls.png",
                xlabel="round",
                ylabel="AUC",
                title="stage 2: classifiers (pooled validation)",
            )
        )
    return paths


def _save_models(study: Mapping[str, Any], out: Path) -> dict[str, str]:
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    saved = {}
    items = [("segmenter", study["seg"])] + [
        (f"classifier-{d.replace('+', 'plus')}", a) for d, a in study["cls"].items()
    ]
    for name, arrays in items:
        path = models / f"{name}.pt"
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, path)
        saved[name] = str(path)
    return saved


def model_card(
    results: Mapping[str, Any], cfg: PipelineConfig, federation: Mapping[str, Any], saved: Mapping[str, str]
) -> str:
    lines = [
        "# nasofl federated models: model card",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Research use only; not a medical device.",
        "",
        "## Training",
        "",
        f"- strategy {federation.get('strategy')}, FedBN {federation.get('fedbn')}, "
        f"{federation.get('seg-rounds')} segmenter rounds x {cfg.seg_epochs} local epoch(s), "
        f"{federation.get('cls-rounds')} classifier rounds x {cfg.cls_epochs} local epoch(s), min-sites "
        f"{federation.get('min-sites')}",
        f"- segmenter U-Net ({cfg.seg.encoder}) on {'+'.join(cfg.seg.in_sequences)}, {cfg.seg.image_size} px",
        f"- classifier {cfg.cls.arch}, weights origin: {results.get('weights_origin')}, ROI {cfg.cls.image_size} px",
        f"- seed {cfg.seed}",
    ]
    for key, kept in results.get("extra", {}).get("kept_rounds", {}).items():
        value = "n/a" if kept.get("value") is None else f"{kept['value']:.3f}"
        lines.append(
            f"- {key}: kept round {kept.get('round')} of {kept.get('of_rounds')} "
            f"({kept.get('rule')}; {kept.get('metric')} {value})"
        )
    lines += [
        "",
        "## Sites (patients)",
        "",
    ]
    for name, e in results.get("sites", {}).items():
        lines.append(f"- {name}: {e['patients']} patients, {e['role']}")
    lines += [
        "",
        "## Test results (pooled over training sites)",
        "",
        "```",
        format_seed_table(results),
        "```",
        "",
        "## Files",
        "",
    ]
    lines += [f"- {k}: `{v}`" for k, v in saved.items()]
    return "\n".join(lines) + "\n"


def _write_bundle(
    study: Mapping[str, Any],
    cfg: PipelineConfig,
    federation: Mapping[str, Any],
    results: Mapping[str, Any],
    out: Path,
) -> Path:
    """The versioned model bundle for ``nasofl-site predict``: kept arrays, settings, validation operating
    points (pooled validation histograms of the training sites), model card. Sites ingest with default
    ingestion settings (node config has no ingestion keys)."""
    from dataclasses import replace

    from shared.bundle import ClassifierExport, TrainingSummary, write_bundle
    from shared.data.settings import IngestSettings
    from shared.models import build_classifier, build_segmenter
    from shared.records import numpy_to_record, record_to_state

    def as_state(arrays: Mapping[str, np.ndarray], model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Arrays as the model holds them (Flower stores 0-d buffers as shape (1,)); checks keys and shapes."""
        return dict(record_to_state(numpy_to_record(arrays), model.state_dict()))

    cls_cfg = replace(cfg.cls, weights="random")  # only shapes matter here
    exports = []
    for ds, arrays in study["cls"].items():
        state = as_state(arrays, build_classifier(cls_cfg, len(cfg.dataset_sequences(ds))))
        val = study["tests"].get(ds, {}).get("val")
        entry = None
        if val is not None:
            entry = _auc_entry([val["sums"][s] for s in val["train_sites"] if s in val["sums"]])
            entry = entry if entry.get("value") is not None else None
        exports.append(ClassifierExport(ds, state, entry, results["auc"].get(ds)))
    sites = [
        {
            "name": info.name,
            "role": info.role,
            "patients": int(info.counts.get("patients", 0)),
            "npc": int(info.counts.get("patients-npc", 0)),
            "npl": int(info.counts.get("patients-npl", 0)),
        }
        for info in sorted(study["sites"].values(), key=lambda s: s.name)
    ]
    training = TrainingSummary(
        mode="federated",
        sites=sites,
        weights_origin=weights_origin(cfg.cls),
        segmenter_test_dice=results.get("dice"),
        details={
            k: federation.get(k) for k in ("strategy", "fedbn", "seg-rounds", "cls-rounds", "min-sites")
        },
    )
    seg_state = as_state(study["seg"], build_segmenter(cfg.seg))
    return write_bundle(out, cfg, IngestSettings(), seg_state, exports, training)


def write_report(
    study: Mapping[str, Any],
    cfg: PipelineConfig,
    federation: Mapping[str, Any],
    history: list[dict[str, Any]],
    out: Path,
    wall_seconds: float,
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = build_results(study, cfg, federation, wall_seconds)
    paths = {"results": write_results(results, out / "results.json")}
    table = format_seed_table(results) + "\n\nper site (test split; eval-only sites: all their patients)\n"
    table += site_table(results, cfg.datasets) + "\n"
    (out / "table.txt").write_text(table)
    paths["table"] = out / "table.txt"
    curves = {}
    for ds in cfg.datasets:
        t = study["tests"].get(ds)
        if t is None:
            continue
        roc = cls_roc([t["sums"][s] for s in t["train_sites"] if s in t["sums"]])
        value = results["auc"][ds].get("value")
        if roc is not None and value is not None:
            curves[ds] = (roc[0], roc[1], float(value))
    if curves:
        paths["roc"] = plot_roc(
            curves, out / "roc.png", title="ROC, federated test (pooled over training sites)"
        )
    for p in _curves(history, out, cfg.datasets):
        paths[p.stem] = p
    saved = _save_models(study, out)
    (out / "models" / "MODEL_CARD.md").write_text(model_card(results, cfg, federation, saved))
    paths["model_card"] = out / "models" / "MODEL_CARD.md"
    paths["bundle"] = _write_bundle(study, cfg, federation, results, out / "bundle")
    log.info("report written to %s", out)
    return paths
