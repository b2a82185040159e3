"""Differential privacy: accounting checked against an independent RDP computation, the site ledger across
rounds and runs, a site over budget refusing, refused option combinations, and (slow) DP studies through both
stages with the real ServerApp/ClientApp in process, with an audit of every reply."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from client.node_data import DEFAULT_MAX_HIST_BINS
from server.config import federation_from_run_config
from server.privacy import check_privacy_settings
from shared import protocol as P
from shared.config import PipelineConfig
from shared.errors import ConfigError, PrivacyBudgetError
from shared.privacy.accounting import Release, opacus_epsilon, rdp_epsilon
from shared.privacy.ledger import PrivacyLedger, new_entry
from tests.fed_support import default_run_config

# (noise, sample rate, steps): small local datasets (q = 0.5, 1.0) as well as a large one
CASES = [(1.1, 0.5, 10), (0.8, 1.0, 6), (2.0, 0.05, 500), (1.3, 0.25, 40)]


@pytest.mark.parametrize("noise,q,steps", CASES)
def test_opacus_rdp_epsilon_agrees_with_our_independent_computation(noise, q, steps):
    """opacus#819/#571: under-reporting on small datasets would show as Opacus < ours by more than the
    fractional-order gain (ours uses integer orders only, so ours >= Opacus' and close to it)."""
    rel = [Release(noise, q, steps)]
    ours = rdp_epsilon(rel, 1e-3)
    theirs = opacus_epsilon(rel, 1e-3, "rdp")
    assert theirs <= ours * (1 + 1e-9)
    assert ours <= theirs * 1.06, (ours, theirs)


def test_our_rdp_of_the_full_batch_gaussian_is_the_closed_form():
    # q = 1: RDP(a) = a / (2 s^2) per step (Mironov 2017), composed over steps
    s, steps, delta = 2.0, 5, 1e-5
    a = np.arange(2, 257)
    closed = np.min(steps * a / (2 * s**2) + np.log((a - 1) / a) - (np.log(delta) + np.log(a)) / (a - 1))
    assert rdp_epsilon([Release(s, 1.0, steps)], delta) == pytest.approx(closed, rel=1e-12)


def _entry(study: str, rnd: int, steps: int = 4) -> object:
    return new_entry(
        study=study,
        stage="seg",
        dataset="",
        round=rnd,
        release=Release(1.2, 0.5, steps),
        max_grad_norm=1.0,
        delta=1e-3,
        accountant="rdp",
    )


def test_ledger_composes_rounds_and_runs_and_refuses_over_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    assert ledger.epsilon(1e-3, "rdp") == 0.0
    ledger.record(_entry("study-one", 1))
    e1 = PrivacyLedger(tmp_path).epsilon(1e-3, "rdp")
    ledger.record(_entry("study-one", 2))
    e2 = PrivacyLedger(tmp_path).epsilon(1e-3, "rdp")
    PrivacyLedger(tmp_path).record(_entry("study-two", 1))  # a second run, a fresh process: read from disk
    again = PrivacyLedger(tmp_path)
    e3 = again.epsilon(1e-3, "rdp")
    assert 0 < e1 < e2 < e3
    assert again.epsilon(1e-3, "rdp", study="study-one") == pytest.approx(e2)
    assert e3 == pytest.approx(opacus_epsilon([Release(1.2, 0.5, 12)], 1e-3, "rdp"))
    assert stat.S_IMODE((tmp_path / "privacy-ledger.json").stat().st_mode) == 0o600
    with pytest.raises(PrivacyBudgetError, match="refuses this round.*privacy-budget-epsilon"):
        again.check_budget("hospital-a", e3 + 0.01, Release(1.2, 0.5, 4), 1e-3, "rdp")
    assert again.check_budget("hospital-a", None, Release(1.2, 0.5, 4), 1e-3, "rdp") > e3
    text = "\n".join(again.lines(budget=100.0))
    assert "one patient" in text and "study-two" in text and "remaining epsilon" in text


def test_nasofl_site_privacy_prints_the_ledger(tmp_path, capsys):
    from client.cli import main

    assert main(["privacy", str(tmp_path)]) == 1
    PrivacyLedger(tmp_path).record(_entry("study-one", 1))
    PrivacyLedger(tmp_path).record(_entry("study-two", 1))
    capsys.readouterr()
    assert main(["privacy", str(tmp_path), "--budget", "50"]) == 0
    out = capsys.readouterr().out
    assert "study study-one: epsilon" in out and "site total" in out and "remaining epsilon" in out
    assert all("one patient" in line for line in out.splitlines() if "epsilon" in line and ":" in line)
    assert main(["privacy", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unit"] == "one patient" and len(data["entries"]) == 2
    assert data["epsilon_total"] == pytest.approx(opacus_epsilon([Release(1.2, 0.5, 8)], 1e-3, "rdp"))


def test_an_unreadable_ledger_is_not_an_empty_one(tmp_path):
    (tmp_path / "privacy-ledger.json").write_text("{broken")
    with pytest.raises(PrivacyBudgetError, match="unreadable"):
        PrivacyLedger(tmp_path)


def test_noisy_histograms_are_counted_in_the_ledger_and_refused_over_budget(tmp_path):
    from client.node_data import NodeSite, SiteData
    from client.privacy_site import noisy_histograms

    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False, privacy_budget=10.0)
    data = SiteData(site, [object()] * 20, None)  # 20 patients: auto delta 1/200
    cfg = PipelineConfig.defaults({"dp-hist-noise": 3.0})
    hist_pos, hist_neg = [0, 1, 4, 5], [6, 2, 1, 0]
    conf = {P.CFG_STUDY: "s1", P.CFG_DATASET: "t2", P.CFG_ROUND: 1}
    noisy_pos, noisy_neg = noisy_histograms(hist_pos, hist_neg, data, cfg, conf)
    assert len(noisy_pos) == len(hist_pos) and len(noisy_neg) == len(hist_neg)
    assert all(isinstance(v, int) and v >= 0 for v in noisy_pos + noisy_neg)
    ledger = PrivacyLedger(site.cache_dir)
    assert [(e.stage, e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.entries] == [
        ("eval-cls", 3.0, 1.0, 1)
    ]
    spent = ledger.epsilon(1 / 200, "rdp")
    assert spent == pytest.approx(rdp_epsilon([Release(3.0, 1.0, 1)], 1 / 200), rel=0.06)
    n_ok = 1
    with pytest.raises(PrivacyBudgetError, match="refuses"):
        for _ in range(100):  # each release costs the same: the budget of 10 runs out
            noisy_histograms(hist_pos, hist_neg, data, cfg, conf)
            n_ok += 1
    assert PrivacyLedger(site.cache_dir).epsilon(1 / 200, "rdp") <= 10.0
    assert len(PrivacyLedger(site.cache_dir).entries) == n_ok


#: local DP refuses contrastive pretraining, which the defaults turn on
NO_PRETRAINING = {"cls-pretrain-rounds": 0, "cls-pretrain-epochs": 0}


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"dp": "central", "strategy": "fedmedian"}, "dp='central' with strategy='fedmedian'"),
        ({"dp": "central", "strategy": "fedtrimmedavg"}, "dp='central' with strategy='fedtrimmedavg'"),
        ({"dp": "central", "strategy": "fedadam"}, "dp='central' with strategy='fedadam'"),
        ({"dp": "central", "strategy": "fedavgm"}, "dp='central' with strategy='fedavgm'"),
        (
            {"dp": "central", "strategy": "fedavg", "transport-dtype": "float16"},
            "dp='central' with transport-dtype='float16'",
        ),
        ({"dp": "local", "strategy": "fedprox", "amp": False, **NO_PRETRAINING}, "dp='local' with strategy='fedprox'"),
        ({"dp": "local", "amp": True}, "dp='local' with amp=true"),
        ({"dp": "local", "amp": False}, "dp='local' with cls-pretrain-epochs=1"),  # the default pretrains
    ],
)
def test_refused_privacy_combinations_name_both_keys(changes, match):
    from simulations.run_cmd import validate_run_config

    rc = default_run_config()
    rc.update(changes)
    with pytest.raises(ConfigError, match=match):
        fed = federation_from_run_config(rc)
        cfg = PipelineConfig.defaults({k: v for k, v in changes.items() if k in ("dp", "amp", "cls-pretrain-epochs")})
        check_privacy_settings(fed, cfg)
    with pytest.raises(ConfigError, match=match):  # nasofl-sim run refuses it before Flower starts
        validate_run_config(changes)


