"""The whole federated study in one ``flwr run``: info -> segmenter -> ROI -> a classifier per dataset (each after its
backbone's pretraining rounds when ``cls-pretrain-rounds`` > 0) -> final test.

The stages are values (:class:`server.stage.Stage`, built once by :func:`server.stage.study_stages`);
``Study.run`` loops over them and hands the report a typed :class:`server.outcome.StudyOutcome`.

``Study.run`` is called by ``server.app.main``. Global weights are checkpointed after every round
(:mod:`server.checkpoint`); with run config ``resume=true`` the study continues after the last checkpointed
round (same round numbers, same strategy state, so the final arrays equal an uninterrupted run's).
The sites (who they are, who is offline, who sits out a stage) are kept by ``Study.roster``
(:class:`server.sites.SiteRoster`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from server.checkpoint import Checkpoint, CheckpointStore
from server.config import FederationConfig, settings_fingerprint
from server.outcome import FinalTest, StudyOutcome
from server.round_average import RoundAverage, split_state
from server.round_recorder import RoundRecorder
from server.round_selection import RoundSelection
from server.run_log import RunLog
from server.secure_aggregation import secure_aggregation_of
from server.secure_evaluation import SECURE_EVAL_ONLY, SECURE_TRAIN, is_secure, secure_evaluation
from server.sites import SiteRoster
from server.stage import Stage, study_stages
from server.strategies import TooFewSitesError, build_strategy
from server.strategies.replies import collect_eval_sums, error_reasons
from server.strategies.robust import trimming_problem
from server.update_bounds import example_cap
from shared import protocol as P
from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.records import model_hash, numpy_to_record, record_to_numpy, state_to_numpy
from shared.secure_sums import secure_hist_bins
from shared.training.pretrain import VIEWS_PER_PATIENT

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


def as_record(arrays: Arrays) -> ArrayRecord:
    """Arrays exactly as they are (a resumed round must send the very arrays the checkpoint holds)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


