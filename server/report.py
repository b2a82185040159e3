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

from server.config import FederationConfig
from server.outcome import StudyOutcome
from server.pooled_eval import auc_entry, cls_roc
from server.study_bundle import write_study_bundle
from shared import protocol as P
from shared.config import PipelineConfig
from shared.model_files import save_state_file
from shared.models import weights_origin
from shared.reporting import (
    dataset_label,
    format_seed_table,
    results_json,
    write_results,
)
from shared.reporting.plots import plot_curves, plot_roc

log = logging.getLogger(__name__)


def build_results(
    study: StudyOutcome, cfg: PipelineConfig, fed: FederationConfig, wall_seconds: float
) -> dict[str, Any]:
    tests = study.classifier_tests
    seg = study.segmenter_test
    auc = {}
    for ds in cfg.datasets:
        if ds in tests:
            auc[ds] = auc_entry(tests[ds].train_sums())
        else:
            auc[ds] = {"value": None, "ci": [None, None], "n_patients": 0, "note": "dataset not trained"}
    sites: dict[str, Any] = {}
    for info in sorted(study.sites.values(), key=lambda s: s.name):
        entry: dict[str, Any] = {
            "role": info.role,
            "pretraining": info.pretraining,  # its node config: what contrastive pretraining may learn from there
            "patients": int(info.counts.get(P.PATIENTS, 0)),
            "dice": seg.per_site.get(info.name, {}).get("dice"),
            "auc": {},
            "sat_out": dict(study.skipped.get(info.name, {})),
        }
        for ds in cfg.datasets:
            if ds in tests and info.name in tests[ds].sums:
                entry["auc"][ds] = auc_entry([tests[ds].sums[info.name]])
        sites[info.name] = entry
    extra = {
        "federation": fed.to_mapping(),
        "eval_only_pooled": {  # the hospitals that never trained, pooled: an external test
            "sites": sorted(seg.eval_only_sites),
            # sites left out of these figures in some stage: the line names them, no pooled figure hides a gap
            "missing": sorted({s for t in (seg, *tests.values()) for s in t.external_missing()}),
            "dice": seg.external.get("dice"),
            "auc": {
                ds: auc_entry(tests[ds].external_sums())
                for ds in cfg.datasets
                if ds in tests and tests[ds].eval_only_sites
            },
        },
        "kept_rounds": dict(study.kept_rounds),
        "pretrained": list(study.pretrained),
    }
    results = results_json(
        dice=seg.pooled.get("dice"),
        auc=auc,
        settings=cfg.to_mapping(),
        weights_origin=weights_origin(cfg.cls),
        classifier_arch=cfg.cls.architecture,
        wall_seconds=wall_seconds,
        mode="federated",
        dice_n_patients=int(seg.pooled.get("num-patients", 0) or 0),
        extra=extra,
    )
    results["sites"] = json.loads(json.dumps(sites, default=lambda o: None).replace("NaN", "null"))
    return results


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{float(v):.3f}"


def external_line(results: Mapping[str, Any], datasets: tuple[str, ...]) -> str | None:
    """The evaluation-only sites pooled (an external test: hospitals the models never trained on), one line;
    None when the study had no evaluation-only site."""
    external = results.get("extra", {}).get("eval_only_pooled", {})
    if not (external.get("sites") and external.get("auc")):
        return None
    n = max((a.get("n_patients") or 0) for a in external["auc"].values())
    cells = []
    for d in datasets:
        a = external["auc"].get(d)
        if a and a.get("value") is not None:
            cells.append(f"{dataset_label(d)} {_fmt(a['value'])} [{_fmt(a['ci'][0])}, {_fmt(a['ci'][1])}]")
    line = (
        f"external test, evaluation-only site(s) {', '.join(external['sites'])} pooled ({n} patients, never "
        f"trained on): Dice {_fmt(external.get('dice'))}; AUC " + (", ".join(cells) or "n/a")
    )
    if external.get("missing"):
        line += f"; NOT in these figures (no usable test reply): {', '.join(external['missing'])}"
    return line


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
    external = external_line(results, datasets)
    if external:
        lines.append(external)
    if results.get("extra", {}).get("federation", {}).get("secure-aggregation"):
        lines.append(
            "per-site Dice and AUC: not computed (secure-aggregation: the coordinator receives only the sums over "
            "the sites, PRIVACY.md section 6)"
        )
    for name, e in results.get("sites", {}).items():
        for what, reason in e.get("sat_out", {}).items():
            pretraining, _, dataset = what.rpartition(":")  # "cls-pretrain:<dataset>": a pretraining stage
            label = "segmenter" if what == P.STAGE_SEG else dataset_label(dataset)
            rounds = "pretraining rounds" if pretraining else "training rounds"
            lines.append(f"{name} sat out the {label} {rounds}: {reason}")
    return "\n".join(lines)


def _num(value: Any) -> float:
    """A run-log value as a float for plotting: None (JSON for NaN) -> NaN, but 0.0 stays 0.0."""
    return float("nan") if value is None else float(value)


