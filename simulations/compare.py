"""Federated vs centralized (pooled) vs each site alone, on one synthetic cohort with one set of settings.

Fairness rules (what makes the ratios mean something):

- the same site folders, the same patient-level splits (ingestion's deterministic split), the same
  pipeline settings (``[tool.flwr.app.config]`` + scenario + ``--set``, read once here);
- the same number of passes over the data: a federated stage of R rounds x E local epochs is compared
  with E x R centralized epochs;
- centralized and single-site runs use the same training loops as the ClientApp (``shared.training``);
  they select the epoch on validation, as the federated study selects its round on pooled validation
  (``select-round = "best-val"``, the default; ``"last"`` keeps the final round).
- evaluation-only sites never train: they are left out of the centralized pool and of the single-site runs.

Single-site runs are evaluated on that site's own test split; federated and centralized on the pooled
test splits of all training sites (the federated report also has per-site rows).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

DATASETS_ORDER = ("t1", "t2", "t1ce", "t1+t2")


def centralized_config(run_config: Mapping[str, Any]):
    """PipelineConfig for the pooled/single-site runs: same settings, same passes over the data."""
    from server.config import federation_from_run_config, pipeline_from_run_config

    fed = federation_from_run_config(run_config)
    cfg = pipeline_from_run_config(run_config)
    mapping = cfg.to_mapping()
    mapping["seg-epochs"] = int(mapping["seg-epochs"]) * fed.seg_rounds
    mapping["cls-epochs"] = int(mapping["cls-epochs"]) * fed.cls_rounds
    mapping["cls-pretrain-epochs"] = int(mapping["cls-pretrain-epochs"]) * fed.cls_pretrain_rounds
    return type(cfg).from_mapping(mapping), fed


def summary_row(results: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Dice and per-dataset AUC values of one results.json (None where absent)."""
    if not results:
        return {"dice": None, **{d: None for d in DATASETS_ORDER}, "wall_seconds": None}
    auc = results.get("auc") or {}
    row: dict[str, float | None] = {"dice": results.get("dice")}
    for d in DATASETS_ORDER:
        row[d] = (auc.get(d) or {}).get("value")
    row["wall_seconds"] = results.get("wall_seconds")
    return row


def ratios(
    federated: Mapping[str, Any] | None, centralized: Mapping[str, Any] | None
) -> dict[str, float | None]:
    """federated / centralized per figure (None when either is missing or the denominator is 0)."""
    f, c = summary_row(federated), summary_row(centralized)
    out: dict[str, float | None] = {}
    for key in f:
        fv, cv = f[key], c[key]
        out[key] = (fv / cv) if (fv is not None and cv not in (None, 0)) else None
    return out


def format_compare_table(
    entries: Mapping[str, Mapping[str, Any] | None],
    ratio: Mapping[str, float | None],
    ratio_exact: Mapping[str, float | None] | None = None,
) -> str:
    """Dice, AUC per dataset and wall time per run, then federated/centralized; with ``ratio_exact`` a second
    ratio line for the federated models scored exactly (``federated_exact``, :mod:`simulations.score_models`)."""

    def fmt(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.3f}"

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    head = f"{'run':<22}{'Dice':>8}" + "".join(f"{'AUC ' + d:>12}" for d in DATASETS_ORDER) + f"{'wall s':>9}"
    lines = [head, "-" * len(head)]
    for name, res in entries.items():
        row = summary_row(res)
        lines.append(
            f"{name:<22}{fmt(row['dice']):>8}"
            + "".join(f"{fmt(row[d]):>12}" for d in DATASETS_ORDER)
            + f"{secs(row['wall_seconds']):>9}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{'federated/centralized':<22}{fmt(ratio['dice']):>8}"
        + "".join(f"{fmt(ratio[d]):>12}" for d in DATASETS_ORDER)
        + f"{fmt(ratio['wall_seconds']):>9}"
    )
    if ratio_exact is not None:
        lines.append(
            f"{'fed exact/centralized':<22}{fmt(ratio_exact.get('dice')):>8}"
            + "".join(f"{fmt(ratio_exact.get(d)):>12}" for d in DATASETS_ORDER)
        )
    return "\n".join(lines)


GOAL_FIGURES = (("dice", "Dice"), ("t1+t2", "T1WI+T2WI AUC"))


def target_verdict(
    ratio: Mapping[str, float | None],
    target: float = 0.97,
    figures: tuple[tuple[str, str], ...] = GOAL_FIGURES,
) -> list[str]:
    """Lines saying whether federated reaches ``target`` x centralized on ``figures`` (Dice and T1WI+T2WI AUC)."""
    out = []
    for key, label in figures:
        r = ratio.get(key)
        if r is None:
            out.append(f"{label}: no ratio (a figure is missing)")
        else:
            out.append(
                f"{label}: federated/centralized {r:.3f} {'>=' if r >= target else '<'} {target} target"
            )
    return out
