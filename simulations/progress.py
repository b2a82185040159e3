"""Where a running study is, read from its run log: one line per round on a log, a progress bar on a terminal.

``nasofl-sim run`` (and ``compare``, which calls it) starts ``flwr run`` and, while it runs, follows the study's
``run-log.jsonl`` with :class:`StudyProgress`. Per round: stage and dataset, round k of N, the sites that
replied, the pooled validation figure, elapsed time and an estimate of the time left. Site failures, sites going
offline, skipped datasets and rejected updates are printed the moment the run log has them, with the site named.
The run log holds site names, counts and figures only, so nothing printed here names a patient.

A study resumed in the same folder appends to the run log of the run it continues: :meth:`StudyProgress.skip_earlier`
reads those earlier records silently (their rounds still count for the time left) and says in one line that they
exist and how that run ended, so an earlier run's "study FAILED" is never printed as if it were this run's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO


def _fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class StudyProgress:
    """Follows ``run_log`` (which may not exist yet) and reports what is new at each :meth:`poll`."""

    def __init__(self, run_log: Path, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.path = Path(run_log)
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._offset = 0
        self._partial = ""
        self.t0 = time.time()
        # "seg" -> rounds, "pre" / "cls" -> pretraining / classifier rounds per dataset, "datasets" -> n
        self.plan: dict[str, int] = {}
        self.done = {"seg": 0, "pre": 0, "cls": 0}
        self.seconds = {"seg": 0.0, "pre": 0.0, "cls": 0.0}
        self._bar: Any = None

    # ---- reading ----------------------------------------------------------------------------------

    def _new_records(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
                self._offset = fh.tell()
        except FileNotFoundError:
            return []
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next poll
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def skip_earlier(self) -> str | None:
        """Consume what the run log already holds (earlier runs in this folder) without printing it line by line;
        print and return one line saying so (None when the run log is empty or absent)."""
        records = self._new_records()
        if not records:
            return None
        ended = None
        for rec in records:
            line = self.describe(rec)
            if rec.get("event") == "end":
                ended = line
        rounds = sum(1 for rec in records if rec.get("event") == "round")
        how = f"it ended: {ended}" if ended else "no end was recorded (stopped or crashed)"
        line = f"this folder's run log already holds an earlier run ({rounds} round(s); {how}); below: this run only"
        print(line, file=self.stream, flush=True)
        return line

    def poll(self) -> list[str]:
        """Read what the study wrote since the last call; print it; return the plain lines printed."""
        lines: list[str] = []
        for rec in self._new_records():
            line = self.describe(rec)
            if line:
                lines.append(line)
                self._emit(line, rec.get("event") == "round")
        return lines

    def close(self) -> None:
        self.poll()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ---- formatting -------------------------------------------------------------------------------

    @property
    def total_rounds(self) -> int:
        per_dataset = self.plan.get("pre", 0) + self.plan.get("cls", 0)
        return self.plan.get("seg", 0) + per_dataset * self.plan.get("datasets", 0)

    def eta_seconds(self) -> float | None:
        """Rounds left of each kind x that kind's mean round time (a classifier round counts as a segmenter
        round until one has been timed, a pretraining round as a classifier round until one has been timed)."""
        if not self.plan or not any(self.done.values()):
            return None
        mean = {k: self.seconds[k] / self.done[k] for k in self.done if self.done[k]}
        seg_mean = mean.get("seg", mean.get("cls", mean.get("pre", 0.0)))
        cls_mean = mean.get("cls", seg_mean)
        pre_mean = mean.get("pre", cls_mean)
        datasets = self.plan.get("datasets", 0)
        seg_left = max(0, self.plan.get("seg", 0) - self.done["seg"])
        pre_left = max(0, self.plan.get("pre", 0) * datasets - self.done["pre"])
        cls_left = max(0, self.plan.get("cls", 0) * datasets - self.done["cls"])
        return seg_left * seg_mean + pre_left * pre_mean + cls_left * cls_mean

    def describe(self, rec: dict[str, Any]) -> str | None:
        event = rec.get("event")
        if event == "start":
            fed, pipe = rec.get("federation") or {}, rec.get("pipeline") or {}
            datasets = [d for d in str(pipe.get("datasets", "")).split(",") if d]
            if not rec.get("resume"):  # a fresh start: rounds of earlier runs in this folder are not this run's
                self.done = {"seg": 0, "pre": 0, "cls": 0}
                self.seconds = {"seg": 0.0, "pre": 0.0, "cls": 0.0}
            self.plan = {
                "seg": int(fed.get("seg-rounds", 0)),
                "pre": int(fed.get("cls-pretrain-rounds", 0)),
                "cls": int(fed.get("cls-rounds", 0)),
                "datasets": len(datasets),
            }
            pre = f"{self.plan['pre']} pretraining + " if self.plan["pre"] else ""
            return (
                f"study started{' (resumed)' if rec.get('resume') else ''}: {self.plan['seg']} segmenter rounds, "
                f"then {pre}{self.plan['cls']} rounds for each of {', '.join(datasets)} ({self.total_rounds} in all)"
            )
        if event == "sites":
            sites = rec.get("sites") or {}
            return f"sites: {len(sites)} answered ({', '.join(sorted(sites))})"
        if event == "round":
            return self._round_line(rec)
        site = rec.get("site")
        where = "/".join(x for x in (rec.get("stage"), rec.get("dataset")) if x)
        if event == "site-failed":
            return f"WARNING site {site} failed at {where}: {rec.get('reason')}"
        if event == "site-offline":
            return f"WARNING site {site} went offline during {where}; it takes part again when it reconnects"
        if event == "site-joined":
            return f"site {site} {'rejoined' if rec.get('rejoined') else 'joined'} ({where})"
        if event == "site-skips-dataset":
            return f"site {site} sits out {rec.get('dataset') or rec.get('stage')}: {rec.get('reason')}"
        if event == "dataset-skipped":
            return f"WARNING dataset {rec.get('dataset')} skipped: {rec.get('reason')}"
        if event == "stage-complete":
            kept = rec.get("kept") or {}
            return f"{where} complete: kept round {kept.get('round')} ({kept.get('rule')})"
        if event == "final-test":
            pooled = rec.get("pooled") or {}
            figure = pooled.get("dice") if rec.get("stage") == "seg" else pooled.get("auc")
            name = "Dice" if rec.get("stage") == "seg" else "AUC"
            shown = "n/a" if figure is None else f"{figure:.3f}"
            failed = rec.get("failed") or {}
            extra = f"; failed: {', '.join(sorted(failed))}" if failed else ""
            return f"final test {rec.get('dataset') or 'segmenter'}: pooled {name} {shown}{extra}"
        if event == "end":
            status = rec.get("status")
            tail = f": {rec.get('error')}" if rec.get("error") else ""
            return f"study {status} after {_fmt_seconds(float(rec.get('seconds') or 0))}{tail}"
        return None

    def _round_line(self, rec: dict[str, Any]) -> str:
        kind = {"seg": "seg", "cls-pretrain": "pre"}.get(str(rec.get("stage")), "cls")
        self.done[kind] += 1
        seconds = rec.get("seconds_round")
        if isinstance(seconds, int | float):
            self.seconds[kind] += float(seconds)
        total = self.plan.get(kind, 0) or "?"
        label = {"seg": "segmenter", "pre": f"classifier {rec.get('dataset')} pretraining"}.get(
            kind, f"classifier {rec.get('dataset')}"
        )
        contributed = rec.get("sites_contributed") or []
        failed = rec.get("sites_failed") or {}
        rejected = rec.get("updates_rejected") or {}
        pooled = rec.get("eval_pooled") or {}
        figure = pooled.get("dice") if kind == "seg" else pooled.get("auc")
        metric = "val Dice" if kind == "seg" else "val AUC"
        parts = [
            f"{label} round {rec.get('round')}/{total}",
            f"{len(contributed)} site(s) replied",
        ]
        if failed:
            parts.append(f"FAILED: {', '.join(f'{s} ({r})' for s, r in sorted(failed.items()))}")
        if rejected:
            parts.append(f"rejected: {', '.join(f'{s} ({r})' for s, r in sorted(rejected.items()))}")
        if kind == "pre":  # no evaluation: its model has no trained head yet
            loss = (rec.get("train_metrics") or {}).get("train-loss")
            parts.append(f"contrastive loss {'n/a' if loss is None else f'{loss:.3f}'}")
        else:
            parts.append(f"{metric} {'n/a' if figure is None else f'{figure:.3f}'}")
            parts.append(f"kept round {rec.get('kept_round')}")
        eta = self.eta_seconds()
        parts.append(f"{_fmt_seconds(time.time() - self.t0)} elapsed")
        if eta is not None:
            parts.append(f"~{_fmt_seconds(eta)} left")
        return " | ".join(parts)

    def _emit(self, line: str, is_round: bool) -> None:
        if not self.tty:
            print(line, file=self.stream, flush=True)
            return
        from tqdm import tqdm

        if self._bar is None and self.total_rounds:
            self._bar = tqdm(
                total=self.total_rounds, desc="study", unit="round", file=self.stream, leave=True
            )
        if self._bar is None:
            print(line, file=self.stream, flush=True)
            return
        if is_round:
            self._bar.update(1)
            self._bar.set_postfix_str(line.split(" | ")[0], refresh=True)
        self._bar.write(line, file=self.stream)
