"""The coordinator's ServerApp: the whole study in one ``flwr run`` (see :mod:`server.study`).

Ends FAILED (non-zero, a clear message, a run-log line and ``STATUS`` file) when fewer sites than ``min-sites``
take part, on a config error (naming the key), or on any other error; never reports success on a silent subset.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.config import federation_from_run_config, pipeline_from_run_config
from server.polling_grid import for_study
from server.privacy import privacy_summary
from server.report import write_report
from server.run_log import RunLog
from server.settings_check import check_study_settings
from server.status import Heartbeat, write_status
from server.study import Study
from shared.errors import ConfigError

log = logging.getLogger(__name__)
app = ServerApp()


def _log_to_stderr(name: str) -> None:
    """INFO lines of our own loggers in the ServerApp's output (Flower's logger is left alone)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _mark_failed(out_dir: str, message: str) -> None:
    """Best effort: a STATUS file in out-dir when the config itself is broken (only for an absolute out-dir)."""
    path = Path(out_dir)
    if out_dir and path.is_absolute():
        try:
            path.mkdir(parents=True, exist_ok=True)
            write_status(path / "STATUS", "FAILED", message)
            RunLog(path / "run-log.jsonl").append("end", status="FAILED", error=message)
        except OSError as err:
            log.error(
                "cannot write %s (%s): the config error above is the study's outcome", path / "STATUS", err
            )


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_to_stderr("server")
    t0 = time.time()
    try:
        fed = federation_from_run_config(
            context.run_config
        )  # ConfigError names the key; the run ends at once
        cfg = pipeline_from_run_config(context.run_config)
        check_study_settings(fed, cfg)
    except ConfigError as err:
        log.error("CONFIG ERROR, study not started: %s", err)
        _mark_failed(str(context.run_config.get("out-dir", "")), f"ConfigError: {err}")
        raise
    out = fed.out_path
    status = out / "STATUS"
    try:
        out.mkdir(parents=True, exist_ok=True)
        run_log = RunLog(out / "run-log.jsonl")
        run_log.append("start", resume=fed.resume, federation=fed.to_mapping(), pipeline=cfg.to_mapping())
        write_status(status, "RUNNING")
    except OSError as err:
        message = (
            f"out-dir={str(out)!r} is not a writable folder ({err.strerror or err}): set run config out-dir to "
            "an absolute folder the SuperLink's user can write"
        )
        log.error("CONFIG ERROR, study not started: %s", message)
        raise ConfigError(message) from err
    try:
        with Heartbeat(status):
            study = Study(for_study(grid), fed, cfg, run_log)  # Flower's deployment grid polls every 3 s
            outcome = study.run()
            privacy = privacy_summary(
                study.recorder.history,
                cfg,
                fed,
                # every training round of every stage that ran is one release (a round that cannot aggregate
                # ends the study), counted from the settings so that rounds done before a resume count too
                fed.seg_rounds
                + fed.cls_rounds * len(outcome.classifiers)
                + fed.cls_pretrain_rounds * len(outcome.pretrained),
                len(study.roster.train_site_names()),
            )
            paths = write_report(outcome, cfg, fed, study.recorder.history, out, time.time() - t0, privacy)
    except BaseException as err:
        message = f"{type(err).__name__}: {err}"
        log.error("STUDY FAILED: %s", message)
        try:
            run_log.append("end", status="FAILED", error=message, seconds=time.time() - t0)
            write_status(status, "FAILED", message)
        except OSError as disk:  # a full disk: the study's own error above stays the one raised
            log.error("cannot record the failure in %s: %s", out, disk)
        raise
    run_log.append(
        "end", status="COMPLETED", seconds=time.time() - t0, outputs={k: str(v) for k, v in paths.items()}
    )
    write_status(status, "COMPLETED")
    log.info("study COMPLETED in %.0f s; report in %s", time.time() - t0, out)