# ---------------------------------------------------------------- in-process studies (slow) ----------


def _ids(cohort: Path) -> set[str]:
    import csv

    out = set()
    for site in cohort.iterdir():
        labels = site / "labels.csv"
        if labels.exists():
            with open(labels) as fh:
                out |= {r[0].strip() for r in csv.reader(fh) if r and not r[0].lower().startswith("patient")}
    return out


def audit_replies(replies, cohort: Path, hist_bins: int) -> int:
    """Every reply: expected array keys and shapes only, scalar metrics or fixed-length histograms, no
    string that could carry an identifier, no image-shaped array, nothing per patient. Returns replies seen."""
    ids = _ids(cohort)
    allowed = set(P.TRAIN_METRICS) | set(P.EVAL_SEG_METRICS) | set(P.EVAL_CLS_METRICS) | set(P.INFO_METRICS)
    n = 0
    for msg in replies:
        if msg.has_error():
            reason = msg.error.reason
            assert not any(i in reason for i in ids), reason
            continue
        n += 1
        content = msg.content
        if RECORD_KEY_CONFIGS in content.config_records:  # a SecAgg+ reply (secure-aggregation)
            _audit_secagg_reply(content)
            continue
        assert set(content.keys()) <= {P.ARRAYS, P.METRICS, P.INFO}
        for rec in content.metric_records.values():
            for key, value in rec.items():
                assert key in allowed or "/" in key, key
                if isinstance(value, list):
                    # fixed-length histograms: the site answers at most max-hist-bins (default 100) bins
                    assert key in (P.HIST_POS, P.HIST_NEG, P.HIST_SPAN), key
                    assert len(value) == min(hist_bins, DEFAULT_MAX_HIST_BINS), key
                else:
                    assert isinstance(value, int | float) and np.isfinite(value), key
        for rec in content.config_records.values():
            assert set(rec.keys()) <= {P.INFO_SITE, P.INFO_ROLE, P.INFO_PRETRAINING}
            assert rec[P.INFO_ROLE] in P.ROLES and rec[P.INFO_SITE].startswith("hospital-")
            assert rec[P.INFO_PRETRAINING] in P.PRETRAINING_CHOICES
        for rec in content.array_records.values():
            for key in rec.keys():
                arr = rec[key].numpy()
                # weights only: conv kernels are (O, I, k, k) with k <= 7, never an image (H, W >= 16)
                assert arr.ndim != 4 or arr.shape[-1] <= 7, (key, arr.shape)
                assert arr.ndim <= 4 and "patient" not in key
    return n


