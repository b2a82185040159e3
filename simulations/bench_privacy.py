"""What privacy costs: DP-SGD step time and peak memory against non-DP steps of the SAME model, and the effect
of noisy evaluation histograms (``dp-hist-noise``) on the pooled AUC.

    python -m simulations.bench_privacy --arch resnet18 --size 32 --batch 16 --steps 6
    python -m simulations.bench_privacy --arch resnet101 --size 128 --batch 16 --steps 10   # on a GPU

Step time: the DP-compatible classifier (GroupNorm), the same batch, AdamW; non-DP steps and DP-SGD steps
(per-sample clipping, noise; every patient sampled so the batch is the same) with each clipping engine
(``ghost``, our default, and Opacus' ``hooks``) alternate A B C A B C, and the ratios are printed side by side. Peak memory: CUDA's max allocated (n/a on CPU). Histogram noise: a synthetic
test set (scores from two Gaussians) binned as the sites do, noise added per bin per site, AUC from the summed
histograms against the noise-free one, mean and 95th percentile of |delta AUC| over draws.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shared.config import PipelineConfig
from shared.metrics.histogram_auc import auc_from_histograms, score_histograms
from shared.models import build_classifier
from shared.privacy.accounting import Release, rdp_epsilon
from shared.privacy.dp_sgd import DPPlan, run_dp_sgd
from shared.training.classification import smoothed_bce
from shared.training.device import select_device

KINDS = ("plain", "ghost", "hooks")  # non-DP, then the DP-SGD clipping engines of run_dp_sgd


def _steps_plain(model, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        smoothed_bce(model(x).float().squeeze(1), y, 0.1).backward()
        opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _dp_steps(model, opt, x, y, steps: int, engine: str) -> None:
    plan = DPPlan(
        sample_rate=1.0, noise_multiplier=1.0, steps=steps, expected_batch=len(x), max_grad_norm=1.0
    )
    run_dp_sgd(model, opt, [[i] for i in range(len(x))], lambda picks: (x[picks], y[picks]),
               lambda out, yb: smoothed_bce(out.float().squeeze(1), yb, 0.1), plan, engine=engine)  # fmt: skip


def step_overhead(arch: str, size: int, batch: int, steps: int, repeats: int, device: torch.device) -> dict:
    cfg = PipelineConfig.defaults({"cls-arch": arch, "cls-image-size": size, "amp": False})
    model = build_classifier(cfg.cls, 2, dp=True).to(device)
    x = torch.randn(batch, 2, size, size, device=device)
    y = (torch.rand(batch, device=device) > 0.5).float()
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    peak: dict[str, float] = {}
    for _ in range(repeats):
        for kind in KINDS:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t0 = time.perf_counter()
            if kind == "plain":
                model.train()
                _steps_plain(model, opt, x, y, steps)
            else:
                _dp_steps(model, opt, x, y, steps, kind)
            _sync(device)
            times[kind].append((time.perf_counter() - t0) / steps)
            if device.type == "cuda":
                peak[kind] = max(peak.get(kind, 0.0), torch.cuda.max_memory_allocated() / 2**20)
    out: dict = {"arch": arch, "size": size, "batch": batch}
    for kind in KINDS:
        out[f"s_per_step_{kind}"] = float(np.median(times[kind]))
        out[f"time_ratio_{kind}"] = out[f"s_per_step_{kind}"] / out["s_per_step_plain"]
        if peak:
            out[f"peak_mib_{kind}"] = peak[kind]
            out[f"memory_ratio_{kind}"] = peak[kind] / peak["plain"]
    return out


def _child_peak_rss(kind: str, args: argparse.Namespace) -> float:
    """Peak resident memory (MiB) of a fresh process that builds the model and runs ``kind`` steps."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "simulations.bench_privacy", "--only", kind, "--arch", args.arch, "--size",
           str(args.size), "--batch", str(args.batch), "--steps", "2", "--threads", str(args.threads or 1)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1].split()[-1])


