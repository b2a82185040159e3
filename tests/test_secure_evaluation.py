"""Secure sums of the evaluation statistics (SecAgg+), and the check of the weight total a secure round unmasks.

Flower's real ``SecAggPlusWorkflow`` and ``secaggplus_mod`` run in-process around tiny evaluate handlers that
answer known statistics: the coordinator must get their exact sum, never one site's histogram or Dice sums.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from client.secure_aggregation import secure_aggregation
from server.pooled_eval import cls_figures, seg_figures
from server.secure_aggregation import SecureAggregation, secure_round
from server.secure_evaluation import SECURE_EVAL_ONLY, SECURE_TRAIN, secure_evaluation
from shared import protocol as P
from shared.records import numpy_to_record
from shared.secure_sums import DIGIT, SecureSumError, decode, encode, secure_hist_bins
from tests.fed_support import LocalGrid, default_run_config

BINS = secure_hist_bins(int(default_run_config()["hist-bins"]))


def _cls_stats(node: int) -> dict[str, object]:
    rng = np.random.default_rng(node)
    pos = rng.integers(0, 3, BINS).tolist()
    neg = rng.integers(0, 3, BINS).tolist()
    n = sum(pos) + sum(neg)
    return {
        P.NUM_EXAMPLES: n,
        P.NUM_PATIENTS: n,
        P.HIST_POS: pos,
        P.HIST_NEG: neg,
        P.HIST_SPAN: [1] * BINS,
        P.EVAL_LOSS: float(rng.uniform(0.2, 0.9)),
        P.EVAL_SECONDS: 0.5 + node % 3,
    }


def _seg_stats(node: int) -> dict[str, object]:
    rng = np.random.default_rng(node)
    true = int(rng.integers(10_000, 5_000_000_000))  # beyond Flower's 2**22 range: carried in two digits
    return {
        P.NUM_EXAMPLES: int(rng.integers(1, 30)),
        P.NUM_PATIENTS: int(rng.integers(1, 30)),
        P.DICE_INTERSECTION: true // 2,
        P.DICE_PRED_SUM: true + 17,
        P.DICE_TRUE_SUM: true,
        P.EVAL_LOSS: float(rng.uniform(0, 1)),
        P.EVAL_SECONDS: 1.0,
    }


def _app(seen_secure_flag: dict[int, bool] | None = None) -> ClientApp:
    app = ClientApp()

    def answer(msg: Message, context: Context, stats) -> Message:
        conf = msg.content.config_records.get(P.CONFIG, ConfigRecord())
        if seen_secure_flag is not None:
            seen_secure_flag[context.node_id] = bool(conf.get(P.CFG_SECURE_SUM, False))
        return Message(RecordDict({P.METRICS: MetricRecord(stats(context.node_id))}), reply_to=msg)

    @app.evaluate("cls", mods=[secure_aggregation])
    def evaluate_cls(msg: Message, context: Context) -> Message:
        return answer(msg, context, _cls_stats)

    @app.evaluate("seg", mods=[secure_aggregation])
    def evaluate_seg(msg: Message, context: Context) -> Message:
        return answer(msg, context, _seg_stats)

    return app


def _instructions(grid: LocalGrid, kind: str) -> list[Message]:
    content = RecordDict(
        {
            P.ARRAYS: numpy_to_record({"w": np.zeros(3, dtype=np.float32)}),
            P.CONFIG: ConfigRecord({P.CFG_SPLIT: "test"}),
        }
    )
    return [Message(content, dst_node_id=n, message_type=f"evaluate.{kind}") for n in grid.contexts]


def _grid(n: int, app: ClientApp | None = None) -> LocalGrid:
    return LocalGrid(app or _app(), n, {**default_run_config(), "secure-aggregation": True})


SETTINGS = SecureAggregation(clip=8.0, threshold=0.67, timeout=None)


def _total(stats: list[dict[str, object]], key: str):
    if isinstance(stats[0][key], list):
        return np.sum([s[key] for s in stats], axis=0).tolist()
    return sum(s[key] for s in stats)  # type: ignore[misc]


# ---- the vector itself ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,stats", [("cls", _cls_stats), ("seg", _seg_stats)])
def test_the_sum_of_encoded_statistics_decodes_to_the_exact_sums(kind, stats):
    sites = [stats(n) for n in (3, 11, 40)]
    mean = np.sum([encode(s, kind, BINS) for s in sites], axis=0) / 3  # what Flower's unmasked "mean" is
    summed = decode(mean, 3, kind, BINS)
    for key in summed:
        if key in (P.EVAL_LOSS, P.HIST_SPAN):
            continue
        assert summed[key] == _total(sites, key), key
    n = summed[P.NUM_EXAMPLES]
    exact_loss = sum(float(s[P.EVAL_LOSS]) * int(s[P.NUM_EXAMPLES]) for s in sites) / n
    assert summed[P.EVAL_LOSS] == pytest.approx(exact_loss, abs=3e-6)
    figures = cls_figures if kind == "cls" else seg_figures
    in_clear = figures(sites)
    assert figures([summed]) == pytest.approx(in_clear, nan_ok=True)


def test_values_a_secure_sum_cannot_hold_exactly_are_refused():
    big = {**_seg_stats(1), P.DICE_PRED_SUM: DIGIT**2}
    with pytest.raises(SecureSumError, match="beyond what a secure sum holds"):
        encode(big, "seg")
    with pytest.raises(SecureSumError, match="the secure sum uses 7"):
        encode(_cls_stats(1), "cls", 7)
    merged = {**_cls_stats(1), P.HIST_SPAN: [2, 0] + [1] * (BINS - 2)}
    with pytest.raises(SecureSumError, match="hist-span"):
        encode(merged, "cls", BINS)


# ---- through Flower's SecAgg+ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,stats", [("cls", _cls_stats), ("seg", _seg_stats)])
def test_the_coordinator_gets_the_exact_sum_and_never_a_sites_statistics(kind, stats):
    flags: dict[int, bool] = {}
    grid = _grid(3, _app(flags))
    names = {n: f"site-{i}" for i, n in enumerate(grid.contexts)}
    out = secure_evaluation(grid, _instructions(grid, kind), SETTINGS, kind, BINS, names.get, set(), 1)
    assert not out.failed and out.summed == {SECURE_TRAIN: sorted(names.values())}
    sites = [stats(n) for n in grid.contexts]
    summed = out.sums[SECURE_TRAIN]
    for key in summed:
        if key not in (P.EVAL_LOSS, P.HIST_SPAN, P.EVAL_SECONDS):
            assert summed[key] == _total(sites, key), key
    assert flags == {n: True for n in grid.contexts}  # the site's own mod asked its handler for fixed bins
    # what reached the coordinator: Flower's stage records, masked integers, and each site's seconds
    for reply in grid.replies:
        assert not reply.has_error()
        assert all(len(rec) == 0 for rec in reply.content.array_records.values())
        for rec in reply.content.metric_records.values():  # the legacy FitRes' weight claim: always 1
            assert set(rec.keys()) <= {P.EVAL_SECONDS, "num_examples"}, set(rec.keys())
            assert rec.get("num_examples", 1) == 1
        configs = reply.content.config_records[RECORD_KEY_CONFIGS]
        if "masked_params" in configs:
            masked = [np.load(io.BytesIO(b)) for b in configs["masked_params"]]
            own = encode(stats(reply.metadata.src_node_id), kind, BINS)
            assert masked[1].shape == own.shape and not np.array_equal(masked[1], own)
            assert masked[1].max() > 2**22  # masked mod 2**32, not the quantised values


def test_a_group_of_one_site_is_not_summed_and_says_why():
    grid = _grid(4)
    nodes = list(grid.contexts)
    names = {n: f"site-{i}" for i, n in enumerate(nodes)}
    out = secure_evaluation(grid, _instructions(grid, "cls"), SETTINGS, "cls", BINS, names.get, {nodes[3]}, 1)
    assert out.summed == {SECURE_TRAIN: sorted(names[n] for n in nodes[:3])}
    assert SECURE_EVAL_ONLY not in out.sums
    assert "a secure sum needs at least 2 sites" in out.failed[names[nodes[3]]]
    assert not any(m.metadata.dst_node_id == nodes[3] for m in grid.sent)  # it was not even asked


def test_the_site_refuses_a_plain_evaluation_instruction_in_a_secure_run():
    grid = _grid(2)
    replies = list(grid.send_and_receive(_instructions(grid, "cls")))
    assert replies and all(r.has_error() for r in replies)
    assert "does not send its evaluation sums in clear" in replies[0].error.reason


# ---- the unmasked weight total -----------------------------------------------------------------------------------


def _hostile(msg: Message, context: Context, call_next) -> Message:
    """Modified site code: at setup it halves the coordinator's max weight before Flower's mod keeps it, so the
    weight it masks is twice what its clear num-examples claim says."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if context.node_id == 1008 and configs is not None and configs.get(Key.STAGE) == Stage.SETUP:
        configs[Key.MAX_WEIGHT] = float(configs[Key.MAX_WEIGHT]) / 2
    return call_next(msg, context)


