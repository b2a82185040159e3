"""``seg-local-optimizer`` / ``cls-local-optimizer = "keep"``: a site's Adam(W) moments carried from one round
of a stage to the next.

A fresh Adam takes a full-size step on every weight in its first steps, whatever the gradient's size: with one
short local epoch per round, each round restarts into those steps. Kept, the moments continue where the site's
previous round left them; the weights still come from the global model. The state lives in the site's cache
(``<cache>/optim/<study-id>/<stage>-r<round>.pt``, stage ``seg`` or ``cls-<dataset>``), is never sent, and holds
no patient data (running means of gradients, the same kind of figure as the weights the site sends). One file per
round, the latest two of the stage in progress kept, so a study resumed at the round before still finds the state
that round started from; a stage's last round writes nothing (nothing continues it) and keeps only the file it
started from; a stage's first save removes the earlier stages' files, a study's first save earlier studies' folders (about 115 MB per file for the default U-Net, 340 MB for a ResNet101 classifier). A round after the
first that finds no state says so in the site's log and starts a fresh Adam.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from client.local_model import check_study_id, stage_file_tag
from shared.model_files import save_state_file

log = logging.getLogger(__name__)

KEEP_FILES = 2


def _path(cache_dir: Path, study: str, stage_key: str, round: int) -> Path:
    check_study_id(study)  # it names a folder; siblings of that folder are removed
    return Path(cache_dir) / "optim" / study / f"{stage_file_tag(stage_key)}-r{round}.pt"


def load_optimizer_state(
    cache_dir: Path, study: str, stage_key: str, before_round: int, model: nn.Module
) -> dict[str, Any] | None:
    """The site's optimizer state saved by its latest round < ``before_round`` of this study, or None.

    A file that is unreadable or does not fit ``model``'s parameters is logged with its path and the reason, and
    that round starts a fresh Adam (as ``restart`` does every round): the weights never depend on it."""
    for r in range(before_round - 1, 0, -1):
        path = _path(cache_dir, study, stage_key, r)
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            problem = _misfit(state, model)
        except (OSError, RuntimeError, ValueError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as err:
            problem = f"unreadable ({err})"
        if problem:
            log.warning("optimizer state %s is %s: this round starts a fresh Adam", path, problem)
            return None
        return state
    if before_round > 1:
        log.warning(
            "no optimizer state from an earlier %s round of study %s in %s: round %s starts a fresh Adam",
            stage_key, study, Path(cache_dir) / "optim", before_round,
        )  # fmt: skip
    return None


def _misfit(state: Mapping[str, Any], model: nn.Module) -> str | None:
    """Why ``state`` (an Adam state_dict) does not fit ``model``'s trainable parameters or holds a value that is
    not finite, or None."""
    params = [p for p in model.parameters() if p.requires_grad]
    ids = [i for g in state["param_groups"] for i in g["params"]]
    if len(ids) != len(params):
        return f"for {len(ids)} parameters, not this model's {len(params)}"
    for i, p in zip(ids, params, strict=True):
        moments = state["state"].get(i)
        if moments is None:
            continue
        if tuple(moments["exp_avg"].shape) != tuple(p.shape):
            return f"shaped {tuple(moments['exp_avg'].shape)} at parameter {i}, not {tuple(p.shape)}"
        for name in ("exp_avg", "exp_avg_sq"):
            if name in moments and not bool(torch.isfinite(moments[name]).all()):
                return f"not finite ({name} at parameter {i}: the round that saved it diverged)"
    return None


def save_optimizer_state(
    cache_dir: Path, study: str, stage_key: str, round: int, state: Mapping[str, Any]
) -> Path:
    """Write round ``round``'s final optimizer state (atomic); keep only this stage's latest :data:`KEEP_FILES`
    rounds: a site training this stage has seen every earlier stage finish (the coordinator moves on only after
    aggregating a stage's last round), so their files are removed, and on a study's first save so are other
    studies' folders."""
    path = _path(cache_dir, study, stage_key, round)
    if not path.parent.exists():
        for other in path.parent.parent.glob("*"):
            if other.is_dir() and other.name != study:
                shutil.rmtree(other, ignore_errors=True)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    save_state_file(path, state)  # type: ignore[arg-type]  # nested dict of tensors and numbers
    _prune(path.parent, stage_file_tag(stage_key), keep=lambda r: r > round - KEEP_FILES)
    return path


def state_keeper(
    cache_dir: Path, study: str, stage_key: str, round: int, total_rounds: int | None
) -> Callable[[dict[str, Any]], None]:
    """What a round does with its final optimizer state. At the stage's last round (``total_rounds``, from the
    coordinator's message) no round would continue it: it is not written (340 MB for a ResNet101), and of this
    stage's files only the one that round started from stays (a study resumed at that round needs it)."""
    last = total_rounds is not None and round >= total_rounds

    def keep_state(state: dict[str, Any]) -> None:
        if not last:
            save_optimizer_state(cache_dir, study, stage_key, round, state)
            return
        folder = _path(cache_dir, study, stage_key, round).parent
        _prune(folder, stage_file_tag(stage_key), keep=lambda r: r == round - 1)

    return keep_state


def _prune(folder: Path, tag: str, keep: Callable[[int], bool]) -> None:
    """Remove the other stages' files in ``folder`` and this stage's (``tag``) whose round fails ``keep``."""
    for old in folder.glob("*-r*.pt"):
        old_tag, _, r = old.stem.rpartition("-r")
        if r.isdigit() and (old_tag != tag or not keep(int(r))):
            old.unlink(missing_ok=True)