#: what a site's SecAgg+ reply may hold: Flower's key material, masked vectors, node ids and shares
_SECAGG_REPLY_KEYS = {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2, Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST}
_SECAGG_REPLY_KEYS |= {Key.MASKED_PARAMETERS, Key.NODE_ID_LIST, Key.SHARE_LIST}


def _audit_secagg_reply(content) -> None:
    """A SecAgg+ reply: Flower's protocol record only (bytes, node ids), masked vectors that are int64 and never
    image-shaped, no array record with data, and scalar metrics of the known keys (the clear FitRes figures)."""
    assert all(k == RECORD_KEY_CONFIGS or k.startswith("fitres.") for k in content.keys()), set(
        content.keys()
    )
    for name, rec in content.array_records.items():
        assert len(rec) == 0, name  # Flower's mod empties the update it masked
    for key, value in content.config_records[RECORD_KEY_CONFIGS].items():
        assert key in _SECAGG_REPLY_KEYS, key
        items = value if isinstance(value, list) else [value]
        assert all(isinstance(v, bytes | int) and not isinstance(v, bool) for v in items), key
        if key == Key.MASKED_PARAMETERS:
            for blob in items:
                arr = np.load(io.BytesIO(blob))
                assert arr.dtype == np.int64 and arr.ndim <= 4 and (arr.ndim != 4 or arr.shape[-1] <= 7)
    clear_metrics = set(P.SECURE_TRAIN_METRICS) | {P.EVAL_SECONDS, "num_examples"}
    for name, rec in [*content.config_records.items(), *content.metric_records.items()]:
        if name == RECORD_KEY_CONFIGS:
            continue
        if name.endswith("metrics") or name.endswith("num_examples"):  # the FitRes' clear scalar figures
            for key, value in rec.items():
                assert key in clear_metrics, (name, key)
                assert isinstance(value, int | float) and np.isfinite(value), key
        else:  # the FitRes status: a code and a short message, no free text from the site's data
            assert all(isinstance(v, int) or (isinstance(v, str) and len(v) < 40) for v in rec.values()), name


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from simulations.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("dpcohort")
    generate_cohort(root, CohortConfig(sites=3, patients_per_site=(6, 6, 6), seed=3), progress=False)
    return root


