"""Every strategy wrapper, driven directly with hand-made replies (no Flower process): update checks before
aggregation, routing to ``train.<action>``, eval-only sites, min-sites, robust aggregation, FedAdam state."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from server.config import federation_from_run_config
from server.strategies import TooFewSitesError, build_strategy
from server.strategies.base import Participants
from shared import protocol as P
from tests.fed_support import LocalGrid, default_run_config

NODES = {11: "site-a", 12: "site-b", 13: "site-c", 14: "site-d", 15: "site-x"}
GLOBAL = {"w": np.ones((2, 2), np.float32), "n": np.array([1], np.int64)}


def make_strategy(name: str, min_sites: int = 2, **extra):
    rc = default_run_config()
    rc.update({"strategy": name, "min-sites": min_sites, **extra})
    strategy = build_strategy(federation_from_run_config(rc))
    strategy.setup_stage(
        action="seg",
        participants=Participants(
            site_of_node=NODES,
            train_nodes=frozenset([11, 12, 13, 14]),
            eval_nodes=frozenset(NODES),
            eval_only_nodes=frozenset([15]),
        ),
        min_sites=min_sites,
    )
    return strategy


def reply_to(msg: Message, arrays: dict, n: int = 10) -> Message:
    metrics = {
        P.NUM_EXAMPLES: n,
        P.NUM_PATIENTS: 2,
        P.TRAIN_LOSS: 0.5,
        P.TRAIN_LOSS_FIRST: 0.6,
        P.TRAIN_SECONDS: 1.0,
        **P.NO_DP_METRICS,
    }
    content = RecordDict(
        {P.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}), P.METRICS: MetricRecord(metrics)}
    )
    reply = Message(content, reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
    return reply


def configure(strategy) -> list[Message]:
    grid = LocalGrid(client_app=None, n_nodes=0, run_config={})
    grid.get_node_ids = lambda: list(NODES)  # five connected nodes, one of them evaluation-only
    msgs = list(
        strategy.configure_train(
            1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), grid
        )
    )
    for m in msgs:
        m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return msgs


def updates(values: dict[int, float]) -> dict[int, dict]:
    return {
        node: {"w": np.full((2, 2), v, np.float32), "n": np.array([2], np.int64)}
        for node, v in values.items()
    }


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg"])
def test_every_strategy_routes_checks_and_aggregates(name):
    strategy = make_strategy(name, **{"trimmed-beta": 0.34})  # 3 usable updates: trims one at each end
    msgs = configure(strategy)
    assert {m.metadata.message_type for m in msgs} == {"train.seg"}
    assert sorted(m.metadata.dst_node_id for m in msgs) == [11, 12, 13, 14], (
        "eval-only site gets no train message"
    )
    by_node = {m.metadata.dst_node_id: m for m in msgs}
    ups = updates({11: 2.0, 12: 2.0, 13: 2.0})
    ups[14] = {"w": np.full((2, 2), np.nan, np.float32), "n": np.array([2], np.int64)}  # poisoned
    arrays, _ = strategy.aggregate_train(1, [reply_to(by_node[n], a) for n, a in ups.items()])
    rec = strategy.last_train
    assert rec.contributed == ["site-a", "site-b", "site-c"] and "NaN" in rec.rejected["site-d"]
    w = arrays["w"].numpy()
    assert np.isfinite(w).all()
    if name != "fedadam":
        assert np.allclose(w, 2.0)
    else:
        assert (w > 1.0).all() and "m_t" in strategy.strategy_state()


def test_robust_strategies_resist_a_finite_outlier_that_fedavg_averages_in():
    results = {}
    for name in ("fedavg", "fedmedian", "fedtrimmedavg"):
        strategy = make_strategy(name, **{"trimmed-beta": 0.25})
        by_node = {m.metadata.dst_node_id: m for m in configure(strategy)}
        ups = updates({11: 1.0, 12: 1.1, 13: 0.9, 14: 1e6})
        arrays, _ = strategy.aggregate_train(1, [reply_to(by_node[n], a) for n, a in ups.items()])
        results[name] = float(arrays["w"].numpy().mean())
    assert results["fedavg"] > 1e5
    assert abs(results["fedmedian"] - 1.05) < 0.1 and abs(results["fedtrimmedavg"] - 1.05) < 0.1


def test_too_few_usable_replies_raise_and_name_the_failures():
    strategy = make_strategy("fedavg", min_sites=3)
    by_node = {m.metadata.dst_node_id: m for m in configure(strategy)}
    ups = updates({11: 1.0, 12: 1.0})
    ups[13] = {"w": np.ones((3, 3), np.float32), "n": np.array([2], np.int64)}  # wrong shape
    with pytest.raises(TooFewSitesError, match="min-sites") as err:
        strategy.aggregate_train(1, [reply_to(by_node[n], a) for n, a in ups.items()])
    assert "site-c" in str(err.value) and "site-d" in str(err.value)  # rejected, and no reply at all


def test_sites_without_examples_are_skipped_not_averaged():
    strategy = make_strategy("fedavg")
    by_node = {m.metadata.dst_node_id: m for m in configure(strategy)}
    ups = updates({11: 3.0, 12: 3.0, 13: 100.0})
    replies = [
        reply_to(by_node[11], ups[11]),
        reply_to(by_node[12], ups[12]),
        reply_to(by_node[13], ups[13], n=0),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays["w"].numpy(), 3.0) and "skipped" in strategy.last_train.rejected["site-c"]


def test_a_disconnected_site_is_told_apart_from_a_failing_one():
    """The SuperLink answers for a SuperNode that stopped its heartbeats: error code 5 (NODE_UNAVAILABLE) from
    the SuperLink's own node id; a site whose ClientApp raised answers itself with code 2."""
    strategy = make_strategy("fedavg")
    by_node = {m.metadata.dst_node_id: m for m in configure(strategy)}
    ups = updates({11: 1.0, 12: 3.0})
    replies = [reply_to(by_node[n], a) for n, a in ups.items()]
    raised = Message(Error(code=2, reason="SiteFailure: train.seg failed"), reply_to=by_node[13])
    raised.metadata.__dict__["_src_node_id"] = 13
    gone = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=by_node[14])
    gone.metadata.__dict__["_src_node_id"] = 1  # SUPERLINK_NODE_ID
    arrays, _ = strategy.aggregate_train(1, [*replies, raised, gone])
    assert np.allclose(arrays["w"].numpy(), 2.0)
    assert strategy.last_train.contributed == ["site-a", "site-b"]
    assert set(strategy.last_train.failed) == {"site-c", "site-d"}
    failed = strategy.last_train.failed
    assert "code 5" in failed["site-d"] and "code 2" in failed["site-c"]
    assert strategy.unavailable == {14}, "only the disconnected node is marked offline"
