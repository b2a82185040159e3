"""Training throughput of ``train_classifier`` vs a bare PyTorch loop (same model, data, batch size).

    python -m simulations.bench_train --arch resnet101 --size 64 --n 128 --batch 16 --repeats 2

Runs the two loops alternately (A B A B ...) so machine noise hits both, and prints images/s side by side
with the ratio ours / bare, by wall clock and by CPU time of the process (fair on a shared machine). Random data: throughput does not depend on content.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from shared.config import PipelineConfig
from shared.models import build_classifier
from shared.roi.datasets import RoiDataset
from shared.training.classification import train_classifier
from shared.training.device import autocast_for, select_device


def bare_epoch(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device, amp: bool
) -> int:
    """One epoch of the plainest loop: shuffled slicing, BCE, AdamW (bf16 autocast on CUDA when ``amp``, as
    ours). Returns images seen."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(x))
    seen = 0
    for start in range(0, len(x) - batch + 1, batch):
        idx = perm[start : start + batch]
        xb, yb = x[idx].to(device), y[idx].to(device)
        with autocast_for(device, amp):
            logits = model(xb)
        loss = F.binary_cross_entropy_with_logits(logits.float().squeeze(1), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(idx)
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet101", choices=("resnet18", "resnet50", "resnet101"))
    ap.add_argument("--size", type=int, default=64, help="crop size in px")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--n", type=int, default=128, help="images per epoch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="timed epochs per loop")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--no-amp", action="store_true", help="float32 on CUDA too (default: bf16 autocast on CUDA)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    cfg = PipelineConfig.defaults(
        {
            "cls-arch": args.arch,
            "cls-image-size": args.size,
            "cls-batch-size": args.batch,
            "device": args.device,
            "amp": not args.no_amp,
        }
    )
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (args.n, args.channels, args.size, args.size)).astype(np.float32)
    labels = [i % 2 for i in range(args.n)]
    ds = RoiDataset("bench", ("t1", "t2")[: args.channels], images, np.arange(args.n), [str(i) for i in range(args.n)],
                    labels, ["train"] * args.n)  # fmt: skip
    x, y = ds.images, torch.tensor(labels, dtype=torch.float32)
    ours_model = build_classifier(cfg.cls, args.channels).to(device)
    bare_model = build_classifier(cfg.cls, args.channels).to(device)
    # warm-up (allocator, cudnn autotune) on a few batches of each
    warm = RoiDataset("warm", ds.sequences, images[: 2 * args.batch], np.arange(2 * args.batch),
                      ds.patients[: 2 * args.batch], labels[: 2 * args.batch], ds.split[: 2 * args.batch])  # fmt: skip
    train_classifier(ours_model, warm, cfg, device, 1)
    bare_epoch(bare_model, x[: 2 * args.batch], y[: 2 * args.batch], args.batch, device, cfg.amp)
    ours_rates, bare_rates, ours_cpu, bare_cpu = [], [], [], []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        stats = train_classifier(ours_model, ds, cfg, device, 1)
        sync()
        ours_rates.append(stats.n_examples / (time.perf_counter() - t))
        ours_cpu.append(stats.n_examples / (time.process_time() - c))
        t, c = time.perf_counter(), time.process_time()
        seen = bare_epoch(bare_model, x, y, args.batch, device, cfg.amp)
        sync()
        bare_rates.append(seen / (time.perf_counter() - t))
        bare_cpu.append(seen / (time.process_time() - c))
    # On a shared CPU machine wall time swings with other people's work; CPU time of this process does not
    # (much): images per CPU-second is the fair comparison there. On a GPU read the wall-clock figures.
    print(f"{args.arch} {args.size}px x{args.channels}ch, batch {args.batch}, {args.n} images/epoch, "
          f"device {device}, threads {torch.get_num_threads()}, amp {cfg.amp and device.type == 'cuda'}, "
          f"{args.repeats} epochs each, interleaved")  # fmt: skip
    print(f"{'loop':<18}{'img/s wall':>12}{'img/CPU-s':>11}   wall runs")
    for name, wall, cpu in (
        ("train_classifier", ours_rates, ours_cpu),
        ("bare PyTorch", bare_rates, bare_cpu),
    ):
        runs = ", ".join(f"{r:.1f}" for r in wall)
        print(f"{name:<18}{float(np.median(wall)):>12.1f}{float(np.median(cpu)):>11.1f}   {runs}")
    print(
        f"ratio ours / bare: wall (medians) {float(np.median(ours_rates)) / float(np.median(bare_rates)):.2f}, "
        f"CPU time (medians) {float(np.median(ours_cpu)) / float(np.median(bare_cpu)):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
