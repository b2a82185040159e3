"""What every handler does with the global model: seed, load, FedBN overlay, reply arrays.

Local training is deterministic given (study seed, stage, dataset, round, site): a resumed study repeats a
round bit for bit. FedBN: the site's own normalisation parameters and buffers are kept on disk per round
(``<cache>/fedbn/<study-id>/<stage>-r<round>.npz``) and laid over the global weights before training and
evaluation; the global ones never overwrite them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared import protocol as P
from shared.config import PipelineConfig
from shared.records import norm_keys, record_to_state, state_to_numpy

log = logging.getLogger(__name__)


_STUDY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_study_id(value: object) -> str:
    """``value`` if it can name a folder under the site's cache (letters, digits, ``_``, ``-``; at most 64), else
    ValueError: the id comes from the coordinator's message, and a path in it (``../``) would reach outside the
    cache, where FedBN state and Adam moments are written and earlier studies' folders are removed."""
    if not isinstance(value, str) or not _STUDY_ID.fullmatch(value):
        raise ValueError(
            f"message config {P.CFG_STUDY!r} is {str(value)[:80]!r}: expected 1-64 letters, digits, '_' or '-' "
            "(it names folders in this site's cache); refused. A nasofl server sends a 12-character fingerprint: "
            "check which server this node is connected to"
        )
    return value


def derived_seed(seed: int, stage: str, dataset: str, round: int, site: str) -> int:
    """A 28-bit seed from the study seed and the round's coordinates (stable across processes)."""
    digest = hashlib.sha256(f"{seed}|{stage}|{dataset}|{round}|{site}".encode()).hexdigest()
    return int(digest[:7], 16)


def seeded_config(cfg: PipelineConfig, stage: str, dataset: str, round: int, site: str) -> PipelineConfig:
    """``cfg`` with the derived seed; also seeds torch and numpy's global generators."""
    seed = derived_seed(cfg.seed, stage, dataset, round, site)
    torch.manual_seed(seed)
    np.random.seed(seed)
    return replace(cfg, seed=seed)


def load_global(model: nn.Module, record) -> None:
    """Load an ArrayRecord into ``model`` (keys, shapes and finiteness checked: ModelMismatchError)."""
    model.load_state_dict(record_to_state(record, model.state_dict()))


def stage_file_tag(stage_key: str) -> str:
    """``"cls:t1+t2"`` -> ``"cls-t1plust2"``: a stage key as part of a file name in the site's cache."""
    return stage_key.replace(":", "-").replace("+", "plus")


def _fedbn_path(cache_dir: Path, study: str, stage_key: str, round: int) -> Path:
    return cache_dir / "fedbn" / check_study_id(study) / f"{stage_file_tag(stage_key)}-r{round}.npz"


def overlay_local_norm(
    model: nn.Module, cache_dir: Path, study: str, stage_key: str, before_round: int
) -> bool:
    """Lay the site's latest normalisation state from a round < ``before_round`` over ``model``; True if found."""
    for r in range(before_round - 1, 0, -1):
        path = _fedbn_path(cache_dir, study, stage_key, r)
        if path.exists():
            with np.load(path) as data:
                local = {k: torch.from_numpy(data[k].copy()) for k in data.files}
            state = model.state_dict()
            for k, v in local.items():
                if k in state and state[k].shape == v.shape:
                    state[k] = v.to(state[k].dtype)
            model.load_state_dict(state)
            return True
    return False


def save_local_norm(model: nn.Module, cache_dir: Path, study: str, stage_key: str, round: int) -> None:
    keys = set(norm_keys(model))
    arrays = {k: v for k, v in state_to_numpy(model.state_dict()).items() if k in keys}
    path = _fedbn_path(cache_dir, study, stage_key, round)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
