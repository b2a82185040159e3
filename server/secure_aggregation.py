"""Secure aggregation (SecAgg+) of one training round, run by Flower 1.42's own workflow code over our Grid.

Flower 1.42 ships SecAgg+ only on its legacy stack: ``flwr.server.workflow.SecAggPlusWorkflow`` drives four message
stages (setup, share keys, collect masked vectors, unmask) through a ``LegacyContext`` whose legacy strategy names
the sites (``configure_fit``) and receives the unmasked result (``aggregate_fit``); our strategies use the Message
API. This module adapts the two and leaves the protocol as Flower wrote it (keys, Shamir shares, masks, quantisation
and unmasking are Flower's code):

- :class:`_Handover` is the legacy strategy: ``configure_fit`` names the round's sites, ``aggregate_fit`` keeps what
  Flower unmasked (the weighted MEAN of the sites' updates) and each site's clear scalar metrics;
- :class:`_StudyGrid` wraps our Grid: the workflow's messages (type ``train``) leave as ``train.<action>``, so the
  site's own training handler receives them (``client/secure_aggregation.py`` hands them to Flower's
  ``secaggplus_mod``), and the "collect masked vectors" message carries our training instruction (global arrays
  and config) in place of a legacy FitIns.

In the collect stage a site sends Flower's masked vector of ``[weight, weight x update]``: ``update = w_site -
w_global`` (checked and clipped at the site), ``weight = num-examples / max_weight``, ``max_weight`` the most examples
a site of this round may claim (from its own ``query.info`` / ``query.roi`` counts, so every weight is <= 1); Flower's
mod empties the array record of that reply. The coordinator learns the sum (hence the weighted mean) of the updates
and each site's scalar metrics, never one site's update.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import LegacyContext
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation import secaggplus_workflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from shared import protocol as P
from shared.errors import ConfigError

log = logging.getLogger(__name__)

#: Flower's defaults (``SecAggPlusWorkflow``): values quantised to [0, 2**22), masks drawn in [0, 2**32)
QUANTIZATION_RANGE = 4194304
MODULUS_RANGE = 4294967296


@dataclass(frozen=True)
class SecureAggregation:
    """SecAgg+ settings of a study (run config ``secure-aggregation-*``)."""

    clip: float  # each coordinate of a site's weighted update is clipped to [-clip, clip] before quantisation
    threshold: float  # share of a round's sites whose key shares unmask the sum
    timeout: float | None  # seconds to wait for the replies of each of the four stages
    quantization_range: int = QUANTIZATION_RANGE
    modulus_range: int = MODULUS_RANGE

    def weight_ratio(self, num_examples: float, max_weight: float) -> float:
        """The weight a site's update is multiplied by before masking, as Flower's mod quantises it:
        ``round(num_examples / max_weight x quantization_range) / quantization_range``."""
        return round(num_examples / max_weight * self.quantization_range) / self.quantization_range

    def quantisation_bound(self, n_sites: int, weight_sum: float) -> float:
        """Largest difference per coordinate between the unmasked mean and the exact weighted mean of the same
        (unclipped) updates. Each site's quantised value is within one step ``2 clip / quantization_range`` of its
        weighted update (stochastic rounding), and each weight within half a step of ``num-examples / max_weight``
        (which moves the mean by at most ``clip / quantization_range`` per site); both are divided by the sum of
        the weights: ``n_sites x 1.5 x step / weight_sum``."""
        if weight_sum <= 0:
            return float("inf")
        step = 2.0 * self.clip / self.quantization_range
        return n_sites * 1.5 * step / weight_sum


def secure_aggregation_of(fed) -> SecureAggregation | None:
    """The study's SecAgg+ settings (``secure-aggregation*`` run-config keys), None when it is off."""
    if not fed.secure_aggregation:
        return None
    return SecureAggregation(
        fed.secure_aggregation_clip, fed.secure_aggregation_threshold, fed.round_timeout_s
    )


@dataclass
class SecureRound:
    """The outcome of one secure round: the mean update (None when the protocol halted) and what else the
    coordinator learned (each summed site's scalar metrics, who failed and why)."""

    mean_update: dict[str, np.ndarray] | None
    site_metrics: dict[int, dict[str, Any]] = field(default_factory=dict)  # node -> clear scalar metrics
    failed: dict[int, str] = field(default_factory=dict)  # node -> stage and reason
    halted: str = ""  # why the protocol stopped before unmasking ("" when it unmasked)
    max_weight: float = 0.0
    seconds: float = 0.0
    bytes_received: int = 0
    weight_total: int = 0  # the quantised weight total Flower unmasked (the sum of what the sites masked)
    claimed_weight_total: int = 0  # the same total from the sites' clear num-examples claims


