"""The real ServerApp and ClientApp, in one process (tests.fed_support.LocalGrid), on tiny synthetic hospitals:
poisoned updates, reply contents, resume, site failures, evaluation-only sites, the min-sites rule, a site
without one sequence."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from client.app import app as client_app
from server.app import app as server_app
from server.checkpoint import load_arrays
from server.round_recorder import SimulatedCrash
from server.run_log import read_run_log
from server.strategies import TooFewSitesError
from shared import protocol as P
from tests.fed_support import LocalGrid, server_context, toy_run_config

pytestmark = pytest.mark.slow
SITES = ("hospital-a", "hospital-b", "hospital-c")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from simulations.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("fedcohort")
    generate_cohort(root, CohortConfig(sites=3, patients_per_site=(7, 7, 7), seed=5), progress=False)
    return root


def toy_config(cohort: Path, out: Path, **overrides) -> dict:
    return toy_run_config(cohort, out, **overrides)


def run_study(rc: dict, client=client_app, n_nodes: int = 3) -> LocalGrid:
    grid = LocalGrid(client, n_nodes, rc)
    server_app(grid, server_context(rc))
    return grid


def round_lines(out: Path) -> list[dict]:
    return [line for line in read_run_log(out / "run-log.jsonl") if line["event"] == "round"]


class Poisoner:
    """Wraps the real ClientApp; hospital-c's train replies are poisoned (a different way each stage).
    The genuine replies are kept for the inspection test."""

    def __init__(self) -> None:
        self.genuine: list[Message] = []
        self.site_of: dict[int, str] = {}

    def __call__(self, message: Message, context) -> Message:
        reply = client_app(message=message, context=context)
        self.genuine.append(reply)
        site = SITES[int(context.node_config["partition-id"])]
        if site != "hospital-c" or not message.metadata.message_type.startswith("train") or reply.has_error():
            return reply
        arrays = {k: reply.content[P.ARRAYS][k].numpy().copy() for k in reply.content[P.ARRAYS].keys()}
        first = next(iter(arrays))
        dataset = str(message.content[P.CONFIG].get(P.CFG_DATASET, ""))
        if dataset == "":
            arrays[first] = arrays[first] * np.nan
        elif dataset == "t2":
            arrays[first] = np.zeros((3, 1), np.float32)
        else:
            del arrays[first]
        content = RecordDict(
            {
                P.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                P.METRICS: reply.content[P.METRICS],
            }
        )
        return Message(content, reply_to=message)


@pytest.fixture(scope="module")
def poisoned_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("poisoned")
    poisoner = Poisoner()
    grid = run_study(toy_config(cohort, out), client=poisoner)
    return out, grid, poisoner


def test_poisoned_updates_are_rejected_counted_and_never_averaged(poisoned_run):
    out, _, _ = poisoned_run
    assert (out / "STATUS").read_text().startswith("COMPLETED")
    lines = round_lines(out)
    assert [(x["stage"], x["dataset"]) for x in lines] == [("seg", ""), ("cls", "t2"), ("cls", "t1+t2")]
    reasons = [x["updates_rejected"]["hospital-c"] for x in lines]
    assert "NaN" in reasons[0] and "shape" in reasons[1] and "missing" in reasons[2]
    for x in lines:
        assert x["sites_contributed"] == ["hospital-a", "hospital-b"]
        assert x["sites_failed"] == {}
    for f in ("final-seg.npz", "final-cls-t2.npz", "final-cls-t1plust2.npz"):
        arrays = load_arrays(out / "checkpoints" / f)
        assert all(np.isfinite(a).all() for a in arrays.values() if np.issubdtype(a.dtype, np.floating))
    results = json.loads((out / "results.json").read_text())
    assert set(results["auc"]) == {"t2", "t1+t2"} and "dice" in results
    assert set(results["sites"]) == set(SITES)
    for name in ("table.txt", "roc.png", "rounds-seg.png", "models/MODEL_CARD.md", "models/segmenter.pt"):
        assert (out / name).exists(), name
    assert not (out / "roc-external.png").exists(), "no evaluation-only site, no external ROC"


def test_the_study_writes_a_loadable_bundle_with_validation_thresholds(poisoned_run):
    from shared.bundle import load_bundle

    out, _, _ = poisoned_run
    card = load_bundle(out / "bundle").card
    assert card["mode"] == "federated" and set(card["classifiers"]) == {"t2", "t1+t2"}
    assert {s["name"] for s in card["sites"]} == set(SITES)
    assert all(s["npc"] + s["npl"] > 0 for s in card["sites"])
    validated = [i["validation"] for i in card["classifiers"].values() if i["validation"] is not None]
    assert validated, "no classifier got a pooled-validation operating point"
    for val in validated:
        assert 0.0 <= val["threshold"] <= 1.0 and val["n_npc"] > 0 and val["n_npl"] > 0
    events = [line["event"] for line in read_run_log(out / "run-log.jsonl")]
    assert events.count("final-val") == 2


def _patient_strings(cohort: Path) -> set[str]:
    ids = set()
    for site in SITES:
        with open(cohort / site / "labels.csv") as fh:
            for row in csv.reader(fh):
                if row and row[0] and not row[0].lower().startswith("patient"):
                    ids.add(row[0].strip())
    assert ids, "labels.csv should list patient ids"
    return ids


def _strings_in(value) -> list[str]:
    if isinstance(value, str | bytes):
        return [value.decode(errors="replace") if isinstance(value, bytes) else value]
    if isinstance(value, list):
        return [s for v in value for s in _strings_in(v)]
    return []


def test_replies_carry_only_expected_arrays_and_aggregate_metrics(poisoned_run, cohort):
    _, grid, poisoner = poisoned_run
    ids = _patient_strings(cohort)
    allowed_metrics = (
        set(P.TRAIN_METRICS) | set(P.EVAL_SEG_METRICS) | set(P.EVAL_CLS_METRICS) | set(P.INFO_METRICS)
    )
    allowed_metrics |= {P.roi_metric_key(d, k) for d in ("t2", "t1+t2") for k in P.ROI_KEYS}
    sent_by_id = {m.metadata.message_id: m for m in grid.sent}
    assert len(poisoner.genuine) >= 3 * 8
    for reply in poisoner.genuine:
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        request = sent_by_id[reply.metadata.reply_to_message_id]
        texts: list[str] = []
        for name, rec in reply.content.metric_records.items():
            assert name == P.METRICS
            for key, value in rec.items():
                assert key in allowed_metrics, key
                assert isinstance(value, int | float) or (
                    isinstance(value, list) and all(isinstance(v, int) for v in value)
                )
                if isinstance(value, list):
                    assert key in (P.HIST_POS, P.HIST_NEG, P.HIST_SPAN) and len(value) == 100
        for name, rec in reply.content.config_records.items():
            assert name == P.INFO and set(rec.keys()) == {"site", "role", "pretraining"}
            assert rec["pretraining"] in P.PRETRAINING_CHOICES
            texts += [str(v) for v in rec.values()]
        arrays = list(reply.content.array_records.items())
        if request.metadata.message_type.startswith("train"):
            ((name, rec),) = arrays
            sent_arrays = request.content[P.ARRAYS]
            assert name == P.ARRAYS and list(rec.keys()) == list(sent_arrays.keys())
            for k in rec.keys():
                assert rec[k].shape == sent_arrays[k].shape
        else:
            assert arrays == []
        texts += [k for rec in reply.content.metric_records.values() for k in rec.keys()]
        for text in texts:
            assert "Synthetic^" not in text
            assert not any(pid in text for pid in ids), text
    for reply in grid.replies:  # also what hospital-c's wrapper sent: no strings other than arrays/metrics
        for rec in reply.content.metric_records.values():
            assert not any(_strings_in(v) for v in rec.values())


def test_resume_after_interruption_gives_the_same_final_arrays(cohort, tmp_path):
    common = dict(strategy="fedadam", **{"seg-rounds": 2, "datasets": "t2", "seed": 3})
    full = tmp_path / "full"
    run_study(toy_config(cohort, full, **common, **{"sim-cache-root": str(tmp_path / "cache-full")}))
    broken = tmp_path / "broken"
    cache = str(tmp_path / "cache-broken")
    with pytest.raises(SimulatedCrash):
        run_study(
            toy_config(cohort, broken, **common, **{"sim-cache-root": cache, "debug-stop-after-round": 1})
        )
    assert (broken / "STATUS").read_text().startswith("FAILED")
    assert json.loads((broken / "checkpoints" / "state.json").read_text())["round"] == 1
    # the sites keep their caches across the crash, as a hospital's node does: its Adam state of round 1
    # (seg-local-optimizer = keep) is what round 2 continues from
    run_study(toy_config(cohort, broken, **common, **{"sim-cache-root": cache, "resume": True}))
    assert (broken / "STATUS").read_text().startswith("COMPLETED")
    rounds = [(x["stage"], x["round"]) for x in round_lines(broken)]
    assert rounds == [("seg", 1), ("seg", 2), ("cls", 1)], "no round lost or repeated"
    for f in ("final-seg.npz", "final-cls-t2.npz"):
        a, b = load_arrays(full / "checkpoints" / f), load_arrays(broken / "checkpoints" / f)
        assert list(a) == list(b)
        for k in a:
            assert np.array_equal(a[k], b[k]), f"{f}:{k} differs after resume"
    hashes = {x["round"]: x["model_sha256"] for x in round_lines(full) if x["stage"] == "seg"}
    assert hashes[2] == [x["model_sha256"] for x in round_lines(broken) if x["stage"] == "seg"][1]


def test_failing_site_is_logged_round_completes_eval_only_site_never_trains(cohort, tmp_path):
    out = tmp_path / "faults"
    rc = toy_config(
        cohort,
        out,
        **{
            "min-sites": 1,
            "datasets": "t2",
            "debug-fail-sites": "hospital-b:train.seg",
            "eval-only-sites": "hospital-c",
            "fedbn": True,
        },
    )
    grid = run_study(rc)
    assert (out / "STATUS").read_text().startswith("COMPLETED")
    seg, cls = round_lines(out)
    assert seg["sites_contributed"] == ["hospital-a"]
    assert "injected failure" in seg["sites_failed"]["hospital-b"]
    assert cls["sites_contributed"] == ["hospital-a", "hospital-b"], "the failed site takes part again later"
    c_node = [n for n, ctx in grid.contexts.items() if ctx.node_config["partition-id"] == 2][0]
    c_types = {m.metadata.message_type for m in grid.sent if m.metadata.dst_node_id == c_node}
    assert not any(t.startswith("train") for t in c_types) and P.EVALUATE_CLS in c_types
    splits_asked = {
        node: sorted(
            {
                str(m.content[P.CONFIG][P.CFG_SPLIT])
                for m in grid.sent
                if m.metadata.dst_node_id == node and m.metadata.message_type.startswith("evaluate")
            }
        )
        for node in grid.contexts
    }
    assert splits_asked.pop(c_node) == ["test"], "an evaluation-only site is asked for the final test only"
    assert all(s == ["test", "val"] for s in splits_asked.values()), splits_asked
    results = json.loads((out / "results.json").read_text())
    assert results["sites"]["hospital-c"]["role"] == "eval-only"
    external = results["extra"]["eval_only_pooled"]
    assert external["sites"] == ["hospital-c"] and external["dice"] == results["sites"]["hospital-c"]["dice"]
    ext_t2, site_t2 = external["auc"]["t2"], results["sites"]["hospital-c"]["auc"]["t2"]
    assert ext_t2["n_patients"] == site_t2["n_patients"] == results["sites"]["hospital-c"]["patients"] > 0
    assert (ext_t2["value"], ext_t2["ci"]) == (site_t2["value"], site_t2["ci"])
    table = (out / "table.txt").read_text()
    line = f"evaluation-only site(s) hospital-c pooled ({ext_t2['n_patients']} patients, never trained on)"
    assert line in table and line in (out / "models" / "MODEL_CARD.md").read_text()
    assert (out / "roc-external.png").stat().st_size > 0, "the external test's ROC curves"
    state = dict(grid.contexts[c_node].state.config_records["nasofl-node"])
    # its four messages: query.info, the ROI counts, the segmenter's and the classifier's final tests
    assert state["site"] == "hospital-c" and state["messages"] == 4 and "train.seg/last-round" not in state
    # FedBN: each training site keeps its own normalisation state per round, on its own disk
    fedbn = {site: sorted(p.name for p in (cohort / "_cache" / site).glob("fedbn/*/*.npz")) for site in SITES}
    assert fedbn == {
        "hospital-a": ["cls-t2-r1.npz", "seg-r1.npz"],
        "hospital-b": ["cls-t2-r1.npz"],
        "hospital-c": [],
    }


def test_a_site_missing_the_round_timeout_is_logged_and_the_round_completes(cohort, tmp_path):
    out = tmp_path / "timeout"
    rc = toy_config(
        cohort, out, **{"seg-rounds": 2, "datasets": "t2", "min-sites": 2, "round-timeout-s": 30.0}
    )
    grid = LocalGrid(client_app, 3, rc)
    slow = [n for n, ctx in grid.contexts.items() if ctx.node_config["partition-id"] == 1][0]
    # hospital-b is too slow for round 1 of the segmenter only (its reply never comes within the timeout)
    grid.no_reply_to = lambda m: (
        m.metadata.dst_node_id == slow
        and m.metadata.message_type == P.TRAIN_SEG
        and int(m.content[P.CONFIG][P.CFG_ROUND]) == 1
    )
    server_app(grid, server_context(rc))
    assert (out / "STATUS").read_text().startswith("COMPLETED")
    seg1, seg2, _ = round_lines(out)
    assert seg1["sites_contributed"] == ["hospital-a", "hospital-c"]
    assert seg1["sites_failed"] == {"hospital-b": "no reply (timeout or disconnect)"}
    assert seg2["sites_contributed"] == ["hospital-a", "hospital-b", "hospital-c"], "the slow site is back"
    assert set(grid.timeouts) == {30.0}, "every exchange waits round-timeout-s at most"
    # select-round=best-val: the kept round of each stage is named in results.json and the model card
    kept = json.loads((out / "results.json").read_text())["extra"]["kept_rounds"]
    assert set(kept) == {"seg", "cls:t2"} and kept["seg"]["round"] in (1, 2) and kept["seg"]["of_rounds"] == 2
    assert not (out / "rounds-pretrain.png").exists(), "no pretraining, no picture of it"
    card = (out / "models" / "MODEL_CARD.md").read_text()
    assert f"- seg: kept round {kept['seg']['round']} of 2 (best-val; pooled validation dice" in card


def test_fewer_sites_than_the_minimum_fail_loudly(cohort, tmp_path):
    out = tmp_path / "too-few"
    rc = toy_config(cohort, out, **{"min-sites": 3, "debug-fail-sites": "hospital-b:train.seg"})
    with pytest.raises(TooFewSitesError, match="min-sites"):
        run_study(rc)
    assert (out / "STATUS").read_text().startswith("FAILED")
    end = read_run_log(out / "run-log.jsonl")[-1]
    assert end["event"] == "end" and end["status"] == "FAILED" and "hospital-b" in end["error"]


def test_when_too_many_sites_refuse_pretraining_the_dataset_is_not_trained_unpretrained(cohort, tmp_path):
    """Two of three sites refuse pretraining under min-sites=2: the study must not quietly train the classifier from
    fresh weights and report it; the dataset is skipped, naming the refusals, and the study ends FAILED."""
    out = tmp_path / "refused"
    rc = toy_config(cohort, out, datasets="t2", **{"cls-pretrain-rounds": 1, "cls-pretrain-epochs": 1,
                    "min-sites": 2, "sim-cache-root": str(tmp_path / "cache")})  # fmt: skip
    grid = LocalGrid(client_app, 3, rc)
    for ctx in grid.contexts.values():
        if ctx.node_config["partition-id"] in (0, 1):
            ctx.node_config["pretraining"] = "refuse"
    with pytest.raises(TooFewSitesError, match="every classifier dataset was skipped"):
        server_app(grid, server_context(rc))
    assert (out / "STATUS").read_text().startswith("FAILED")
    assert not any(m.metadata.message_type == P.TRAIN_CLS for m in grid.sent), "no classifier round at all"
    lines = read_run_log(out / "run-log.jsonl")
    refused = {x["site"] for x in lines if x["event"] == "site-skips-dataset" and x["stage"] == "cls-pretrain"}
    assert refused == {"hospital-a", "hospital-b"}
    skipped = [x["reason"] for x in lines if x["event"] == "dataset-skipped"]
    assert any("accept pretraining" in r and "hospital-c" in r for r in skipped), skipped


def test_a_site_joining_late_or_coming_back_takes_part_from_the_next_round(cohort, tmp_path):
    out = tmp_path / "late"
    rc = toy_config(cohort, out, **{"seg-rounds": 3, "datasets": "t2", "min-sites": 2})
    grid = LocalGrid(client_app, 3, rc)
    late = [n for n, ctx in grid.contexts.items() if ctx.node_config["partition-id"] == 2][0]
    grid.offline.add(late)
    seen = {"train.seg": 0}

    def client(message, context):
        reply = client_app(message=message, context=context)
        kind = message.metadata.message_type
        if kind == P.TRAIN_SEG:  # LocalGrid serves nodes in order: a, b, c
            seen["train.seg"] += 1
            if seen["train.seg"] == 2:  # both early sites trained round 1: hospital-c connects now
                grid.offline.discard(late)
            elif seen["train.seg"] == 6:  # round 3, a trained: hospital-c drops before its turn
                grid.offline.add(late)
        elif kind == P.EVALUATE_SEG and seen["train.seg"] == 7:  # round 3 evaluated: hospital-c is back
            grid.offline.discard(late)  # (same node id, as a SuperNode restarted with its node key)
        return reply

    grid.client_app = client
    server_app(grid, server_context(rc))
    assert (out / "STATUS").read_text().startswith("COMPLETED")
    seg1, seg2, seg3, cls = round_lines(out)
    assert seg1["sites_contributed"] == ["hospital-a", "hospital-b"]
    assert seg2["sites_contributed"] == list(SITES)
    assert seg3["sites_contributed"] == ["hospital-a", "hospital-b"]
    assert set(seg3["sites_failed"]) == {"hospital-c"} and "code 5" in seg3["sites_failed"]["hospital-c"]
    assert cls["sites_contributed"] == list(SITES)
    lines = read_run_log(out / "run-log.jsonl")
    events = [(x["event"], x["site"], x.get("rejoined")) for x in lines if x["event"].startswith("site-")]
    assert events == [
        ("site-joined", "hospital-c", False),
        ("site-offline", "hospital-c", None),
        ("site-joined", "hospital-c", True),
    ]
    offline = next(x for x in lines if x["event"] == "site-offline")
    assert (offline["stage"], offline["dataset"]) == ("seg", "")
    roi_asked = [
        m for m in grid.sent if m.metadata.dst_node_id == late and m.metadata.message_type == P.QUERY_ROI
    ]
    assert len(roi_asked) == 1, (
        "back before stage 2: asked for its info, then for its ROI once with the others"
    )


def drop_sequence(cohort: Path, site: str, sequence: str) -> int:
    """Delete every file of ``site``'s ``sequence`` series (found by SeriesInstanceUID in ``_truth``)."""
    truth = json.loads((cohort / "_truth" / "cohort.json").read_text())
    uids = {p["series_uids"][sequence] for p in truth["patients"] if p["site"] == site}
    dropped = 0
    for path in sorted((cohort / site).rglob("*")):
        if not path.is_file() or path.name == "labels.csv":
            continue
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if str(header.get("SeriesInstanceUID", "")) in uids:
            path.unlink()
            dropped += 1
    return dropped


