"""Secure sums of the sites' evaluation statistics (SecAgg+): the coordinator learns the pooled sums only.

Under ``secure-aggregation = true`` every evaluation (each round's validation, the final test, the kept model's
validation) runs Flower's SecAgg+ over the ``evaluate.<action>`` messages, as training does
(:func:`server.secure_aggregation.secure_round`). Each site masks the vector of its sums (Dice intersections and
sizes, patient counts, fixed-bin score histograms, loss; :mod:`shared.secure_sums`) with a clipping range that
makes Flower's quantisation exact for integers, so the unmasked sum is the exact sum. The coordinator computes the
pooled Dice and the pooled AUC, ROC and DeLong interval from those sums with the same code as in clear
(:mod:`server.pooled_eval`), and never sees one site's histogram or Dice sums.

Training sites and evaluation-only sites are summed separately (the pooled and the external figures). A group of
one site cannot be summed without revealing that site: it is not evaluated, and the reason is recorded. Per-site
figures do not exist under secure aggregation; the report says so.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

from server.secure_aggregation import SecureAggregation, secure_round
from shared import protocol as P
from shared.secure_sums import EXACT_CLIP, SecureSumError, decode

log = logging.getLogger(__name__)

#: keys of the summed statistics in a stage's ``sums`` (in clear they are keyed by site name)
SECURE_TRAIN = "secure-sum:training-sites"
SECURE_EVAL_ONLY = "secure-sum:evaluation-only-sites"
SUM_KEYS = (SECURE_TRAIN, SECURE_EVAL_ONLY)
_RESULT = "sums"


@dataclass
class SecureEvaluation:
    """What one secure evaluation gave the coordinator: per group the summed statistics and who is in the sum,
    and why each other site is not."""

    sums: dict[str, dict[str, object]] = field(default_factory=dict)  # SECURE_* -> summed statistics
    summed: dict[str, list[str]] = field(default_factory=dict)  # SECURE_* -> site names inside the sum
    failed: dict[str, str] = field(default_factory=dict)  # site -> why it is not in a sum
    seconds: float = 0.0

    def summed_sites(self) -> list[str]:
        return sorted(s for names in self.summed.values() for s in names)


def is_secure(sums: Collection[str]) -> bool:
    """Whether a stage's ``sums`` are secure sums (keyed by group) rather than per-site statistics."""
    return any(k in SUM_KEYS for k in sums)


def secure_evaluation(
    grid: Grid,
    instructions: list[Message],
    settings: SecureAggregation,
    kind: str,
    bins: int,
    site_of: Callable[[int], str],
    eval_only_nodes: Collection[int],
    server_round: int,
) -> SecureEvaluation:
    """Run one secure sum per group (training sites, evaluation-only sites) over ``instructions`` (our
    ``evaluate.<kind>`` messages, one per site)."""
    t0 = time.perf_counter()
    out = SecureEvaluation()
    exact = dataclasses.replace(settings, clip=EXACT_CLIP)
    groups = {
        SECURE_TRAIN: [m for m in instructions if m.metadata.dst_node_id not in eval_only_nodes],
        SECURE_EVAL_ONLY: [m for m in instructions if m.metadata.dst_node_id in eval_only_nodes],
    }
    for key, group in groups.items():
        names = [site_of(m.metadata.dst_node_id) for m in group]
        if not group:
            continue
        if len(group) < 2:
            why = (
                "not evaluated: a secure sum needs at least 2 sites and this group ("
                f"{'evaluation-only' if key == SECURE_EVAL_ONLY else 'training'} sites) has 1; summing one site "
                "would reveal its statistics"
            )
            out.failed.update({n: why for n in names})
            log.warning("%s: %s", names[0], why)
            continue
        result = secure_round(grid, group, exact, 1.0, server_round, result_keys=[_RESULT])
        for node, why in result.failed.items():
            out.failed[site_of(node)] = why
        if result.mean_update is None:
            for name in names:
                out.failed.setdefault(name, result.halted)
            log.warning("secure evaluation of %s: %s", ", ".join(names), result.halted)
            continue
        n_sites = len(result.site_metrics)
        try:
            stats = decode(result.mean_update[_RESULT], n_sites, kind, bins)
        except SecureSumError as err:
            for name in names:
                out.failed.setdefault(name, f"secure sum unusable: {err}")
            log.warning("secure evaluation of %s: %s", ", ".join(names), err)
            continue
        stats[P.EVAL_SECONDS] = max(float(m.get(P.EVAL_SECONDS, 0.0)) for m in result.site_metrics.values())
        out.sums[key] = stats
        out.summed[key] = sorted(site_of(n) for n in result.site_metrics)
    out.seconds = time.perf_counter() - t0
    return out
