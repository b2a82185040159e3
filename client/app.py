"""The hospital's ClientApp: one handler per message type of ``shared.protocol``.

Every message may run in a fresh process: site data come from the on-disk cache (``client.node_data``), state
from ``context.state`` and disk. An exception raised here travels to the server as text, so every handler is
guarded: the full traceback is logged locally, and the server gets the stage, site and exception type with a
message scrubbed of patient identifiers (the site's own Scrubber), never raw ids.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client import handlers_cls, handlers_seg
from client.local_model import check_study_id
from client.node_data import SiteData, load_site_data, resolve_site
from client.secure_aggregation import secure_aggregation
from shared import protocol as P
from shared.app_config import check_known_keys
from shared.config import PipelineConfig, pipeline_keys
from shared.errors import NasoflError
from shared.records import numpy_to_record
from shared.training.device import select_device

log = logging.getLogger(__name__)
app = ClientApp()
STATE_KEY = "nasofl-node"


class SiteFailure(RuntimeError):
    """What the server may learn about a failure at a site (no patient identifiers)."""


def pipeline_config(run_config) -> PipelineConfig:
    """The run's pipeline settings; an unknown key is refused here as at the server (one rule everywhere)."""
    check_known_keys(run_config)
    known = pipeline_keys()
    return PipelineConfig.from_mapping({k: v for k, v in run_config.items() if k in known})


def _fault_injected(context: Context, site: str, stage: str) -> None:
    """Run config ``debug-fail-sites="site-a:train.seg,..."``: raise at that site and stage (fault drills)."""
    spec = str(context.run_config.get("debug-fail-sites", ""))
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, where = item.partition(":")
        if name == site and (not where or where == stage):
            raise RuntimeError(f"injected failure (debug-fail-sites) at {stage}")


def _remember(context: Context, site: str, stage: str, msg: Message) -> None:
    """Node bookkeeping in ``context.state`` (kept by the SuperNode across messages and stages of a run)."""
    rec = context.state.config_records.get(STATE_KEY)
    state = dict(rec) if rec is not None else {"site": site, "messages": 0}
    state["messages"] = int(state.get("messages", 0)) + 1
    conf = _conf(msg)
    if P.CFG_ROUND in conf:
        state[f"{stage}/last-round"] = int(conf[P.CFG_ROUND])
    if P.CFG_SEGMENTER_HASH in conf:
        state["segmenter-hash"] = str(conf[P.CFG_SEGMENTER_HASH])
    context.state[STATE_KEY] = ConfigRecord(state)


_PATH = re.compile(r"(/[^\s'\"]+)+")


def _scrub(text: str, data: SiteData | None) -> str:
    """Text bound for the server: the site's report scrubber in strict mode (ids replaced wherever they
    occur, every name part), then absolute paths removed."""
    if data is not None and data.report is not None:
        try:
            text = data.report.scrubber.scrub(text, strict=True)
        except Exception:  # noqa: BLE001 - scrubbing must never raise
            text = ""
    return _PATH.sub("<path>", text)[:400]


def guarded(stage: str) -> Callable:
    """Wrap a handler: log locally in full, re-raise a SiteFailure whose text has no patient identifier."""

    def wrap(
        fn: Callable[[Message, Context, SiteData | None], Message],
    ) -> Callable[[Message, Context], Message]:
        @functools.wraps(fn)
        def handler(msg: Message, context: Context) -> Message:
            data: SiteData | None = None
            site_name = "unknown-site"
            try:
                site = resolve_site(context.node_config, context.run_config)
                site_name = site.name
                if "partition-id" in context.node_config:
                    torch.set_num_threads(1)  # simulated sites share the machine's cores
                _fault_injected(context, site.name, stage)
                data = load_site_data(site)
                reply = fn(msg, context, data)
                _remember(context, site.name, stage, msg)
                return reply
            except Exception as ex:  # noqa: BLE001 - every failure is reported, scrubbed
                log.exception("site %s: %s failed", site_name, stage)
                detail = (
                    _scrub(str(ex), data) if isinstance(ex, NasoflError | ValueError | RuntimeError) else ""
                )
                raise SiteFailure(
                    f"{stage} failed at site {site_name}: {type(ex).__name__}"
                    + (f": {detail}" if detail else " (details in the site's log)")
                ) from None

        return handler

    return wrap


def _conf(msg: Message) -> dict:
    """The message's config record; its study id is checked (it names folders in the site's cache)."""
    rec = msg.content.config_records.get(P.CONFIG)
    conf = dict(rec) if rec is not None else {}
    if P.CFG_STUDY in conf:
        check_study_id(conf[P.CFG_STUDY])
    return conf