def _run(cohort: Path, out: Path, budgets: dict[int, float] | None = None, **overrides):
    from client.app import app as client_app
    from server.app import app as server_app
    from simulations.scenarios import SCENARIOS
    from tests.fed_support import LocalGrid, server_context

    rc = default_run_config()
    rc.update(
        {
            "sim-data-root": str(cohort),
            "sim-cache-root": str(cohort / "_cache"),
            "out-dir": str(out),
            **SCENARIOS["toy"].run_config,
            "datasets": "t2",
            "wait-for-sites-s": 0.0,
            "amp": False,
            "min-sites": 2,
        }
    )
    rc.update(overrides)
    grid = LocalGrid(client_app, 3, rc)
    for node, budget in (budgets or {}).items():
        ctx = list(grid.contexts.values())[node]
        ctx.node_config["privacy-budget-epsilon"] = budget
    server_app(grid, server_context(rc))
    return grid, json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None


@pytest.mark.slow
def test_local_dp_study_both_stages_ledger_across_runs_budget_refusal_and_audit(cohort, tmp_path):
    # every privacy option of a local-DP study on: DP-SGD in both stages, noisy evaluation histograms, and every
    # update and evaluation masked into a SecAgg+ sum
    secure = {"secure-aggregation": True, "update-norm-factor": 0.0}
    grid, results = _run(
        cohort, tmp_path / "run1", dp="local", **{"dp-epsilon": 8.0, "dp-hist-noise": 2.0, **secure}
    )
    assert (tmp_path / "run1" / "STATUS").read_text().startswith("COMPLETED")
    priv = results["privacy"]
    assert priv["mode"] == "local" and priv["unit"] == "one patient"
    first = {s: e["epsilon_site_total"] for s, e in priv["sites"].items()}
    assert set(first) == {"hospital-a", "hospital-b", "hospital-c"}
    # two stages (seg, cls t2), one round each, each at most its target: the site total composes both
    for e in priv["sites"].values():
        assert 8.0 < e["epsilon_study"] <= 16.0 + 0.1
    ledger = PrivacyLedger(cohort / "_cache" / "hospital-a")
    trained = [x for x in ledger.entries if x.stage != "eval-cls"]
    assert [(x.stage, x.dataset) for x in trained] == [("seg", ""), ("cls", "t2")]
    # the noisy histograms are releases too: validation of round 1 and the final test (the model bundle's
    # decision threshold reuses the kept round's validation: no third release)
    assert [(x.stage, x.round, x.noise_multiplier) for x in ledger.entries if x.stage == "eval-cls"] == [
        ("eval-cls", 1, 2.0),
        ("eval-cls", 1, 2.0),
    ]
    d = ledger.entries[0].delta
    assert d == pytest.approx(1 / 60)  # auto: 1 / (10 x 6 patients)
    independent = rdp_epsilon([x.release for x in trained], d)
    assert first["hospital-a"] == pytest.approx(opacus_epsilon([x.release for x in trained], d, "rdp"))
    assert first["hospital-a"] <= independent <= first["hospital-a"] * 1.06
    assert audit_replies(grid.replies, cohort, 100) > 0
    masked = [r for r in grid.replies if RECORD_KEY_CONFIGS in r.content.config_records]
    assert {r.metadata.message_type for r in masked} == {
        P.TRAIN_SEG,
        P.TRAIN_CLS,
        P.EVALUATE_SEG,
        P.EVALUATE_CLS,
    }
    assert not any(
        r.metadata.message_type.startswith(("train", "evaluate")) for r in grid.replies if r not in masked
    )
    table = (tmp_path / "run1" / "table.txt").read_text()
    assert all("unit: one patient" in line for line in table.splitlines() if "epsilon" in line)

    # run 2 on the same sites: the ledger composes across runs; hospital-c's budget stops it at once
    budget_c = first["hospital-c"] + 1.0
    grid2, results2 = _run(
        cohort, tmp_path / "run2", budgets={2: budget_c}, dp="local", seed=1, **{"dp-epsilon": 8.0}
    )
    assert (tmp_path / "run2" / "STATUS").read_text().startswith("COMPLETED")
    sites2 = results2["privacy"]["sites"]
    assert sites2["hospital-a"]["epsilon_site_total"] > first["hospital-a"]
    assert "refused" in sites2["hospital-c"]
    rounds = [json.loads(x) for x in (tmp_path / "run2" / "run-log.jsonl").read_text().splitlines()]
    rounds = [x for x in rounds if x["event"] == "round"]
    for x in rounds:
        assert x["sites_contributed"] == ["hospital-a", "hospital-b"]
        assert "refuses this round" in x["sites_failed"]["hospital-c"]
    # run 1's two training rounds and two noisy evaluations; the refused rounds of run 2 spent nothing
    assert len(PrivacyLedger(cohort / "_cache" / "hospital-c").entries) == 4
    assert audit_replies(grid2.replies, cohort, 100) > 0


