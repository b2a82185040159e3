"""Per-round checkpoints of the federated study, for an exact resume after a crash.

Layout of the checkpoint directory (absolute path from run config ``checkpoint-dir``)::

    state.json              stage, dataset, round, settings fingerprint, seed, completed stages, time
    current.npz             global arrays of the stage in progress, after ``round``
    strategy.npz            strategy state (FedAdam moments m_t / v_t, FedAvgM momentum), may be empty
    kept.npz                the global arrays of the stage's kept round so far (``select-round``), when that
                            is an earlier round than ``current.npz``'s (kept as a hard link, never rewritten)
    final-seg.npz           the final global segmenter, once stage 1 is complete
    final-cls-<ds>.npz      the final classifier of dataset <ds> ("+" written as "plus")

Every file is written to a temporary name then renamed, ``state.json`` last, so a crash mid-write leaves the
previous checkpoint intact; a failed write removes its temporary file and raises CheckpointError naming the file
and the remedy. Reading is strict: a missing, unreadable or empty arrays file that ``state.json`` refers to is
corruption (CheckpointError naming the file), never an empty model. Pure numpy + json: no Flower, no torch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.errors import CheckpointError, ConfigError

Arrays = dict[str, np.ndarray]


@dataclass
class Checkpoint:
    stage: str  # a StageKind's wire value: P.STAGE_SEG | P.STAGE_CLS
    dataset: str  # "" for seg
    round: int  # rounds completed in this stage (and dataset)
    fingerprint: str
    seed: int
    completed: list[str] = field(default_factory=list)  # stage keys: "seg", "cls:t1", ...
    arrays: Arrays = field(default_factory=dict)
    strategy_state: dict[str, Arrays] = field(default_factory=dict)
    kept_round: int = 0  # the round ``select-round`` keeps so far (0: none)
    kept_value: float = float("nan")
    kept_arrays: Arrays = field(default_factory=dict)


def _file_tag(key: str) -> str:
    return key.replace(":", "-").replace("+", "plus")


CORRUPT_REMEDY = (
    "the checkpoint is damaged: restore the checkpoint folder from a backup, or start afresh with resume=false "
    "(or a new checkpoint-dir)"
)


def write_remedy(path: Path) -> str:
    return (
        f"free disk space on the file system of {path.parent} or make that folder writable (run config "
        "checkpoint-dir / out-dir), then run again with resume=true"
    )


def _atomic_write(path: Path, write) -> None:
    """``write(fh)`` to ``<path>.tmp``, fsync, rename over ``path``; on any error no ``.tmp`` is left and a
    CheckpointError names the file and the remedy."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot write checkpoint file {path}: {err.strerror or err}; {write_remedy(path)}"
        ) from err


def save_arrays(path: Path, arrays: Arrays) -> None:
    """Atomic ``.npz`` with the array names kept in order (names may contain dots)."""
    names = list(arrays)
    _atomic_write(
        path,
        lambda fh: np.savez(
            fh,
            __names__=np.array(json.dumps(names)),
            **{f"a{i}": np.asarray(arrays[n]) for i, n in enumerate(names)},
        ),
    )


