"""Several cohort seeds side by side: the figures of ``nasofl-sim compare`` runs (one per seed), their mean and
spread, the seed study's dataset ordering and the issue's goals judged on the mean.

A single run on ~40 test patients has a 95% CI about +-0.18 wide on AUC; only the mean over seeds (with its SD
in view) can show a difference of a few hundredths. Nothing is recomputed: every figure is read from the runs'
own ``compare.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError
from shared.reporting.table import dataset_label
from simulations.compare import DATASETS_ORDER, ratios, summary_row

#: the rows of the summary: the federation's own figures (histogram AUC), and the federated models scored
#: exactly as the centralized run is (``*_exact``)
KINDS = ("centralized", "federated", "ratio", "federated_exact", "ratio_exact", "centralized_val", "federated_val")
KIND_LABELS = {
    "ratio": "fed/central",
    "federated_exact": "fed exact",
    "ratio_exact": "exact/centr",
    "centralized_val": "central val",
    "federated_val": "fed val",
}

#: the seed study's order of the four datasets by test AUC (Tang et al. 2025: 0.93 > 0.84 > 0.78 > 0.75)
SEED_ORDER = ("t1+t2", "t1ce", "t1", "t2")


def load_compare(folder: Path) -> dict[str, Any]:
    """One ``compare.json``; a folder without one, or a broken one, is an error naming it."""
    path = Path(folder) / "compare.json"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; expected the --out folder of a finished `nasofl-sim compare`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); re-run that compare") from None


def load_compares(folders: Sequence[Path | str]) -> dict[str, dict[str, Any]]:
    """``{seed name: compare.json}``, one entry per argument. An argument ``A,B`` names the parts of one seed
    run with different ``datasets`` (:func:`merge_parts`); the seed is named after ``A``."""
    out: dict[str, dict[str, Any]] = {}
    for arg in folders:
        parts = [Path(p) for p in str(arg).split(",") if p]
        compares = {str(p): load_compare(p) for p in parts}
        out[parts[0].name] = merge_parts(compares) if len(parts) > 1 else compares[str(parts[0])]
    return out


def _without_datasets(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    out = json.loads(json.dumps(settings or {}))
    for key in ("run_config", "centralized"):
        (out.get(key) or {}).pop("datasets", None)
    return out


def merge_parts(parts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One seed's compare from parts that differ only in ``datasets`` (e.g. T1WI+T2WI on one machine, the other
    three on another). Refused, naming the parts: different settings, a different segmenter (its Dice differs:
    another cohort, seed, machine or thread count) or a dataset measured twice."""
    names = list(parts)
    first = parts[names[0]]
    merged: dict[str, Any] = json.loads(json.dumps(first))
    seen: dict[str, str] = {d: names[0] for d in (first.get("centralized") or {}).get("auc") or {}}
    for name in names[1:]:
        part = parts[name]
        if _without_datasets(part.get("settings")) != _without_datasets(first.get("settings")):
            raise ConfigError(
                f"{name}: its settings differ from {names[0]}'s beyond `datasets`; parts of one seed must "
                "be run with the same cohort, seed and settings"
            )
        for kind in ("federated", "centralized"):
            a, b = (first.get(kind) or {}).get("dice"), (part.get(kind) or {}).get("dice")
            if a != b:
                raise ConfigError(
                    f"{name}: {kind} Dice {b} differs from {names[0]}'s {a}, so its classifiers were built on "
                    "another segmenter's crops; run the parts on one machine with the same thread count"
                )
        for d in (part.get("centralized") or {}).get("auc") or {}:
            if d in seen:
                raise ConfigError(f"{name}: dataset {d!r} was also measured in {seen[d]}; give each dataset once")
            seen[d] = name
        for kind in ("federated", "centralized", "federated_exact"):
            if kind not in part:
                continue
            target, source = merged.setdefault(kind, {}), part.get(kind) or {}
            target.setdefault("auc", {}).update(source.get("auc") or {})
            for key in ("gradcam", "classifiers", "kept_rounds"):  # per dataset (kept_rounds: per stage)
                per = (source.get("extra") or {}).get(key) or {}
                if per:
                    target.setdefault("extra", {}).setdefault(key, {}).update(per)
            if source.get("wall_seconds") is not None:
                target["wall_seconds"] = (target.get("wall_seconds") or 0.0) + source["wall_seconds"]
    merged["ratios"] = ratios(merged.get("federated"), merged.get("centralized"))
    if "federated_exact" in merged:
        merged["ratios_exact"] = ratios(merged["federated_exact"], merged.get("centralized"))
    merged["parts"] = names
    return merged


