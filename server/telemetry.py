"""Prometheus metrics from the study's run log (``run-log.jsonl``, written by server/run_log.py).

The exporter never touches the ServerApp: it tails the append-only JSON-lines file and turns each line into
counters and gauges named ``nasofl_server_<what>_<unit>``. Labels are low-cardinality only: ``stage`` (seg /
cls / info / roi), ``dataset`` (t1, t2, t1ce, t1+t2, "" for the segmenter), ``split`` (val / test), ``phase``
(train / eval) and ``site`` (hospital name). The run log holds no patient data, and nothing here reads any
field that could (unknown fields are ignored).

Usage::

    collector = RunLogCollector(Path("out/run-log.jsonl"))
    registry = CollectorRegistry(); registry.register(collector)
    generate_latest(registry)   # every scrape reads the lines appended since the previous one
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.status import read_status

log = logging.getLogger(__name__)

PREFIX = "nasofl_server_"
#: Label values longer than this are cut (a run log is trusted, but a metric label must stay small).
MAX_LABEL_LEN = 64
#: Pooled evaluation keys exported as gauges (value range 0..1 -> unit "ratio").
POOLED_RATIOS = ("dice", "auc", "auc-lo", "auc-hi")


def _label(value: Any) -> str:
    return str(value if value is not None else "")[:MAX_LABEL_LEN]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class RunLogState:
    """Everything the metrics need, folded from the run-log lines seen so far (plain dicts, no Prometheus)."""

    lines: int = 0
    bad_lines: int = 0
    last_line_unix: float = 0.0
    status: str = ""  # "" (no start yet), RUNNING, COMPLETED, FAILED
    study_seconds: float | None = None
    rounds: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    last_round: dict[tuple[str, str], float] = field(default_factory=dict)
    round_sites_contributed: dict[tuple[str, str], float] = field(default_factory=dict)
    round_sites_failed: dict[tuple[str, str], float] = field(default_factory=dict)
    round_updates_rejected: dict[tuple[str, str], float] = field(default_factory=dict)
    round_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    round_seconds_sum: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    model_bytes: dict[tuple[str, str], float] = field(default_factory=dict)
    sent_bytes: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    received_bytes: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    site_contributions: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    site_failures: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    site_rejected: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    site_eval_failures: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    site_train_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    pooled: dict[tuple[str, str, str, str], float] = field(default_factory=dict)  # (metric, stage, ds, split)
    datasets_skipped: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    sites_registered: int = 0

    def add(self, record: dict[str, Any]) -> None:
        """Fold one run-log line in. Unknown events and fields are ignored."""
        self.lines += 1
        unix = _number(record.get("unix"))
        if unix is not None:
            self.last_line_unix = max(self.last_line_unix, unix)
        event = record.get("event")
        stage, dataset = _label(record.get("stage")), _label(record.get("dataset"))
        if event == "start":
            self.status, self.study_seconds = "RUNNING", None
        elif event == "end":
            self.status = _label(record.get("status") or "UNKNOWN").upper()
            self.study_seconds = _number(record.get("seconds"))
        elif event == "sites" and isinstance(record.get("sites"), dict):
            self.sites_registered = len(record["sites"])
        elif event == "site-failed":
            self.site_failures[(stage, _label(record.get("site")))] += 1
        elif event == "dataset-skipped":
            self.datasets_skipped[(stage, dataset)] += 1
        elif event == "round":
            self._add_round(record, stage, dataset)
        elif event == "final-test":
            self._add_pooled(record.get("pooled"), stage, dataset, "test")

    def _add_round(self, record: dict[str, Any], stage: str, dataset: str) -> None:
        key = (stage, dataset)
        self.rounds[key] += 1
        if (n := _number(record.get("round"))) is not None:
            self.last_round[key] = n
        contributed = record.get("sites_contributed") or []
        failed = record.get("sites_failed") or {}
        rejected = record.get("updates_rejected") or {}
        self.round_sites_contributed[key] = float(len(contributed))
        self.round_sites_failed[key] = float(len(failed))
        self.round_updates_rejected[key] = float(len(rejected))
        for site in contributed:
            self.site_contributions[(stage, _label(site))] += 1
        for site in failed:
            self.site_failures[(stage, _label(site))] += 1
        for site in rejected:
            self.site_rejected[(stage, _label(site))] += 1
        for site in record.get("eval_failed") or {}:
            self.site_eval_failures[(stage, _label(site))] += 1
        for site, seconds in (record.get("site_train_seconds") or {}).items():
            if (s := _number(seconds)) is not None:
                self.site_train_seconds[(stage, _label(site))] = s
        if (s := _number(record.get("seconds_round"))) is not None:
            self.round_seconds[key] = s
            self.round_seconds_sum[key] += s
        if (b := _number(record.get("model_float32_bytes"))) is not None:
            self.model_bytes[key] = b
        for phase, field_name in (("train", "bytes_sent_train"), ("eval", "bytes_sent_eval")):
            if (b := _number(record.get(field_name))) is not None:
                self.sent_bytes[(stage, dataset, phase)] += b
        if (b := _number(record.get("bytes_received_train"))) is not None:
            self.received_bytes[key] += b
        self._add_pooled(record.get("eval_pooled"), stage, dataset, "val")

    def _add_pooled(self, pooled: Any, stage: str, dataset: str, split: str) -> None:
        if not isinstance(pooled, dict):
            return
        for name in POOLED_RATIOS:
            value = _number(pooled.get(name))
            if value is not None:
                self.pooled[(name, stage, dataset, split)] = value


class RunLogTail:
    """Reads the lines appended to a run log since the last call (a torn last line waits for its newline).

    A file that shrinks or is replaced (new inode) starts a fresh :class:`RunLogState`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.state = RunLogState()
        self._offset = 0
        self._inode: int | None = None

    def poll(self) -> RunLogState:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self.state
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            if self._inode is not None:
                log.info(
                    "run log %s was replaced or truncated: starting again from its first line", self.path
                )
            self.state, self._offset, self._inode = RunLogState(), 0, stat.st_ino
        if stat.st_size == self._offset:
            return self.state
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(stat.st_size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return self.state
        self._offset += end + 1
        for raw in chunk[: end + 1].splitlines():
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.state.bad_lines += 1
                continue
            if isinstance(record, dict):
                self.state.add(record)
            else:
                self.state.bad_lines += 1
        return self.state


def _family(kind: type, name: str, doc: str, labels: list[str], values: dict[Any, float]) -> Metric:
    fam = kind(PREFIX + name, doc, labels=labels)
    for key, value in sorted(values.items()):
        fam.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return fam


class RunLogCollector(Collector):
    """prometheus_client collector: each scrape polls the run log, then reports the folded state."""

    def __init__(self, path: Path) -> None:
        self.tail = RunLogTail(path)
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            s = self.tail.poll()
            yield from self._families(s)

    def study_state(self, s: RunLogState) -> str:
        """The run log's status; a RUNNING study whose STATUS file (beside the run log) shows its process gone or
        its heartbeat stale is CRASHED (``server.status``: a kill -9 writes no end line)."""
        if s.status != "RUNNING":
            return s.status or "NOT_STARTED"
        return "CRASHED" if read_status(self.tail.path.parent / "STATUS").state == "CRASHED" else "RUNNING"

    def _families(self, s: RunLogState) -> Iterator[Metric]:
        G, C = GaugeMetricFamily, CounterMetricFamily
        sd, ss = ["stage", "dataset"], ["stage", "site"]
        present = 1.0 if self.tail.path.exists() else 0.0
        yield G(PREFIX + "run_log_present_bool", "1 when the run log file exists", value=present)
        yield C(PREFIX + "run_log_lines", "run-log lines read", value=s.lines)
        yield C(PREFIX + "run_log_bad_lines", "run-log lines that were not JSON objects", value=s.bad_lines)
        yield G(
            PREFIX + "run_log_last_line_timestamp_seconds",
            "unix time of the newest run-log line (0 = none yet)",
            value=s.last_line_unix,
        )
        status = G(PREFIX + "study_status_info", "1 for the study's current status", labels=["status"])
        status.add_metric([self.study_state(s)], 1.0)
        yield status
        if s.study_seconds is not None:
            yield G(
                PREFIX + "study_duration_seconds", "wall time of the finished study", value=s.study_seconds
            )
        yield G(PREFIX + "sites_registered_sites", "sites that answered query.info", value=s.sites_registered)
        yield _family(C, "rounds_completed", "rounds completed (aggregated + checkpointed)", sd, s.rounds)
        yield _family(G, "last_round_number", "number of the last completed round", sd, s.last_round)
        yield _family(
            G, "round_contributing_sites", "sites whose update was aggregated in the last round", sd,
            s.round_sites_contributed,
        )  # fmt: skip
        yield _family(
            G, "round_failed_sites", "sites that failed in the last round", sd, s.round_sites_failed
        )
        yield _family(
            G, "round_rejected_updates", "updates rejected before aggregation in the last round", sd,
            s.round_updates_rejected,
        )  # fmt: skip
        yield _family(G, "round_duration_seconds", "wall time of the last round", sd, s.round_seconds)
        yield _family(C, "rounds_duration_seconds", "wall time of all rounds", sd, s.round_seconds_sum)
        yield _family(G, "model_float32_bytes", "model size as float32", sd, s.model_bytes)
        yield _family(
            C,
            "sent_bytes",
            "bytes of model arrays sent to sites",
            ["stage", "dataset", "phase"],
            s.sent_bytes,
        )
        yield _family(C, "received_bytes", "bytes of model arrays received from sites", sd, s.received_bytes)
        yield _family(
            C, "site_contributions", "rounds a site's update was aggregated", ss, s.site_contributions
        )
        yield _family(
            C, "site_failures", "site failures (round replies and stage errors)", ss, s.site_failures
        )
        yield _family(C, "updates_rejected", "site updates rejected before aggregation", ss, s.site_rejected)
        yield _family(C, "site_eval_failures", "failed evaluation replies", ss, s.site_eval_failures)
        yield _family(
            G, "site_train_seconds", "local training time of the site's last round", ss, s.site_train_seconds
        )
        yield _family(C, "datasets_skipped", "datasets skipped (too few sites)", sd, s.datasets_skipped)
        for name in POOLED_RATIOS:
            values = {k[1:]: v for k, v in s.pooled.items() if k[0] == name}
            metric = name.replace("-", "_")
            yield _family(
                G,
                f"pooled_{metric}_ratio",
                f"last pooled {name} over all sites (split val: per round, test: final federated test)",
                ["stage", "dataset", "split"],
                values,
            )