def _only(kind: str, args: argparse.Namespace) -> None:
    device = torch.device("cpu")
    if kind != "none":
        cfg = PipelineConfig.defaults({"cls-arch": args.arch, "cls-image-size": args.size, "amp": False})
        model = build_classifier(cfg.cls, 2, dp=True).to(device)
        x = torch.randn(args.batch, 2, args.size, args.size)
        y = (torch.rand(args.batch) > 0.5).float()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if kind == "plain":
            _steps_plain(model.train(), opt, x, y, args.steps)
        else:
            _dp_steps(model, opt, x, y, args.steps, kind)
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork + exec on Linux)
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(f"peak_rss_mib {hwm_kib / 1024:.1f}")


def histogram_noise_effect(
    sigma: float, sites: int, patients_per_site: int, bins: int, draws: int, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(draws):
        hp_sum = np.zeros(bins)
        hn_sum = np.zeros(bins)
        noisy_p = np.zeros(bins)
        noisy_n = np.zeros(bins)
        for _s in range(sites):
            labels = (rng.random(patients_per_site) < 1 / 3).astype(int)
            scores = 1 / (1 + np.exp(-(rng.normal(0, 1, patients_per_site) + 1.5 * (labels - 0.5) * 2)))
            hp, hn = (np.asarray(h, dtype=float) for h in score_histograms(scores, labels, bins))
            hp_sum += hp
            hn_sum += hn
            noisy_p += np.clip(np.rint(hp + rng.normal(0, sigma, bins)), 0, None)
            noisy_n += np.clip(np.rint(hn + rng.normal(0, sigma, bins)), 0, None)
        if hp_sum.sum() == 0 or hn_sum.sum() == 0 or noisy_p.sum() == 0 or noisy_n.sum() == 0:
            continue
        exact = auc_from_histograms(hp_sum.tolist(), hn_sum.tolist())
        noisy = auc_from_histograms(noisy_p.tolist(), noisy_n.tolist())
        errors.append(abs(noisy - exact))
    e = np.asarray(errors)
    return {
        "sigma": sigma,
        "bins": bins,
        "test_patients": sites * patients_per_site,
        "mean_abs_delta_auc": float(e.mean()),
        "p95_abs_delta_auc": float(np.quantile(e, 0.95)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50", "resnet101"))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--only", choices=(*KINDS, "none"), help=argparse.SUPPRESS)  # memory child process
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        _only(args.only, args)
        return 0
    device = select_device(args.device)
    r = step_overhead(args.arch, args.size, args.batch, args.steps, args.repeats, device)
    if (
        device.type == "cpu"
    ):  # CPU: peak RSS of fresh processes, above one that only imports and builds nothing
        base = _child_peak_rss("none", args)
        for kind in KINDS:
            r[f"peak_mib_{kind}"] = _child_peak_rss(kind, args) - base
            r[f"memory_ratio_{kind}"] = r[f"peak_mib_{kind}"] / max(r["peak_mib_plain"], 1e-9)
    what = "above imports, fresh processes" if device.type == "cpu" else "CUDA max allocated"
    print(
        f"{args.arch} {args.size}px batch {args.batch} on {device.type}: non-DP {r['s_per_step_plain']:.3f} s/step, "
        f"peak memory {r['peak_mib_plain']:.0f} MiB ({what})"
    )
    for kind in KINDS[1:]:
        print(
            f"  DP-SGD {kind:5s}: {r[f's_per_step_{kind}']:.3f} s/step = {r[f'time_ratio_{kind}']:.2f}x; "
            f"peak memory {r[f'peak_mib_{kind}']:.0f} MiB = {r[f'memory_ratio_{kind}']:.2f}x"
        )
    for bins in (10, 100, 1000):
        for sigma in (0.5, 1.0, 2.0):
            h = histogram_noise_effect(sigma, 3, 20, bins, args.draws)
            eps = rdp_epsilon([Release(sigma, 1.0, 1)], 1 / 200)
            print(
                f"dp-hist-noise {sigma} (epsilon {eps:.2f} per evaluation at delta 1/200, unit: one patient): "
                f"{bins} bins, {h['test_patients']} test patients over 3 sites: "
                f"|delta AUC| mean {h['mean_abs_delta_auc']:.3f}, 95th percentile {h['p95_abs_delta_auc']:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