class Study:
    def __init__(self, grid: Grid, fed: FederationConfig, cfg: PipelineConfig, run_log: RunLog) -> None:
        self.grid, self.fed, self.cfg, self.run_log = grid, fed, cfg, run_log
        self.fingerprint = settings_fingerprint(fed, cfg)
        self.study_id = self.fingerprint[:12]
        self.stages = study_stages(fed.seg_rounds, fed.cls_rounds, cfg, fed.cls_pretrain_rounds)
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
                "cls-pretrain-rounds": fed.cls_pretrain_rounds,
                "cls-pretrain-epochs": cfg.cls.pretrain_epochs,
                "min-sites": fed.min_sites,
                "transport-dtype": fed.transport_dtype,
                "study-id": self.study_id,
            },
            stop_after_position=fed.debug_stop_after_round,
        )
        self.checkpoint: Checkpoint | None = None
        self.seg_hash = ""
        self.selections: dict[str, RoundSelection] = {}
        self.kept_val: dict[str, tuple[int, dict[str, dict[str, object]]]] = {}  # stage key -> (round, sums)
        self.kept_summed: dict[str, list[str]] = {}  # stage key -> sites inside its kept round's secure sums
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

    def initial_arrays(self, stage: Stage) -> Arrays:
        torch.manual_seed(self.cfg.seed + stage.index)
        model = stage.build_model(self.cfg)
        return record_to_numpy(numpy_to_record(state_to_numpy(model.state_dict()), self.fed.transport_dtype))

    def run_stage(self, stage: Stage, start_from: Arrays | None = None) -> Arrays | None:
        """Rounds of one stage; returns the kept global arrays (``select-round``; a pretraining stage keeps its last
        round), None when it was skipped. ``start_from``: the stage's initial weights (a classifier after its
        pretraining stage) instead of fresh ones."""
        key = stage.key
        final = self.store.load_final(key)
        if final is not None:
            log.info("%s already complete in the checkpoint: reusing its final weights", key)
            kept = self.store.load_kept_summary(key)
            if kept:
                value = float("nan") if kept["value"] is None else float(kept["value"])
                self.selections[key] = RoundSelection(
                    str(kept["rule"]), stage.selection_metric, int(kept["round"]), value
                )
            return final
        roster = self.roster
        eligible = roster.eligible(stage)
        roster.note_skips(stage, list(roster.sites))
        if len(eligible) < self.fed.min_sites:
            which = "have data for it and accept pretraining" if stage.is_pretraining else "have data for it"
            msg = (
                f"{key}: only {len(eligible)} training site(s) {which} "
                f"({', '.join(roster.sites[n].name for n in eligible) or 'none'}), min-sites={self.fed.min_sites}"
            )
            if stage.is_segmenter:
                raise TooFewSitesError(msg)
            log.warning("%s: dataset skipped", msg)
            self.run_log.append("dataset-skipped", stage=stage.kind.value, dataset=stage.dataset, reason=msg)
            return None
        start_round, state = 0, {}
        arrays = start_from if start_from is not None else self.initial_arrays(stage)
        rule = "last" if stage.is_pretraining else self.fed.select_round  # nothing to select on: no evaluation
        selection = RoundSelection(rule, stage.selection_metric)
        self.selections[key] = selection
        # seg-weight-ema: the sites evaluate (and the stage keeps) the average of the rounds' global models
        average = RoundAverage(self.cfg.seg.weight_ema) if stage.is_segmenter and self.cfg.seg.weight_ema else None
        ck = self.checkpoint
        if ck is not None and ck.stage == stage.kind.value and ck.dataset == stage.dataset:
            start_round, arrays = ck.round, ck.arrays
            state, average_parts = split_state(ck.strategy_state)
            kept_average = average.resume(average_parts) if average is not None else {}
            if average is None and average_parts:
                raise ValueError(
                    f"the checkpoint of {key} holds a seg-weight-ema average but seg-weight-ema is 0: resume with "
                    "the settings it was written with, or start afresh with resume=false"
                )
            if ck.kept_round:
                selection.round, selection.value = ck.kept_round, ck.kept_value
                selection.arrays = kept_average if average is not None else ck.kept_arrays
            log.info("resuming %s after round %s", key, start_round)
            self.run_log.append("resume", stage=stage.kind.value, dataset=stage.dataset, round=start_round)
        strategy = build_strategy(self.fed, self.cfg.dp)
        strategy.setup_stage(
            action=stage.action,
            participants=roster.participants(stage),
            refresh=lambda grid: roster.refresh(stage),
            min_sites=self.fed.min_sites,
            round_offset=start_round,
            eval_metric_keys=stage.eval_metric_keys,
            eval_pooler=lambda sums: self.pool(stage, sums)[:2],
            update_norm_factor=self.fed.update_norm_factor,
            example_cap_of=lambda node: self.example_cap(stage, node),
            secure=secure_aggregation_of(self.fed),
            secure_hist_bins=secure_hist_bins(self.cfg.hist_bins),
            evaluate=not stage.is_pretraining,
            eval_arrays_of=average.evaluated if average is not None else None,
        )
        strategy.load_strategy_state(state)
        total = stage.rounds
        if total - start_round <= 0:
            return selection.arrays or arrays
        base = {
            P.CFG_STAGE: stage.kind.value,
            P.CFG_DATASET: stage.dataset,
            P.CFG_STUDY: self.study_id,
            P.CFG_KEEP_LOCAL_NORM: self.fed.fedbn,
            P.CFG_TOTAL_ROUNDS: total,
            P.CFG_TRANSPORT_DTYPE: self.fed.transport_dtype,
            P.CFG_SEGMENTER_HASH: self.seg_hash,
        }

        def end_of_round(server_round: int, rec: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:
                return None
            true_round = server_round + start_round
            # said after every round, not at the next refresh: the stage may end with this round
            roster.mark_away(strategy.unavailable, stage.kind.value, stage.dataset)
            strategy.unavailable.clear()
            ev = strategy.last_eval
            round_arrays = record_to_numpy(rec)
            evaluated = round_arrays
            if average is not None:
                if not average.value:
                    raise RuntimeError(f"{key} round {true_round}: seg-weight-ema saw no global model this round")
                evaluated = average.value
            if selection.offer(true_round, evaluated, ev.pooled if ev is not None else {}):
                # the kept model's pooled validation statistics: the bundle's operating point, no second pass
                self.kept_val[key] = (true_round, dict(ev.sums) if ev is not None else {})
                self.kept_summed[key] = list(ev.summed) if ev is not None else []
                log.info("%s: round %s is now the kept round (%s)", key, true_round, selection.summary(total))
            self.recorder.end_round(
                stage=stage.kind.value,
                dataset=stage.dataset,
                round=true_round,
                position=stage.position0 + true_round,
                arrays=round_arrays,
                strategy_state={
                    **strategy.strategy_state(),
                    **(average.state(selection.arrays) if average is not None else {}),
                },
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
            "stage-complete",
            stage=stage.kind.value,
            dataset=stage.dataset,
            kept=summary,
            model_sha256=model_hash(kept),
        )
        return kept

    def example_cap(self, stage: Stage, node: int) -> int | None:
        """The most ``num-examples`` the site at ``node`` may claim in one round (None: not a known site)."""
        site = self.roster.sites.get(node)
        if site is None:
            return None
        if stage.is_segmenter:
            return example_cap(
                site.counts.get(P.PATIENTS_TRAIN, 0), self.cfg.seg.slices_per_patient, self.cfg.seg_epochs
            )
        patients = site.roi.get(P.roi_metric_key(stage.dataset, P.ROI_TRAIN), 0)
        if stage.is_pretraining:  # two views (slices) of each training or unlabelled patient per epoch
            unlabelled = site.roi.get(P.roi_metric_key(stage.dataset, P.ROI_UNLABELLED), 0)
            return example_cap(patients + unlabelled, VIEWS_PER_PATIENT, self.cfg.cls.pretrain_epochs)
        return example_cap(patients, self.cfg.cls.slices_per_patient, self.cfg.cls_epochs)

    # ---- final federated test ---------------------------------------------------------------------

    def kept_validation(self, stage: Stage, arrays: Arrays) -> FinalTest:
        """The kept model on the pooled validation split: the statistics its round already gathered (the very
        model, the same patients; under DP histogram noise, no second release), or a validation pass when this
        run did not see that round (the stage was complete in the checkpoint, or resumed after it)."""
        kept = self.selections.get(stage.key)
        seen = self.kept_val.get(stage.key)
        if kept is None or seen is None or seen[0] != kept.round or not seen[1]:
            return self.final_test(stage, arrays, split="val")
        sums = seen[1]
        train_names = self.roster.train_site_names()
        external = self.roster.eval_only_site_names()
        pooled, per_site, pooled_external = self.pool(stage, sums)
        self.run_log.append(
            "final-val",
            stage=stage.kind.value,
            dataset=stage.dataset,
            pooled=pooled,
            per_site=per_site,
            source=f"validation of kept round {kept.round}",
            model_sha256=model_hash(arrays),
        )
        summed = self.kept_summed.get(stage.key, [])
        answered = summed if is_secure(sums) else list(sums)
        failed = {s: "no validation reply in the kept round" for s in train_names if s not in answered}
        return FinalTest(pooled, per_site, pooled_external, failed, sums, train_names, external, summed)

    def final_test(self, stage: Stage, arrays: Arrays, split: str = "test") -> FinalTest:
        rounds = stage.rounds
        kept = self.selections.get(stage.key)
        if kept is not None and kept.round:
            rounds = kept.round  # FedBN: the sites lay their normalisation layers of that round over it
        conf = ConfigRecord(
            {
                P.CFG_STAGE: stage.kind.value,
                P.CFG_DATASET: stage.dataset,
                P.CFG_SPLIT: split,
                P.CFG_ROUND: rounds,
                P.CFG_STUDY: self.study_id,
                P.CFG_KEEP_LOCAL_NORM: self.fed.fedbn,
                P.CFG_SEGMENTER_HASH: self.seg_hash,
            }
        )
        content = RecordDict({P.ARRAYS: as_record(arrays), P.CONFIG: conf})
        sites = self.roster.sites
        msgs = [Message(content, dst_node_id=n, message_type=stage.evaluate_type) for n in sites]
        site_of = lambda n: sites[n].name if n in sites else f"node-{n}"  # noqa: E731
        secure = secure_aggregation_of(self.fed)
        summed: list[str] = []
        if secure is not None:  # only the sums over the sites reach the coordinator
            ev = secure_evaluation(
                self.grid,
                msgs,
                secure,
                stage.action,
                secure_hist_bins(self.cfg.hist_bins),
                site_of,
                {n for n, s in sites.items() if s.role == P.ROLE_EVAL_ONLY},
                rounds,
            )
            sums, failed, summed = ev.sums, ev.failed, ev.summed_sites()
        else:
            replies = self.roster.send(msgs)
            sums, failed = collect_eval_sums(
                replies, site_of, [s.name for s in sites.values()], stage.eval_metric_keys
            )
            failed.update({s: r for s, r in error_reasons(replies, msgs, site_of).items() if s in failed})
        train_names = self.roster.train_site_names()
        external = self.roster.eval_only_site_names()
        pooled, per_site, pooled_external = self.pool(stage, sums)
        self.run_log.append(
            "final-test" if split == "test" else f"final-{split}",
            stage=stage.kind.value,
            dataset=stage.dataset,
            pooled=pooled,
            per_site=per_site,
            pooled_eval_only_sites=pooled_external,
            failed=failed,
            model_sha256=model_hash(arrays),
        )
        return FinalTest(pooled, per_site, pooled_external, failed, sums, train_names, external, summed)

    def pool(
        self, stage: Stage, sums: dict[str, dict[str, object]]
    ) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
        """(pooled over the training sites, per site, pooled over the evaluation-only sites) from a stage's
        evaluation sums: per-site statistics in clear, or the secure sums (no per-site figures then)."""
        if is_secure(sums):
            pooled, _ = stage.pool(sums, [SECURE_TRAIN])
            external, _ = stage.pool(sums, [SECURE_EVAL_ONLY])
            return pooled, {}, external
        pooled, per_site = stage.pool(sums, self.roster.train_site_names())
        external_names = self.roster.eval_only_site_names()
        external = stage.pool(sums, external_names)[0] if external_names else {}
        return pooled, per_site, external

    # ---- the whole study --------------------------------------------------------------------------

    def run(self) -> StudyOutcome:
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
        if self.fed.strategy == "fedtrimmedavg":
            problem = trimming_problem(self.fed.trimmed_beta, len(train))
            if problem is not None:
                raise ConfigError(problem)
        segmenter, *classifiers = self.stages
        seg_arrays = self.run_stage(segmenter)
        if seg_arrays is None:  # run_stage raises TooFewSitesError for the segmenter rather than skipping
            raise TooFewSitesError("the segmenter stage was skipped: no site can train it")
        self.seg_arrays = seg_arrays
        self.store.save_final(segmenter.key, seg_arrays)
        self.seg_hash = model_hash(seg_arrays)
        # a site back since the last round gets the segmenter too
        self.roster.check_sites("roi", "", roi=False)
        self.roster.query_roi(self.roster.present())
        trained: dict[str, tuple[Stage, Arrays]] = {}
        pretrained: dict[str, Arrays | None] = {}
        for stage in classifiers:
            if stage.is_pretraining:
                pretrained[stage.dataset] = self.run_stage(stage)
                if pretrained[stage.dataset] is not None:
                    self.store.save_final(stage.key, pretrained[stage.dataset])
                continue
            if stage.dataset in pretrained and pretrained[stage.dataset] is None:
                # its pretraining was skipped: training it from fresh weights would not be what was asked
                msg = (
                    f"{stage.key}: its pretraining stage was skipped (too few sites with data for it that accept "
                    "pretraining; the site-skips-dataset lines say why)"
                )
                log.warning("%s: dataset skipped", msg)
                self.run_log.append(
                    "dataset-skipped", stage=stage.kind.value, dataset=stage.dataset, reason=msg
                )
                continue
            arrays = self.run_stage(stage, start_from=pretrained.get(stage.dataset))
            if arrays is not None:
                trained[stage.dataset] = (stage, arrays)
                self.store.save_final(stage.key, arrays)
        if classifiers and not trained:
            raise TooFewSitesError(
                f"every classifier dataset was skipped ({', '.join(self.cfg.datasets)}): no dataset had "
                f"min-sites={self.fed.min_sites} training sites with a training ROI (see the dataset-skipped and "
                "site-skips-dataset lines of the run log)"
            )
        segmenter_test = self.final_test(segmenter, seg_arrays)
        classifier_tests = {d: self.final_test(st, a) for d, (st, a) in trained.items()}
        # the model bundle's decision thresholds: each kept classifier's operating point on pooled validation
        classifier_val = {d: self.kept_validation(st, a) for d, (st, a) in trained.items()}
        for stage, test in [(segmenter, segmenter_test)] + [
            (st, classifier_tests[d]) for d, (st, _) in trained.items()
        ]:
            answered = [s for s in test.train_sites if s in test.sums or s in test.summed]
            if len(answered) < self.fed.min_sites:
                raise TooFewSitesError(
                    f"final test of the {stage.label}: {len(answered)} training site(s) answered "
                    f"({', '.join(answered) or 'none'}), min-sites={self.fed.min_sites}; failed: "
                    f"{test.failed or 'none'}"
                )
        return StudyOutcome(
            segmenter=seg_arrays,
            classifiers={d: a for d, (_, a) in trained.items()},
            segmenter_test=segmenter_test,
            classifier_tests=classifier_tests,
            classifier_val=classifier_val,
            sites=self.roster.sites,
            skipped=self.roster.skipped,
            kept_rounds={
                st.key: self.selections[st.key].summary(st.rounds)
                for st in self.stages
                if st.key in self.selections and not st.is_pretraining
            },
            pretrained=tuple(d for d, a in pretrained.items() if a is not None),
        )