def _curves(history: list[dict[str, Any]], out: Path, datasets: tuple[str, ...]) -> list[Path]:
    paths = []
    seg = [h for h in history if h.get("stage") == P.STAGE_SEG]
    if seg:
        series = {
            "val Dice (pooled)": [_num(h["eval_pooled"].get("dice")) for h in seg],
            "train loss": [h["train_metrics"].get("train-loss", np.nan) for h in seg],
        }
        paths.append(plot_curves(series, out / "rounds-seg.png", xlabel="round", title="stage 1: segmenter"))
    series = {}
    for ds in datasets:
        rows = [h for h in history if h.get("stage") == P.STAGE_CLS and h.get("dataset") == ds]
        if rows:
            series[f"val AUC {dataset_label(ds)}"] = [_num(h["eval_pooled"].get("auc")) for h in rows]
    pretraining = {}
    for ds in datasets:
        rows = [h for h in history if h.get("stage") == P.STAGE_CLS_PRETRAIN and h.get("dataset") == ds]
        if rows:
            key = f"contrastive loss {dataset_label(ds)}"
            pretraining[key] = [_num(h["train_metrics"].get("train-loss")) for h in rows]
    if pretraining:
        paths.append(
            plot_curves(
                pretraining,
                out / "rounds-pretrain.png",
                xlabel="round",
                ylabel="mean contrastive loss at the sites",
                title="classifier backbones: contrastive pretraining (no labels)",
            )
        )
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


def _save_models(study: StudyOutcome, out: Path) -> dict[str, str]:
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    saved = {}
    items = [("segmenter", study.segmenter)] + [
        (f"classifier-{d.replace('+', 'plus')}", a) for d, a in study.classifiers.items()
    ]
    for name, arrays in items:
        path = models / f"{name}.pt"
        save_state_file(path, {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        saved[name] = str(path)
    return saved


def model_card(
    results: Mapping[str, Any], cfg: PipelineConfig, fed: FederationConfig, saved: Mapping[str, str]
) -> str:
    lines = [
        "# nasofl federated models: model card",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Research use only; not a medical device.",
        "",
        "## Training",
        "",
        f"- strategy {fed.strategy}, FedBN {fed.fedbn}, "
        f"{fed.seg_rounds} segmenter rounds x {cfg.seg_epochs} local epoch(s), "
        f"{fed.cls_rounds} classifier rounds x {cfg.cls_epochs} local epoch(s), min-sites "
        f"{fed.min_sites}",
        f"- segmenter U-Net ({cfg.seg.encoder}) on {'+'.join(cfg.seg.in_sequences)}, {cfg.seg.image_size} px",
        f"- classifier {cfg.cls.architecture}, weights origin: {results.get('weights_origin')}, ROI {cfg.cls.image_size} px, "
        f"roi-intensity {cfg.roi_intensity}, roi-context {cfg.roi_context}",
        f"- seed {cfg.seed}",
    ]
    pretrained = results.get("extra", {}).get("pretrained") or []
    if pretrained:
        lines.append(
            f"- classifier backbones pretrained by contrastive learning on the sites' unlabelled ROI crops "
            f"({fed.cls_pretrain_rounds} rounds x {cfg.cls.pretrain_epochs} local epoch(s)) before their "
            f"supervised rounds: {', '.join(pretrained)}"
        )
    if results.get("privacy"):
        from server.privacy import privacy_lines

        lines += [f"- {line.strip()}" for line in privacy_lines(results["privacy"])]
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
    ]
    external = external_line(results, cfg.datasets)
    if external:
        lines += ["## External test", "", external, ""]
    lines += [
        "## Files",
        "",
    ]
    lines += [f"- {k}: `{v}`" for k, v in saved.items()]
    return "\n".join(lines) + "\n"


def write_report(
    study: StudyOutcome,
    cfg: PipelineConfig,
    fed: FederationConfig,
    history: list[dict[str, Any]],
    out: Path,
    wall_seconds: float,
    privacy: dict[str, Any] | None = None,
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = build_results(study, cfg, fed, wall_seconds)
    if privacy is not None:
        results["privacy"] = privacy  # server.privacy.privacy_summary: every epsilon with its unit
    paths = {"results": write_results(results, out / "results.json")}
    table = format_seed_table(results) + "\n\nper site (test split; eval-only sites: all their patients)\n"
    table += site_table(results, cfg.datasets) + "\n"
    if privacy is not None:
        from server.privacy import privacy_lines

        table += "\n" + "\n".join(privacy_lines(privacy)) + "\n"
    (out / "table.txt").write_text(table)
    paths["table"] = out / "table.txt"
    curves = {}
    for ds in cfg.datasets:
        t = study.classifier_tests.get(ds)
        if t is None:
            continue
        roc = cls_roc(t.train_sums())
        value = results["auc"][ds].get("value")
        if roc is not None and value is not None:
            curves[ds] = (roc[0], roc[1], float(value))
    if curves:
        paths["roc"] = plot_roc(
            curves, out / "roc.png", title="ROC, federated test (pooled over training sites)"
        )
    external = results["extra"]["eval_only_pooled"]
    ext_curves = {}
    for ds, entry in external["auc"].items():
        roc = cls_roc(study.classifier_tests[ds].external_sums())
        if roc is not None and entry.get("value") is not None:
            ext_curves[ds] = (roc[0], roc[1], float(entry["value"]))
    if ext_curves:
        paths["roc-external"] = plot_roc(
            ext_curves,
            out / "roc-external.png",
            title=f"ROC, external test ({', '.join(external['sites'])}: never trained on)",
        )
    for p in _curves(history, out, cfg.datasets):
        paths[p.stem] = p
    saved = _save_models(study, out)
    (out / "models" / "MODEL_CARD.md").write_text(model_card(results, cfg, fed, saved))
    paths["model_card"] = out / "models" / "MODEL_CARD.md"
    paths["bundle"] = write_study_bundle(study, cfg, fed, results, out / "bundle", privacy)
    log.info("report written to %s", out)
    return paths
