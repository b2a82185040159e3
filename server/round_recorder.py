"""End of a round: checkpoint, run-log line, history for the per-round curves. No Flower here.

Called from the strategy's ``evaluate_fn`` hook (after training, aggregation and federated evaluation of the
round), with the strategy's :class:`TrainRound` / :class:`EvalRound` records.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.checkpoint import CheckpointStore
from server.run_log import RunLog
from server.strategies.base import EvalRound, TrainRound
from shared.records import float32_bytes, model_hash

log = logging.getLogger(__name__)


class SimulatedCrash(RuntimeError):
    """Raised by ``debug-stop-after-round`` right after a checkpoint, to test resume."""


@dataclass
class RoundRecorder:
    store: CheckpointStore
    run_log: RunLog
    fingerprint: str
    seed: int
    settings: dict[str, Any]
    completed: list[str] = field(default_factory=list)
    stop_after_position: int = 0  # global round position (across stages) after which to crash; 0 = never
    history: list[dict[str, Any]] = field(default_factory=list)

    def end_round(
        self,
        *,
        stage: str,
        dataset: str,
        round: int,
        position: int,
        arrays: dict[str, np.ndarray],
        strategy_state: dict[str, dict[str, np.ndarray]],
        train: TrainRound | None,
        evaluation: EvalRound | None,
        kept: tuple[int, float] | None = None,
    ) -> dict[str, Any]:
        """Checkpoint first, then the log line (a crash in between repeats no round, loses one log line)."""
        self.store.save_round(
            stage=stage,
            dataset=dataset,
            round=round,
            arrays=arrays,
            strategy_state=strategy_state,
            fingerprint=self.fingerprint,
            seed=self.seed,
            completed=list(self.completed),
            kept=kept,
        )
        now = time.time()
        train_phase = (train.aggregated_at - train.started) if train and train.aggregated_at else float("nan")
        slowest = (
            max(train.site_train_seconds.values()) if train and train.site_train_seconds else float("nan")
        )
        n_sent = len(train.sent_to) if train else 0
        line = self.run_log.append(
            "round",
            stage=stage,
            dataset=dataset,
            round=round,
            sites_contributed=train.contributed if train else [],
            sites_failed=train.failed if train else {},
            updates_rejected=train.rejected if train else {},
            update_norms=train.update_norms if train else {},
            secure_aggregation=train.secure_aggregation if train else {},
            eval_failed=evaluation.failed if evaluation else {},
            model_sha256=model_hash(arrays),
            model_float32_bytes=float32_bytes(arrays.values()),
            bytes_sent_train=train.bytes_sent if train else 0,
            bytes_sent_per_site=(train.bytes_sent // n_sent) if train and n_sent else 0,
            bytes_received_train=train.bytes_received if train else 0,
            bytes_sent_eval=evaluation.bytes_sent if evaluation else 0,
            seconds_round=(now - train.started) if train else float("nan"),
            seconds_train_phase=train_phase,
            seconds_slowest_local_training=slowest,
            share_outside_training=(1.0 - slowest / train_phase)
            if train_phase and train_phase > 0
            else float("nan"),
            site_train_seconds=train.site_train_seconds if train else {},
            site_privacy=train.site_privacy if train else {},
            train_metrics=train.train_metrics if train else {},
            eval_pooled=evaluation.pooled if evaluation else {},
            eval_per_site=evaluation.per_site if evaluation else {},
            kept_round=kept[0] if kept else round,
            settings=self.settings,
        )
        self.history.append(line)
        log.info(
            "round %s %s%s: %s contributed, %s failed, %s rejected; pooled %s; model %s",
            round,
            stage,
            f"/{dataset}" if dataset else "",
            len(line["sites_contributed"]),
            len(line["sites_failed"]),
            len(line["updates_rejected"]),
            {k: round_(v) for k, v in (evaluation.pooled if evaluation else {}).items()},
            line["model_sha256"][:12],
        )
        if self.stop_after_position and position == self.stop_after_position:
            raise SimulatedCrash(
                f"debug-stop-after-round={position}: stopping after the checkpoint of {stage} {dataset} round {round}"
            )
        return line


def round_(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v
