"""Time per patient of ``nasofl-site predict`` with random-init models at a preset's sizes.

    python -m simulations.bench_predict --preset default --patients 3 [--device cpu] [--threads 2]

Writes a bundle of randomly initialised models of the preset's architectures and sizes (no thresholds: the
speed does not depend on the weights), generates synthetic patients at the preset's grid, and runs the whole
predict path on them (ingestion, segmenter, ROI, every classifier, Grad-CAM, SEG + RTSTRUCT, HTML + PNG report).
The segmenter's output bias is raised so that every patient has a tumour and every step runs. Prints seconds per
patient (wall and process CPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="default")
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from client.predict.study import predict_study
    from shared.bundle import ClassifierExport, TrainingSummary, load_bundle, write_bundle
    from shared.data.settings import IngestSettings
    from shared.models import build_classifier, build_segmenter
    from shared.training.device import select_device
    from simulations.presets import preset_config
    from simulations.synth.cohort import CohortConfig, generate_cohort

    cfg = preset_config(args.preset)
    torch.manual_seed(0)
    seg = build_segmenter(cfg.seg).state_dict()
    seg["segmentation_head.0.bias"] = torch.full_like(seg["segmentation_head.0.bias"], 0.5)
    exports = [
        ClassifierExport(
            ds, build_classifier(cfg.cls, len(cfg.dataset_sequences(ds))).state_dict(), None, None
        )
        for ds in cfg.datasets
    ]
    training = TrainingSummary("centralized", [{"name": "none (random init)", "patients": 0}], "random", None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_bundle(root / "bundle", cfg, IngestSettings(), seg, exports, training)
        grid = "paper" if args.preset == "paper" else "default"
        cohort = CohortConfig.preset(grid, sites=1, patients=args.patients, seed=5)
        generate_cohort(root / "cohort", cohort, progress=False)
        bundle = load_bundle(root / "bundle")
        device = select_device(args.device)
        wall, cpu = time.perf_counter(), time.process_time()
        runs = predict_study(bundle, root / "cohort" / "hospital-a", root / "out", device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        steps = {r.pseudonym: json.loads((r.folder / "result.json").read_text())["cpu_seconds"] for r in runs}
    print(f"preset {args.preset}: U-Net {cfg.seg.encoder} {cfg.seg.image_size} px, {len(cfg.datasets)} x "
          f"{cfg.cls.arch} {cfg.cls.image_size} px, device {device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    for r in runs:
        p = r.prediction
        print(f"  {r.pseudonym}: {r.seconds:.2f} s, tumour {p.tumour_found}, models run {len(p.outputs)}, "
              f"mask shape {None if p.mask is None else p.mask.shape}, CPU s per step {steps[r.pseudonym]}")  # fmt: skip
    print(f"per patient: {wall / len(runs):.2f} s wall, {cpu / len(runs):.2f} s process CPU")


if __name__ == "__main__":
    main()