def core_share(results: Mapping[str, Any] | None, dataset: str) -> tuple[float | None, list | None]:
    """The centralized run's Grad-CAM core share of ``dataset`` and its 95% bootstrap CI (None when absent)."""
    entry = ((results or {}).get("extra") or {}).get("gradcam", {}).get(dataset) or {}
    return entry.get("core_share"), entry.get("core_share_ci")


def validation_row(results: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The figures a setting is chosen on (the test split is looked at once per setting): validation Dice of the
    kept segmenter and validation AUC of each kept classifier. Centralized: the best epoch's (``extra.segmenter``
    history, ``extra.classifiers.<dataset>.validation``); federated: the kept round's pooled figure
    (``extra.kept_rounds``)."""
    extra = (results or {}).get("extra") or {}
    row: dict[str, float | None] = {f: None for f in ("dice", *DATASETS_ORDER)}
    if "kept_rounds" in extra:
        kept = extra["kept_rounds"]
        row["dice"] = (kept.get("seg") or {}).get("value")
        for d in DATASETS_ORDER:
            row[d] = (kept.get(f"cls:{d}") or {}).get("value")
        return row
    val_dice = ((extra.get("segmenter") or {}).get("history") or {}).get("val Dice") or []
    row["dice"] = max(val_dice) if val_dice else None
    for d in DATASETS_ORDER:
        row[d] = (((extra.get("classifiers") or {}).get(d) or {}).get("validation") or {}).get("value")
    return row


def seed_rows(compares: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{kind: {seed: {figure: value}}}`` for the kinds of :data:`KINDS`; figures dice, the four datasets and
    wall_seconds. ``federated_exact`` / ``ratio_exact``: the federated models scored exactly (compares that did
    so; :mod:`simulations.score_models`), else None."""
    rows: dict[str, dict[str, dict[str, float | None]]] = {kind: {} for kind in KINDS}
    for seed, c in compares.items():
        rows["centralized"][seed] = summary_row(c.get("centralized"))
        rows["federated"][seed] = summary_row(c.get("federated"))
        rows["ratio"][seed] = dict(c.get("ratios") or {})
        rows["federated_exact"][seed] = summary_row(c.get("federated_exact"))
        rows["ratio_exact"][seed] = dict(c.get("ratios_exact") or {})
        rows["centralized_val"][seed] = validation_row(c.get("centralized"))
        rows["federated_val"][seed] = validation_row(c.get("federated"))
    return rows


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and population SD of the values present, and how many were present."""
    present = np.array([v for v in values if v is not None], dtype=float)
    if len(present) == 0:
        return None, None, 0
    return float(present.mean()), float(present.std()), len(present)


def ordering_verdict(means: Mapping[str, float | None]) -> str:
    """Whether the seed's ordering T1WI+T2WI > T1CE > T1WI > T2WI holds on ``means``, naming the first break."""
    for a, b in zip(SEED_ORDER, SEED_ORDER[1:], strict=False):
        va, vb = means.get(a), means.get(b)
        if va is None or vb is None:
            return f"ordering: cannot judge ({dataset_label(a if va is None else b)} missing)"
        if not va > vb:
            return (
                f"ordering T1WI+T2WI > T1CE > T1WI > T2WI: does NOT hold ({dataset_label(a)} {va:.3f} <= {dataset_label(b)} "
                f"{vb:.3f})"
            )
    return "ordering T1WI+T2WI > T1CE > T1WI > T2WI: holds on the mean"