class _Handover(Strategy):
    """The legacy strategy SecAggPlusWorkflow drives: it names the sites and keeps the unmasked result."""

    def __init__(self, nodes: list[int], grid: Grid) -> None:
        self.nodes = nodes
        self.grid = grid
        self.mean: list[np.ndarray] | None = None
        self.site_metrics: dict[int, dict[str, Any]] = {}
        self.claimed_examples: dict[int, float] = {}  # node -> the num-examples its FitRes claims in clear

    def configure_fit(self, server_round, parameters, client_manager):
        # the content of the collect stage is ours (:class:`_StudyGrid`): an empty FitIns here
        return [(GridClientProxy(n, self.grid, 0), FitIns(Parameters([], ""), {})) for n in self.nodes]

    def aggregate_fit(self, server_round, results, failures):
        # Flower replaced every result's parameters with the one unmasked weighted mean
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        self.site_metrics = {proxy.node_id: dict(res.metrics) for proxy, res in results}
        self.claimed_examples = {proxy.node_id: float(res.num_examples) for proxy, res in results}
        return None, {}

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _StudyGrid(Grid):
    """Our Grid as SecAggPlusWorkflow sees it: its ``train`` messages leave typed ``message_type`` (the stage's
    ``train.<action>``), the collect stage carries ``instructions[node]``'s content; error replies are noted."""

    def __init__(self, grid: Grid, message_type: str, instructions: dict[int, RecordDict]) -> None:
        self.grid = grid
        self.message_type = message_type
        self.instructions = instructions
        self.failed: dict[int, str] = {}
        self.bytes_received = 0  # keys, shares and masked vectors: what the sites uploaded

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out: list[Message] = []
        stage = ""
        for msg in messages:
            node = msg.metadata.dst_node_id
            configs = msg.content.config_records[RECORD_KEY_CONFIGS]
            stage = str(configs[Key.STAGE])
            # a record of its own per site (the workflow shares one between messages, a site's mod edits it)
            content = RecordDict({**msg.content, RECORD_KEY_CONFIGS: ConfigRecord(dict(configs))})
            if stage == Stage.COLLECT_MASKED_VECTORS:
                content = RecordDict(
                    {**self.instructions[node], RECORD_KEY_CONFIGS: ConfigRecord(dict(configs))}
                )
            out.append(
                Message(
                    content, dst_node_id=node, message_type=self.message_type, group_id=msg.metadata.group_id
                )
            )
        sent = {m.metadata.dst_node_id for m in out}
        replies = list(self.grid.send_and_receive(out, timeout=timeout))
        by_id = {m.metadata.message_id: m.metadata.dst_node_id for m in out}
        answered = set()
        for reply in replies:
            node = by_id.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            answered.add(node)
            if reply.has_error():
                reason = " ".join(str(reply.error.reason).split())[:300]
                self.failed[node] = f"SecAgg+ {stage}: error reply (code {reply.error.code}): {reason}"
            else:
                self.bytes_received += sum(
                    _bytes_in(v) for rec in reply.content.config_records.values() for v in rec.values()
                )
        for node in sent - answered:
            self.failed[node] = f"SecAgg+ {stage}: no reply (timeout or disconnect)"
        return replies

    # the rest of the Grid interface: the wrapped grid's
    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)


@contextlib.contextmanager
def _unmasked_weight_total() -> Iterator[list[int]]:
    """Record the quantised weight total Flower's ``unmask_stage`` extracts from the unmasked sum.

    Flower divides the unmasked sum by that total and keeps it to itself; a site running modified code could mask
    a weight other than the ``num-examples`` it claims in clear (e.g. inflate its own share of the mean). The
    total is the first value of the unmasked vector, taken out by ``factor_extract``: while a secure round runs,
    the workflow module's reference to that function is wrapped to note what it returns."""
    seen: list[int] = []
    original = secaggplus_workflow.factor_extract

    def noting(parameters):
        total, rest = original(parameters)
        seen.append(int(total))
        return total, rest

    secaggplus_workflow.factor_extract = noting
    try:
        yield seen
    finally:
        secaggplus_workflow.factor_extract = original