@pytest.mark.slow
def test_central_dp_study_both_stages_epsilon_per_site_and_audit(cohort, tmp_path):
    # with a pretraining round per classifier (cls-pretrain-rounds): its round is a release too, its update clipped
    pretrain = {"cls-pretrain-rounds": 1, "cls-pretrain-epochs": 1}
    grid, results = _run(
        cohort, tmp_path / "central", dp="central", strategy="fedavg", **{"dp-noise-multiplier": 1.5, **pretrain}
    )
    assert (tmp_path / "central" / "STATUS").read_text().startswith("COMPLETED")
    priv = results["privacy"]
    assert priv["mode"] == "central" and priv["unit"] == "one site" and priv["releases"] == 3
    trains = [m for m in grid.sent if m.metadata.message_type == P.TRAIN_CLS]
    assert sum(str(m.content[P.CONFIG][P.CFG_STAGE]) == "cls-pretrain" for m in trains) == 3
    expected = rdp_epsilon([Release(1.5, 1.0, 3)], 1 / 30)
    assert priv["epsilon_independent_rdp"] == pytest.approx(expected)
    assert priv["epsilon"] <= expected * (1 + 1e-9)
    # the clipping mod ran at the sites: their replies' updates are within the clipping norm
    train = [
        (m, r)
        for m, r in zip(grid.sent, grid.replies, strict=False)
        if m.metadata.message_type.startswith("train")
    ]
    assert train
    for sent, reply in train:
        if reply.has_error():
            continue
        g = sent.content[P.ARRAYS]
        r = reply.content[P.ARRAYS]
        norm = np.sqrt(
            sum(float(((r[k].numpy() - g[k].numpy()).astype(np.float64) ** 2).sum()) for k in g.keys())
        )
        assert norm <= 1.0 + 1e-3
    assert audit_replies(grid.replies, cohort, 100) > 0


def test_the_site_budget_travels_from_nasofl_site_join_to_the_node(tmp_path):
    from flwr.common.config import parse_config_args

    from client.node_cmd import node_config
    from client.node_data import privacy_budget
    from shared.pseudonym import DEFAULT_SALT

    text = node_config(tmp_path, None, False, None, DEFAULT_SALT, privacy_budget=12.5)
    assert privacy_budget(parse_config_args([text])) == 12.5
    assert privacy_budget(parse_config_args([node_config(tmp_path, None, False, None, DEFAULT_SALT)])) is None
    with pytest.raises(ConfigError, match="privacy-budget-epsilon"):
        privacy_budget({"privacy-budget-epsilon": -1.0})


