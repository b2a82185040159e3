"""The whole federated study in one ``flwr run``: info -> stage 1 -> ROI -> stage 2 per dataset -> final test.

``Study.run`` is called by ``server.app.main``. Global weights are checkpointed after every round
(:mod:`server.checkpoint`); with run config ``resume=true`` the study continues after the last checkpointed
round (same round numbers, same strategy state, so the final arrays equal an uninterrupted run's).
The sites (who they are, who is offline, who sits out a stage) are kept by ``Study.roster``
(:class:`server.sites.SiteRoster`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from server.checkpoint import Checkpoint, CheckpointStore, stage_key
from server.config import FederationConfig
from server.pooled_eval import pool
from server.round_recorder import RoundRecorder
from server.round_selection import SELECTION_METRIC, RoundSelection
from server.run_log import RunLog
from server.sites import SiteRoster
from server.strategies import TooFewSitesError, build_strategy
from server.strategies.base import collect_eval_sums, error_reasons
from shared import protocol as P
from shared.config import PipelineConfig, parse_dataset_name
from shared.models import build_classifier, build_segmenter
from shared.records import model_hash, numpy_to_record, record_to_numpy, state_to_numpy

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


def settings_fingerprint(fed: FederationConfig, cfg: PipelineConfig) -> str:
    """SHA-256 of everything that changes the trained weights (not paths, timeouts, resume or debug keys)."""
    keep = {
        k: v
        for k, v in fed.to_mapping().items()
        if k
        not in (
            "out-dir",
            "checkpoint-dir",
            "resume",
            "round-timeout-s",
            "wait-for-sites-s",
            "debug-stop-after-round",
        )
    }
    blob = json.dumps({"pipeline": cfg.to_mapping(), "federation": keep}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def as_record(arrays: Arrays) -> ArrayRecord:
    """Arrays exactly as they are (a resumed round must send the very arrays the checkpoint holds)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


