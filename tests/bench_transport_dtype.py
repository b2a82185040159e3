"""What ``transport-dtype = "float16"`` does to a trained model (benchmark, not collected by pytest).

    python -m tests.bench_transport_dtype [--seeds 3]

Trains a ResNet18 classifier (32 px, 3 epochs, a weak synthetic NPL signal so that the AUC is neither 0.5 nor 1)
and a segmenter (8 toy patients, 10 epochs) on CPU, then sends each model's weights through the study's float16 transport
path (shared/records.py: ``state_to_record(state, "float16")`` -> ``record_to_state``, what a site loads) and
scores the same held-out patients with the original and the round-tripped weights: pooled AUC (and the largest
change of a patient's score) and pooled 3-D Dice. This is the rounding of one transfer of a finished model; what
rounding every round does to training itself is what ``nasofl-sim run --set transport-dtype=float16`` shows.
tests/test_transport_dtype.py asserts the bounds on one seed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from shared.config import PipelineConfig
from shared.metrics.auc import auc
from shared.models import build_classifier, build_segmenter
from shared.records import record_to_state, state_to_record
from shared.roi.datasets import RoiDataset
from shared.training.classification import patient_scores, train_classifier
from shared.training.segmentation import evaluate_segmenter, train_segmenter
from simulations.toy_patients import make_toy_cohort

TINY = PipelineConfig.defaults(
    {
        "seg-encoder": "resnet18",
        "seg-image-size": 32,
        "seg-batch-size": 8,
        "seg-slices-per-patient": 4,
        "seg-lr": 3e-3,
        "seg-loss": "dice",
        "cls-arch": "resnet18",
        "cls-image-size": 32,
        "cls-slices-per-patient": 2,
        "cls-batch-size": 16,
        "device": "cpu",
    }
)
DEVICE = torch.device("cpu")


def roi_dataset(n: int, seed: int, signal: float = 0.35) -> RoiDataset:
    """``n`` patients x 2 slices ``(2, 32, 32)`` of noise; NPL patients (every second one) carry a faint brighter
    centre of ``signal`` noise standard deviations."""
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(n)]
    images = rng.normal(0, 1, (n * 2, 2, 32, 32)).astype(np.float32)
    for k in range(n * 2):
        images[k, :, 10:22, 10:22] += signal * labels[k // 2]
    return RoiDataset(
        "t1+t2",
        ("t1", "t2"),
        images,
        np.repeat(np.arange(n), 2),
        [f"p{i}" for i in range(n)],
        labels,
        ["train"] * n,
    )


def through_float16(model: torch.nn.Module) -> torch.nn.Module:
    """The model a site gets when the study sends ``model`` with transport-dtype float16 (in place)."""
    reference = model.state_dict()
    model.load_state_dict(record_to_state(state_to_record(reference, "float16"), reference))
    return model


@dataclass(frozen=True)
class Effect:
    auc32: float
    auc16: float
    max_score_change: float
    patients: int
    dice32: float
    dice16: float


def float16_effect(seed: int) -> Effect:
    torch.manual_seed(seed)
    train, test = roi_dataset(96, seed), roi_dataset(400, seed + 1000)
    classifier = build_classifier(TINY.cls, train.in_channels)
    train_classifier(classifier, train, TINY, DEVICE, epochs=3)
    s32, labels = patient_scores(classifier, test, TINY, DEVICE)
    s16, _ = patient_scores(through_float16(classifier), test, TINY, DEVICE)

    segmenter = build_segmenter(TINY.seg)
    train_segmenter(segmenter, make_toy_cohort(8, size=32, depth=6, seed=seed), TINY, DEVICE, epochs=10)
    held_out = make_toy_cohort(10, size=32, depth=6, seed=seed + 1000)
    dice32 = evaluate_segmenter(segmenter, held_out, TINY, DEVICE).dice
    dice16 = evaluate_segmenter(through_float16(segmenter), held_out, TINY, DEVICE).dice
    return Effect(
        auc32=auc(s32, labels),
        auc16=auc(s16, labels),
        max_score_change=float(np.max(np.abs(s32 - s16))),
        patients=len(labels),
        dice32=dice32,
        dice16=dice16,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in range(args.seeds):
        e = float16_effect(seed)
        print(
            f"seed {seed}: AUC float32 {e.auc32:.4f} float16 {e.auc16:.4f} (diff {e.auc16 - e.auc32:+.4f}, "
            f"{e.patients} patients, largest score change {e.max_score_change:.2e}) | Dice float32 {e.dice32:.4f} "
            f"float16 {e.dice16:.4f} (diff {e.dice16 - e.dice32:+.4f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