def test_central_dp_clips_at_the_server_averages_uniformly_noises_and_survives_a_failed_site(monkeypatch):
    """Flower's wrapper would skip the round on any error reply; ours drops it, clips every update again (a site
    without the mod), weighs the sites equally whatever their examples, and adds noise of std z C / n."""
    from flwr.app import Error, Message

    from server.strategies.central_dp import CentralDP
    from tests import test_fed_strategies
    from tests.test_fed_strategies import configure, reply_to

    # DP models hold float arrays only (GroupNorm: no BatchNorm counter like the helpers' "n")
    monkeypatch.delitem(test_fed_strategies.GLOBAL, "n")
    strategy = CentralDP(_uniform_fedavg(), 1e-6, 1.0)
    msgs = configure(strategy)
    assert all(m.content[P.CONFIG]["clipping_norm"] == 1.0 for m in msgs)
    by_node = {m.metadata.dst_node_id: m for m in msgs}
    # site-a moves w by 10 per entry (norm 20): clipped to 1; site-b moves by 0.1 (norm 0.2) with 100x the examples
    replies = [
        reply_to(by_node[11], {"w": np.full((2, 2), 11.0, np.float32)}, n=1),
        reply_to(by_node[12], {"w": np.full((2, 2), 1.1, np.float32)}, n=100),
        reply_to(by_node[13], {"w": np.full((2, 2), 1.1, np.float32)}, n=1),
        Message(Error(code=2, reason="site refuses this round"), reply_to=by_node[14]),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    w = arrays["w"].numpy()
    # (1 + 0.5) for site-a after clipping (norm 1 over 4 entries), 1.1 for b and c: uniform mean
    assert np.allclose(w, (1.5 + 1.1 + 1.1) / 3, atol=1e-4)
    assert strategy.releases == 1 and strategy.num_sampled_clients == 3
    assert strategy.last_train.contributed == ["site-a", "site-b", "site-c"]


def _uniform_fedavg():
    from server.strategies.base import Participants
    from server.strategies.fedavg import CheckedFedAvg
    from tests.test_fed_strategies import NODES

    s = CheckedFedAvg(
        fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
        min_available_nodes=1, weighted_by_key=P.UPDATE_WEIGHT,
    )  # fmt: skip
    s.setup_stage(
        action="seg",
        participants=Participants(NODES, frozenset([11, 12, 13, 14]), frozenset(NODES), frozenset([15])),
        min_sites=2,
    )
    return s


def test_opacus_is_not_imported_where_no_dp_runs():
    import subprocess
    import sys

    code = "import sys, client.app, server.app, shared.models; print('opacus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_privacy_table_names_each_epsilons_unit():
    from simulations.privacy_table_cmd import epsilon_cell, format_table

    assert epsilon_cell({"mode": "off"}) == "inf"
    assert epsilon_cell({"mode": "central", "unit": "one site", "epsilon": 2.5}) == "2.50 (one site)"
    local = {
        "mode": "local",
        "unit": "one patient",
        "sites": {"a": {"epsilon_study": 3.0}, "b": {"epsilon_study": 4.0}},
    }
    assert epsilon_cell(local) == "<= 4.00 (one patient)"
    rows = [
        {"name": "no DP (eps inf)", "epsilon": "inf", "dice": 0.5, "auc": {"t2": 0.7}},
        {"name": "local eps 8", "epsilon": epsilon_cell(local), "dice": 0.45, "auc": {"t2": None}},
    ]
    text = format_table(rows, ["t2"])
    assert "0.900" in text and "(one patient)" in text and " - " in text + " "


def test_every_privacy_table_row_is_a_run_config_nasofl_sim_run_accepts(tmp_path):
    """Each row's settings pass the checks `nasofl-sim run` applies before Flower starts, on every scenario's
    settings (the default contrastive pretraining, which local DP refuses, is off in every row, and so is the
    seed-size scenario's ensemble and regression member), and the rows differ only by their privacy changes."""
    from shared.app_config import parse_sets
    from simulations.privacy_table_cmd import VARIANTS, row_settings
    from simulations.run_cmd import validate_run_config
    from simulations.scenarios import SCENARIOS

    shared_by_all = None
    for name, changes in VARIANTS:
        row = parse_sets(row_settings(changes, {}, tmp_path / "cache"))
        for scenario in SCENARIOS.values():  # raises ConfigError naming the keys if a row would be refused
            validate_run_config({**scenario.run_config, **row})
        rest = {k: v for k, v in row.items() if k not in changes}
        assert shared_by_all in (None, rest), name
        shared_by_all = rest
    assert shared_by_all["cls-pretrain-rounds"] == 0 and shared_by_all["amp"] is False


# ---------------------------------------------------------------- DP-SGD step: clipping per patient, noise ---------


def _tiny_dp_resnet():
    import torch

    from shared.models import build_classifier

    torch.manual_seed(0)
    cfg = PipelineConfig.defaults({"cls-arch": "resnet18", "cls-image-size": 16, "amp": False})
    model = build_classifier(cfg.cls, 2, dp=True)
    for m in model.modules():  # zero-init residual branches would give exactly zero gradients there
        if isinstance(m, torch.nn.GroupNorm):
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
    return model


def _flat(params) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in params]).astype(np.float64)


