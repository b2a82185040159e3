"""The paper-style table: our Dice and AUC [95% CI] per dataset beside the seed study's figures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.reporting.results import SEED_AUC, SEED_CLINICIANS, SEED_DICE

_NAMES = {"t1": "T1WI", "t2": "T2WI", "t1ce": "T1CE", "t1+t2": "T1WI+T2WI"}


def dataset_label(name: str) -> str:
    """``"t1+t2"`` -> ``"T1WI+T2WI"``."""
    return _NAMES.get(name, "+".join(_NAMES.get(p, p.upper()) for p in name.split("+")))


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def format_seed_table(results: Mapping[str, Any]) -> str:
    """Plain-text table (fixed width) of ``results`` (the results.json dict) against the seed study."""
    arch = results.get("classifier_arch", "?")
    origin = results.get("weights_origin", "?")
    lines = [
        f"{'metric':<22} {'ours':>8} {'95% CI':>17} {'n':>5} {'sens':>6} {'spec':>6}   {'seed (Tang 2025)':>16}",
        "-" * 90,
        f"{'Dice (segmenter)':<22} {_fmt(results.get('dice')):>8} {'':>17} "
        f"{results.get('dice_n_patients', 0) or '':>5} {'':>6} {'':>6}   {SEED_DICE:>16.3f}",
    ]
    for name, entry in results.get("auc", {}).items():
        ci = entry.get("ci") or [None, None]
        seed = SEED_AUC.get(name)
        lines.append(
            f"{'AUC ' + dataset_label(name):<22} {_fmt(entry.get('value')):>8} "
            f"{'[' + _fmt(ci[0]) + ', ' + _fmt(ci[1]) + ']':>17} {entry.get('n_patients', 0):>5} "
            f"{_fmt(entry.get('sensitivity'), 2):>6} {_fmt(entry.get('specificity'), 2):>6}   "
            f"{_fmt(seed, 2) if seed is not None else '-':>16}"
        )
    lines.append("-" * 90)
    lines.append(
        f"seed reference, clinicians (AUC): junior {SEED_CLINICIANS['junior']:.2f}, senior {SEED_CLINICIANS['senior']:.2f}"
    )
    lines.append(
        f"classifier {arch}, weights {origin}; mode {results.get('mode', '?')}, "
        f"wall {float(results.get('wall_seconds', 0.0)):.0f} s"
    )
    return "\n".join(lines)
