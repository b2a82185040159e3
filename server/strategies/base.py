"""What every nasofl strategy adds to Flower's: stage routing, eval-only sites, update checks, round records.

:class:`StageMixin` goes in front of a Flower strategy class (``class CheckedFedAvg(StageMixin, FedAvg)``):

- ``configure_train`` sends only to this stage's training sites (never to evaluation-only sites, nor to sites
  without data for the stage) and re-types the messages to ``train.<action>`` (``train.seg`` / ``train.cls``);
- ``aggregate_train`` checks every reply (:mod:`server.update_check`) BEFORE Flower's strategy sees it: error
  replies and bad updates are dropped and counted, never averaged in; fewer usable replies than the configured
  minimum raises :class:`TooFewSitesError` (the run ends FAILED, loudly);
- ``aggregate_evaluate`` pools the sites' sufficient statistics itself (:mod:`server.pooled_eval`) and keeps
  per-site figures, keyed by site name;
- with secure aggregation (``secure``, :mod:`server.secure_aggregation`) ``configure_train`` itself runs Flower's
  SecAgg+ stages over the grid and returns no message; ``aggregate_train`` then gets only the unmasked weighted mean
  of the sites' updates (and their scalar metrics), which it checks and hands to Flower's strategy as one reply;
  ``configure_evaluate`` likewise runs the secure sums of the sites' evaluation statistics
  (:mod:`server.secure_evaluation`), and ``aggregate_evaluate`` pools those sums (no per-site figures);
- round numbers are shifted by ``round_offset`` so a resumed stage continues its numbering (clients seed their
  local training with the true round, and FedAdam's bias correction sees it too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from server.secure_aggregation import SecureAggregation, SecureRound, secure_round, summed_reply
from server.secure_evaluation import SecureEvaluation, secure_evaluation
from server.strategies.bn_statistics import mixture_variances
from server.strategies.replies import collect_eval_sums, error_reasons, unavailable_nodes
from server.update_bounds import delta_norm, examples_problem, norm_outliers
from server.update_check import update_problem
from shared import protocol as P
from shared.records import record_to_numpy

log = logging.getLogger(__name__)


class TooFewSitesError(RuntimeError):
    """Fewer sites took part in a round than the configured minimum: the run must end as FAILED."""


class UnusableSumError(RuntimeError):
    """A secure round's sum holds an update that fails the coordinator's checks: it cannot be taken out of the sum,
    so the run ends FAILED (naming the site) rather than train on it or stall on the initial model."""


@dataclass
class TrainRound:
    """What happened in one training round (site names only, never node ids of patients)."""

    round: int
    started: float = field(default_factory=time.time)
    sent_to: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    contributed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # site -> short reason (no patient data)
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why the update was dropped
    update_norms: dict[str, float] = field(default_factory=dict)  # site -> L2 norm of update - global
    site_train_seconds: dict[str, float] = field(default_factory=dict)
    site_privacy: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> P.DP_* (local DP)
    train_metrics: dict[str, float] = field(default_factory=dict)
    secure_aggregation: dict[str, object] = field(default_factory=dict)  # SecAgg+ figures of the round
    aggregated_at: float = 0.0


@dataclass
class EvalRound:
    round: int
    pooled: dict[str, float]
    per_site: dict[str, dict[str, float]]
    sums: dict[str, dict[str, object]]  # site -> raw sufficient statistics (counts / histograms)
    failed: dict[str, str]
    bytes_sent: int = 0
    summed: list[str] = field(default_factory=list)  # secure-aggregation: the sites inside the secure sums


EvalPooler = Callable[[dict[str, dict[str, object]]], tuple[dict[str, float], dict[str, dict[str, float]]]]


@dataclass(frozen=True)
class Participants:
    """Who takes part in a stage's rounds: node -> site name, the nodes that train (training sites with data
    for the stage), the nodes that evaluate each round's model on their validation split (the training sites:
    only they choose the kept round) and the evaluation-only ones (asked for the final test only)."""

    site_of_node: dict[int, str]
    train_nodes: frozenset[int]
    eval_nodes: frozenset[int]
    eval_only_nodes: frozenset[int] = frozenset()


#: called before each round; returns new participants when sites joined or came back, else None
ParticipantsRefresh = Callable[[Grid], Participants | None]


class StageMixin:
    """Mixin for a Flower Message-API strategy; call :meth:`setup_stage` before ``start``."""

    action: str
    participants: Participants
    refresh: ParticipantsRefresh | None
    round_offset: int
    min_sites: int
    train_metric_keys: tuple[str, ...]
    eval_metric_keys: tuple[str, ...]
    eval_pooler: EvalPooler | None
    update_norm_factor: float  # 0: no norm bound (server.update_bounds)
    example_cap_of: Callable[[int], int | None] | None  # node id -> most num-examples it may claim
    secure: SecureAggregation | None  # SecAgg+: the coordinator sees only the sum of the updates
    secure_hist_bins: int
    _secure_round: SecureRound | None
    _secure_eval: SecureEvaluation | None
    last_train: TrainRound | None
    last_eval: EvalRound | None
    unavailable: set[int]  # nodes the SuperLink reported offline since the study last looked (it clears it)
    _global_numpy: dict[str, np.ndarray] | None
    _sent_train: list[Message]  # the grid stamps message ids on these objects when it pushes them
    _sent_eval: list[Message]
    _eval_bytes: int
    evaluates: bool  # False: this stage sends no evaluation messages (setup_stage)
    eval_arrays_of: Callable[[ArrayRecord], ArrayRecord] | None  # the round's global -> the model evaluated
    bn_statistics: str = "mean"  # "mixture": BatchNorm variances of the sites pooled (server.strategies.bn_statistics)

    def setup_stage(
        self,
        *,
        action: str,
        participants: Participants,
        min_sites: int,
        refresh: ParticipantsRefresh | None = None,
        round_offset: int = 0,
        train_metric_keys: tuple[str, ...] = P.TRAIN_METRICS,
        eval_metric_keys: tuple[str, ...] = (),
        eval_pooler: EvalPooler | None = None,
        update_norm_factor: float = 0.0,
        example_cap_of: Callable[[int], int | None] | None = None,
        secure: SecureAggregation | None = None,
        secure_hist_bins: int = 0,
        evaluate: bool = True,
        eval_arrays_of: Callable[[ArrayRecord], ArrayRecord] | None = None,
    ) -> None:
        """Everything the strategy needs for one stage, as arguments (it reads nothing else of the study).

        ``action``: message action (``train.<action>`` / ``evaluate.<action>``); ``refresh``: asked before each
        round whether sites (re)joined; ``round_offset``: rounds already done (resume); ``secure``: each training round, and each
        evaluation's sums, under SecAgg+ (``secure_hist_bins``: the histogram bins of a secure sum); ``evaluate``
        False: no evaluation messages in this stage (a pretraining stage: its model has no trained head);
        ``eval_arrays_of``: called once per round with the round's global model, returns the model the sites
        evaluate instead (``seg-weight-ema``: the average over rounds; training goes on from the global model).
        """
        self.evaluates = evaluate
        self.eval_arrays_of = eval_arrays_of
        self.action = action
        self.participants = participants
        self.refresh = refresh
        self.update_norm_factor = update_norm_factor
        self.example_cap_of = example_cap_of
        self.secure = secure
        self.secure_hist_bins = secure_hist_bins
        self._secure_round = None
        self._secure_eval = None
        self.min_sites = min_sites
        self.round_offset = round_offset
        self.train_metric_keys = train_metric_keys
        self.eval_metric_keys = eval_metric_keys
        self.eval_pooler = eval_pooler
        self.last_train = None
        self.last_eval = None
        self.unavailable = set()
        self._global_numpy = None
        self._sent_train = []
        self._sent_eval = []
        self._eval_bytes = 0

    # ---- helpers -----------------------------------------------------------------------------------

    def _site(self, node_id: int) -> str:
        return self.participants.site_of_node.get(node_id, f"node-{node_id}")

    def _retype(self, messages: Iterable[Message], category: str, keep: frozenset[int]) -> list[Message]:
        out = []
        for m in messages:
            if m.metadata.dst_node_id not in keep:
                continue
            out.append(
                Message(
                    m.content, dst_node_id=m.metadata.dst_node_id, message_type=f"{category}.{self.action}"
                )
            )
        return out

    # ---- training ----------------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        true_round = server_round + self.round_offset
        if self.refresh is not None:
            refreshed = self.refresh(grid)  # a site that joined or came back takes part from this round
            if refreshed is not None:
                self.participants = refreshed
        msgs = super().configure_train(true_round, arrays, config, grid)  # type: ignore[misc]
        msgs = self._retype(msgs, "train", self.participants.train_nodes)
        self._sent_train = msgs
        self._global_numpy = record_to_numpy(arrays)
        rec = TrainRound(round=true_round)
        rec.sent_to = sorted(self._site(m.metadata.dst_node_id) for m in msgs)
        rec.bytes_sent = int(arrays.count_bytes()) * len(msgs)
        self.last_train = rec
        log.info("round %s %s: training at %s", true_round, self.action, ", ".join(rec.sent_to) or "no site")
        if self.secure is not None:  # the messages go through SecAgg+ here; Flower's loop sends nothing more
            caps = [
                self.example_cap_of(m.metadata.dst_node_id) if self.example_cap_of else None for m in msgs
            ]
            max_weight = float(max((c for c in caps if c), default=0))
            self._secure_round = secure_round(grid, msgs, self.secure, max_weight, true_round)
            return []
        return msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        true_round = server_round + self.round_offset
        rec = self.last_train or TrainRound(round=true_round)
        if self.secure is not None:
            return self._aggregate_secure(true_round, rec)
        replies = list(replies)
        good: list[tuple[str, Message]] = []
        answered: set[str] = set()
        for msg in replies:
            if msg.has_error():
                continue
            site = self._site(msg.metadata.src_node_id)
            answered.add(site)
            arrays_recs = list(msg.content.array_records.values())
            metric_recs = list(msg.content.metric_records.values())
            rec.bytes_received += sum(int(a.count_bytes()) for a in arrays_recs)
            if len(arrays_recs) != 1 or len(metric_recs) != 1:
                rec.rejected[site] = (
                    f"{len(arrays_recs)} array records and {len(metric_recs)} metric records, expected 1 and 1"
                )
                continue
            problem = update_problem(
                self._global_numpy or {},
                record_to_numpy(arrays_recs[0]),
                dict(metric_recs[0]),
                required_metrics=self.train_metric_keys,
            )
            if problem is None and set(metric_recs[0].keys()) != set(self.train_metric_keys):
                problem = f"metric keys {sorted(metric_recs[0].keys())} differ from {sorted(self.train_metric_keys)}"
            if problem is not None:
                rec.rejected[site] = problem
                log.warning(
                    "round %s %s: update from %s REJECTED: %s", true_round, self.action, site, problem
                )
                continue
            cap = self.example_cap_of(msg.metadata.src_node_id) if self.example_cap_of else None
            problem = examples_problem(float(metric_recs[0][P.NUM_EXAMPLES]), cap)
            if problem is not None:
                rec.rejected[site] = problem
                log.warning(
                    "round %s %s: update from %s REJECTED: %s", true_round, self.action, site, problem
                )
                continue
            if int(metric_recs[0][P.NUM_EXAMPLES]) == 0:
                rec.rejected[site] = "no training examples for this stage (skipped)"
                log.info("round %s %s: %s had no training examples, skipped", true_round, self.action, site)
                continue
            rec.site_train_seconds[site] = float(metric_recs[0][P.TRAIN_SECONDS])
            rec.site_privacy[site] = {k: float(metric_recs[0][k]) for k in P.DP_SITE_METRICS}
            good.append((site, msg))
        errors = error_reasons(replies, self._sent_train, self._site)
        self.unavailable |= unavailable_nodes(replies, self._sent_train)
        for site in rec.sent_to:
            if site not in answered:
                reason = errors.get(site, "no reply (timeout or disconnect)")
                rec.failed[site] = reason
                log.warning("round %s %s: site %s FAILED: %s", true_round, self.action, site, reason)
        good = self._within_norm_bound(true_round, good, rec)
        good.sort(key=lambda t: t[0])  # fixed order -> identical float sums on resume
        rec.contributed = [s for s, _ in good]
        rec.aggregated_at = time.time()
        if len(good) < self.min_sites:
            raise TooFewSitesError(
                f"round {true_round} of stage {self.action!r}: {len(good)} site(s) contributed "
                f"({', '.join(rec.contributed) or 'none'}), the configured minimum is {self.min_sites} "
                f"(min-sites); failed: {rec.failed or 'none'}; rejected: {rec.rejected or 'none'}"
            )
        self.check_contributors(true_round, rec.contributed)
        arrays, metrics = super().aggregate_train(true_round, [m for _, m in good])  # type: ignore[misc]
        if arrays is not None and self.bn_statistics == "mixture":
            arrays = self._with_mixture_variances(arrays, [m for _, m in good])
        if metrics is not None:
            rec.train_metrics = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
        return arrays, metrics

    def _with_mixture_variances(self, arrays: ArrayRecord, replies: list[Message]) -> ArrayRecord:
        """``bn-statistics = "mixture"``: the BatchNorm variances of the sites' activations taken together."""
        sites = [record_to_numpy(next(iter(m.content.array_records.values()))) for m in replies]
        key = str(getattr(self, "weighted_by_key", P.NUM_EXAMPLES))
        weights = [float(next(iter(m.content.metric_records.values()))[key]) for m in replies]
        mixed = mixture_variances(record_to_numpy(arrays), sites, weights)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in mixed.items()})

    def _aggregate_secure(self, true_round: int, rec: TrainRound):
        """The unmasked mean of a SecAgg+ round: the sites' clear metrics are checked (keys, example caps), the
        mean model too (keys, shapes, finite values), then Flower's strategy aggregates it as one reply. A site
        whose claim fails cannot be taken out of a sum: :class:`UnusableSumError` ends the run, naming it."""
        outcome, self._secure_round = self._secure_round, None
        if outcome is None or self.secure is None:
            raise RuntimeError(
                f"round {true_round} of stage {self.action!r}: no secure round ran before aggregation"
            )
        for node, why in outcome.failed.items():
            rec.failed[self._site(node)] = why
            log.warning("round %s %s: site %s FAILED: %s", true_round, self.action, self._site(node), why)
        if outcome.mean_update is None:
            raise TooFewSitesError(
                f"round {true_round} of stage {self.action!r}: secure aggregation unmasked no sum ({outcome.halted}); "
                f"failed: {rec.failed or 'none'}"
            )
        summed = summed_reply(self._global_numpy or {}, outcome, self.secure, f"train.{self.action}")
        rec.bytes_received = outcome.bytes_received
        rec.secure_aggregation = {
            **summed.figures,
            "clipped_coordinates": {
                self._site(n): c for n, c in summed.figures["clipped_coordinates"].items()
            },
        }
        for node, metrics in outcome.site_metrics.items():
            site = self._site(node)
            problem = None
            if set(metrics) != set(P.SECURE_TRAIN_METRICS):
                problem = f"metric keys {sorted(metrics)} differ from {sorted(P.SECURE_TRAIN_METRICS)}"
            cap = self.example_cap_of(node) if self.example_cap_of else None
            problem = problem or examples_problem(float(metrics.get(P.NUM_EXAMPLES, 0)), cap)
            if problem is not None:
                rec.rejected[site] = problem
            elif node in summed.contributed:
                rec.site_train_seconds[site] = float(metrics[P.TRAIN_SECONDS])
                rec.site_privacy[site] = {k: float(metrics[k]) for k in P.DP_SITE_METRICS}
        rec.aggregated_at = time.time()
        if rec.rejected:
            raise UnusableSumError(
                f"round {true_round} of stage {self.action!r}: under secure-aggregation the update of "
                f"{', '.join(sorted(rec.rejected))} is inside the sum and cannot be taken out ({rec.rejected}): "
                "remove that site from the federation, or set secure-aggregation=false to have such an update "
                "dropped and the round go on with the others"
            )
        rec.contributed = sorted(self._site(n) for n in summed.contributed)
        if len(rec.contributed) < self.min_sites:
            raise TooFewSitesError(
                f"round {true_round} of stage {self.action!r}: {len(rec.contributed)} site(s) with training examples "
                f"were summed ({', '.join(rec.contributed) or 'none'}), the configured minimum is {self.min_sites} "
                f"(min-sites); failed: {rec.failed or 'none'}"
            )
        arrays = record_to_numpy(next(iter(summed.reply.content.array_records.values())))
        problem = update_problem(self._global_numpy or {}, arrays)
        if problem is not None:
            raise RuntimeError(
                f"round {true_round} of stage {self.action!r}: the unmasked sum is unusable: {problem}"
            )
        self.check_contributors(true_round, rec.contributed)
        log.info(
            "round %s %s: SecAgg+ summed %s site(s) in %.1f s (quantisation bound %.2g per coordinate)",
            true_round,
            self.action,
            len(outcome.site_metrics),
            outcome.seconds,
            summed.figures["quantisation_bound"],
        )
        arrays_rec, metrics = super().aggregate_train(true_round, [summed.reply])  # type: ignore[misc]
        if metrics is not None:
            rec.train_metrics = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
        return arrays_rec, metrics

    def _within_norm_bound(
        self, true_round: int, good: list[tuple[str, Message]], rec: TrainRound
    ) -> list[tuple[str, Message]]:
        """The updates whose delta norm is within ``update-norm-factor`` x the round's median; the others are
        rejected and logged with the site named (:mod:`server.update_bounds`)."""
        if self.update_norm_factor <= 0 or not good:
            return good
        reference = self._global_numpy or {}
        norms = {
            site: delta_norm(reference, record_to_numpy(next(iter(m.content.array_records.values()))))
            for site, m in good
        }
        rec.update_norms = {site: float(f"{norm:.6g}") for site, norm in norms.items()}
        outliers = norm_outliers(norms, self.update_norm_factor)
        for site, why in outliers.items():
            rec.rejected[site] = why
            rec.site_train_seconds.pop(site, None)
            log.warning("round %s %s: update from %s REJECTED: %s", true_round, self.action, site, why)
        return [(site, m) for site, m in good if site not in outliers]

    def check_contributors(self, true_round: int, sites: list[str]) -> None:
        """Hook before aggregation: a strategy that cannot aggregate these sites meaningfully raises."""

    # ---- evaluation --------------------------------------------------------------------------------

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        true_round = server_round + self.round_offset
        if not self.evaluates:
            self._sent_eval, self._eval_bytes = [], 0
            return []
        if self.eval_arrays_of is not None:
            arrays = self.eval_arrays_of(arrays)
        msgs = super().configure_evaluate(true_round, arrays, config, grid)  # type: ignore[misc]
        msgs = self._retype(msgs, "evaluate", self.participants.eval_nodes)
        self._sent_eval = msgs
        self._eval_bytes = int(arrays.count_bytes()) * len(msgs)
        if self.secure is not None:  # the sums go through SecAgg+ here; Flower's loop sends nothing more
            self._secure_eval = secure_evaluation(
                grid,
                msgs,
                self.secure,
                self.action,
                self.secure_hist_bins,
                self._site,
                self.participants.eval_only_nodes,
                true_round,
            )
            return []
        return msgs

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        true_round = server_round + self.round_offset
        if not self.evaluates:
            self.last_eval = None
            return None
        replies = list(replies)
        sent_to = sorted(self._site(m.metadata.dst_node_id) for m in self._sent_eval)
        if self.secure is not None:
            secure, self._secure_eval = self._secure_eval, None
            sums, failed = (secure.sums, secure.failed) if secure is not None else ({}, {})
            summed = secure.summed_sites() if secure is not None else []
        else:
            summed = []
            sums, failed = collect_eval_sums(replies, self._site, sent_to, self.eval_metric_keys)
            for site, reason in error_reasons(replies, self._sent_eval, self._site).items():
                if site in failed:
                    failed[site] = reason
            self.unavailable |= unavailable_nodes(replies, self._sent_eval)
        pooled, per_site = self.eval_pooler(sums) if self.eval_pooler else ({}, {})
        self.last_eval = EvalRound(true_round, pooled, per_site, sums, failed, self._eval_bytes, summed)
        return MetricRecord({k: float(v) for k, v in pooled.items() if v == v}) if pooled else None

    # ---- strategy state for checkpoints (FedAdam overrides both) -----------------------------------

    def strategy_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Server-side optimiser state to checkpoint after each round; none for averaging strategies."""
        return {}

    def load_strategy_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        if state:
            raise ValueError(
                f"the checkpoint holds server optimiser state ({', '.join(sorted(state))}) but strategy "
                f"{type(self).__name__} keeps none: resume with the strategy the checkpoint was written with"
            )