def secure_round(
    grid: Grid,
    instructions: list[Message],
    settings: SecureAggregation,
    max_weight: float,
    server_round: int,
    result_keys: list[str] | None = None,
) -> SecureRound:
    """Run SecAgg+ over the sites of ``instructions`` (our ``<category>.<action>`` messages, one per site, all with
    the same global arrays) and return the weighted mean of what they mask, keyed like those arrays (training) or
    by ``result_keys`` (evaluation sums: ``server.secure_evaluation``).

    The round halts (nothing unmasked is used) when the weight total Flower unmasked differs from the total of the
    sites' clear ``num-examples`` claims: a site masked another weight than it claims."""
    t0 = time.perf_counter()
    if not instructions:
        return SecureRound(None, halted="no site to train")
    if not max_weight > 0:
        raise ConfigError(
            f"secure aggregation needs the most examples a site may claim (max weight), got {max_weight!r}: the "
            "sites' query.info / query.roi counts report no training slices"
        )
    message_type = instructions[0].metadata.message_type
    keys = result_keys if result_keys is not None else list(instructions[0].content[P.ARRAYS].keys())
    nodes = [m.metadata.dst_node_id for m in instructions]
    study_grid = _StudyGrid(grid, message_type, {m.metadata.dst_node_id: m.content for m in instructions})
    handover = _Handover(nodes, study_grid)
    base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=handover)
    context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state[MAIN_PARAMS_RECORD] = ArrayRecord()  # the global arrays travel in our instructions
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every site is every other's neighbour (a round has few hospitals)
        reconstruction_threshold=settings.threshold,
        max_weight=max_weight,
        clipping_range=settings.clip,
        quantization_range=settings.quantization_range,
        modulus_range=settings.modulus_range,
        timeout=settings.timeout,
    )
    state = WorkflowState()
    halted = ""
    with _unmasked_weight_total() as totals:
        for name, step in (
            (Stage.SETUP, workflow.setup_stage),
            (Stage.SHARE_KEYS, workflow.share_keys_stage),
            (Stage.COLLECT_MASKED_VECTORS, workflow.collect_masked_vectors_stage),
            (Stage.UNMASK, workflow.unmask_stage),
        ):
            if not step(study_grid, context, state):
                halted = (
                    f"SecAgg+ halted at stage {name!r}: {len(state.active_node_ids)} of {len(nodes)} site(s) "
                    f"still active, {state.threshold or 'at least 2'} needed to unmask (secure-aggregation-threshold)"
                )
                break
    weight_total = totals[-1] if totals else 0
    claimed = sum(
        round(e / max_weight * settings.quantization_range) for e in handover.claimed_examples.values()
    )
    if not halted and totals and weight_total != claimed:
        sites = sorted(handover.claimed_examples)
        halted = (
            f"SecAgg+ weight check failed: the sites masked a weight total of {weight_total} (quantised), their "
            f"clear num-examples claims add up to {claimed}: one of the summed sites (nodes {sites}) masked a "
            "weight other than it claims (modified site code); this round's sum is not used"
        )
        log.error("%s", halted)
    mean = None
    if not halted and handover.mean is not None:
        if len(handover.mean) != len(keys):
            raise RuntimeError(
                f"SecAgg+ unmasked {len(handover.mean)} arrays, the global model has {len(keys)}: a site sent an "
                "update of another model"
            )
        mean = dict(zip(keys, handover.mean, strict=True))
    elif not halted:
        halted = "SecAgg+ ended without an aggregate (no site's masked vector was received)"
    return SecureRound(
        mean_update=mean,
        site_metrics=handover.site_metrics,
        failed=dict(study_grid.failed),
        halted=halted,
        max_weight=max_weight,
        seconds=time.perf_counter() - t0,
        bytes_received=study_grid.bytes_received,
        weight_total=weight_total,
        claimed_weight_total=claimed,
    )


def _bytes_in(value: object) -> int:
    if isinstance(value, bytes):
        return len(value)
    return sum(len(v) for v in value if isinstance(v, bytes)) if isinstance(value, list) else 0


@dataclass
class SummedRound:
    """What the strategy aggregates after a secure round: one reply holding the summed sites' weighted mean model
    (``global + mean update``) and their example-weighted mean metrics, plus the round's figures for the run log."""

    reply: Message
    contributed: list[int]  # summed nodes with training examples
    figures: dict[str, Any]


def summed_reply(
    global_arrays: dict[str, np.ndarray], outcome: SecureRound, settings: SecureAggregation, message_type: str
) -> SummedRound:
    """The unmasked mean as the single reply a Flower strategy averages (FedAvg of one reply is that reply;
    FedAdam takes its step from it). Integer arrays (BatchNorm's counters) are rounded back to integers."""
    if outcome.mean_update is None:
        raise ValueError(f"no unmasked sum to aggregate: {outcome.halted}")
    examples = {n: float(m[P.NUM_EXAMPLES]) for n, m in outcome.site_metrics.items()}
    total = sum(examples.values())
    weight_sum = sum(settings.weight_ratio(e, outcome.max_weight) for e in examples.values())
    arrays: dict[str, np.ndarray] = {}
    for key, ref in global_arrays.items():
        value = ref.astype(np.float64) + outcome.mean_update[key]
        arrays[key] = (np.rint(value) if not np.issubdtype(ref.dtype, np.floating) else value).astype(
            ref.dtype
        )
    metrics: dict[str, float | int] = {P.NUM_EXAMPLES: int(total)}
    for key in P.TRAIN_METRICS:
        if key != P.NUM_EXAMPLES and total > 0:
            metrics[key] = sum(examples[n] * float(m[key]) for n, m in outcome.site_metrics.items()) / total
    content = RecordDict(
        {
            P.ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            P.METRICS: MetricRecord(metrics),
        }
    )
    figures = {
        "sites_summed": len(outcome.site_metrics),
        "seconds_protocol": round(outcome.seconds, 3),
        "max_weight": outcome.max_weight,
        "weight_sum": weight_sum,
        "quantisation_bound": settings.quantisation_bound(len(outcome.site_metrics), weight_sum),
        "clipped_coordinates": {n: int(m.get(P.SECAGG_CLIPPED, 0)) for n, m in outcome.site_metrics.items()},
    }
    return SummedRound(
        reply=Message(content, dst_node_id=0, message_type=message_type),
        contributed=[n for n, e in examples.items() if e > 0],
        figures=figures,
    )