def summary(compares: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per-seed rows, means and SDs, the Grad-CAM core shares, the ordering and the goals (as data)."""
    rows = seed_rows(compares)
    seeds = list(compares)
    figures = ["dice", *DATASETS_ORDER, "wall_seconds"]
    stats: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for kind, per_seed in rows.items():
        stats[kind] = {}
        for f in figures:
            m, sd, n = mean_sd([per_seed[s].get(f) for s in seeds])
            stats[kind][f] = {"mean": m, "sd": sd, "n": n}
    shares = {d: {s: core_share(compares[s].get("centralized"), d) for s in seeds} for d in DATASETS_ORDER}
    central_means = {d: stats["centralized"][d]["mean"] for d in DATASETS_ORDER}
    t12 = central_means["t1+t2"]
    goals = {
        "centralized T1WI+T2WI AUC >= 0.85": None if t12 is None else t12 >= 0.85,
        "T1WI+T2WI the best of the four": None
        if any(v is None for v in central_means.values())
        else all(t12 > v for d, v in central_means.items() if d != "t1+t2"),
        "federated/centralized Dice >= 0.97": _at_least(stats["ratio"]["dice"]["mean"], 0.97),
        "federated/centralized T1WI+T2WI AUC >= 0.97, the federation's histogram AUC": _at_least(
            stats["ratio"]["t1+t2"]["mean"], 0.97
        ),
        # judged only when every seed was scored exactly: a mean over some seeds is not the seeds' mean
        "federated/centralized T1WI+T2WI AUC >= 0.97, federated models scored exactly": _at_least(
            stats["ratio_exact"]["t1+t2"]["mean"], 0.97
        )
        if stats["ratio_exact"]["t1+t2"]["n"] == len(seeds)
        else None,
    }
    return {
        "seeds": seeds,
        "rows": rows,
        "stats": stats,
        "gradcam_core_share": shares,
        "ordering": ordering_verdict(central_means) + _unequal_seeds(stats["centralized"]),
        "goals": goals,
    }


def _unequal_seeds(central: Mapping[str, Mapping[str, Any]]) -> str:
    """A warning when the datasets' means rest on different numbers of seeds (a part of a seed missing)."""
    counts = {d: central[d]["n"] for d in SEED_ORDER}
    if len(set(counts.values())) <= 1:
        return ""
    listed = ", ".join(f"{dataset_label(d)} {n}" for d, n in counts.items())
    return f" (caution: the means rest on unequal numbers of seeds: {listed})"


def _at_least(value: float | int | None, floor: float) -> bool | None:
    return None if value is None else float(value) >= floor


def format_summary(s: Mapping[str, Any]) -> str:
    seeds = s["seeds"]

    def cell(v: float | None) -> str:
        return f"{'-':>8}" if v is None else f"{v:>8.3f}"

    head = (
        f"{'run':<12}{'figure':<12}" + "".join(f"{seed[-8:]:>8}" for seed in seeds) + f"{'mean':>8}{'sd':>8}"
    )
    lines = [head, "-" * len(head)]
    for kind in KINDS:
        if not any(s["stats"][kind][f]["n"] for f in ("dice", *DATASETS_ORDER)):
            continue  # no compare has it (older compares: no exact scores)
        if kind == "centralized_val":
            lines.append("validation: the figures settings are chosen on (the kept epoch / round):")
        for f in ("dice", *DATASETS_ORDER):
            label = "Dice" if f == "dice" else dataset_label(f)
            st = s["stats"][kind][f]
            if not st["n"]:
                continue  # a figure no seed has (a dataset not run, Dice of exact scores)
            lines.append(
                f"{KIND_LABELS.get(kind, kind):<12}{label:<12}"
                + "".join(cell(s["rows"][kind][seed].get(f)) for seed in seeds)
                + cell(st["mean"])
                + cell(st["sd"])
            )
        lines.append("")
    lines.append(
        "Grad-CAM share of the evidence in the tumour core (centralized, test slices, 95% bootstrap CI):"
    )
    for d in DATASETS_ORDER:
        per = s["gradcam_core_share"][d]
        if all(per[seed][0] is None for seed in seeds):
            continue  # a dataset no seed ran
        parts = []
        for seed in seeds:
            v, ci = per[seed]
            parts.append(f"{seed} -" if v is None else f"{seed} {v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")
        m, _sd, n = mean_sd([per[seed][0] for seed in seeds])
        mean_text = "-" if m is None else f"{m:.2f} over {n}"
        lines.append(f"  {dataset_label(d):<10} {'; '.join(parts)}; mean {mean_text}")
    lines.append("")
    lines.append(s["ordering"])
    for goal, ok in s["goals"].items():
        lines.append(
            f"goal {goal}: {'cannot judge' if ok is None else 'met' if ok else 'NOT met'} (mean over seeds)"
        )
    return "\n".join(lines)
