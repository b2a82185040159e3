"""What a finished study hands its report: typed, so the report reads fields, not dictionary keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from server.sites import SiteInfo

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class FinalTest:
    """The federated test of one stage's kept model: pooled over the training sites, per site, and pooled over
    the evaluation-only sites (``external``); ``sums`` are the sites' raw statistics (counts, histograms), or under
    secure aggregation the sums over each group of sites (``server.secure_evaluation``; no per-site figures)."""

    pooled: dict[str, float]
    per_site: dict[str, dict[str, float]]
    external: dict[str, float]
    failed: dict[str, str]
    sums: dict[str, dict[str, object]]
    train_sites: list[str]
    eval_only_sites: list[str]
    summed: list[str] = field(default_factory=list)  # secure-aggregation: the sites inside the secure sums

    def train_sums(self) -> list[dict[str, object]]:
        """The training sites' statistics that arrived, in site-name order (under secure aggregation: their
        one secure sum, ``server.secure_evaluation``)."""
        from server.secure_evaluation import SECURE_TRAIN, is_secure

        if is_secure(self.sums):
            return [self.sums[SECURE_TRAIN]] if SECURE_TRAIN in self.sums else []
        return [self.sums[s] for s in sorted(self.train_sites) if s in self.sums]

    def external_missing(self) -> list[str]:
        """Evaluation-only sites whose statistics are not in :meth:`external_sums` (no reply, an error, or a
        secure-sum group that could not be summed)."""
        from server.secure_evaluation import is_secure

        answered = set(self.summed) if is_secure(self.sums) else set(self.sums)
        return [s for s in sorted(self.eval_only_sites) if s not in answered]

    def external_sums(self) -> list[dict[str, object]]:
        """The evaluation-only sites' statistics that arrived, in site-name order (under secure aggregation:
        their one secure sum); empty when the study has no evaluation-only site."""
        from server.secure_evaluation import SECURE_EVAL_ONLY, is_secure

        if is_secure(self.sums):
            return [self.sums[SECURE_EVAL_ONLY]] if SECURE_EVAL_ONLY in self.sums else []
        return [self.sums[s] for s in sorted(self.eval_only_sites) if s in self.sums]


@dataclass(frozen=True)
class StudyOutcome:
    """``segmenter``: kept segmenter arrays; ``classifiers``: dataset -> kept arrays (datasets that trained);
    ``segmenter_test`` / ``classifier_tests``: final tests; ``classifier_val``: the kept classifiers on the pooled
    validation split (the bundle's decision thresholds); ``sites``: node id -> SiteInfo; ``skipped``: site ->
    {stage or dataset: why it sat out}; ``kept_rounds``: stage key -> the kept-round summary (classifier and
    segmenter stages); ``pretrained``: datasets whose backbone pretraining stage ran (``cls-pretrain-rounds``)."""

    segmenter: Arrays
    classifiers: dict[str, Arrays]
    segmenter_test: FinalTest
    classifier_tests: dict[str, FinalTest]
    classifier_val: dict[str, FinalTest]
    sites: dict[int, SiteInfo]
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    kept_rounds: dict[str, dict[str, object]] = field(default_factory=dict)
    pretrained: tuple[str, ...] = ()
