"""A bad or hostile site cannot poison or abort the study (issue 8 §3).

Fast part: the strategy wrappers driven with hand-made replies (as in test_fed_strategies). Slow part: the real
ServerApp and ClientApp in one process (tests.fed_support.LocalGrid) where hostile sites are sites whose replies
are tampered with: an update times 1e6, a claim of 1e12 examples, an info reply without ``info``, a second node
claiming an existing site's name, a malformed evaluation reply.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from server.run_log import read_run_log
from server.sites import parse_info
from server.strategies import TooFewSitesError
from server.strategies.robust import trimming_problem
from server.update_bounds import delta_norm, example_cap, examples_problem, norm_outliers
from shared import protocol as P
from shared.errors import ConfigError
from tests.test_fed_strategies import GLOBAL, configure, make_strategy, reply_to, updates

# ---- pure bounds ------------------------------------------------------------------------------------------


def test_delta_norm_is_the_l2_norm_of_update_minus_global_over_float_arrays():
    upd = {"w": np.full((2, 2), 4.0, np.float32), "n": np.array([1000], np.int64)}
    assert delta_norm(GLOBAL, upd) == pytest.approx(6.0)  # sqrt(4 x 3^2); the int counter is left out


def test_norm_outliers_against_the_median():
    norms = {"a": 1.0, "b": 1.2, "c": 0.9, "d": 1e6}
    out = norm_outliers(norms, factor=10.0)
    assert list(out) == ["d"] and "update-norm-factor=10" in out["d"] and "median 1" in out["d"]
    assert norm_outliers({"a": 1.0, "b": 9.0, "c": 1.1}, factor=10.0) == {}
    assert norm_outliers({"a": 1.0, "b": 1e6}, factor=10.0) == {}, "two updates: the median cannot tell"
    assert norm_outliers({"a": 0.0, "b": 0.0, "c": 5.0}, factor=10.0) == {}, "a zero median bounds nothing"


def test_example_cap_is_patients_times_slices_times_epochs():
    assert example_cap(5, 12, 2) == 120
    assert examples_problem(120, 120) is None and examples_problem(1e12, None) is None
    assert "num-examples=1e+12" in str(examples_problem(1e12, 120))


def test_a_trimmed_mean_that_trims_nobody_is_named():
    problem = trimming_problem(0.2, 3)
    assert problem is not None and "trimmed-beta=0.2" in problem and "3 site(s)" in problem
    assert "at least 5 sites" in problem
    assert trimming_problem(0.2, 5) is None and trimming_problem(0.34, 3) is None
    assert "fedmedian" in str(trimming_problem(0.0, 10))


# ---- strategies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedavgm", "fedtrimmedavg"])
def test_an_update_times_1e6_is_rejected_with_the_site_named(name):
    strategy = make_strategy(name, **{"trimmed-beta": 0.34})  # 3 honest sites: one trimmed at each end
    strategy.update_norm_factor = 10.0
    by_node = {m.metadata.dst_node_id: m for m in configure(strategy)}
    ups = updates({11: 1.1, 12: 1.2, 13: 0.9, 14: 1.0 + 0.1 * 1e6})  # site-d: its delta times 1e6
    arrays, _ = strategy.aggregate_train(1, [reply_to(by_node[n], a) for n, a in ups.items()])
    rec = strategy.last_train
    assert "site-d" in rec.rejected and "update-norm-factor" in rec.rejected["site-d"]
    assert rec.contributed == ["site-a", "site-b", "site-c"]
    assert float(np.abs(arrays["w"].numpy()).max()) < 2.0


def test_a_claim_above_the_reported_counts_is_rejected():
    strategy = make_strategy("fedavg")
    strategy.example_cap_of = lambda node: 40
    by_node = {m.metadata.dst_node_id: m for m in configure(strategy)}
    ups = updates({11: 1.0, 12: 1.0, 13: 50.0})
    replies = [
        reply_to(by_node[11], ups[11], n=40),
        reply_to(by_node[12], ups[12], n=30),
        reply_to(by_node[13], ups[13], n=10**12),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert "num-examples=1e+12" in strategy.last_train.rejected["site-c"]
    assert np.allclose(arrays["w"].numpy(), 1.0), "the 1e12 claim did not make its update the global model"


def test_fedtrimmedavg_refuses_a_round_it_would_not_trim():
    strategy = make_strategy("fedtrimmedavg", **{"trimmed-beta": 0.2})
    by_node = {m.metadata.dst_node_id: m for m in configure(strategy)}
    ups = updates({11: 1.0, 12: 1.0, 13: 1.0})
    with pytest.raises(TooFewSitesError, match=r"trimmed-beta=0.2 over 3 site\(s\)"):
        strategy.aggregate_train(1, [reply_to(by_node[n], a) for n, a in ups.items()])


def _info_reply(content: RecordDict, node: int = 7) -> Message:
    for part in ("run_id", "node_id", "task_id"):  # a Message needs the process identity a study run sets
        try:
            getattr(TaskIdentity, part)
        except RuntimeError:
            setattr(TaskIdentity, part, 1)
    request = Message(RecordDict(), dst_node_id=node, message_type=P.QUERY_INFO)
    request.metadata.__dict__["_message_id"] = "m1"
    reply = Message(content, reply_to=request)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def test_malformed_info_replies_are_told_apart_never_raise():
    counts = MetricRecord({k: 1 for k in P.INFO_METRICS})
    ok = {"site": "x", "role": "train", "pretraining": "diagnosed"}
    cases = {
        "info 'pretraining' is None": RecordDict(
            {P.INFO: ConfigRecord({"site": "x", "role": "train"}), P.METRICS: counts}
        ),
        "info 'pretraining' is 'sometimes'": RecordDict(
            {P.INFO: ConfigRecord({**ok, "pretraining": "sometimes"}), P.METRICS: counts}
        ),
        "no 'info' config record": RecordDict({P.METRICS: counts}),
        "info 'site' is 5": RecordDict(
            {P.INFO: ConfigRecord({"site": 5, "role": "train"}), P.METRICS: counts}
        ),
        "info 'role' is 'boss'": RecordDict(
            {P.INFO: ConfigRecord({"site": "x", "role": "boss"}), P.METRICS: counts}
        ),
        "no 'metrics' metric record": RecordDict({P.INFO: ConfigRecord(ok)}),
        "metrics lack 'patients'": RecordDict({P.INFO: ConfigRecord(ok), P.METRICS: MetricRecord({"warnings": 0})}),
    }
    for expected, content in cases.items():
        _, problem = parse_info(_info_reply(content))
        assert problem is not None and expected in problem, (expected, problem)
    site, problem = parse_info(_info_reply(RecordDict({P.INFO: ConfigRecord(ok), P.METRICS: counts})))
    assert problem is None and site.name == "x" and site.node_id == 7 and site.pretraining == "diagnosed"


# ---- the whole study, with hostile sites ------------------------------------------------------------------

SITES = ("hospital-a", "hospital-b", "hospital-c")


class Hostile:
    """The real ClientApp at hospital-a..c; hospital-c poisons its training replies; node 4 claims to be
    hospital-a; node 5 answers query.info without an ``info`` record; hospital-b's final-test histogram reply
    is malformed (negative counts)."""

    def __call__(self, message: Message, context) -> Message:
        pid = int(context.node_config["partition-id"])
        kind = message.metadata.message_type
        if pid >= 3:
            assert kind == P.QUERY_INFO, f"a rejected node was sent {kind}"
            counts = MetricRecord({k: 5 for k in P.INFO_METRICS})
            if pid == 3:
                info = ConfigRecord({"site": "hospital-a", "role": "train", "pretraining": "all"})
                return Message(RecordDict({P.INFO: info, P.METRICS: counts}), reply_to=message)
            return Message(RecordDict({P.METRICS: counts}), reply_to=message)
        reply = client_app(message=message, context=context)
        if reply.has_error():
            return reply
        conf = message.content.config_records.get(P.CONFIG)
        if SITES[pid] == "hospital-c" and kind == P.TRAIN_SEG:
            arrays = reply.content[P.ARRAYS]
            for k in arrays.keys():  # the site's update times 1e6 (finite: the update check lets it pass)
                a = arrays[k].numpy()
                if np.issubdtype(a.dtype, np.floating):
                    arrays[k] = type(arrays[k])(a * np.float32(1e6))
            return reply
        if SITES[pid] == "hospital-c" and kind == P.TRAIN_CLS and conf[P.CFG_DATASET] == "t2":
            reply.content[P.METRICS][P.NUM_EXAMPLES] = 10**12
            return reply
        if SITES[pid] == "hospital-b" and kind == P.EVALUATE_CLS and conf[P.CFG_SPLIT] == "test":
            hist = list(reply.content[P.METRICS][P.HIST_POS])
            reply.content[P.METRICS][P.HIST_POS] = [-1] + hist[1:]
        return reply


@pytest.mark.slow
def test_hostile_sites_are_rejected_named_and_the_study_completes_with_the_honest_ones(tmp_path):
    from simulations.synth.cohort import CohortConfig, generate_cohort
    from tests.test_fed_study import round_lines, run_study, toy_config

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, CohortConfig(sites=3, patients_per_site=(7, 7, 7), seed=5), progress=False)
    out = tmp_path / "out"
    grid = run_study(toy_config(cohort, out, **{"min-sites": 2}), client=Hostile(), n_nodes=5)
    assert (out / "STATUS").read_text().startswith("COMPLETED")
    lines = read_run_log(out / "run-log.jsonl")
    rejected = {x["node"]: x for x in lines if x["event"] == "site-rejected"}
    nodes = sorted(grid.contexts)
    assert set(rejected) == {str(nodes[3]), str(nodes[4])}
    assert (
        rejected[str(nodes[3])]["claimed"] == "hospital-a"
        and "already held" in rejected[str(nodes[3])]["reason"]
    )
    assert "no 'info' config record" in rejected[str(nodes[4])]["reason"]
    rounds = {(x["stage"], x["dataset"]): x for x in round_lines(out)}
    seg, t2, t1t2 = rounds[("seg", "")], rounds[("cls", "t2")], rounds[("cls", "t1+t2")]
    assert "update-norm-factor" in seg["updates_rejected"]["hospital-c"]
    assert seg["sites_contributed"] == ["hospital-a", "hospital-b"]
    assert "num-examples=1e+12" in t2["updates_rejected"]["hospital-c"]
    assert t2["sites_contributed"] == ["hospital-a", "hospital-b"]
    assert t1t2["sites_contributed"] == list(SITES), "an honest round of hospital-c still counts"
    results = json.loads((out / "results.json").read_text())
    assert set(results["sites"]) == set(SITES)
    final = [x for x in lines if x["event"] == "final-test" and x["stage"] == "cls"]
    assert all("malformed evaluation reply" in x["failed"]["hospital-b"] for x in final)


def test_fedtrimmedavg_that_trims_nobody_is_refused_at_the_start(tmp_path):
    from server.app import app as server_app
    from simulations.scenarios import SCENARIOS
    from tests.fed_support import LocalGrid, default_run_config, server_context

    rc = default_run_config()
    rc.update(SCENARIOS["toy"].run_config)
    rc.update({"out-dir": str(tmp_path / "out"), "strategy": "fedtrimmedavg", "trimmed-beta": 0.2})
    rc.update({"wait-for-sites-s": 0.0, "min-sites": 2})

    def info_only(message: Message, context) -> Message:  # three sites that only say who they are
        info = ConfigRecord(
            {"site": f"site-{context.node_config['partition-id']}", "role": "train", "pretraining": "all"}
        )
        counts = MetricRecord({k: 5 for k in P.INFO_METRICS})
        return Message(RecordDict({P.INFO: info, P.METRICS: counts}), reply_to=message)

    grid = LocalGrid(info_only, 3, rc)
    with pytest.raises(ConfigError, match=r"trimmed-beta=0.2 over 3 site\(s\)"):
        server_app(grid, server_context(rc))
    assert {m.metadata.message_type for m in grid.sent} == {P.QUERY_INFO}, "refused before any training"
    assert "trimmed-beta" in (tmp_path / "out" / "STATUS").read_text()