class Study:
    def __init__(self, grid: Grid, fed: FederationConfig, cfg: PipelineConfig, run_log: RunLog) -> None:
        self.grid, self.fed, self.cfg, self.run_log = grid, fed, cfg, run_log
        self.fingerprint = settings_fingerprint(fed, cfg)
        self.study_id = self.fingerprint[:12]
        self.store = CheckpointStore(fed.checkpoint_path)
        self.roster = SiteRoster(grid, fed, run_log, self._roi_content)
        self.recorder = RoundRecorder(
            self.store,
            run_log,
            self.fingerprint,
            cfg.seed,
            settings={
                "strategy": fed.strategy,
                "fedbn": fed.fedbn,
                "prox-mu": fed.prox_mu,
                "seg-epochs": cfg.seg_epochs,
                "cls-epochs": cfg.cls_epochs,
                "min-sites": fed.min_sites,
                "transport-dtype": fed.transport_dtype,
                "study-id": self.study_id,
            },
            stop_after_position=fed.debug_stop_after_round,
        )
        self.checkpoint: Checkpoint | None = None
        self.seg_hash = ""
        self.selections: dict[str, RoundSelection] = {}
        self.seg_arrays: Arrays = {}

    def _roi_content(self) -> RecordDict:
        """What ``query.roi`` sends: the final global segmenter and its hash."""
        return RecordDict(
            {
                P.ARRAYS: as_record(self.seg_arrays),
                P.CONFIG: ConfigRecord({P.CFG_SEGMENTER_HASH: self.seg_hash}),
            }
        )

    # ---- stages -----------------------------------------------------------------------------------

    def initial_arrays(self, stage: str, dataset: str, index: int) -> Arrays:
        torch.manual_seed(self.cfg.seed + index)
        if stage == "seg":
            model = build_segmenter(self.cfg.seg)
        else:
            model = build_classifier(self.cfg.cls, len(parse_dataset_name(dataset)))
        return record_to_numpy(numpy_to_record(state_to_numpy(model.state_dict()), self.fed.transport_dtype))

    def run_stage(self, stage: str, dataset: str, index: int) -> Arrays | None:
        """Rounds of one stage (or one classifier dataset); returns the kept global arrays (``select-round``)."""
        key = stage_key(stage, dataset)
        final = self.store.load_final(key)
        if final is not None:
            log.info("%s already complete in the checkpoint: reusing its final weights", key)
            kept = self.store.load_kept_summary(key)
            if kept:
                value = float("nan") if kept["value"] is None else float(kept["value"])
                self.selections[key] = RoundSelection(
                    str(kept["rule"]), SELECTION_METRIC[stage], int(kept["round"]), value
                )
            return final
        total = self._rounds(stage)
        roster = self.roster
        eligible = roster.eligible(stage, dataset)
        roster.note_skips(stage, dataset, list(roster.sites))
        if len(eligible) < self.fed.min_sites:
            msg = (
                f"{key}: only {len(eligible)} training site(s) have data for it "
                f"({', '.join(roster.sites[n].name for n in eligible) or 'none'}), min-sites={self.fed.min_sites}"
            )
            if stage == "seg":
                raise TooFewSitesError(msg)
            log.warning("%s: dataset skipped", msg)
            self.run_log.append("dataset-skipped", stage=stage, dataset=dataset, reason=msg)
            return None
        start_round, arrays, state = 0, self.initial_arrays(stage, dataset, index), {}
        selection = RoundSelection(self.fed.select_round, SELECTION_METRIC[stage])
        self.selections[key] = selection
        ck = self.checkpoint
        if ck is not None and ck.stage == stage and ck.dataset == dataset:
            start_round, arrays, state = ck.round, ck.arrays, ck.strategy_state
            if ck.kept_round:
                selection.round, selection.value = ck.kept_round, ck.kept_value
                selection.arrays = ck.kept_arrays
            log.info("resuming %s after round %s", key, start_round)
            self.run_log.append("resume", stage=stage, dataset=dataset, round=start_round)
        strategy = build_strategy(self.fed)
        strategy.setup_stage(
            action=stage,
            site_of_node=roster.site_of_node(),
            train_nodes=eligible,
            eval_nodes=list(roster.sites),
            eval_only_nodes=roster.eval_only_nodes(),
            min_sites=self.fed.min_sites,
            round_offset=start_round,
            eval_metric_keys=P.EVAL_SEG_METRICS if stage == "seg" else P.EVAL_CLS_METRICS,
            eval_pooler=lambda sums: pool(stage, sums, roster.train_site_names()),
        )
        strategy.node_refresher = lambda grid: roster.refresh_sites(grid, strategy, stage, dataset)
        strategy.load_strategy_state(state)
        if total - start_round <= 0:
            return selection.arrays or arrays
        base = {
            P.CFG_STAGE: stage,
            P.CFG_DATASET: dataset,
            P.CFG_STUDY: self.study_id,
            P.CFG_KEEP_LOCAL_NORM: self.fed.fedbn,
            P.CFG_TOTAL_ROUNDS: total,
            P.CFG_TRANSPORT_DTYPE: self.fed.transport_dtype,
            P.CFG_SEGMENTER_HASH: self.seg_hash,
        }
        position0 = 0 if stage == "seg" else self.fed.seg_rounds + index * self.fed.cls_rounds

        def end_of_round(server_round: int, rec: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:
                return None
            true_round = server_round + start_round
            # said after every round, not at the next refresh: the stage may end with this round
            roster.mark_away(strategy.unavailable, stage, dataset)
            strategy.unavailable.clear()
            ev = strategy.last_eval
            round_arrays = record_to_numpy(rec)
            if selection.offer(true_round, round_arrays, ev.pooled if ev is not None else {}):
                log.info("%s: round %s is now the kept round (%s)", key, true_round, selection.summary(total))
            self.recorder.end_round(
                stage=stage,
                dataset=dataset,
                round=true_round,
                position=position0 + true_round,
                arrays=round_arrays,
                strategy_state=strategy.strategy_state(),
                train=strategy.last_train,
                evaluation=ev,
                kept=(selection.round, selection.value),
            )
            return None

        result = strategy.start(
            grid=self.grid,
            initial_arrays=as_record(arrays),
            num_rounds=total - start_round,
            timeout=self.fed.round_timeout_s,
            train_config=ConfigRecord(dict(base)),
            evaluate_config=ConfigRecord({**base, P.CFG_SPLIT: "val"}),
            evaluate_fn=end_of_round,
        )
        last = record_to_numpy(result.arrays) if len(result.arrays) else arrays
        kept = selection.arrays or last
        summary = selection.summary(total)
        self.store.save_kept_summary(key, summary)
        self.run_log.append(
            "stage-complete", stage=stage, dataset=dataset, kept=summary, model_sha256=model_hash(kept)
        )
        return kept

    def _rounds(self, stage: str) -> int:
        return self.fed.seg_rounds if stage == "seg" else self.fed.cls_rounds

    # ---- final federated test ---------------------------------------------------------------------

    def final_test(self, kind: str, arrays: Arrays, dataset: str = "", split: str = "test") -> dict[str, Any]:
        rounds = self._rounds(kind)
        kept = self.selections.get(stage_key(kind, dataset))
        if kept is not None and kept.round:
            rounds = kept.round  # FedBN: the sites lay their normalisation layers of that round over it
        conf = ConfigRecord(
            {
                P.CFG_STAGE: kind,
                P.CFG_DATASET: dataset,
                P.CFG_SPLIT: split,
                P.CFG_ROUND: rounds,
                P.CFG_STUDY: self.study_id,
                P.CFG_KEEP_LOCAL_NORM: self.fed.fedbn,
                P.CFG_SEGMENTER_HASH: self.seg_hash,
            }
        )
        mtype = P.EVALUATE_SEG if kind == "seg" else P.EVALUATE_CLS
        content = RecordDict({P.ARRAYS: as_record(arrays), P.CONFIG: conf})
        sites = self.roster.sites
        msgs = [Message(content, dst_node_id=n, message_type=mtype) for n in sites]
        replies = self.roster.send(msgs)
        site_of = lambda n: sites[n].name if n in sites else f"node-{n}"  # noqa: E731
        sums, failed = collect_eval_sums(
            replies,
            site_of,
            [s.name for s in sites.values()],
            P.EVAL_SEG_METRICS if kind == "seg" else P.EVAL_CLS_METRICS,
        )
        failed.update({s: r for s, r in error_reasons(replies, msgs, site_of).items() if s in failed})
        train_names = self.roster.train_site_names()
        external = [s.name for s in sites.values() if s.role == "eval-only"]
        pooled, per_site = pool(kind, sums, train_names)
        pooled_external, _ = pool(kind, sums, external) if external else ({}, {})
        self.run_log.append(
            "final-test" if split == "test" else f"final-{split}",
            stage=kind,
            dataset=dataset,
            pooled=pooled,
            per_site=per_site,
            pooled_eval_only_sites=pooled_external,
            failed=failed,
            model_sha256=model_hash(arrays),
        )
        return {
            "pooled": pooled,
            "per_site": per_site,
            "external": pooled_external,
            "failed": failed,
            "sums": sums,
            "train_sites": train_names,
            "eval_only_sites": external,
        }

    # ---- the whole study --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.fed.resume:
            self.checkpoint = self.store.load_for_resume(self.fingerprint)
            if self.checkpoint is None:
                log.warning("resume=true but %s holds no checkpoint: starting afresh", self.store.dir)
        else:
            self.store.clear()
        self.roster.gather()
        train = self.roster.train_site_names()
        if len(train) < self.fed.min_sites:
            raise TooFewSitesError(
                f"{len(train)} training site(s) answered query.info ({', '.join(train) or 'none'}), "
                f"min-sites={self.fed.min_sites}: check that every hospital's SuperNode is connected"
            )
        self.seg_arrays = self.run_stage("seg", "", 0)
        assert self.seg_arrays is not None  # run_stage raises for seg rather than skipping
        self.store.save_final("seg", self.seg_arrays)
        self.seg_hash = model_hash(self.seg_arrays)
        # a site back since the last round gets the segmenter too
        self.roster.check_sites("roi", "", roi=False)
        self.roster.query_roi(self.roster.present())
        cls_arrays: dict[str, Arrays] = {}
        for i, dataset in enumerate(self.cfg.datasets):
            arrays = self.run_stage("cls", dataset, i + 1)
            if arrays is not None:
                cls_arrays[dataset] = arrays
                self.store.save_final(stage_key("cls", dataset), arrays)
        tests = {"seg": self.final_test("seg", self.seg_arrays)}
        for dataset, arrays in cls_arrays.items():
            tests[dataset] = self.final_test("cls", arrays, dataset)
            # the model bundle's decision threshold: the kept classifier's operating point on pooled validation
            tests[dataset]["val"] = self.final_test("cls", arrays, dataset, split="val")
        return {
            "seg": self.seg_arrays,
            "cls": cls_arrays,
            "tests": tests,
            "sites": self.roster.sites,
            "skipped": self.roster.skipped,
            "kept_rounds": {
                key: sel.summary(self._rounds(key.partition(":")[0])) for key, sel in self.selections.items()
            },
        }
