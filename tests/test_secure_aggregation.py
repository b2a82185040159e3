"""Secure aggregation (SecAgg+): Flower's real workflow and mod around our train.<action> messages.

Unit level: a tiny ClientApp whose training handler returns known arrays, behind our ``secure_aggregation`` mod
(Flower's ``secaggplus_mod`` inside), answered in-process; the coordinator side is ``server.secure_aggregation``
(Flower's ``SecAggPlusWorkflow`` stages). The unmasked mean must equal the exact example-weighted mean within the
quantisation bound, and the coordinator must never receive a site's update. Study level (slow): the toy study
through both stages with and without secure aggregation, same seed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.secure_aggregation import secure_aggregation
from server.config import federation_from_run_config
from server.privacy import check_privacy_settings
from server.secure_aggregation import SecureAggregation, secure_round
from shared import protocol as P
from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.records import numpy_to_record
from tests.fed_support import LocalGrid, default_run_config

GLOBAL = {
    "conv.weight": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
    "bn.running_var": np.ones(3, dtype=np.float32),
    "bn.num_batches_tracked": np.array(5, dtype=np.int64),
}


def _site_update(node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {
        k: (rng.normal(0, 0.05, v.shape) if v.dtype.kind == "f" else np.array(3)) for k, v in GLOBAL.items()
    }


def _examples(node: int) -> int:
    return 10 + node % 17


def _toy_app(broken: set[int] | None = None, nan: set[int] | None = None) -> ClientApp:
    app = ClientApp()

    @app.train("seg", mods=[secure_aggregation])
    def train(msg: Message, context: Context) -> Message:
        node = context.node_id
        if node in (broken or set()):
            raise RuntimeError("local training failed")
        glob = {k: msg.content[P.ARRAYS][k].numpy() for k in msg.content[P.ARRAYS].keys()}
        trained = {k: (glob[k] + _site_update(node)[k]).astype(glob[k].dtype) for k in glob}
        if node in (nan or set()):
            trained["conv.weight"][0, 0, 0] = np.nan
        metrics = {**{k: 0.0 for k in P.TRAIN_METRICS}, P.NUM_EXAMPLES: _examples(node), P.UPDATE_WEIGHT: 1}
        return Message(
            RecordDict({P.ARRAYS: numpy_to_record(trained), P.METRICS: MetricRecord(metrics)}), reply_to=msg
        )

    return app


def _instructions(grid: LocalGrid) -> list[Message]:
    content = RecordDict({P.ARRAYS: numpy_to_record(GLOBAL), P.CONFIG: ConfigRecord({P.CFG_ROUND: 1})})
    return [Message(content, dst_node_id=n, message_type=P.TRAIN_SEG) for n in grid.contexts]


def _secure_grid(n_sites: int, broken: set[int] | None = None, nan: set[int] | None = None) -> LocalGrid:
    return LocalGrid(_toy_app(broken, nan), n_sites, {**default_run_config(), "secure-aggregation": True})


def test_unmasked_mean_equals_the_weighted_fedavg_within_the_quantisation_bound_and_no_update_leaves():
    grid = _secure_grid(4)
    settings = SecureAggregation(clip=4.0, threshold=0.67, timeout=None)
    max_weight = 40.0
    out = secure_round(grid, _instructions(grid), settings, max_weight, server_round=1)
    assert out.halted == "" and out.mean_update is not None and not out.failed
    nodes = list(grid.contexts)
    w = np.array([_examples(n) for n in nodes], dtype=np.float64)
    weight_sum = sum(settings.weight_ratio(x, max_weight) for x in w)
    bound = settings.quantisation_bound(len(nodes), weight_sum)
    assert 0 < bound < 1e-4
    worst = 0.0
    for key in GLOBAL:
        exact = sum(wi * _site_update(n)[key] for wi, n in zip(w, nodes, strict=True)) / w.sum()
        worst = max(worst, float(np.max(np.abs(out.mean_update[key] - exact))))
    assert worst <= bound, (worst, bound)
    assert all(m[P.SECAGG_CLIPPED] == 0 for m in out.site_metrics.values())
    assert worst > 0  # quantised: not bit-identical (a test that could not tell masking from plain averaging)
    # what reached the coordinator: no array record with data, only Flower's stage records and scalar metrics
    for reply in grid.replies:
        assert all(len(rec) == 0 for rec in reply.content.array_records.values())
        configs = reply.content.config_records[RECORD_KEY_CONFIGS]
        if "masked_params" in configs:  # the collect stage: the masked vector is not the update
            masked = [np.load(__import__("io").BytesIO(b)) for b in configs["masked_params"]]
            assert masked[1].dtype == np.int64 and masked[1].max() > 2**22  # masked integers mod 2**32
    assert {m.metadata.message_type for m in grid.sent} == {P.TRAIN_SEG}


def test_clipped_coordinates_are_counted_at_each_site():
    grid = _secure_grid(3)
    out = secure_round(grid, _instructions(grid), SecureAggregation(1.0, 0.67, None), 40.0, server_round=1)
    # the counter's update (3 batches) x weight (examples / 40) exceeds 1 where examples > 13
    expected = {n: int(3 * _examples(n) / 40 > 1.0) for n in grid.contexts}
    assert {n: m[P.SECAGG_CLIPPED] for n, m in out.site_metrics.items()} == expected
    assert sum(expected.values()) >= 1


@pytest.mark.parametrize("failure", ["raises", "nan"])
def test_a_site_that_fails_after_the_key_exchange_is_unmasked_out_by_the_others(failure):
    # a site whose training raises, or whose update fails the site's check before masking (NaN), sends nothing
    grid = _secure_grid(
        4, broken={1008} if failure == "raises" else None, nan={1008} if failure == "nan" else None
    )
    settings = SecureAggregation(clip=4.0, threshold=0.5, timeout=None)
    out = secure_round(grid, _instructions(grid), settings, 40.0, server_round=1)
    assert out.halted == "" and set(out.failed) == {1008}
    assert "collect_masked_vectors" in out.failed[1008]
    if failure == "nan":
        assert "fails the check before masking: array 'conv.weight' contains NaN" in out.failed[1008]
    nodes = [n for n in grid.contexts if n != 1008]
    w = np.array([_examples(n) for n in nodes], dtype=np.float64)
    bound = settings.quantisation_bound(3, sum(settings.weight_ratio(x, 40.0) for x in w))
    for key in GLOBAL:
        exact = sum(wi * _site_update(n)[key] for wi, n in zip(w, nodes, strict=True)) / w.sum()
        assert np.max(np.abs(out.mean_update[key] - exact)) <= bound


def test_with_two_sites_a_dropout_halts_the_round():
    grid = _secure_grid(2, broken={1008})
    out = secure_round(grid, _instructions(grid), SecureAggregation(4.0, 0.67, None), 40.0, server_round=1)
    assert out.mean_update is None and "halted" in out.halted


def test_the_site_refuses_a_plain_training_instruction_in_a_secure_run():
    grid = _secure_grid(2)
    replies = list(grid.send_and_receive(_instructions(grid)))
    assert all(r.has_error() for r in replies)
    assert "does not send its update in clear" in replies[0].error.reason
    assert not any(RECORD_KEY_CONFIGS in r.content.config_records for r in replies if not r.has_error())


def _strategy(name: str, grid: LocalGrid, caps: dict[int, int]):
    from server.strategies import build_strategy
    from server.strategies.base import Participants

    rc = {**default_run_config(), "strategy": name, "secure-aggregation": True, "update-norm-factor": 0.0}
    strategy = build_strategy(federation_from_run_config(rc))
    nodes = frozenset(grid.contexts)
    strategy.setup_stage(
        action="seg",
        participants=Participants({n: f"site-{n}" for n in nodes}, nodes, nodes),
        min_sites=2,
        example_cap_of=caps.get,
        secure=SecureAggregation(4.0, 0.67, None),
    )
    return strategy


def test_fedavg_applies_the_unmasked_mean_and_fedadam_and_fedavgm_step_from_it():
    grid = _secure_grid(3)
    nodes = list(grid.contexts)
    caps = {n: 40 for n in nodes}
    fedavg = _strategy("fedavg", grid, caps)
    assert fedavg.configure_train(1, numpy_to_record(GLOBAL), ConfigRecord({}), grid) == []  # sent by SecAgg+
    arrays, _ = fedavg.aggregate_train(1, [])
    rec = fedavg.last_train
    assert rec.contributed == sorted(f"site-{n}" for n in nodes) and not rec.rejected
    bound = rec.secure_aggregation["quantisation_bound"]
    w = np.array([_examples(n) for n in nodes], dtype=np.float64)
    for key, ref in GLOBAL.items():
        exact = ref + sum(wi * _site_update(n)[key] for wi, n in zip(w, nodes, strict=True)) / w.sum()
        got = arrays[key].numpy()
        if ref.dtype.kind == "f":
            assert got.dtype == np.float32
            assert np.max(np.abs(got - exact)) <= bound + 1e-7 * np.max(np.abs(exact))
        else:  # BatchNorm's counter: the mean of the sites' counts, rounded (float64, as Flower's FedAvg gives it)
            assert got.size == 1 and float(got.item()) == float(np.rint(exact)), (got, exact)
    fedadam = _strategy("fedadam", grid, caps)
    fedadam.configure_train(1, numpy_to_record(GLOBAL), ConfigRecord({}), grid)
    stepped, _ = fedadam.aggregate_train(1, [])
    assert set(fedadam.strategy_state()) == {"m_t", "v_t"}
    delta = stepped["conv.weight"].numpy() - GLOBAL["conv.weight"]
    assert np.isfinite(delta).all() and np.abs(delta).max() > 0
    fedavgm = _strategy("fedavgm", grid, caps)
    fedavgm.configure_train(1, numpy_to_record(GLOBAL), ConfigRecord({}), grid)
    momentum, _ = fedavgm.aggregate_train(1, [])
    assert set(fedavgm.strategy_state()) == {"momentum"}
    # round 1 has no earlier step: server lr 1 x the unmasked mean's update, as FedAvg applies it
    np.testing.assert_allclose(momentum["conv.weight"].numpy(), arrays["conv.weight"].numpy(), rtol=0, atol=2 * bound + 1e-6)


def test_a_claim_above_the_sites_own_counts_ends_the_run_naming_the_site():
    from server.strategies.base import UnusableSumError

    grid = _secure_grid(3)
    liar = list(grid.contexts)[0]  # claims _examples(liar) = 25 examples; its counts allow 12
    strategy = _strategy("fedavg", grid, {n: (12 if n == liar else 40) for n in grid.contexts})
    strategy.configure_train(1, numpy_to_record(GLOBAL), ConfigRecord({}), grid)
    with pytest.raises(UnusableSumError, match=f"update of site-{liar} is inside the sum"):
        strategy.aggregate_train(1, [])
    assert "num-examples=25" in strategy.last_train.rejected[f"site-{liar}"]


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"strategy": "fedmedian"}, "secure-aggregation=true with strategy='fedmedian'"),
        ({"strategy": "fedtrimmedavg"}, "secure-aggregation=true with strategy='fedtrimmedavg'"),
        ({"dp": "central", "strategy": "fedavg"}, "secure-aggregation=true with dp='central'"),
        ({"update-norm-factor": 10.0}, "secure-aggregation=true with update-norm-factor=10"),
        ({"min-sites": 1}, "secure-aggregation=true with min-sites=1"),
    ],
)
def test_refused_secure_aggregation_combinations_name_both_keys(changes, match):
    from simulations.run_cmd import validate_run_config

    changes = {"secure-aggregation": True, "update-norm-factor": 0.0, **changes}
    rc = {**default_run_config(), **changes}
    with pytest.raises(ConfigError, match=match):
        check_privacy_settings(federation_from_run_config(rc), PipelineConfig.defaults({"dp": rc["dp"]}))
    with pytest.raises(ConfigError, match=match):  # nasofl-sim run refuses it before Flower starts
        validate_run_config(changes)


def test_check_config_refuses_what_the_server_refuses():
    import argparse

    from server.check_config_cmd import run

    with pytest.raises(ConfigError, match="secure-aggregation=true with update-norm-factor=10"):
        run(argparse.Namespace(app=None, run_config=["secure-aggregation=true"]))
    assert (
        run(argparse.Namespace(app=None, run_config=["secure-aggregation=true update-norm-factor=0.0"])) == 0
    )


@pytest.mark.parametrize(
    "strategy,dp", [("fedavg", "local"), ("fedprox", "off"), ("fedadam", "local"), ("fedavgm", "local")]
)
def test_averaging_strategies_and_local_dp_are_allowed_with_secure_aggregation(strategy, dp):
    rc = {**default_run_config(), "secure-aggregation": True, "update-norm-factor": 0.0, "strategy": strategy}
    cfg = PipelineConfig.defaults({"dp": dp, "amp": False, "cls-pretrain-epochs": 0})  # local DP: no pretraining
    check_privacy_settings(federation_from_run_config(rc), cfg)


# ---------------------------------------------------------------- the toy study, both stages (slow) ----------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from simulations.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("secaggcohort")
    # half NPL at every site, so that the test split holds both classes (the pooled AUC is defined)
    config = CohortConfig(sites=3, patients_per_site=(8, 8, 8), seed=3, npl_fraction_per_site=(0.5, 0.5, 0.5))
    generate_cohort(root, config, progress=False)
    return root


def _study(cohort: Path, out: Path, **overrides) -> tuple[LocalGrid, dict, list[dict], float]:
    from client.app import app as client_app
    from server.app import app as server_app
    from tests.fed_support import server_context, toy_run_config

    # roi-context "box": the two runs' segmenters differ by SecAgg+'s quantisation, so a few predicted mask pixels
    # may differ; tumour-only crops would carry those pixels into the classifier's inputs, and the classifiers
    # would then differ by more than the quantisation this test bounds (measured: 6.7e-4 against 5.7e-6)
    rc = toy_run_config(
        cohort, out, datasets="t2", amp=False, **{"update-norm-factor": 0.0, "roi-context": "box", **overrides}
    )
    grid = LocalGrid(client_app, 3, rc)
    for context in grid.contexts.values():
        # every score bin its own group in clear too, so that both runs pool the same fixed bins
        context.node_config["min-hist-count"] = 1
    t0 = time.perf_counter()
    server_app(grid, server_context(rc))
    seconds = time.perf_counter() - t0
    assert (out / "STATUS").read_text().startswith("COMPLETED"), (out / "STATUS").read_text()
    lines = [json.loads(x) for x in (out / "run-log.jsonl").read_text().splitlines()]
    return (
        grid,
        json.loads((out / "results.json").read_text()),
        [x for x in lines if x["event"] == "round"],
        seconds,
    )


@pytest.mark.slow
def test_toy_study_both_stages_under_secure_aggregation_matches_plain_aggregation(cohort, tmp_path):
    from server.checkpoint import CheckpointStore

    _, plain, plain_rounds, plain_s = _study(cohort, tmp_path / "plain")
    grid, secure, secure_rounds, secure_s = _study(
        cohort, tmp_path / "secure", **{"secure-aggregation": True}
    )
    assert [(r["stage"], r["dataset"]) for r in secure_rounds] == [("seg", ""), ("cls", "t2")]
    # one round per stage, from the same initial weights and the same local training: the kept models of the
    # two runs differ by the quantisation of SecAgg+ only (plus float32 rounding of the stored arrays)
    stores = (
        CheckpointStore(tmp_path / "plain" / "checkpoints"),
        CheckpointStore(tmp_path / "secure" / "checkpoints"),
    )
    for key, rnd in (("seg", secure_rounds[0]), ("cls:t2", secure_rounds[1])):
        sa = rnd["secure_aggregation"]
        assert sa["sites_summed"] == 3 and sum(sa["clipped_coordinates"].values()) == 0
        assert rnd["sites_contributed"] == ["hospital-a", "hospital-b", "hospital-c"]
        a, b = stores[0].load_final(key), stores[1].load_final(key)
        assert a.keys() == b.keys()
        err = max(
            float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)) - 2e-7 * np.abs(a[k])))
            for k in a
            if a[k].dtype.kind == "f"
        )
        assert err <= sa["quantisation_bound"], (key, err, sa["quantisation_bound"])
        print(f"\n{key}: max |secure - plain| {err:.3g} (bound {sa['quantisation_bound']:.3g})")
    # the pooled figures of the final test: the same up to a few pixels or patient scores moved by the
    # quantisation (Flower rounds stochastically, from numpy's global generator that each site seeds per round)
    assert secure["dice"] == pytest.approx(plain["dice"], abs=1e-3)
    assert plain["auc"]["t2"]["value"] is not None
    assert secure["auc"]["t2"]["value"] == pytest.approx(plain["auc"]["t2"]["value"], abs=1e-3)
    print(
        f"pooled Dice {secure['dice']:.6f} / {plain['dice']:.6f}; AUC t2 {secure['auc']['t2']['value']:.6f} / "
        f"{plain['auc']['t2']['value']:.6f} (secure / plain)"
    )
    for p, s in zip(plain_rounds, secure_rounds, strict=True):
        print(f"{p['stage']} round: {s['seconds_round']:.2f} s secure / {p['seconds_round']:.2f} s plain")
    print(f"study: {secure_s:.1f} s secure / {plain_s:.1f} s plain = {secure_s / plain_s:.2f}x")
    # no site's update reached the coordinator: every training reply's arrays are empty
    train = [
        r
        for r in grid.replies
        if r.metadata.message_type == P.TRAIN_SEG or r.metadata.message_type == P.TRAIN_CLS
    ]
    assert len(train) == 2 * 4 * 3  # 2 stages x 4 SecAgg+ stages x 3 sites
    for reply in train:
        assert not reply.has_error()
        assert all(len(rec) == 0 for rec in reply.content.array_records.values())
    # nor any site's evaluation statistics: every evaluation (each round's validation, the final tests) went
    # through a secure sum, the replies hold masked vectors and the seconds taken, and no per-site figure exists
    evaluations = [r for r in grid.replies if r.metadata.message_type in (P.EVALUATE_SEG, P.EVALUATE_CLS)]
    assert evaluations and not any(r.has_error() for r in evaluations)
    for reply in evaluations:
        assert RECORD_KEY_CONFIGS in reply.content.config_records
        for rec in reply.content.metric_records.values():
            assert set(rec.keys()) <= {P.EVAL_SECONDS, "num_examples"}, set(rec.keys())
    assert all(site["dice"] is None and not site["auc"] for site in secure["sites"].values())
    assert all(site["dice"] is not None for site in plain["sites"].values())
    assert secure["auc"]["t2"]["n_patients"] == plain["auc"]["t2"]["n_patients"]
    table = (tmp_path / "secure" / "table.txt").read_text()
    assert "per-site Dice and AUC: not computed (secure-aggregation" in table
    assert "not computed" not in (tmp_path / "plain" / "table.txt").read_text()


@pytest.mark.slow
def test_pretraining_rounds_run_under_secure_aggregation_too(cohort, tmp_path):
    """``cls-pretrain-rounds`` under SecAgg+: the pretraining round is summed over the sites like any round (the
    coordinator receives no site's backbone), then the classifier continues from the unmasked mean."""
    grid, _, rounds, _ = _study(
        cohort,
        tmp_path / "secure-pretrain",
        **{"secure-aggregation": True, "cls-pretrain-rounds": 1, "cls-pretrain-epochs": 1},
    )
    assert [(r["stage"], r["dataset"]) for r in rounds] == [("seg", ""), ("cls-pretrain", "t2"), ("cls", "t2")]
    pretrain = rounds[1]
    assert pretrain["secure_aggregation"]["sites_summed"] == 3
    assert pretrain["sites_contributed"] == ["hospital-a", "hospital-b", "hospital-c"]
    replies = [r for r in grid.replies if r.metadata.message_type == P.TRAIN_CLS]
    assert len(replies) == 2 * 4 * 3  # pretraining and classifier round x 4 SecAgg+ stages x 3 sites
    assert all(not r.has_error() and all(len(rec) == 0 for rec in r.content.array_records.values()) for r in replies)
