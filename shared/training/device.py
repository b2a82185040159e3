"""Device choice and mixed precision: autocast (bfloat16) only on CUDA; CPU runs float32."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from shared.errors import ConfigError

log = logging.getLogger(__name__)


def select_device(pref: str) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; ``"cuda"`` without a GPU raises ConfigError; ``"cpu"`` -> cpu."""
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but torch sees no CUDA device: use device='auto' or 'cpu'")
        return torch.device("cuda")
    if pref == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device={pref!r} is not allowed: expected one of auto, cpu, cuda")


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move ``model`` to ``device``; on CUDA also channels-last memory (faster convolutions under bf16) and
    cuDNN autotuning (fixed input sizes here). CPU: a plain move, nothing else changes."""
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    return model


def place_batch(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An image batch ``(B, C, H, W)`` on ``device`` (channels-last on CUDA, to match :func:`place_model`)."""
    if device.type == "cuda" and x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device)


@contextlib.contextmanager
def autocast_for(device: torch.device, amp: bool) -> Iterator[None]:
    """bfloat16 autocast when ``amp`` and ``device`` is CUDA; a no-op otherwise (CPU autocast is slower here)."""
    if amp and device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


@dataclass
class TrainStats:
    """What one local training call did. Losses are per-batch means (float), ``seconds`` wall time."""

    loss_first: float
    loss_last: float
    mean_loss: float
    n_examples: int
    seconds: float
    epochs: int = 0

    def as_metrics(self, prefix: str = "") -> dict[str, float | int]:
        """Flat dict of Python numbers (MetricRecord-safe)."""
        return {
            f"{prefix}loss_first": float(self.loss_first),
            f"{prefix}loss_last": float(self.loss_last),
            f"{prefix}mean_loss": float(self.mean_loss),
            f"{prefix}n_examples": int(self.n_examples),
            f"{prefix}seconds": float(self.seconds),
        }
