"""The one-page patient report of ``nasofl-site predict``: HTML, and the same content as a PNG (matplotlib).

It states what the models are, where and on how many patients they were trained, their validated AUC with 95% CI,
each runnable model's probability and call at its validation operating point, which model the bundle recommends
and why, the Grad-CAM overlays, and that this is decision support, not a diagnosis.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from client.predict.inference import ModelOutput, PatientPrediction
from shared.bundle import ModelBundle
from shared.bundle.writer import dp_text
from shared.reporting.table import dataset_label

DISCLAIMER = "Decision support, not a diagnosis. A clinician decides; check the contours before any use."


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def training_lines(bundle: ModelBundle) -> list[str]:
    card = bundle.card
    sites = card["sites"]
    n = sum(int(s.get("patients", 0)) for s in sites)
    npc = sum(int(s.get("npc", 0)) for s in sites)
    npl = sum(int(s.get("npl", 0)) for s in sites)
    where = ", ".join(f"{s['name']} ({s.get('patients')})" for s in sites)
    return [
        f"Models: U-Net tumour segmenter ({bundle.cfg.seg.encoder}, on {'+'.join(bundle.cfg.seg.in_sequences)}), "
        f"then one {card['classifier_architecture']} NPC/NPL classifier per MRI input "
        f"(weights origin: {card['weights_origin']}).",
        f"Trained {card['mode']} on {n} patients ({npc} NPC, {npl} NPL) at {len(sites)} site(s): {where}.",
        f"Differential privacy: {dp_text(card['dp'])}. Bundle {card['code_version']}, settings "
        f"{card['settings_fingerprint'][:12]}.",
    ]


def model_rows(bundle: ModelBundle, pred: PatientPrediction) -> list[list[str]]:
    """Table rows: model, P(NPL), call, validated AUC [CI], operating point, core/periphery."""
    rows = []
    for ds, info in bundle.card["classifiers"].items():
        val = info.get("validation") or {}
        auc = f"{_f(val.get('value'))} [{_f(val['ci'][0])}, {_f(val['ci'][1])}]" if val.get("ci") else "n/a"
        out: ModelOutput | None = pred.outputs.get(ds)
        name = dataset_label(ds) + (" *" if ds == pred.recommended else "")
        if out is None:
            rows.append([name, "not run", pred.not_run.get(ds, ""), auc, "", ""])
            continue
        op = f"thr {_f(out.threshold)}: sens {_f(out.sensitivity, 2)} / spec {_f(out.specificity, 2)}"
        cp = f"{_f(out.core_share, 2)} / {_f(out.periphery_share, 2)}"
        rows.append([name, _f(out.probability), out.call or "no threshold", auc, op, cp])
    return rows


HEADER = [
    "model",
    "P(NPL)",
    "call",
    "validated AUC [95% CI]",
    "operating point (validation)",
    "CAM core / periph.",
]


def _verdict(pred: PatientPrediction) -> str:
    if "segmenter" in pred.not_run:
        return f"Segmenter not run: {pred.not_run['segmenter']}. No classification."
    if not pred.tumour_found:
        return "No tumour found by the segmenter: no classifier output (nothing to classify)."
    if pred.recommended is None:
        return "No model with a validated AUC could run."
    out = pred.outputs[pred.recommended]
    return (
        f"Recommended model {dataset_label(pred.recommended)}: P(NPL) = {out.probability:.3f}, "
        f"{out.call or 'no call'} at its validation threshold ({pred.recommended_reason})."
    )


def write_html(bundle: ModelBundle, pred: PatientPrediction, path: Path, extra: dict[str, Any]) -> Path:
    e = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in model_rows(bundle, pred)
    )
    imgs = "".join(
        f'<figure><img src="{e(o.overlay)}" width="220"><figcaption>{e(dataset_label(d))}</figcaption></figure>'
        for d, o in pred.outputs.items()
        if o.overlay
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in pred.notes + [f"{k}: {v}" for k, v in extra.items()])
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>nasofl report {e(pred.pseudonym)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:3px 6px;font-size:90%}} .warn{{background:#fee;padding:6px;font-weight:bold}}
figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>NPC vs NPL: model report for patient {e(pred.pseudonym)}</h1>
<p class="warn">{e(DISCLAIMER)}</p>
<p><b>{e(_verdict(pred))}</b></p>
<p>Tumour found: {"yes" if pred.tumour_found else "no"}; predicted volume {pred.tumour_ml} ml ({pred.tumour_voxels} voxels);
contours in seg.dcm (DICOM SEG) and rtstruct.dcm (RTSTRUCT).</p>
<table><tr>{"".join(f"<th>{e(h)}</th>" for h in HEADER)}</tr>{rows}</table>
<p>* recommended by the bundle: {e(bundle.card.get("recommended_reason", ""))}</p>
{imgs}
<h2>About the models</h2><ul>{"".join(f"<li>{e(t)}</li>" for t in training_lines(bundle))}</ul>
<ul>{notes}</ul>
</body></html>
"""
    path.write_text(body)
    return path


def write_png(bundle: ModelBundle, pred: PatientPrediction, path: Path, out_dir: Path) -> Path:
    """The report as one A4-like PNG (text, table, up to four Grad-CAM overlays)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8.27, 11.0), dpi=100)
    y = 0.97
    fig.text(0.05, y, f"NPC vs NPL: model report for patient {pred.pseudonym}", fontsize=13, weight="bold")
    y -= 0.035
    fig.text(0.05, y, DISCLAIMER, fontsize=9, color="darkred", weight="bold")
    y -= 0.035
    fig.text(0.05, y, _verdict(pred), fontsize=8.5, wrap=True)
    y -= 0.045
    fig.text(0.05, y, f"Tumour found: {'yes' if pred.tumour_found else 'no'}; predicted volume {pred.tumour_ml} ml",
             fontsize=8.5)  # fmt: skip
    y -= 0.02
    rows = model_rows(bundle, pred)
    height = 0.026 * (len(rows) + 1)
    ax = fig.add_axes([0.05, y - height, 0.9, height])
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=HEADER, cellLoc="left", bbox=[0, 0, 1, 1],
                     colWidths=[0.12, 0.08, 0.22, 0.2, 0.24, 0.14])  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    y -= height + 0.03
    overlays = [o.overlay for o in pred.outputs.values() if o.overlay][:4]
    for i, name in enumerate(overlays):
        iax = fig.add_axes([0.05 + i * 0.23, y - 0.22, 0.21, 0.22])
        iax.imshow(mpimg.imread(out_dir / name))
        iax.axis("off")
    if overlays:
        y -= 0.25
    for line in (
        ["About the models:"]
        + training_lines(bundle)
        + [f"Recommended: {bundle.card.get('recommended_reason', '')}"]
        + [f"Not run: {dataset_label(k) if k != 'segmenter' else k}: {v}" for k, v in pred.not_run.items()]
    ):
        fig.text(0.05, y, line, fontsize=7.5, wrap=True)
        y -= 0.03
    fig.savefig(path)
    plt.close(fig)
    return path