def _train_app(hostile: bool) -> ClientApp:
    app = ClientApp()

    @app.train("seg", mods=[_hostile, secure_aggregation] if hostile else [secure_aggregation])
    def train(msg: Message, context: Context) -> Message:
        glob = {k: msg.content[P.ARRAYS][k].numpy() for k in msg.content[P.ARRAYS].keys()}
        trained = {k: v + 0.01 * (context.node_id % 5) for k, v in glob.items()}
        metrics = {**{k: 0.0 for k in P.TRAIN_METRICS}, P.NUM_EXAMPLES: 10, P.UPDATE_WEIGHT: 1}
        return Message(
            RecordDict({P.ARRAYS: numpy_to_record(trained), P.METRICS: MetricRecord(metrics)}), reply_to=msg
        )

    return app


@pytest.mark.parametrize("hostile", [False, True])
def test_a_site_masking_another_weight_than_it_claims_halts_the_round(hostile):
    grid = LocalGrid(_train_app(hostile), 3, {**default_run_config(), "secure-aggregation": True})
    content = RecordDict(
        {
            P.ARRAYS: numpy_to_record({"w": np.zeros(4, dtype=np.float32)}),
            P.CONFIG: ConfigRecord({P.CFG_ROUND: 1}),
        }
    )
    msgs = [Message(content, dst_node_id=n, message_type=P.TRAIN_SEG) for n in grid.contexts]
    out = secure_round(grid, msgs, SETTINGS, 40.0, server_round=1)
    assert out.claimed_weight_total == 3 * round(10 / 40 * SETTINGS.quantization_range)
    if not hostile:
        assert out.halted == "" and out.mean_update is not None
        assert out.weight_total == out.claimed_weight_total
        return
    assert out.mean_update is None
    assert out.weight_total == 4 * round(10 / 40 * SETTINGS.quantization_range)
    assert "weight check failed" in out.halted and "masked a weight other than it claims" in out.halted