def load_arrays(path: Path, allow_empty: bool = False) -> Arrays:
    """The arrays of a file written by :func:`save_arrays`. A missing, unreadable or (unless ``allow_empty``)
    empty file is corruption: CheckpointError naming the file, never an empty model."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing; {CORRUPT_REMEDY}")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = json.loads(str(data["__names__"]))
            arrays = {n: data[f"a{i}"] for i, n in enumerate(names)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint file {path} cannot be read ({err}); {CORRUPT_REMEDY}") from err
    if not arrays and not allow_empty:
        raise CheckpointError(f"checkpoint file {path} holds no array; {CORRUPT_REMEDY}")
    return arrays


CHECKPOINT_FILES = ("state.json", "current.npz", "strategy.npz", "kept.npz")


class CheckpointStore:
    """Reads and writes the checkpoint directory of one study."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def _mkdir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(
                f"cannot create the checkpoint folder {self.dir}: {err.strerror or err}; set run config "
                "checkpoint-dir (or out-dir) to a writable absolute folder"
            ) from err

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def save_round(
        self,
        *,
        stage: str,
        dataset: str,
        round: int,
        arrays: Arrays,
        strategy_state: dict[str, Arrays],
        fingerprint: str,
        seed: int,
        completed: list[str],
        kept: tuple[int, float] | None = None,
    ) -> None:
        """``kept``: (round, pooled validation value) of the stage's kept round, ``round`` or an earlier one.

        The kept round's arrays are written once, as ``current.npz`` of their round; when a later round replaces
        that file while the earlier round stays kept, the file is kept as ``kept.npz`` (a hard link, no copy).
        """
        self._mkdir()
        kept_round, kept_value = kept if kept is not None else (0, float("nan"))
        if kept_round and kept_round != round and self._current_holds(stage, dataset, kept_round):
            self._keep_current()
        save_arrays(self.dir / "current.npz", arrays)
        flat = {f"{name}/{k}": v for name, d in strategy_state.items() for k, v in d.items()}
        save_arrays(self.dir / "strategy.npz", flat)
        self._write_state(
            {
                "stage": stage,
                "dataset": dataset,
                "round": round,
                "fingerprint": fingerprint,
                "seed": seed,
                "completed": completed,
                "kept-round": kept_round,
                "kept-value": None if kept_value != kept_value else kept_value,
                "saved-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )

    def _current_holds(self, stage: str, dataset: str, round: int) -> bool:
        """Whether ``current.npz`` holds the global arrays after ``round`` of this stage (and dataset)."""
        if not self.state_path.exists():
            return False
        state = json.loads(self.state_path.read_text())
        return (state["stage"], state["dataset"], int(state["round"])) == (stage, dataset, round)

    def _keep_current(self) -> None:
        """``kept.npz`` := the file now at ``current.npz`` (``save_arrays`` then writes a new current file)."""
        tmp = self.dir / "kept.npz.tmp"
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(self.dir / "current.npz", tmp)
            except OSError:  # a file system without hard links: copy instead
                shutil.copyfile(self.dir / "current.npz", tmp)
            os.replace(tmp, self.dir / "kept.npz")
        except OSError as err:
            tmp.unlink(missing_ok=True)
            path = self.dir / "kept.npz"
            raise CheckpointError(
                f"cannot write checkpoint file {path}: {err.strerror or err}; {write_remedy(path)}"
            ) from err

    def save_final(self, key: str, arrays: Arrays) -> Path:
        self._mkdir()
        path = self.final_path(key)
        save_arrays(path, arrays)
        return path

    def save_kept_summary(self, key: str, summary: dict) -> None:
        """Which round a completed stage kept (``select-round``), beside its final arrays."""
        self._mkdir()
        path = self.dir / f"final-{_file_tag(key)}.json"
        _atomic_write(path, lambda fh: fh.write(json.dumps(summary).encode()))

    def load_kept_summary(self, key: str) -> dict | None:
        path = self.dir / f"final-{_file_tag(key)}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def final_path(self, key: str) -> Path:
        return self.dir / f"final-{_file_tag(key)}.npz"

    def load_final(self, key: str) -> Arrays | None:
        """A completed stage's final arrays; None when the stage is not complete (an empty file raises)."""
        path = self.final_path(key)
        return load_arrays(path) if path.exists() else None

    def load(self) -> Checkpoint | None:
        """The last checkpoint, or None when the directory has none."""
        if not self.state_path.exists():
            return None
        state = json.loads(self.state_path.read_text())
        arrays = load_arrays(self.dir / "current.npz")  # state.json says it holds a round: never {}
        strategy_state: dict[str, Arrays] = {}
        if (self.dir / "strategy.npz").exists():
            for flat, value in load_arrays(self.dir / "strategy.npz", allow_empty=True).items():
                name, _, key = flat.partition("/")
                strategy_state.setdefault(name, {})[key] = value
        kept_round = int(state.get("kept-round", 0))
        kept_path = self.dir / "kept.npz"
        if kept_round and kept_round == int(state["round"]):
            kept_arrays = arrays
        else:
            kept_arrays = load_arrays(kept_path) if kept_round else {}
        for key in state.get("completed", []):
            load_arrays(
                self.final_path(key)
            )  # a completed stage's final arrays: missing or empty is an error
        kept_value = state.get("kept-value")
        return Checkpoint(
            kept_round=kept_round if kept_arrays else 0,
            kept_value=float("nan") if kept_value is None else float(kept_value),
            kept_arrays=kept_arrays,
            stage=state["stage"],
            dataset=state["dataset"],
            round=int(state["round"]),
            fingerprint=state["fingerprint"],
            seed=int(state["seed"]),
            completed=list(state.get("completed", [])),
            arrays=arrays,
            strategy_state=strategy_state,
        )

    def load_for_resume(self, fingerprint: str) -> Checkpoint | None:
        """Like :meth:`load`, but refuses a checkpoint written with other settings (names the key)."""
        ckpt = self.load()
        if ckpt is not None and ckpt.fingerprint != fingerprint:
            raise ConfigError(
                f"resume=true but the checkpoint in {self.dir} was written with other study settings "
                f"(fingerprint {ckpt.fingerprint[:12]} != {fingerprint[:12]}): use the same run config, or set "
                "checkpoint-dir to a new folder, or resume=false"
            )
        return ckpt

    def clear(self) -> None:
        """Start afresh: remove this study's checkpoint files (only the files this module writes)."""
        if not self.dir.exists():
            return
        for path in self.dir.iterdir():
            if path.name in CHECKPOINT_FILES or path.name.startswith("final-"):
                path.unlink()

    def _write_state(self, state: dict) -> None:
        _atomic_write(self.state_path, lambda fh: fh.write(json.dumps(state, indent=1).encode()))
