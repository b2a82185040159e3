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


def configure(strategy, global_arrays: dict[str, np.ndarray] = GLOBAL) -> list[Message]:
    grid = LocalGrid(client_app=None, n_nodes=0, run_config={})
    grid.get_node_ids = lambda: list(NODES)  # five connected nodes, one of them evaluation-only
    msgs = list(
        strategy.configure_train(
            1, ArrayRecord({k: Array(v) for k, v in global_arrays.items()}), ConfigRecord(), grid
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


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedavgm", "fedmedian", "fedtrimmedavg"])
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


def _fedavgm_round(strategy, global_w: float, site_w: float):
    grid = LocalGrid(client_app=None, n_nodes=0, run_config={})
    grid.get_node_ids = lambda: list(NODES)
    sent = {
        "w": np.full((2, 2), global_w, np.float32),
        "n": np.array([1], np.int64),
        "bn.running_var": np.full(2, global_w, np.float32),
    }
    msgs = list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in sent.items()}), ConfigRecord(), grid))
    for m in msgs:
        m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    by_node = {m.metadata.dst_node_id: m for m in msgs}
    ups = updates({11: site_w, 12: site_w, 13: site_w})
    for up in ups.values():
        up["bn.running_var"] = np.full(2, site_w, np.float32)
    arrays, _ = strategy.aggregate_train(1, [reply_to(by_node[n], a) for n, a in ups.items()])
    return arrays


def test_fedavgm_steps_with_server_momentum_and_a_resumed_strategy_continues_it_exactly():
    settings = {"fedavgm-momentum": 0.5, "fedavgm-server-lr": 1.0}
    live = make_strategy("fedavgm", **settings)
    first = _fedavgm_round(live, 1.0, 2.0)
    assert np.allclose(first["w"].numpy(), 2.0), "round 1: no momentum yet, the plain mean"
    assert first["n"].numpy().dtype == np.int64, "BatchNorm-style counters stay integers"
    state = live.strategy_state()
    second = _fedavgm_round(live, 2.0, 3.0)
    # step = 0.5 x (previous step 1) + this round's 1 -> 2.0 -> 2.0 + 1.5 = 3.5; FedAvg would give 3.0
    assert np.allclose(second["w"].numpy(), 3.5)
    # running statistics are averaged, never stepped with momentum (a variance could go below zero)
    assert np.allclose(second["bn.running_var"].numpy(), 3.0) and set(state["momentum"]) == {"w"}
    resumed = make_strategy("fedavgm", **settings)
    resumed.load_strategy_state(state)
    assert np.array_equal(_fedavgm_round(resumed, 2.0, 3.0)["w"].numpy(), second["w"].numpy())
    forgetful = make_strategy("fedavgm", **settings)
    assert np.allclose(_fedavgm_round(forgetful, 2.0, 3.0)["w"].numpy(), 3.0), "without the state: no momentum"
    misfit = make_strategy("fedavgm", **settings)
    misfit.load_strategy_state({"momentum": {"other": np.zeros(3)}})
    with pytest.raises(ValueError, match="does not fit the model"):
        _fedavgm_round(misfit, 2.0, 3.0)
    with pytest.raises(ValueError, match="unknown parts"):
        make_strategy("fedavgm").load_strategy_state({"m_t": {}})


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