def _reply(msg: Message, metrics: dict, arrays: dict | None = None, transport: str = "float32") -> Message:
    content = RecordDict({P.METRICS: MetricRecord(metrics)})
    if arrays is not None:
        content[P.ARRAYS] = numpy_to_record(arrays, transport)
    return Message(content, reply_to=msg)


def _device(cfg: PipelineConfig) -> torch.device:
    return select_device(cfg.device)


def central_dp_clipping(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` when the server runs central DP (its instruction carries the clipping
    norm): the site's update leaves clipped. Without central DP the instruction has no norm: nothing to clip."""
    if KEY_CLIPPING_NORM in _conf(msg):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


@app.query("info")
@guarded(P.QUERY_INFO)
def query_info(msg: Message, context: Context, data: SiteData) -> Message:
    patients = data.patients
    report = data.report
    blocking = len(getattr(report, "blocking", []) or [])
    warnings = sum(1 for p in getattr(report, "problems", []) if getattr(p, "severity", "") == "warning")
    counts = {
        P.PATIENTS: len(patients),
        P.PATIENTS_NPC: sum(1 for p in patients if p.label == 0),
        P.PATIENTS_NPL: sum(1 for p in patients if p.label == 1),
        P.PATIENTS_UNLABELLED: sum(1 for p in patients if p.label is None),
        P.PATIENTS_WITH_MASK: sum(1 for p in patients if p.mask is not None),
        P.PATIENTS_TRAIN: sum(1 for p in patients if p.split == "train"),
        P.PATIENTS_VAL: sum(1 for p in patients if p.split == "val"),
        P.PATIENTS_TEST: sum(1 for p in patients if p.split == "test"),
        P.BLOCKING_PROBLEMS: blocking,
        P.WARNINGS: warnings,
    }
    role = P.ROLE_EVAL_ONLY if data.site.eval_only else P.ROLE_TRAIN
    info = ConfigRecord(
        {P.INFO_SITE: data.site.name, P.INFO_ROLE: role, P.INFO_PRETRAINING: data.site.pretraining}
    )
    return Message(RecordDict({P.INFO: info, P.METRICS: MetricRecord(counts)}), reply_to=msg)


@app.query("roi")
@guarded(P.QUERY_ROI)
def query_roi(msg: Message, context: Context, data: SiteData) -> Message:
    cfg = pipeline_config(context.run_config)
    metrics = handlers_cls.query_roi(msg.content[P.ARRAYS], _conf(msg), data, cfg, _device(cfg))
    return _reply(msg, metrics)


@app.train("seg", mods=[secure_aggregation, central_dp_clipping])
@guarded(P.TRAIN_SEG)
def train_seg(msg: Message, context: Context, data: SiteData) -> Message:
    cfg = pipeline_config(context.run_config)
    conf = _conf(msg)
    arrays, metrics = handlers_seg.train_seg(msg.content[P.ARRAYS], conf, data, cfg, _device(cfg))
    return _reply(msg, metrics, arrays, str(conf.get(P.CFG_TRANSPORT_DTYPE, "float32")))


@app.evaluate("seg", mods=[secure_aggregation])
@guarded(P.EVALUATE_SEG)
def evaluate_seg(msg: Message, context: Context, data: SiteData) -> Message:
    cfg = pipeline_config(context.run_config)
    return _reply(msg, handlers_seg.evaluate_seg(msg.content[P.ARRAYS], _conf(msg), data, cfg, _device(cfg)))


@app.train("cls", mods=[secure_aggregation, central_dp_clipping])
@guarded(P.TRAIN_CLS)
def train_cls(msg: Message, context: Context, data: SiteData) -> Message:
    cfg = pipeline_config(context.run_config)
    conf = _conf(msg)
    arrays, metrics = handlers_cls.train_cls(msg.content[P.ARRAYS], conf, data, cfg, _device(cfg))
    return _reply(msg, metrics, arrays, str(conf.get(P.CFG_TRANSPORT_DTYPE, "float32")))


@app.evaluate("cls", mods=[secure_aggregation])
@guarded(P.EVALUATE_CLS)
def evaluate_cls(msg: Message, context: Context, data: SiteData) -> Message:
    cfg = pipeline_config(context.run_config)
    return _reply(msg, handlers_cls.evaluate_cls(msg.content[P.ARRAYS], _conf(msg), data, cfg, _device(cfg)))


__all__ = ["app", "ArrayRecord"]
