"""StudyProgress: what `nasofl-sim run` prints while a study runs, read from a run log as the ServerApp writes it."""

from __future__ import annotations

import io

from server.run_log import RunLog
from simulations.progress import StudyProgress


def _start(log: RunLog) -> None:
    log.append(
        "start",
        resume=False,
        federation={"seg-rounds": 2, "cls-rounds": 1},
        pipeline={"datasets": "t2,t1+t2"},
    )


def test_rounds_failures_and_eta_are_reported_as_they_happen(tmp_path):
    log = RunLog(tmp_path / "run-log.jsonl")
    stream = io.StringIO()
    progress = StudyProgress(log.path, stream=stream, tty=False)
    assert progress.poll() == []  # no run log yet: nothing, no error
    _start(log)
    log.append("sites", sites={"hospital-a": {}, "hospital-b": {}})
    log.append(
        "round",
        stage="seg",
        dataset="",
        round=1,
        sites_contributed=["hospital-a"],
        sites_failed={"hospital-b": "error reply (code 2): train.seg failed"},
        updates_rejected={},
        eval_pooled={"dice": 0.4123},
        kept_round=1,
        seconds_round=10.0,
    )
    lines = progress.poll()
    assert lines[0] == "study started: 2 segmenter rounds, then 1 rounds for each of t2, t1+t2 (4 in all)"
    assert lines[1] == "sites: 2 answered (hospital-a, hospital-b)"
    assert lines[2].startswith("segmenter round 1/2 | 1 site(s) replied | FAILED: hospital-b (error reply")
    assert "val Dice 0.412" in lines[2] and "~30 s left" in lines[2]  # 3 rounds left x 10 s
    log.append("site-offline", site="hospital-b", stage="seg", dataset="")
    log.append("end", status="FAILED", error="TooFewSitesError: round 2", seconds=31.0)
    lines = progress.poll()
    assert lines == [
        "WARNING site hospital-b went offline during seg; it takes part again when it reconnects",
        "study FAILED after 31 s: TooFewSitesError: round 2",
    ]
    assert stream.getvalue().count("\n") == 5


def test_a_torn_last_line_waits_for_the_next_poll(tmp_path):
    path = tmp_path / "run-log.jsonl"
    RunLog(path).append("sites", sites={"hospital-a": {}})
    progress = StudyProgress(path, stream=io.StringIO(), tty=False)
    with open(path, "a") as fh:
        fh.write('{"event": "end", "status": "COMPL')
    assert progress.poll() == ["sites: 1 answered (hospital-a)"]
    with open(path, "a") as fh:
        fh.write('ETED", "seconds": 5}\n')
    assert progress.poll() == ["study COMPLETED after 5 s"]


def test_on_a_terminal_rounds_advance_a_bar(tmp_path):
    log = RunLog(tmp_path / "run-log.jsonl")
    stream = io.StringIO()
    progress = StudyProgress(log.path, stream=stream, tty=True)
    _start(log)
    log.append(
        "round", stage="cls", dataset="t2", round=1, sites_contributed=["a", "b"], eval_pooled={"auc": 0.7}
    )
    progress.poll()
    assert progress._bar is not None and progress._bar.n == 1 and progress._bar.total == 4
    progress.close()
    assert "classifier t2 round 1/1 | 2 site(s) replied" in stream.getvalue()


def test_pretraining_rounds_are_counted_and_shown_with_their_loss_not_a_validation_figure(tmp_path):
    log = RunLog(tmp_path / "run-log.jsonl")
    stream = io.StringIO()
    progress = StudyProgress(log.path, stream=stream, tty=False)
    log.append(
        "start",
        resume=False,
        federation={"seg-rounds": 1, "cls-pretrain-rounds": 2, "cls-rounds": 1},
        pipeline={"datasets": "t2"},
    )
    common = dict(dataset="t2", sites_contributed=["hospital-a"], sites_failed={}, updates_rejected={})
    log.append("round", stage="seg", round=1, eval_pooled={"dice": 0.5}, kept_round=1, seconds_round=10.0,
               **{**common, "dataset": ""})  # fmt: skip
    log.append("round", stage="cls-pretrain", round=1, eval_pooled={}, kept_round=1, seconds_round=4.0,
               train_metrics={"train-loss": 2.3456}, **common)  # fmt: skip
    lines = progress.poll()
    assert lines[0] == "study started: 1 segmenter rounds, then 2 pretraining + 1 rounds for each of t2 (4 in all)"
    assert lines[2].startswith("classifier t2 pretraining round 1/2 | 1 site(s) replied | contrastive loss 2.346 |")
    assert "val AUC" not in lines[2] and "kept round" not in lines[2]
    assert "~14 s left" in lines[2]  # one more pretraining round (4 s), one classifier round (untimed: as a seg one)


def test_a_resumed_run_does_not_replay_the_earlier_runs_failure_but_counts_its_rounds(tmp_path):
    log = RunLog(tmp_path / "run-log.jsonl")
    _start(log)  # 2 seg rounds, then 1 round for each of t2 and t1+t2: 4 in all
    log.append("round", stage="seg", dataset="", round=1, sites_contributed=["a"], eval_pooled={"dice": 0.4},
               kept_round=1, seconds_round=10.0)  # fmt: skip
    log.append("end", status="FAILED", error="SimulatedCrash: debug-stop-after-round=1", seconds=12.0)
    stream = io.StringIO()
    progress = StudyProgress(log.path, stream=stream, tty=False)
    said = progress.skip_earlier()
    assert said == (
        "this folder's run log already holds an earlier run (1 round(s); it ended: study FAILED after 12 s: "
        "SimulatedCrash: debug-stop-after-round=1); below: this run only"
    )
    assert stream.getvalue() == said + "\n"  # one line, not the earlier run's lines one by one
    log.append("start", resume=True, federation={"seg-rounds": 2, "cls-rounds": 1}, pipeline={"datasets": "t2,t1+t2"})
    log.append("round", stage="seg", dataset="", round=2, sites_contributed=["a"], eval_pooled={"dice": 0.5},
               kept_round=2, seconds_round=10.0)  # fmt: skip
    lines = progress.poll()
    assert lines[0].startswith("study started (resumed)")
    assert "FAILED" not in "".join(lines)
    assert "~20 s left" in lines[1]  # the earlier run's round counts as done: 2 classifier rounds left x 10 s
    # a fresh start in the same folder (resume=false) counts from zero again
    _start(log)
    log.append("round", stage="seg", dataset="", round=1, sites_contributed=["a"], eval_pooled={"dice": 0.4},
               kept_round=1, seconds_round=10.0)  # fmt: skip
    assert "~30 s left" in progress.poll()[1]


def test_with_no_earlier_run_nothing_is_said(tmp_path):
    stream = io.StringIO()
    assert StudyProgress(tmp_path / "run-log.jsonl", stream=stream, tty=False).skip_earlier() is None
    assert stream.getvalue() == ""