@pytest.mark.parametrize("sites,threshold", [(1, 1), (3, 1)])
def test_the_site_refuses_to_mask_into_a_sum_of_one_or_one_share(sites, threshold):
    # modified coordinator code: a SecAgg+ setup whose "sum" is one site, or unmasked by one share
    grid = _grid(2)
    setup = ConfigRecord(
        {
            Key.STAGE: Stage.SETUP,
            Key.SAMPLE_NUMBER: sites,
            Key.SHARE_NUMBER: sites,
            Key.THRESHOLD: threshold,
            Key.CLIPPING_RANGE: 8.0,
            Key.TARGET_RANGE: 4194304,
            Key.MOD_RANGE: 4294967296,
            Key.MAX_WEIGHT: 1.0,
        }
    )
    node = next(iter(grid.contexts))
    msg = Message(RecordDict({RECORD_KEY_CONFIGS: setup}), dst_node_id=node, message_type="evaluate.cls")
    (reply,) = grid.send_and_receive([msg])
    assert (
        reply.has_error()
        and "this site masks its values only into a sum of at least 2 sites" in reply.error.reason
    )
    ok = ConfigRecord({**setup, Key.SAMPLE_NUMBER: 2, Key.SHARE_NUMBER: 2, Key.THRESHOLD: 2})
    msg = Message(RecordDict({RECORD_KEY_CONFIGS: ok}), dst_node_id=node, message_type="evaluate.cls")
    (reply,) = grid.send_and_receive([msg])
    assert not reply.has_error()  # Flower's mod answers the setup with the site's public keys