@pytest.mark.parametrize("engine", ["ghost", "hooks"])
def test_each_sampled_patients_gradient_is_clipped_to_max_grad_norm(engine):
    """One step, every patient sampled, no noise, SGD at lr 1: the update is exactly the mean over patients of
    their own gradients each clipped to dp-max-grad-norm (a ResNet18 at 16 px exercises both ghost-norm branches,
    strided 1x1 convolutions, GroupNorm and the linear head)."""
    import copy

    import torch

    from shared.privacy.dp_sgd import DPPlan, run_dp_sgd
    from shared.training.classification import smoothed_bce

    model = _tiny_dp_resnet().train()
    x = torch.randn(4, 2, 16, 16)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def loss_of(out, yb):
        return smoothed_bce(out.float().squeeze(1), yb, 0.1)

    grads = []
    for i in range(4):  # reference: each patient's own gradient, by a separate backward pass
        model.zero_grad()
        loss_of(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append(_flat(p.grad for p in model.parameters()))
    norms = np.array([np.linalg.norm(g) for g in grads])
    bound = float(np.median(norms))  # two patients clipped, two not
    expected = sum(g * min(1.0, bound / n) for g, n in zip(grads, norms, strict=True)) / 4

    dp_model = copy.deepcopy(model)
    before = _flat(dp_model.parameters())
    plan = DPPlan(sample_rate=1.0, noise_multiplier=0.0, steps=1, expected_batch=4, max_grad_norm=bound)
    opt = torch.optim.SGD(dp_model.parameters(), lr=1.0)
    run_dp_sgd(dp_model, opt, [[i] for i in range(4)], lambda p: (x[p], y[p]), loss_of, plan, engine=engine)
    update = before - _flat(dp_model.parameters())
    assert (norms > bound).sum() == 2
    np.testing.assert_allclose(update, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    assert not any(hasattr(p, "_norm_sample") or hasattr(p, "grad_sample") for p in dp_model.parameters())


@pytest.mark.parametrize("engine", ["ghost", "hooks"])
def test_the_noise_is_the_planned_std_whatever_the_engine(engine):
    """A step with no patient sampled still adds N(0, (noise x max-grad-norm)^2) per entry, scaled by 1 / the
    expected batch: the accountant's noise, unchanged by the clipping engine."""
    import torch

    from shared.privacy.dp_sgd import DPPlan, run_dp_sgd

    model = _tiny_dp_resnet().train()
    before = _flat(model.parameters())
    plan = DPPlan(sample_rate=0.5, noise_multiplier=1.5, steps=1, expected_batch=4, max_grad_norm=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = run_dp_sgd(model, opt, [], lambda p: None, lambda o, y: None, plan, engine=engine)
    update = before - _flat(model.parameters())
    assert stats.empty_steps == 1
    assert update.std() == pytest.approx(1.5 * 2.0 / 4, rel=0.01)
    assert abs(update.mean()) < 1e-3


# sizes chosen so that P (D + O) < D O (Gram matrices) in the cases marked g, the per-sample gradient otherwise
CONV_CASES = [
    (3, 1, 1, 1, True, 2),  # g
    (3, 2, 1, 1, False, 3),  # g, strided
    (1, 2, 0, 1, True, 2),  # g, strided 1x1
    (3, 2, 1, 1, False, 9),
    (1, 1, 0, 1, False, 2),
    (3, 1, 1, 2, True, 5),  # grouped: Opacus' per-sample gradient
]


@pytest.mark.parametrize("kernel,stride,padding,groups,bias,size", CONV_CASES)
def test_conv_per_sample_gradient_norms_match_per_sample_backward_passes(
    kernel, stride, padding, groups, bias, size
):
    """Both branches of the Conv2d norm (Gram matrices for small maps, the gradient for large ones), strided 1x1
    convolutions, a bias and grouped convolutions, against each sample's own weight gradient."""
    import torch

    from shared.privacy.ghost_clipping import conv2d_norm_sample

    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 6, kernel, stride, padding, groups=groups, bias=bias)
    x = torch.randn(3, 4, size, size)
    out_grad = torch.randn_like(conv(x))
    norms = conv2d_norm_sample(conv, [x], out_grad)
    for i in range(3):
        conv.zero_grad()
        conv(x[i : i + 1]).backward(out_grad[i : i + 1])
        for p in conv.parameters():
            assert float(norms[p][i]) == pytest.approx(float(p.grad.norm()), rel=1e-4)