def test_a_site_without_t1_sits_out_the_t1_datasets_and_says_so(cohort, tmp_path):
    data = tmp_path / "no-t1"
    shutil.copytree(cohort, data, ignore=shutil.ignore_patterns("_cache"))  # never touch the shared cohort
    assert drop_sequence(data, "hospital-c", "t1") >= 7  # one T1 series per patient, one file per slice
    out = tmp_path / "out"
    rc = toy_config(data, out, **{"datasets": "t1,t2,t1+t2", "min-sites": 2})
    grid = run_study(rc)
    assert (out / "STATUS").read_text().startswith("COMPLETED")
    contributed = {(x["stage"], x["dataset"]): x["sites_contributed"] for x in round_lines(out)}
    assert contributed == {
        ("seg", ""): list(SITES),  # the segmenter reads t2 + t1ce: hospital-c trains it
        ("cls", "t1"): ["hospital-a", "hospital-b"],
        ("cls", "t2"): list(SITES),
        ("cls", "t1+t2"): ["hospital-a", "hospital-b"],
    }
    c_node = [n for n, ctx in grid.contexts.items() if ctx.node_config["partition-id"] == 2][0]
    c_trained = {
        str(m.content[P.CONFIG][P.CFG_DATASET])
        for m in grid.sent
        if m.metadata.dst_node_id == c_node and m.metadata.message_type == P.TRAIN_CLS
    }
    assert c_trained == {"t2"}, "hospital-c was sent training for a dataset it has no sequence for"
    lines = read_run_log(out / "run-log.jsonl")
    skips = [x for x in lines if x["event"] == "site-skips-dataset"]
    assert [(x["site"], x["stage"], x["dataset"], x["reason"]) for x in skips] == [
        ("hospital-c", "cls", "t1", "no patient with t1"),
        ("hospital-c", "cls", "t1+t2", "no patient with t1 and t2"),
    ]
    assert not [x for x in lines if x["event"] in ("dataset-skipped", "site-failed")]
    text = (out / "run-log.jsonl").read_text() + (out / "table.txt").read_text()
    assert not any(pid in text for pid in _patient_strings(data))
    results = json.loads((out / "results.json").read_text())
    c = results["sites"]["hospital-c"]
    assert c["sat_out"] == {"t1": "no patient with t1", "t1+t2": "no patient with t1 and t2"}
    assert c["auc"]["t1"]["n_patients"] == 0 and c["auc"]["t2"]["n_patients"] > 0
    assert results["sites"]["hospital-a"]["sat_out"] == {}
    table = (out / "table.txt").read_text()
    row = next(line for line in table.splitlines() if line.startswith("hospital-c "))
    assert row.split().count("no") == 2, row  # "no patient" under T1WI and T1WI+T2WI, a figure under T2WI
    assert "hospital-c sat out the T1WI training rounds: no patient with t1" in table


