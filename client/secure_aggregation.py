"""The site's side of secure aggregation (SecAgg+): Flower's own ``secaggplus_mod`` around our training handlers.

Flower 1.42's ``secaggplus_mod`` acts only on messages typed ``train`` and reads and writes legacy ``FitRes``
records; our training messages are ``train.seg`` / ``train.cls`` with an ``arrays`` and a ``config`` record.
:func:`secure_aggregation` (a mod on both training handlers) presents each SecAgg+ message to Flower's mod typed
``train``, and in the "collect masked vectors" stage runs our handler, turns its reply into the update Flower masks,
and types the reply back. Keys, Shamir shares, masks and quantisation are Flower's code, untouched.

Before masking, the site does what the coordinator can no longer do on a masked update
(``server/update_check.py``, ``server/update_bounds.py``): the trained arrays must have exactly the global model's
keys and shapes and only finite values, and the site's weight ``num-examples / max_weight`` must be at most 1 (the
coordinator's ``max_weight`` is the most examples any site of the round may claim from its own counts); a failing
update is not sent (the site drops out of the round, SecAgg+ unmasks the others' sum). What leaves is the update
``w_site - w_global``, weighted; Flower clips every coordinate to ``+-secure-aggregation-clip`` before quantising,
and the number of clipped coordinates is reported (``secagg-clipped``) and logged.

With run config ``secure-aggregation=true`` the site refuses a training instruction that does not run SecAgg+: it
never sends its update in clear in a run declared secure.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common import recorddict_compat as compat

from shared import protocol as P
from shared.app_config import coerce
from shared.records import record_to_numpy
from shared.secure_sums import SECURE_HIST_BINS, encode, secure_hist_bins

log = logging.getLogger(__name__)


def secure_aggregation(msg: Message, context: Context, call_next) -> Message:
    """Mod for the ``train.<action>`` and ``evaluate.<action>`` handlers: SecAgg+ stages go through Flower's
    ``secaggplus_mod``; an evaluation is masked as the vector of its sums (:mod:`shared.secure_sums`)."""
    required = coerce("secure-aggregation", context.run_config.get("secure-aggregation", False), bool)
    own_type = msg.metadata.message_type
    evaluation = own_type.startswith(MessageType.EVALUATE)
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        if required:
            what = "evaluation instruction" if evaluation else "training instruction"
            sent = "its evaluation sums" if evaluation else "its update"
            raise RuntimeError(
                f"this run is declared secure-aggregation=true but the {what} does not run SecAgg+: the site does "
                f"not send {sent} in clear"
            )
        return call_next(msg, context)

    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) == Stage.SETUP:
        sites, threshold = int(configs.get(Key.SAMPLE_NUMBER, 0)), int(configs.get(Key.THRESHOLD, 0))
        if sites < 2 or threshold < 2:
            # a "sum" over one site, or one whose single share unmasks it, would hand this site's values out
            raise RuntimeError(
                f"secure aggregation refused: the coordinator set up a sum over {sites} site(s) with threshold "
                f"{threshold}; this site masks its values only into a sum of at least 2 sites, unmasked by at "
                "least 2"
            )

    def train_and_hand_over(train_msg: Message, ctxt: Context) -> Message:
        train_msg.metadata.message_type = own_type
        if evaluation:  # the site itself marks the evaluation as summed: its handler answers fixed bins
            conf = dict(train_msg.content.config_records.get(P.CONFIG, ConfigRecord()))
            train_msg.content[P.CONFIG] = ConfigRecord({**conf, P.CFG_SECURE_SUM: True})
        reply = call_next(train_msg, ctxt)
        if reply.has_error():
            return reply
        state = ctxt.state.config_records[RECORD_KEY_STATE]
        if evaluation:
            bins = secure_hist_bins(int(context.run_config.get("hist-bins", SECURE_HIST_BINS)))
            content = eval_content(reply.content, own_type.split(".", 1)[1], bins)
            return Message(content, reply_to=train_msg)
        return Message(
            update_content(
                train_msg.content,
                reply.content,
                float(state[Key.MAX_WEIGHT]),
                float(state[Key.CLIPPING_RANGE]),
            ),
            reply_to=train_msg,
        )

    msg.metadata.message_type = MessageType.TRAIN
    try:
        out = secaggplus_mod(msg, context, train_and_hand_over)
    finally:
        msg.metadata.message_type = own_type
    out.metadata.message_type = own_type
    return out


def site_update_problem(global_arrays: dict[str, np.ndarray], update: dict[str, np.ndarray]) -> str | None:
    """Why the trained arrays cannot be masked and sent (keys, shapes, finite values), or None."""
    if list(update) != list(global_arrays):
        missing = [k for k in global_arrays if k not in update]
        extra = [k for k in update if k not in global_arrays]
        return f"array keys differ from the global model's (missing {missing[:1]}, unexpected {extra[:1]})"
    for name, ref in global_arrays.items():
        arr = update[name]
        if arr.shape != ref.shape:
            return f"array {name!r} has shape {arr.shape}, the global model's is {ref.shape}"
        if not np.isfinite(arr.astype(np.float64)).all():
            return f"array {name!r} contains NaN or infinite values"
    return None


def update_content(instruction: RecordDict, reply: RecordDict, max_weight: float, clip: float) -> RecordDict:
    """Our handler's reply -> the legacy FitRes records Flower's mod masks: the update ``w_site - w_global``
    (float64, in the global arrays' key order), ``num-examples`` as the weight, our metrics plus
    ``secagg-clipped``. Raises (the site drops out of the round) when the update fails the site check."""
    global_arrays = record_to_numpy(instruction[P.ARRAYS])
    trained = record_to_numpy(reply[P.ARRAYS])
    problem = site_update_problem(global_arrays, trained)
    if problem is not None:
        raise RuntimeError(f"secure aggregation: the site's update fails the check before masking: {problem}")
    metrics = dict(reply[P.METRICS])
    examples = int(metrics[P.NUM_EXAMPLES])
    weight = examples / max_weight
    if weight > 1.0:
        raise RuntimeError(
            f"secure aggregation: num-examples={examples} is above the coordinator's max weight {max_weight:g} "
            "(the most any site of this round may claim from its own counts): not sent"
        )
    update = [trained[k].astype(np.float64) - global_arrays[k].astype(np.float64) for k in global_arrays]
    clipped = int(sum(np.count_nonzero(np.abs(u * weight) > clip) for u in update))
    if clipped:
        log.warning(
            "secure aggregation: %s coordinate(s) of this site's weighted update exceed secure-aggregation-clip=%g "
            "and are clipped before masking",
            clipped,
            clip,
        )
    metrics[P.SECAGG_CLIPPED] = clipped
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), examples, metrics)
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def eval_content(reply: RecordDict, kind: str, bins: int) -> RecordDict:
    """Our evaluation handler's reply -> the legacy FitRes records Flower's mod masks: the sums as one vector
    (:func:`shared.secure_sums.encode`), weight 1 (``num-examples`` 1 of ``max_weight`` 1, so the unmasked mean
    times the number of sites is the exact sum), and in clear only the seconds the evaluation took."""
    metrics = dict(reply[P.METRICS])
    vector = encode(metrics, kind, bins)
    clear = {P.EVAL_SECONDS: float(metrics.get(P.EVAL_SECONDS, 0.0))}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector]), 1, clear)
    return compat.fitres_to_recorddict(fitres, keep_input=True)
