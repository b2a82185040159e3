"""A stage of the study as a value: the segmenter, or the classifier of one dataset.

``Study.run`` builds the list once (:func:`study_stages`) and loops over it. Everything that differs between the
kinds of stage lives here and nowhere else: message types, the metric keys of evaluation replies, the
figure a round is selected on, how the initial model is built, how evaluation statistics are pooled, which
sites have data for it. Its ``kind`` travels on the wire as ``shared.protocol.STAGE_SEG`` / ``STAGE_CLS`` /
``STAGE_CLS_PRETRAIN``. A pretraining stage (``cls-pretrain-rounds``) sends ``train.cls`` messages, evaluates
nothing (its model has no trained head yet) and hands its final weights to the classifier stage of its dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import torch

from server.pooled_eval import SiteSums, cls_figures, pool, seg_figures
from shared import protocol as P
from shared.config import PipelineConfig, parse_dataset_name
from shared.models import build_classifier, build_segmenter


class StageKind(StrEnum):
    SEG = P.STAGE_SEG
    CLS = P.STAGE_CLS
    CLS_PRETRAIN = P.STAGE_CLS_PRETRAIN


@dataclass(frozen=True)
class Stage:
    """One stage: ``kind``, its ``dataset`` ("" for the segmenter), ``index`` (0 for the segmenter, 1.. for the
    classifier datasets in run-config order: seeds the initial weights), ``rounds`` and ``position0`` (global
    rounds before this stage's first one, across stages: what ``debug-stop-after-round`` counts)."""

    kind: StageKind
    dataset: str
    index: int
    rounds: int
    position0: int

    @property
    def key(self) -> str:
        """``"seg"`` or ``"cls:<dataset>"``: checkpoint files, kept-round summaries, results."""
        return self.kind.value if not self.dataset else f"{self.kind.value}:{self.dataset}"

    @property
    def is_segmenter(self) -> bool:
        return self.kind is StageKind.SEG

    @property
    def is_pretraining(self) -> bool:
        """Contrastive pretraining of a classifier's backbone: no evaluation, the final round is kept."""
        return self.kind is StageKind.CLS_PRETRAIN

    @property
    def label(self) -> str:
        if self.is_pretraining:
            return f"classifier {self.dataset} pretraining"
        return "segmenter" if self.is_segmenter else f"classifier {self.dataset}"

    @property
    def train_type(self) -> str:
        return P.TRAIN_SEG if self.is_segmenter else P.TRAIN_CLS

    @property
    def evaluate_type(self) -> str:
        return P.EVALUATE_SEG if self.is_segmenter else P.EVALUATE_CLS

    @property
    def action(self) -> str:
        """The action part of the message types (``train.<action>``): a pretraining stage sends ``train.cls``."""
        return P.STAGE_SEG if self.is_segmenter else P.STAGE_CLS

    @property
    def eval_metric_keys(self) -> tuple[str, ...]:
        return P.EVAL_SEG_METRICS if self.is_segmenter else P.EVAL_CLS_METRICS

    @property
    def selection_metric(self) -> str:
        """The pooled validation figure a round is kept on (higher is better)."""
        return "dice" if self.is_segmenter else "auc"

    @property
    def figures(self) -> Callable[[list[Mapping[str, object]]], dict[str, float]]:
        """Pooled figures from one or several sites' evaluation statistics."""
        return seg_figures if self.is_segmenter else cls_figures

    def build_model(self, cfg: PipelineConfig) -> torch.nn.Module:
        if self.is_segmenter:
            return build_segmenter(cfg.seg, dp=cfg.dp_models)
        return build_classifier(cfg.cls, len(parse_dataset_name(self.dataset)), dp=cfg.dp_models)

    def has_data(self, counts: Mapping[str, float], roi: Mapping[str, float]) -> bool:
        """Whether a training site with these ``query.info`` counts and ``query.roi`` counts trains here."""
        if self.is_segmenter:
            return counts.get(P.PATIENTS_WITH_MASK, 0) > 0
        return roi.get(P.roi_metric_key(self.dataset, P.ROI_TRAIN), 0) > 0

    def pool(self, sums: SiteSums, pooled_sites: list[str] | None = None):
        """(pooled figures over ``pooled_sites`` (all when None), per-site figures)."""
        return pool(self.figures, sums, pooled_sites)


def study_stages(seg_rounds: int, cls_rounds: int, cfg: PipelineConfig, pretrain_rounds: int = 0) -> list[Stage]:
    """The segmenter, then per dataset of ``cfg.datasets`` (in that order) its pretraining stage when
    ``pretrain_rounds`` > 0 and its classifier stage. A dataset's two stages share ``index`` (the same initial
    weights: the classifier stage continues from the pretraining stage's)."""
    stages = [Stage(StageKind.SEG, "", 0, seg_rounds, 0)]
    position = seg_rounds
    for i, dataset in enumerate(cfg.datasets):
        if pretrain_rounds > 0:
            stages.append(Stage(StageKind.CLS_PRETRAIN, dataset, i + 1, pretrain_rounds, position))
            position += pretrain_rounds
        stages.append(Stage(StageKind.CLS, dataset, i + 1, cls_rounds, position))
        position += cls_rounds
    return stages