def test_pretraining_rounds_train_the_backbone_without_evaluation_and_the_classifier_starts_from_them(
    cohort, tmp_path
):
    """``cls-pretrain-rounds``: per dataset, rounds of ``train.cls`` with stage ``cls-pretrain`` (no evaluation
    message, no kept-round selection), whose final weights are the ones the classifier's first round is sent; the
    head is untouched by them; the patients without a diagnosis take part in pretraining only; a study resumed
    after them carries on from their checkpoint."""
    data = tmp_path / "two-unlabelled"
    shutil.copytree(cohort, data, ignore=shutil.ignore_patterns("_cache"))  # never touch the shared cohort
    labels = (data / "hospital-a" / "labels.csv").read_text().splitlines()
    (data / "hospital-a" / "labels.csv").write_text("\n".join(labels[:-2]) + "\n")  # 2 patients lose their row
    out = tmp_path / "pre"
    common = {"datasets": "t2", "cls-pretrain-rounds": 2, "cls-pretrain-epochs": 1, "seed": 4}
    rc = toy_config(data, out, **common, **{"sim-cache-root": str(tmp_path / "cache")})
    grid = run_study(rc)
    assert (out / "STATUS").read_text().startswith("COMPLETED")
    a_node = [n for n, ctx in grid.contexts.items() if ctx.node_config["partition-id"] == 0][0]
    roi = next(r for r in grid.replies if r.metadata.src_node_id == a_node and r.metadata.message_type == P.QUERY_ROI)
    counts = roi.content[P.METRICS]
    assert counts[P.roi_metric_key("t2", P.ROI_UNLABELLED)] == 2
    patients = {
        (str(m.content[P.CONFIG][P.CFG_STAGE]), int(r.content[P.METRICS][P.NUM_PATIENTS]))
        for m, r in zip(grid.sent, grid.replies, strict=True)
        if m.metadata.dst_node_id == a_node and m.metadata.message_type == P.TRAIN_CLS
    }
    train = int(counts[P.roi_metric_key("t2", P.ROI_TRAIN)])
    assert patients == {("cls-pretrain", train + 2), ("cls", train)}
    rounds = round_lines(out)
    assert [(x["stage"], x["round"]) for x in rounds] == [("seg", 1), ("cls-pretrain", 1), ("cls-pretrain", 2),
                                                          ("cls", 1)]  # fmt: skip
    pre = [x for x in rounds if x["stage"] == "cls-pretrain"]
    assert all(x["sites_contributed"] == list(SITES) and not x["eval_pooled"] for x in pre)
    stages = [str(m.content[P.CONFIG][P.CFG_STAGE]) for m in grid.sent if m.metadata.message_type == P.TRAIN_CLS]
    assert stages == ["cls-pretrain"] * 6 + ["cls"] * 3
    evals = [m for m in grid.sent if m.metadata.message_type == P.EVALUATE_CLS]
    assert all(str(m.content[P.CONFIG][P.CFG_STAGE]) == "cls" for m in evals)
    assert len(evals) == 3 + 3, "one validation after the classifier's round, one final test: none in pretraining"
    pretrained = load_arrays(out / "checkpoints" / "final-cls-pretrain-t2.npz")
    first_cls = next(
        m for m in grid.sent
        if m.metadata.message_type == P.TRAIN_CLS and m.content[P.CONFIG][P.CFG_STAGE] == "cls"
    )  # fmt: skip
    sent = {k: first_cls.content[P.ARRAYS][k].numpy() for k in first_cls.content[P.ARRAYS].keys()}
    assert all(np.array_equal(sent[k], pretrained[k]) for k in pretrained)
    first_pre = next(m for m in grid.sent if m.metadata.message_type == P.TRAIN_CLS)
    initial = {k: first_pre.content[P.ARRAYS][k].numpy() for k in first_pre.content[P.ARRAYS].keys()}
    # the head: the same at every site, so its weighted mean moves by rounding only; the backbone trained
    assert np.allclose(initial["fc.weight"], pretrained["fc.weight"], rtol=1e-5, atol=1e-7)
    assert np.abs(initial["conv1.weight"] - pretrained["conv1.weight"]).max() > 1e-3
    results = json.loads((out / "results.json").read_text())
    assert "cls-pretrain:t2" not in results["extra"]["kept_rounds"] and "cls:t2" in results["extra"]["kept_rounds"]
    assert results["extra"]["pretrained"] == ["t2"]
    assert (out / "rounds-pretrain.png").stat().st_size > 1000
    card = (out / "models" / "MODEL_CARD.md").read_text()
    assert "pretrained by contrastive learning" in card

    # a crash after the pretraining stage: the resumed study does not pretrain again and ends with the same model
    broken = tmp_path / "broken"
    cache = str(tmp_path / "cache-broken")
    with pytest.raises(SimulatedCrash):
        run_study(toy_config(data, broken, **common, **{"sim-cache-root": cache, "debug-stop-after-round": 3}))
    grid = run_study(toy_config(data, broken, **common, **{"sim-cache-root": cache, "resume": True}))
    assert [(x["stage"], x["round"]) for x in round_lines(broken)] == [(s, r) for s, r in
        [("seg", 1), ("cls-pretrain", 1), ("cls-pretrain", 2), ("cls", 1)]]  # fmt: skip
    assert all(m.content[P.CONFIG][P.CFG_STAGE] == "cls" for m in grid.sent if m.metadata.message_type == P.TRAIN_CLS)
    a, b = load_arrays(out / "checkpoints" / "final-cls-t2.npz"), load_arrays(broken / "checkpoints" / "final-cls-t2.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_site_has_its_own_say_over_pretraining_whatever_the_study_asks(cohort, tmp_path):
    """Node config ``pretraining``, announced in ``query.info``: hospital-a (``diagnosed``) pretrains on its
    diagnosed training patients only, never on its two patients without a diagnosis, and its ROI counts offer none
    of them to pretraining (the coordinator caps its replies by that); hospital-b (``refuse``) is never sent a
    pretraining round, the coordinator records why and pretrains with the others, and hospital-b takes part in the
    classifier rounds. (A coordinator that sends it one anyway is refused: ``tests/test_cls_pretraining.py``.)"""
    data = tmp_path / "two-unlabelled"
    shutil.copytree(cohort, data, ignore=shutil.ignore_patterns("_cache"))  # never touch the shared cohort
    labels = (data / "hospital-a" / "labels.csv").read_text().splitlines()
    (data / "hospital-a" / "labels.csv").write_text("\n".join(labels[:-2]) + "\n")  # 2 patients lose their row
    out = tmp_path / "say"
    rc = toy_config(data, out, datasets="t2", seed=4, **{"cls-pretrain-rounds": 2, "cls-pretrain-epochs": 1,
                    "sim-cache-root": str(tmp_path / "cache"), "min-sites": 2})  # fmt: skip
    grid = LocalGrid(client_app, 3, rc)
    node_of = {ctx.node_config["partition-id"]: n for n, ctx in grid.contexts.items()}
    grid.contexts[node_of[0]].node_config["pretraining"] = "diagnosed"
    grid.contexts[node_of[1]].node_config["pretraining"] = "refuse"
    server_app(grid, server_context(rc))
    assert (out / "STATUS").read_text().startswith("COMPLETED")

    def reply_of(node: int, kind: str) -> Message:
        return next(r for r in grid.replies if r.metadata.src_node_id == node and r.metadata.message_type == kind)

    said = {pid: reply_of(node_of[pid], P.QUERY_INFO).content[P.INFO][P.INFO_PRETRAINING] for pid in range(3)}
    assert said == {0: "diagnosed", 1: "refuse", 2: "all"}
    sites_line = next(x for x in read_run_log(out / "run-log.jsonl") if x["event"] == "sites")
    pretraining = {n: e["pretraining"] for n, e in sites_line["sites"].items()}
    assert pretraining == {"hospital-a": "diagnosed", "hospital-b": "refuse", "hospital-c": "all"}
    counts = reply_of(node_of[0], P.QUERY_ROI).content[P.METRICS]
    assert counts[P.roi_metric_key("t2", P.ROI_UNLABELLED)] == 0, "none offered to pretraining under 'diagnosed'"
    assert reply_of(node_of[0], P.QUERY_INFO).content[P.METRICS][P.PATIENTS_UNLABELLED] == 2
    train = int(counts[P.roi_metric_key("t2", P.ROI_TRAIN)])
    a_patients = {
        (str(m.content[P.CONFIG][P.CFG_STAGE]), int(r.content[P.METRICS][P.NUM_PATIENTS]))
        for m, r in zip(grid.sent, grid.replies, strict=True)
        if m.metadata.dst_node_id == node_of[0] and m.metadata.message_type == P.TRAIN_CLS
    }
    assert a_patients == {("cls-pretrain", train), ("cls", train)}, "the 2 undiagnosed patients stay out"
    to_b = [str(m.content[P.CONFIG][P.CFG_STAGE]) for m in grid.sent
            if m.metadata.dst_node_id == node_of[1] and m.metadata.message_type == P.TRAIN_CLS]  # fmt: skip
    assert to_b and set(to_b) == {"cls"}, "no pretraining round is sent to the site that refuses them"
    skips = [x for x in read_run_log(out / "run-log.jsonl") if x["event"] == "site-skips-dataset"]
    assert [(x["site"], x["stage"], x["dataset"]) for x in skips] == [("hospital-b", "cls-pretrain", "t2")]
    assert "pretraining='refuse'" in skips[0]["reason"]
    rounds = round_lines(out)
    pre = [x for x in rounds if x["stage"] == "cls-pretrain"]
    assert len(pre) == 2
    for x in pre:
        assert x["sites_contributed"] == ["hospital-a", "hospital-c"] and not x["sites_failed"]
    cls = [x for x in rounds if x["stage"] == "cls"]
    assert cls and cls[0]["sites_contributed"] == list(SITES), "the refusing site trains the classifier"
    results = json.loads((out / "results.json").read_text())
    assert "pretraining='refuse'" in results["sites"]["hospital-b"]["sat_out"]["cls-pretrain:t2"]
    assert {n: e["pretraining"] for n, e in results["sites"].items()} == pretraining
    assert "hospital-b sat out the T2WI pretraining rounds" in (out / "table.txt").read_text()
